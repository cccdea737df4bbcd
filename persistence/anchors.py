"""Anchors: the ledger's head and every run's trail head, copied outside the database.

``pausepoint audit anchor`` (and beat, every ``PAUSEPOINT_AUDIT_ANCHOR_INTERVAL``
seconds) seals the ledger and appends one line to an anchor file:

    {"anchor": {"v": 1, "at": ..., "since": ..., "ledger": [n, link],
                "runs": {run_id: [event_count, event_hash], ...}},
     "key": key id, "mac": HMAC of the anchor}

``runs`` lists the runs whose row changed since the previous anchor in the same file
(all of them the first time), so the file grows with the work done, not with the store.
The file is opened for appending only; keep it where the database's writers cannot
write (another host, a WORM bucket's sync folder, ``chattr +a``).

``pausepoint audit verify --anchors FILE`` checks the store against every anchor: the
sealed ledger still has each anchored link at its place (entries were not cut or
edited since), every anchored run still has its anchored event at that place (its trail
was not cut, wiped or rewritten since; a run may only have grown), and an anchored run
that is gone was archived (the ledger says so).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, tuple_

from pausepoint.persistence.audit import canonical
from pausepoint.persistence.audit_keys import AuditKeys
from pausepoint.persistence.errors import InvalidInput
from pausepoint.persistence.ledger import ARCHIVED, HEAD_ID
from pausepoint.persistence.tables import events, ledger, ledger_head, runs

VERSION = 1
BATCH = 500


def _message(body: dict[str, Any]) -> bytes:
    return ("pausepoint anchor\n" + canonical(body)).encode()


@dataclass(frozen=True)
class Anchor:
    line: int
    at: datetime
    ledger_n: int
    ledger_link: str
    runs: dict[str, tuple[int, str]]
    key: str


def read_anchors(path: Path, keys: AuditKeys) -> tuple[list[Anchor], list[str]]:
    """The anchors of ``path`` whose MAC checks, and a problem for each line that does not."""
    found: list[Anchor] = []
    problems: list[str] = []
    try:
        handle = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"no such anchor file: {path}") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read the anchor file {path}: {exc.strerror}") from None
    with handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
                body = record["anchor"]
                mac = bytes.fromhex(str(record["mac"]))
                anchor = Anchor(
                    line=number,
                    at=datetime.fromisoformat(str(body["at"])),
                    ledger_n=int(body["ledger"][0]),
                    ledger_link=str(body["ledger"][1]),
                    runs={str(r): (int(v[0]), str(v[1])) for r, v in body["runs"].items()},
                    key=str(record.get("key", "")),
                )
            except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                problems.append(f"{path}:{number}: not an anchor line")
                continue
            if keys.which(_message(body), mac, anchor.key) is None:
                problems.append(
                    f"{path}:{number}: the anchor of {anchor.at.isoformat(timespec='seconds')} "
                    "does not match its MAC under any key given: it was edited or forged"
                    + ("" if keys else " (or it is keyed: set PAUSEPOINT_AUDIT_KEY)")
                )
                continue
            found.append(anchor)
    return found, problems


def _last(path: Path, keys: AuditKeys) -> Anchor | None:
    if not path.exists():
        return None
    anchors, _ = read_anchors(path, keys)
    return anchors[-1] if anchors else None


def write_anchor(store: Any, path: Path) -> Anchor:
    """Seal the ledger and append an anchor of the store as it is now to ``path``."""
    keys: AuditKeys = store.audit_keys
    store.seal_all()
    previous = _last(path, keys)
    now = store.clock()
    with store.snapshot() as conn:
        head = conn.execute(
            select(ledger_head.c.n, ledger_head.c.hash).where(ledger_head.c.id == HEAD_ID)
        ).one()
        query = select(runs.c.id, runs.c.event_count, runs.c.event_hash).order_by(runs.c.id)
        if previous is not None:
            query = query.where(runs.c.updated_at >= previous.at)
        changed: dict[str, tuple[int, str]] = {
            str(r.id): (int(r.event_count), str(r.event_hash)) for r in conn.execute(query)
        }
    body = {
        "v": VERSION,
        "at": now.isoformat(timespec="microseconds"),
        "since": None if previous is None else previous.at.isoformat(timespec="microseconds"),
        "ledger": [int(head.n), str(head.hash)],
        "runs": {r: list(v) for r, v in changed.items()},
    }
    line = canonical(
        {"anchor": body, "key": keys.signing_id, "mac": keys.mac(_message(body)).hex()}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return Anchor(
        line=0,
        at=now,
        ledger_n=int(head.n),
        ledger_link=str(head.hash),
        runs=changed,
        key=keys.signing_id,
    )


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), BATCH):
        yield items[i : i + BATCH]


def check_anchors(store: Any, anchors: Sequence[Anchor]) -> list[str]:
    """What changed in the store since ``anchors`` were written, as problems."""
    problems: list[str] = []
    latest: dict[str, tuple[int, str, Anchor]] = {}
    for a in anchors:
        for run_id, (count, head) in a.runs.items():
            latest[run_id] = (count, head, a)
    with store.snapshot() as conn:
        sealed = int(
            conn.execute(select(ledger_head.c.n).where(ledger_head.c.id == HEAD_ID)).scalar_one()
        )
        wanted = sorted({a.ledger_n for a in anchors if a.ledger_n > 0})
        links: dict[int, str] = {}
        for part in _chunks(wanted):
            for n, link in conn.execute(
                select(ledger.c.n, ledger.c.link).where(ledger.c.n.in_(list(part)))
            ):
                links[int(n)] = bytes(link or b"").hex()
        for a in anchors:
            when = a.at.isoformat(timespec="seconds")
            if a.ledger_n > sealed:
                problems.append(
                    f"the ledger has {sealed} sealed entries, and the anchor of {when} recorded "
                    f"{a.ledger_n}: entries were cut since"
                )
            elif a.ledger_n and links.get(a.ledger_n) != a.ledger_link:
                problems.append(
                    f"ledger entry {a.ledger_n} is not what the anchor of {when} recorded: the "
                    "ledger was edited or re-sealed since"
                )
        ids = sorted(latest)
        for part in _chunks(ids):
            stored = {
                r.id: int(r.event_count)
                for r in conn.execute(
                    select(runs.c.id, runs.c.event_count).where(runs.c.id.in_(list(part)))
                )
            }
            keys = [(r, latest[r][0]) for r in part if r in stored and latest[r][0] > 0]
            hashes = (
                {
                    (run_id, int(n)): bytes(h).hex()
                    for run_id, n, h in conn.execute(
                        select(events.c.run_id, events.c.n, events.c.hash).where(
                            tuple_(events.c.run_id, events.c.n).in_(keys)
                        )
                    )
                }
                if keys
                else {}
            )
            gone = [r for r in part if r not in stored]
            archived = (
                set(
                    conn.execute(
                        select(ledger.c.run_id).where(
                            ledger.c.run_id.in_(gone), ledger.c.kind == ARCHIVED
                        )
                    ).scalars()
                )
                if gone
                else set()
            )
            for run_id in part:
                count, head, a = latest[run_id]
                when = a.at.isoformat(timespec="seconds")
                if run_id not in stored:
                    if run_id not in archived:
                        problems.append(
                            f"run {run_id} was anchored at {when} with {count} events, and is "
                            "gone with no archive entry: it was deleted since"
                        )
                    continue
                if count and hashes.get((run_id, count)) != head:
                    have = stored[run_id]
                    problems.append(
                        f"run {run_id}: its trail had {count} events at the anchor of {when}, "
                        f"and it now has {have} that do not begin with them: it was cut, "
                        "wiped or rewritten since"
                    )
    return problems
