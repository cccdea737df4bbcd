"""Retention: what old state goes, when, and how without ever losing a live run.

A :class:`Retention` holds a default :class:`RetentionPolicy` and per-workflow
overrides. One pass (:func:`collect`, ``pausepoint gc``, beat's daily task):

1. **prune**: a finished run keeps only its last ``keep_checkpoints`` checkpoints;
2. **purge**: a finished run older than ``delete_after_days`` loses its state
   (checkpoints, conversation, waits, early deliveries). The run row and its audit
   trail stay. It is marked first (``purge_state = 'pending'``, one short
   transaction with a ``purged`` event that lists what goes), and from then on
   every read of its state answers Gone; its rows are then deleted in short
   transactions and the mark becomes ``'done'``. A pass that is killed half-way
   leaves marked runs that the next pass finishes first;
3. **expire**: ``events_extra_days`` after that, its audit trail is written to a
   JSONL archive file (atomically, one file per run, so writing it twice gives the
   same file) and then the trail and the run row are deleted in one transaction;
4. **deliveries**: events that arrived for no run, older than ``delete_after_days``
   and older than every unfinished run (so no run that could still park on them);
5. on SQLite, ``VACUUM`` gives the space back to the file system.

A run that is not finished (queued, running, waiting, a live Agent session) or
is under legal hold is never touched; every check is made again under the row's
lock in the transaction that changes it, so a run that was resumed or held while
the pass ran is left alone. Each pass is recorded in the ``cleanups`` table, and
each run it changes gets an event in its own trail.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    update,
)

from pausepoint.persistence import queries
from pausepoint.persistence.audit import canonical, event_record
from pausepoint.persistence.errors import InvalidInput, StaleVersion
from pausepoint.persistence.ledger import ARCHIVED, PURGED_ENTRY, entry_row
from pausepoint.persistence.records import FINISHED, NewEvent, RunRecord
from pausepoint.persistence.store import Store
from pausepoint.persistence.tables import (
    checkpoints,
    cleanups,
    deliveries,
    events,
    ledger,
    messages,
    runs,
    summaries,
    waits,
)

Progress = Callable[[str, int, int], None]
"""``(phase, done, total)``, called as a pass goes."""

PENDING_PURGE = "pending"
PURGED = "done"
# Messages are deleted in ranges of this many per transaction.
MESSAGE_CHUNK = 5000


@dataclass(frozen=True)
class RetentionPolicy:
    """How long a finished run's state and trail are kept. ``None``: forever."""

    keep_checkpoints: int | None = None
    delete_after_days: float | None = None
    events_extra_days: float | None = None

    def __post_init__(self) -> None:
        if self.keep_checkpoints is not None and self.keep_checkpoints < 1:
            raise InvalidInput("keep_checkpoints must be at least 1 (the run's last state)")
        for name in ("delete_after_days", "events_extra_days"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InvalidInput(f"{name} cannot be negative")

    def override(self, changes: Mapping[str, Any]) -> RetentionPolicy:
        unknown = set(changes) - set(asdict(self))
        if unknown:
            raise InvalidInput(
                f"unknown retention setting(s) {sorted(unknown)}; known: {sorted(asdict(self))}"
            )
        return replace(self, **changes)


@dataclass(frozen=True)
class Retention:
    default: RetentionPolicy = field(default_factory=RetentionPolicy)
    workflows: Mapping[str, RetentionPolicy] = field(default_factory=dict)
    # Where audit trails are written before they are deleted; None: they are kept.
    archive_dir: Path | None = None
    # Agents' memories: any older than memory_days, and superseded or retracted ones
    # older than superseded_memory_days, are deleted. None: kept.
    memory_days: float | None = None
    superseded_memory_days: float | None = None

    def __post_init__(self) -> None:
        for name in ("memory_days", "superseded_memory_days"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InvalidInput(f"{name} cannot be negative")

    @classmethod
    def build(
        cls,
        default: RetentionPolicy,
        overrides: Mapping[str, Mapping[str, Any]],
        archive_dir: Path | str | None,
        *,
        memory_days: float | None = None,
        superseded_memory_days: float | None = None,
    ) -> Retention:
        return cls(
            default=default,
            workflows={name: default.override(o) for name, o in overrides.items()},
            archive_dir=Path(archive_dir) if archive_dir is not None else None,
            memory_days=memory_days,
            superseded_memory_days=superseded_memory_days,
        )

    def groups(self) -> Iterator[tuple[RetentionPolicy, ColumnElement[bool], str]]:
        """Each policy with the runs it governs (a WHERE clause) and a label."""
        for name, policy in self.workflows.items():
            yield policy, runs.c.workflow == name, name
        if self.workflows:
            yield self.default, runs.c.workflow.not_in(list(self.workflows)), "*"
        else:
            yield self.default, runs.c.workflow.is_not(None), "*"

    def describe(self) -> dict[str, Any]:
        return {
            "default": asdict(self.default),
            "workflows": {k: asdict(v) for k, v in self.workflows.items()},
            "archive_dir": str(self.archive_dir) if self.archive_dir else None,
            "memory_days": self.memory_days,
            "superseded_memory_days": self.superseded_memory_days,
        }


@dataclass
class GcReport:
    dry_run: bool
    cleanup_id: int | None = None
    runs_pruned: int = 0
    checkpoints_pruned: int = 0
    runs_purged: int = 0
    purges_finished: int = 0
    rows_purged: dict[str, int] = field(
        default_factory=lambda: {
            "checkpoints": 0,
            "messages": 0,
            "waits": 0,
            "deliveries": 0,
            "summaries": 0,
        }
    )
    memories_removed: int = 0
    runs_deleted: int = 0
    events_archived: int = 0
    archive_files: list[str] = field(default_factory=list)
    deliveries_removed: int = 0
    skipped: int = 0
    bytes_before: int | None = None
    bytes_after: int | None = None

    @property
    def removed_anything(self) -> bool:
        return bool(
            self.checkpoints_pruned
            or self.runs_purged
            or self.purges_finished
            or self.runs_deleted
            or self.deliveries_removed
            or self.memories_removed
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect(
    store: Store,
    retention: Retention,
    *,
    dry_run: bool = False,
    batch: int = 100,
    actor: str = "gc",
    progress: Progress | None = None,
    vacuum: bool = True,
) -> GcReport:
    """One retention pass over the whole store; see the module's docstring."""
    return _Collector(store, retention, dry_run, batch, actor, progress).run(vacuum=vacuum)


class _Collector:
    def __init__(
        self,
        store: Store,
        retention: Retention,
        dry_run: bool,
        batch: int,
        actor: str,
        progress: Progress | None,
    ) -> None:
        if batch < 1:
            raise InvalidInput("batch must be at least 1")
        self.store = store
        self.retention = retention
        self.dry_run = dry_run
        self.batch = batch
        self.actor = actor
        self.progress = progress or (lambda phase, done, total: None)
        self.now = store.clock()
        self.report = GcReport(dry_run=dry_run)

    def run(self, *, vacuum: bool) -> GcReport:
        sqlite = self.store.engine.dialect.name == "sqlite"
        if sqlite:
            self.report.bytes_before = self._sqlite_bytes()
        if not self.dry_run:
            with self.store.write() as conn:
                self.report.cleanup_id = int(
                    conn.execute(
                        insert(cleanups).values(
                            actor=self.actor,
                            status="running",
                            dry_run=False,
                            policy=self.retention.describe(),
                            removed={},
                            started_at=self.now,
                        )
                    ).inserted_primary_key[0]  # type: ignore[index]
                )
            # What an interrupted pass marked but did not finish comes first.
            self._finish_purges()
        for policy, where, label in self.retention.groups():
            if policy.keep_checkpoints is not None:
                self._prune(policy, where, label)
            if policy.delete_after_days is not None:
                self._purge(policy, where, label)
            if (
                policy.delete_after_days is not None
                and policy.events_extra_days is not None
                and self.retention.archive_dir is not None
            ):
                self._expire(policy, where, label)
        if self.retention.default.delete_after_days is not None:
            self._deliveries(self.retention.default.delete_after_days)
        r = self.retention
        if r.memory_days is not None or r.superseded_memory_days is not None:
            self.progress("memories", 0, 1)
            self.report.memories_removed = self.store.prune_memories(
                older_than=_days_before(self.now, self.retention.memory_days),
                superseded_older_than=_days_before(self.now, self.retention.superseded_memory_days),
                dry_run=self.dry_run,
            )
            self.progress("memories", 1, 1)
        if not self.dry_run:
            if sqlite and vacuum and self.report.removed_anything:
                self.progress("vacuum", 0, 1)
                self._vacuum()
                self.progress("vacuum", 1, 1)
            if sqlite:
                self.report.bytes_after = self._sqlite_bytes()
            with self.store.write() as conn:
                conn.execute(
                    update(cleanups)
                    .where(cleanups.c.id == self.report.cleanup_id)
                    .values(
                        status="done",
                        removed=json.loads(canonical(self.report.as_dict())),
                        finished_at=self.store.clock(),
                    )
                )
        return self.report

    # ------------------------------------------------------------- helpers

    def _finished(self, where: ColumnElement[bool]) -> ColumnElement[bool]:
        return and_(
            where,
            runs.c.status.in_(sorted(FINISHED)),
            runs.c.legal_hold.is_(False),
            runs.c.purge_state.is_(None),
        )

    def _batches(self, query: Any, phase: str, total: int) -> Iterator[list[str]]:
        """Ids from ``query`` (ordered by id), ``batch`` at a time, by keyset."""
        after = ""
        done = 0
        self.progress(phase, 0, total)
        while True:
            with self.store.read() as conn:
                ids = [
                    str(i)
                    for i in conn.execute(
                        query.where(runs.c.id > after).order_by(runs.c.id).limit(self.batch)
                    ).scalars()
                ]
            if not ids:
                return
            yield ids
            after = ids[-1]
            done += len(ids)
            self.progress(phase, min(done, total), total)

    def _count(self, query: Any) -> int:
        with self.store.read() as conn:
            return int(
                conn.execute(select(func.count()).select_from(query.subquery())).scalar_one()
            )

    def _record(
        self,
        conn: Connection,
        run: RunRecord,
        kind: str,
        data: dict[str, Any],
        changes: dict[str, Any] | None = None,
    ) -> None:
        """The run's own trail says what this pass removed from it."""
        self.store._apply(
            conn,
            run,
            now=self.store.clock(),
            actor=self.actor,
            expect_status=sorted(FINISHED),
            changes=changes or {},
            events=[NewEvent(kind, data)],
        )

    def _ledger(self, conn: Connection, run_id: str, kind: str, **data: Any) -> None:
        """The store-wide ledger's entry for what this pass did to a run's state or trail."""
        row = conn.execute(
            select(runs.c.event_count, runs.c.event_hash).where(runs.c.id == run_id)
        ).one()
        data = {"count": int(row.event_count), "head": str(row.event_hash), **data}
        conn.execute(
            insert(ledger).values(**entry_row(self.store.audit_keys, kind, run_id, data, self.now))
        )

    def _still_eligible(self, conn: Connection, run_id: str) -> RunRecord | None:
        run = queries.find_run(conn, run_id)
        if (
            run is None
            or run.status not in FINISHED
            or run.legal_hold
            or run.purge_state is not None
        ):
            self.report.skipped += 1
            return None
        return run

    # ---------------------------------------------------------------- prune

    def _prune(self, policy: RetentionPolicy, where: ColumnElement[bool], label: str) -> None:
        keep = policy.keep_checkpoints
        assert keep is not None
        old = and_(checkpoints.c.run_id == runs.c.id, checkpoints.c.seq <= runs.c.seq - keep)
        if policy.delete_after_days is not None:
            # Runs this pass purges lose all their checkpoints: no need to prune them first.
            where = and_(
                where, runs.c.finished_at >= self.now - timedelta(days=policy.delete_after_days)
            )
        candidates = select(runs.c.id).where(self._finished(where), exists().where(old))
        total = self._count(candidates)
        if self.dry_run:
            with self.store.read() as conn:
                rows = conn.execute(
                    select(func.count())
                    .select_from(checkpoints.join(runs, checkpoints.c.run_id == runs.c.id))
                    .where(self._finished(where), checkpoints.c.seq <= runs.c.seq - keep)
                ).scalar_one()
            self.report.runs_pruned += total
            self.report.checkpoints_pruned += int(rows)
            return
        for ids in self._batches(candidates, f"prune ({label})", total):
            with self.store.write() as conn:
                for run_id in ids:
                    run = self._still_eligible(conn, run_id)
                    if run is None:
                        continue
                    removed = conn.execute(
                        delete(checkpoints).where(
                            checkpoints.c.run_id == run.id, checkpoints.c.seq <= run.seq - keep
                        )
                    ).rowcount
                    if not removed:
                        continue
                    self._record(
                        conn,
                        run,
                        "checkpoints_pruned",
                        {"removed": removed, "kept_from_seq": run.seq - keep + 1, "policy": label},
                    )
                    self.report.runs_pruned += 1
                    self.report.checkpoints_pruned += removed

    # ---------------------------------------------------------------- purge

    def _purge(self, policy: RetentionPolicy, where: ColumnElement[bool], label: str) -> None:
        days = policy.delete_after_days
        assert days is not None
        cutoff = self.now - timedelta(days=days)
        candidates = select(runs.c.id).where(self._finished(where), runs.c.finished_at < cutoff)
        total = self._count(candidates)
        if self.dry_run:
            self.report.runs_purged += total
            with self.store.read() as conn:
                for name, table in _STATE_TABLES:
                    self.report.rows_purged[name] += int(
                        conn.execute(
                            select(func.count())
                            .select_from(table)
                            .where(table.c.run_id.in_(candidates))
                        ).scalar_one()
                    )
            return
        keep_events = (
            None
            if policy.events_extra_days is None or self.retention.archive_dir is None
            else policy.events_extra_days
        )
        for ids in self._batches(candidates, f"purge ({label})", total):
            marked: list[str] = []
            with self.store.write() as conn:
                for run_id in ids:
                    run = self._still_eligible(conn, run_id)
                    if run is None or run.finished_at is None or run.finished_at >= cutoff:
                        continue
                    counts = {
                        name: int(
                            conn.execute(
                                select(func.count())
                                .select_from(table)
                                .where(table.c.run_id == run.id)
                            ).scalar_one()
                        )
                        for name, table in _STATE_TABLES
                    }
                    until = (
                        None
                        if keep_events is None
                        else (run.finished_at + timedelta(days=days + keep_events)).isoformat()
                    )
                    self._record(
                        conn,
                        run,
                        "purged",
                        {
                            "removed": counts,
                            "policy": label,
                            "delete_after_days": days,
                            "events_kept_until": until,
                        },
                        changes={"purged_at": self.now, "purge_state": PENDING_PURGE},
                    )
                    self._ledger(conn, run.id, PURGED_ENTRY)
                    marked.append(run.id)
                    for name, n in counts.items():
                        self.report.rows_purged[name] += n
            self.report.runs_purged += len(marked)
            for run_id in marked:
                self._delete_state(run_id)

    def _finish_purges(self) -> None:
        pending = select(runs.c.id).where(runs.c.purge_state == PENDING_PURGE)
        total = self._count(pending)
        if not total:
            return
        for ids in self._batches(pending, "finish interrupted purges", total):
            for run_id in ids:
                self._delete_state(run_id)
                self.report.purges_finished += 1

    def _delete_state(self, run_id: str) -> None:
        """Delete a marked run's state in short transactions, then mark it done."""
        with self.store.read() as conn:
            top = conn.execute(
                select(func.max(messages.c.idx)).where(messages.c.run_id == run_id)
            ).scalar()
        start = 0
        while top is not None and start <= top:
            with self.store.write() as conn:
                conn.execute(
                    delete(messages).where(
                        messages.c.run_id == run_id,
                        messages.c.idx >= start,
                        messages.c.idx < start + MESSAGE_CHUNK,
                    )
                )
            start += MESSAGE_CHUNK
        with self.store.write() as conn:
            for _, table in _STATE_TABLES:
                conn.execute(delete(table).where(table.c.run_id == run_id))
            conn.execute(
                update(runs)
                .where(runs.c.id == run_id, runs.c.purge_state == PENDING_PURGE)
                .values(purge_state=PURGED)
            )

    # --------------------------------------------------------------- expire

    def _expire(self, policy: RetentionPolicy, where: ColumnElement[bool], label: str) -> None:
        assert policy.delete_after_days is not None and policy.events_extra_days is not None
        assert self.retention.archive_dir is not None
        cutoff = self.now - timedelta(days=policy.delete_after_days + policy.events_extra_days)
        candidates = select(runs.c.id).where(
            where,
            runs.c.purge_state == PURGED,
            runs.c.legal_hold.is_(False),
            runs.c.finished_at < cutoff,
        )
        if self.dry_run:
            # Also the runs this pass would purge first (each would get a "purged" event).
            unpurged = and_(runs.c.purge_state.is_(None), runs.c.status.in_(sorted(FINISHED)))
            would = select(runs.c.id).where(
                where,
                runs.c.legal_hold.is_(False),
                runs.c.finished_at < cutoff,
                or_(runs.c.purge_state == PURGED, unpurged),
            )
            self.report.runs_deleted += self._count(would)
            with self.store.read() as conn:
                self.report.events_archived += int(
                    conn.execute(
                        select(func.count()).select_from(events).where(events.c.run_id.in_(would))
                    ).scalar_one()
                ) + self._count(would.where(unpurged))
            return
        total = self._count(candidates)
        for ids in self._batches(candidates, f"archive and delete trails ({label})", total):
            for run_id in ids:
                try:
                    self._archive_and_delete(run_id, cutoff)
                except StaleVersion:
                    self.report.skipped += 1

    def _archive_and_delete(self, run_id: str, cutoff: datetime) -> None:
        assert self.retention.archive_dir is not None
        with self.store.read() as conn:
            run = queries.find_run(conn, run_id)
            if run is None or run.legal_hold or run.purge_state != PURGED:
                return
            trail = queries.list_events(conn, run_id)
        if run.finished_at is None or run.finished_at >= cutoff:
            return
        path = archive_path(self.retention.archive_dir, run)
        header = {
            "run_id": run.id,
            "agent": run.agent_name,
            "workflow": run.workflow,
            "status": run.status,
            "created_at": run.created_at.isoformat(),
            "finished_at": run.finished_at.isoformat(),
            "parent_run_id": run.parent_run_id,
            "event_count": run.event_count,
            "event_hash": run.event_hash,
            "archived_by": self.actor,
        }
        lines = [canonical({"run": header}) + "\n"]
        lines += [canonical(event_record(e)) + "\n" for e in trail]
        content = "".join(lines)
        _write_atomically(path, content)
        with self.store.write() as conn:
            # The ledger says where the trail went: the one reason a trail may be deleted
            # (the trail's delete trigger asks for this entry).
            self._ledger(
                conn,
                run_id,
                ARCHIVED,
                file=str(path.relative_to(self.retention.archive_dir)),
                sha256=hashlib.sha256(content.encode()).hexdigest(),
            )
            conn.execute(delete(events).where(events.c.run_id == run_id))
            gone = conn.execute(
                delete(runs).where(
                    runs.c.id == run_id,
                    runs.c.purge_state == PURGED,
                    runs.c.legal_hold.is_(False),
                    runs.c.version == run.version,
                )
            ).rowcount
            if gone != 1:
                # Held (or otherwise changed) since we read it: keep everything.
                raise StaleVersion(run_id, run.version)
        self.report.runs_deleted += 1
        self.report.events_archived += len(trail)
        self.report.archive_files.append(str(path))

    # ----------------------------------------------------------- deliveries

    def _deliveries(self, days: float) -> None:
        cutoff = self.now - timedelta(days=days)
        with self.store.read() as conn:
            oldest_live = conn.execute(
                select(func.min(runs.c.created_at)).where(runs.c.status.not_in(sorted(FINISHED)))
            ).scalar()
        if oldest_live is not None and oldest_live < cutoff:
            cutoff = oldest_live
        old = and_(deliveries.c.run_id.is_(None), deliveries.c.received_at < cutoff)
        if self.dry_run:
            with self.store.read() as conn:
                self.report.deliveries_removed += int(
                    conn.execute(
                        select(func.count()).select_from(deliveries).where(old)
                    ).scalar_one()
                )
            return
        while True:
            with self.store.write() as conn:
                ids = list(
                    conn.execute(
                        select(deliveries.c.id).where(old).order_by(deliveries.c.id).limit(1000)
                    ).scalars()
                )
                if not ids:
                    return
                conn.execute(delete(deliveries).where(deliveries.c.id.in_(ids)))
            self.report.deliveries_removed += len(ids)

    # --------------------------------------------------------------- SQLite

    def _sqlite_bytes(self) -> int:
        with self.store.engine.connect() as conn:
            pages = conn.execute(text("PRAGMA page_count")).scalar_one()
            size = conn.execute(text("PRAGMA page_size")).scalar_one()
        return int(pages) * int(size)

    def _vacuum(self) -> None:
        # VACUUM cannot run inside a transaction: use the driver's connection, which our
        # engine leaves in autocommit (it issues BEGIN itself, and only in transactions).
        raw = self.store.engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute("VACUUM")
            cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            cur.close()
        finally:
            raw.close()


_STATE_TABLES = (
    ("checkpoints", checkpoints),
    ("messages", messages),
    ("waits", waits),
    ("deliveries", deliveries),
    ("summaries", summaries),
)


def _days_before(now: datetime, days: float | None) -> datetime | None:
    return None if days is None else now - timedelta(days=days)


def pending_purges(store: Store) -> int:
    """Runs an interrupted pass marked for purging and did not finish."""
    with store.read() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(runs).where(runs.c.purge_state == PENDING_PURGE)
            ).scalar_one()
        )


def archive_path(root: Path, run: RunRecord) -> Path:
    finished = run.finished_at or run.created_at
    return root / finished.strftime("%Y-%m") / f"{run.id}.jsonl"


def _write_atomically(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_archive(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An archive file's run header and its events, as written."""
    header: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            if "run" in record and len(record) == 1:
                header = record["run"]
            else:
                records.append(record)
    return header, records
