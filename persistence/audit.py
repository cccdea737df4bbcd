"""The hash chain of a run's audit trail.

Each event's hash covers the previous event's hash and the event's own
content, so editing, deleting or reordering any event breaks every hash after
it. Canonical JSON (sorted keys, no whitespace) keeps hashes identical on
SQLite and Postgres. With an audit key (:mod:`persistence.audit_keys`) each hash is
an HMAC under it, so whoever can write the database but does not hold the key
cannot recompute the chain after an edit.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pausepoint.persistence.audit_keys import UNKEYED, AuditKeys

GENESIS = ""
NO_KEYS = AuditKeys()


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
)


def canonical(value: Any) -> str:
    return _CANONICAL.encode(value)


def event_message(
    prev_hash: str,
    run_id: str,
    n: int,
    kind: str,
    actor: str,
    data: dict[str, Any],
    created_at: datetime,
) -> bytes:
    """What an event's hash is made over: the previous hash, then the event."""
    body = canonical(
        {
            "run_id": run_id,
            "n": n,
            "kind": kind,
            "actor": actor,
            "data": data,
            # Microseconds and UTC, as both backends store them.
            "at": created_at.isoformat(timespec="microseconds"),
        }
    )
    return (prev_hash + "\n" + body).encode()


def event_hash(
    keys: AuditKeys,
    prev_hash: str,
    run_id: str,
    n: int,
    kind: str,
    actor: str,
    data: dict[str, Any],
    created_at: datetime,
) -> str:
    return keys.mac(event_message(prev_hash, run_id, n, kind, actor, data, created_at)).hex()


class ChainedEvent(Protocol):
    @property
    def run_id(self) -> str: ...
    @property
    def n(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def actor(self) -> str: ...
    @property
    def data(self) -> dict[str, Any]: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def prev_hash(self) -> str: ...
    @property
    def hash(self) -> str: ...


@dataclass(frozen=True)
class Finding:
    """The first place a run's audit trail (or what it binds) is not what was written."""

    run_id: str
    n: int
    problem: str

    def __str__(self) -> str:
        return f"run {self.run_id}: event {self.n}: {self.problem}"


@dataclass
class Verdict:
    """What verifying one chain found: the first finding, and how far it proves.

    ``keyed``: events whose HMAC was checked under a key given; ``unkeyed``: events
    hashed with plain SHA-256 (written with no audit key: proof only against whoever
    cannot write the store).
    """

    finding: Finding | None = None
    keyed: int = 0
    unkeyed: int = 0
    key_ids: set[str] = field(default_factory=set)
    # Per event, in order: the id of the key that made its hash (UNKEYED: none).
    kids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.finding is None


def verify_chain(
    run_id: str,
    events: Sequence[ChainedEvent],
    count: int,
    head: str,
    keys: AuditKeys = NO_KEYS,
) -> Finding | None:
    """The first finding of :func:`check_chain`, or None."""
    return check_chain(run_id, events, count, head, keys).finding


def check_chain(
    run_id: str,
    events: Sequence[ChainedEvent],
    count: int,
    head: str,
    keys: AuditKeys = NO_KEYS,
) -> Verdict:
    """Check ``events`` (ordered by ``n``) against their hashes and the run's head.

    Names the first event that was edited, deleted, inserted, moved or re-hashed;
    ``count`` and ``head`` are the chain's length and last hash as the run row keeps
    them. Once an event of the chain is keyed, every later one must be too: one that
    is plain SHA-256 after it was re-hashed by someone without the key.
    """
    verdict = Verdict()

    def found(n: int, problem: str) -> Verdict:
        verdict.finding = Finding(run_id, n, problem)
        return verdict

    prev = GENESIS
    hint: str | None = None
    for i, e in enumerate(events, start=1):
        if e.n > i:
            return found(i, "is missing: it was deleted")
        if e.n < i:
            return found(i, f"appears twice ({e.kind}): an event was inserted")
        if e.run_id != run_id:
            return found(i, f"belongs to run {e.run_id}")
        if e.prev_hash != prev:
            return found(i, f"({e.kind}) does not follow event {i - 1}: events were reordered")
        message = event_message(e.prev_hash, e.run_id, e.n, e.kind, e.actor, e.data, e.created_at)
        kid = keys.which(message, bytes.fromhex(e.hash), hint)
        if kid is None and not keys:
            return found(
                i,
                f"({e.kind}) does not match its hash: it, or the event before it, was edited "
                "(or the trail is keyed and no audit key was given: set PAUSEPOINT_AUDIT_KEY)",
            )
        elif kid is None:
            # The hash covers the previous event's hash too: a forger who re-hashed
            # event i - 1 after editing it breaks event i.
            return found(
                i,
                f"({e.kind}) does not match its hash under any key given "
                f"({', '.join(keys.ids)}): it, or the event before it, was edited (or "
                "it was keyed with a key you did not give)",
            )
        elif kid == UNKEYED:
            if verdict.keyed:
                return found(
                    i,
                    f"({e.kind}) is hashed without the audit key although the events "
                    "before it are keyed: it was edited or added by someone without the key",
                )
            verdict.unkeyed += 1
        else:
            verdict.keyed += 1
            verdict.key_ids.add(kid)
            hint = kid
        verdict.kids.append(kid)
        prev = e.hash
    if len(events) < count:
        return found(
            len(events) + 1,
            f"is missing: the run recorded {count} events, {len(events)} are left",
        )
    if len(events) > count:
        return found(count + 1, f"was added after the run's last recorded event {count}")
    if prev != head:
        return found(count, "the last event's hash is not the one the run recorded")
    return verdict


EXPORT_FIELDS = ("run_id", "n", "created_at", "kind", "actor", "data", "prev_hash", "hash")


def event_record(e: ChainedEvent) -> dict[str, Any]:
    """One event as auditors get it: everything its hash covers, and the hashes."""
    return {
        "run_id": e.run_id,
        "n": e.n,
        "created_at": e.created_at.isoformat(timespec="microseconds"),
        "kind": e.kind,
        "actor": e.actor,
        "data": e.data,
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    }


def to_jsonl(events: Iterable[ChainedEvent]) -> Iterator[str]:
    for e in events:
        yield canonical(event_record(e)) + "\n"


def to_csv(events: Iterable[ChainedEvent]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXPORT_FIELDS)
    for e in events:
        record = event_record(e)
        record["data"] = canonical(record["data"])
        writer.writerow([record[f] for f in EXPORT_FIELDS])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()


@dataclass(frozen=True)
class ExportedEvent:
    """An event read back from a JSONL export or an archive file."""

    run_id: str
    n: int
    kind: str
    actor: str
    data: dict[str, Any]
    created_at: datetime
    prev_hash: str
    hash: str

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ExportedEvent:
        return cls(
            run_id=str(record["run_id"]),
            n=int(record["n"]),
            kind=str(record["kind"]),
            actor=str(record["actor"]),
            data=dict(record["data"]),
            created_at=datetime.fromisoformat(str(record["created_at"])),
            prev_hash=str(record["prev_hash"]),
            hash=str(record["hash"]),
        )
