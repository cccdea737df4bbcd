"""The store-wide ledger: whole runs accounted for, outside their own rows.

A run's own trail cannot say that the run was deleted, or that its trail was cut and
the run row's head moved back with it. The ledger can: the transaction that creates a
run, ends it, purges its state or archives its trail also writes a ledger entry, with
a MAC (16 bytes of HMAC-SHA256 under the audit key) over the entry:

- ``created`` ``{}`` (``{"parent": id}`` for a fork);
- ``ended`` ``{"status", "count", "head"}``: the trail as the run ended, so a later trail
  must begin with exactly these ``count`` events;
- ``purged`` ``{"count", "head"}``: retention removed the run's state (the trail stays);
- ``archived`` ``{"count", "head", "file", "sha256"}``: the trail was written to that
  archive file and deleted with the run row; the only reason a trail may go.

Writers never touch a shared row (no contention between runs): entries are sealed
afterwards into one chain, in the order the sealer finds them, by the sweeper's pass
(and before every anchor and store-wide verify). Link ``n`` (stored with the entry) is
16 bytes of ``MAC(previous link, n, entry mac)``; ``ledger_head`` keeps the last one.
Deleting or editing a sealed entry breaks the chain; cutting the chain's tail and
moving its head back is found against an anchor (:mod:`persistence.anchors`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pausepoint.persistence.audit import GENESIS, canonical
from pausepoint.persistence.audit_keys import UNKEYED, AuditKeys

CREATED = "created"
ENDED = "ended"
PURGED_ENTRY = "purged"
ARCHIVED = "archived"
KINDS = (CREATED, ENDED, PURGED_ENTRY, ARCHIVED)
MAC_BYTES = 16
HEAD_ID = 1


def _at(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat(timespec="microseconds")


def entry_message(kind: str, run_id: str, data: Mapping[str, Any], at: datetime) -> bytes:
    body = canonical({"kind": kind, "run_id": run_id, "data": dict(data), "at": _at(at)})
    return ("pausepoint ledger\n" + body).encode()


def entry_row(
    keys: AuditKeys, kind: str, run_id: str, data: Mapping[str, Any], now: datetime
) -> dict[str, Any]:
    """A new ledger row (unsealed), MAC'd under the signing key."""
    mac = keys.mac(entry_message(kind, run_id, data, now))[:MAC_BYTES]
    return {
        "kind": kind,
        "run_id": run_id,
        "data": dict(data),
        "created_at": now,
        "mac": mac,
        "n": None,
    }


def link_message(prev: str, n: int, mac: bytes) -> bytes:
    return f"pausepoint seal\n{prev}\n{n}\n{mac.hex()}".encode()


def link(keys: AuditKeys, prev: str, n: int, mac: bytes) -> bytes:
    return keys.mac(link_message(prev, n, mac))[:MAC_BYTES]


@dataclass(frozen=True)
class Entry:
    id: int
    kind: str
    run_id: str
    data: dict[str, Any]
    created_at: datetime
    mac: bytes
    n: int | None
    link: bytes | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Entry:
        return cls(
            id=int(row["id"]),
            kind=str(row["kind"]),
            run_id=str(row["run_id"]),
            data=dict(row["data"] or {}),
            created_at=row["created_at"],
            mac=bytes(row["mac"]),
            n=None if row["n"] is None else int(row["n"]),
            link=None if row.get("link") is None else bytes(row["link"]),
        )

    def key_id(self, keys: AuditKeys) -> str | None:
        """Which key made this entry's MAC (UNKEYED: none), or None: forged or edited."""
        message = entry_message(self.kind, self.run_id, self.data, self.created_at)
        return keys.which(message, self.mac)


@dataclass
class RunEntries:
    """What the ledger says about one run."""

    created: Entry | None = None
    created_key: str | None = None
    ended: list[Entry] = field(default_factory=list)
    purged: Entry | None = None
    archived: Entry | None = None


@dataclass
class LedgerReport:
    """A pass over the ledger: its problems, and what it says about each run."""

    problems: list[str] = field(default_factory=list)
    sealed: int = 0
    unsealed: int = 0
    head: str = GENESIS
    keyed: int = 0
    unkeyed: int = 0
    # Chain hash at each sealed n the caller asked about (anchors).
    hashes_at: dict[int, str] = field(default_factory=dict)
    runs: dict[str, RunEntries] = field(default_factory=dict)


def check_entries(
    entries: Iterable[Entry],
    keys: AuditKeys,
    head: tuple[int, str],
    *,
    want_hashes: frozenset[int] = frozenset(),
    partial: bool = False,
) -> LedgerReport:
    """Check the ledger: sealed entries first, in ``n`` order, then the unsealed ones.

    ``head`` is ``ledger_head``'s ``(n, hash)``. Every entry's MAC is checked under the
    keys given; the sealed chain is recomputed link by link. Once an entry is keyed,
    a later unkeyed one is a forgery by someone without the key.
    """
    report = LedgerReport()
    prev, expect = GENESIS, 1
    seen_keyed = seen_keyed_link = False
    hint: str | None = None
    for e in entries:
        kid = e.key_id(keys)
        where = f"ledger entry {e.n}" if e.n is not None else f"unsealed ledger entry {e.id}"
        what = f"({e.kind} of run {e.run_id})"
        if kid is None:
            report.problems.append(
                f"{where} {what} does not match its MAC under any key given: it was forged "
                "or edited"
                + ("" if keys else " (or the ledger is keyed: set PAUSEPOINT_AUDIT_KEY)")
            )
        elif kid == UNKEYED and seen_keyed:
            report.problems.append(
                f"{where} {what} is not keyed although earlier entries are: it was added "
                "by someone without the audit key"
            )
            kid = None
        elif kid == UNKEYED:
            report.unkeyed += 1
        else:
            seen_keyed = True
            report.keyed += 1
        if e.n is not None and partial:
            report.sealed += 1
        elif e.n is not None:
            if e.n != expect:
                report.problems.append(
                    f"ledger entry {expect} is missing (the next is {e.n}): entries were deleted"
                    if e.n > expect
                    else f"ledger entry {e.n} appears twice: an entry was inserted"
                )
                expect = e.n
            link_kid = keys.which(link_message(prev, e.n, e.mac), e.link or b"", hint)
            if link_kid is None or (link_kid == UNKEYED and seen_keyed_link):
                report.problems.append(
                    f"ledger entry {e.n} {what} does not follow entry {e.n - 1}: the ledger "
                    "was edited, cut or re-sealed there"
                )
            elif link_kid not in (None, UNKEYED):
                hint, seen_keyed_link = link_kid, True
            prev = (e.link or b"").hex()
            if e.n in want_hashes:
                report.hashes_at[e.n] = prev
            report.sealed += 1
            expect += 1
        else:
            report.unsealed += 1
        if kid is None:
            continue  # a forged entry says nothing about its run
        runs = report.runs.setdefault(e.run_id, RunEntries())
        if e.kind == CREATED:
            runs.created, runs.created_key = e, kid
        elif e.kind == ENDED:
            runs.ended.append(e)
        elif e.kind == PURGED_ENTRY:
            runs.purged = e
        elif e.kind == ARCHIVED:
            runs.archived = e
    head_n, head_hash = head
    report.head = prev
    if partial:
        return report
    if report.sealed != head_n:
        report.problems.append(
            f"the ledger's head says {head_n} sealed entries, {report.sealed} are there: "
            + ("entries were deleted" if report.sealed < head_n else "entries were added")
        )
    elif prev != head_hash:
        report.problems.append(
            "the ledger's head is not its last link: entries were edited or re-sealed"
        )
    return report
