"""Verifying trails, one run or the whole store, and sealing the ledger.

A run is verified in one snapshot (:meth:`StoreCore.snapshot`): its row, trail, state and
ledger entries as of one instant, so a run that is still committing steps verifies.
The store is verified ledger first (one pass, entries in chain order), then run by run,
and last the runs the ledger knows of that are gone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import Connection, bindparam, func, select, update

from pausepoint.persistence import queries
from pausepoint.persistence.audit import Finding
from pausepoint.persistence.errors import NotFound
from pausepoint.persistence.ledger import (
    HEAD_ID,
    Entry,
    LedgerReport,
    RunEntries,
    check_entries,
    link,
)
from pausepoint.persistence.store.core import StoreCore
from pausepoint.persistence.tables import ledger, ledger_head, runs
from pausepoint.persistence.trail import RunAudit, audit_run

SEAL_BATCH = 5000


@dataclass
class StoreAudit:
    """A whole store's verdict."""

    ledger: LedgerReport
    runs: list[RunAudit] = field(default_factory=list)
    # Runs the ledger knows were created, that are gone without an archive entry.
    missing: list[Finding] = field(default_factory=list)

    @property
    def failed(self) -> list[RunAudit]:
        return [r for r in self.runs if not r.ok]

    @property
    def ok(self) -> bool:
        return not (self.ledger.problems or self.failed or self.missing)


class TrailRoom(StoreCore):
    # ------------------------------------------------------------------ seal

    def seal_ledger(self, *, limit: int = SEAL_BATCH) -> int:
        """Chain the ledger entries not sealed yet, in id order; how many were sealed.

        Writers never wait on this: they insert entries; only sealers share the head
        row, and a sealer that loses the race to another changes nothing.
        """
        with self.write() as conn:
            head = conn.execute(
                select(ledger_head.c.n, ledger_head.c.hash).where(ledger_head.c.id == HEAD_ID)
            ).one()
            rows = conn.execute(
                select(ledger.c.id, ledger.c.mac)
                .where(ledger.c.n.is_(None))
                .order_by(ledger.c.id)
                .limit(limit)
            ).all()
            if not rows:
                return 0
            n, prev = int(head.n), str(head.hash)
            links = []
            for entry_id, mac in rows:
                n += 1
                made = link(self.audit_keys, prev, n, bytes(mac))
                links.append({"i": entry_id, "n_": n, "l_": made})
                prev = made.hex()
            moved = conn.execute(
                update(ledger_head)
                .where(ledger_head.c.id == HEAD_ID, ledger_head.c.n == head.n)
                .values(n=n, hash=prev, sealed_at=self.clock())
            ).rowcount
            if moved != 1:
                conn.rollback()
                return 0
            conn.execute(
                update(ledger)
                .where(ledger.c.id == bindparam("i"), ledger.c.n.is_(None))
                .values(n=bindparam("n_"), link=bindparam("l_")),
                links,
            )
        return len(rows)

    def seal_all(self) -> int:
        total = 0
        while sealed := self.seal_ledger():
            total += sealed
        return total

    def ledger_head(self) -> tuple[int, str]:
        with self.read() as conn:
            row = conn.execute(
                select(ledger_head.c.n, ledger_head.c.hash).where(ledger_head.c.id == HEAD_ID)
            ).one()
        return int(row.n), str(row.hash)

    # ---------------------------------------------------------------- verify

    def audit(self, run_id: str) -> RunAudit:
        """One run's audit, in one snapshot (see :mod:`persistence.trail`)."""
        with self.snapshot() as conn:
            run = queries.get_run(conn, run_id)
            return audit_run(conn, run, self.audit_keys, self._entries_of(conn, run.id))

    def verify(self, run_id: str) -> Finding | None:
        """The first thing found wrong with a run's trail or what it binds, or None."""
        return self.audit(run_id).first

    def _entries_of(self, conn: Connection, run_id: str) -> RunEntries:
        rows = conn.execute(
            select(ledger).where(ledger.c.run_id == run_id).order_by(ledger.c.id)
        ).mappings()
        report = check_entries(
            (Entry.from_row(r) for r in rows), self.audit_keys, (0, ""), partial=True
        )
        return report.runs.get(run_id, RunEntries())

    def ledger_entries(self, run_id: str) -> RunEntries:
        """What the ledger says about one run (MACs checked, not the chain)."""
        with self.read() as conn:
            return self._entries_of(conn, run_id)

    def check_ledger(self, *, want_hashes: frozenset[int] = frozenset()) -> LedgerReport:
        """The whole ledger, in one snapshot: sealed entries in chain order, then the rest."""
        with self.snapshot() as conn:
            head = conn.execute(
                select(ledger_head.c.n, ledger_head.c.hash).where(ledger_head.c.id == HEAD_ID)
            ).one()
            sealed = conn.execute(
                select(ledger).where(ledger.c.n.isnot(None)).order_by(ledger.c.n)
            ).mappings()
            unsealed = conn.execute(
                select(ledger).where(ledger.c.n.is_(None)).order_by(ledger.c.id)
            ).mappings()
            entries = (Entry.from_row(r) for part in (sealed, unsealed) for r in part)
            return check_entries(
                entries, self.audit_keys, (int(head.n), str(head.hash)), want_hashes=want_hashes
            )

    def verify_all(self, *, batch: int = 500) -> Iterator[tuple[str, Finding | None]]:
        """Every run's first finding, run by run (each in its own snapshot)."""
        for audit in self.audit_runs(batch=batch):
            yield audit.run_id, audit.first

    def audit_runs(
        self, *, batch: int = 500, ledger_report: LedgerReport | None = None
    ) -> Iterator[RunAudit]:
        after = ""
        while True:
            with self.read() as conn:
                ids = list(
                    conn.execute(
                        select(runs.c.id).where(runs.c.id > after).order_by(runs.c.id).limit(batch)
                    ).scalars()
                )
            if not ids:
                return
            for run_id in ids:
                try:
                    yield self.audit(run_id)
                except NotFound:
                    continue  # deleted by retention meanwhile
            after = ids[-1]

    def audit_store(
        self, *, progress: Callable[[int], None] | None = None, seal: bool = True
    ) -> StoreAudit:
        """The ledger, every run, and the runs that are gone (``progress``: per run)."""
        if seal:
            self.seal_all()
        report = StoreAudit(self.check_ledger())
        seen: set[str] = set()
        for audit in self.audit_runs():
            seen.add(audit.run_id)
            report.runs.append(audit)
            if progress is not None:
                progress(1)
        for run_id, entries in report.ledger.runs.items():
            if run_id in seen or entries.created is None or entries.archived is not None:
                continue
            # Archived (or created) after the ledger was read: ask again, now.
            with self.snapshot() as conn:
                again = self._entries_of(conn, run_id)
                exists = queries.find_run(conn, run_id) is not None
            if exists or again.archived is not None:
                continue
            at = entries.created.created_at.isoformat(timespec="seconds")
            report.missing.append(
                Finding(
                    run_id,
                    0,
                    f"the ledger recorded the run's creation at {at}, and the run is gone with "
                    "no archive entry: it was deleted behind Pausepoint's back",
                )
            )
        return report

    def count_ledger(self) -> int:
        with self.read() as conn:
            return int(conn.execute(select(func.count()).select_from(ledger)).scalar_one())
