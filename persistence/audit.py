"""The hash chain of a run's audit trail.

Each event's hash covers the previous event's hash and the event's own
content, so editing, deleting or reordering any event breaks every hash after
it. Canonical JSON (sorted keys, no whitespace) keeps hashes identical on
SQLite and Postgres.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

GENESIS = ""


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def event_hash(
    prev_hash: str,
    run_id: str,
    n: int,
    kind: str,
    actor: str,
    data: dict[str, Any],
    created_at: datetime,
) -> str:
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
    return hashlib.sha256((prev_hash + "\n" + body).encode()).hexdigest()


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
    """The first place a run's audit trail is not what was written."""

    run_id: str
    n: int
    problem: str

    def __str__(self) -> str:
        return f"run {self.run_id}: event {self.n}: {self.problem}"


def verify_chain(
    run_id: str, events: Sequence[ChainedEvent], count: int, head: str
) -> Finding | None:
    """Check ``events`` (ordered by ``n``) against their hashes and the run's head.

    Names the first event that was edited, deleted, inserted or moved; ``None`` when
    the trail is exactly what was written. ``count`` and ``head`` are the chain's
    length and last hash as the run row keeps them.
    """
    prev = GENESIS
    for i, e in enumerate(events, start=1):
        if e.n > i:
            return Finding(run_id, i, "is missing: it was deleted")
        if e.n < i:
            return Finding(run_id, i, f"appears twice ({e.kind}): an event was inserted")
        if e.run_id != run_id:
            return Finding(run_id, i, f"belongs to run {e.run_id}")
        digest = event_hash(e.prev_hash, e.run_id, e.n, e.kind, e.actor, e.data, e.created_at)
        if digest != e.hash:
            # The hash covers the previous event's hash too: a forger who re-hashed
            # event i - 1 after editing it breaks event i.
            return Finding(
                run_id,
                i,
                f"({e.kind}) does not match its hash: it, or the event before it, "
                "was edited or moved",
            )
        if e.prev_hash != prev:
            return Finding(
                run_id,
                i,
                f"({e.kind}) does not follow event {i - 1}: events were deleted or reordered",
            )
        prev = e.hash
    if len(events) < count:
        return Finding(
            run_id,
            len(events) + 1,
            f"is missing: the run recorded {count} events, {len(events)} are left",
        )
    if len(events) > count:
        return Finding(run_id, count + 1, f"was added after the run's last recorded event {count}")
    if prev != head:
        return Finding(run_id, count, "the last event's hash is not the one the run recorded")
    return None


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
