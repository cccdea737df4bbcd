"""The store's core: engine, clock, dialect, transactions, and :meth:`StoreCore._apply`.

Every transition of a run goes through ``_apply``, which compare-and-swaps the run's
``version`` (and, where it matters, its status and lease owner), then appends the
transition's messages, checkpoint, audit events and wait in the same transaction.
A stale or duplicate call matches no row, changes nothing and raises
:class:`StaleVersion`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import InterfaceError, OperationalError

from pausepoint.persistence.audit import event_hash
from pausepoint.persistence.errors import (
    Conflict,
    InvalidInput,
    StaleVersion,
)
from pausepoint.persistence.jsonvalues import check_json
from pausepoint.persistence.records import (
    PENDING,
    QUEUED,
    Checkpoint,
    NewEvent,
    NewMessage,
    RunRecord,
    SweepReport,
    WaitRecord,
    WaitSpec,
)
from pausepoint.persistence.segments import append as append_segments
from pausepoint.persistence.store.dialect import Dialect, dialect_for
from pausepoint.persistence.tables import (
    checkpoints,
    runs,
    waits,
)
from pausepoint.persistence.tables import events as events_table
from pausepoint.persistence.tables import messages as messages_table

Clock = Callable[[], datetime]
log = logging.getLogger("pausepoint.store")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_run_id() -> str:
    return uuid.uuid4().hex


# Reject what the store could not round-trip, before anything is written (the store's
# name for the one check every JSON input passes).
ensure_json = check_json


@contextmanager
def skipping(kind: str, key: object, report: SweepReport) -> Iterator[None]:
    """One sweeper row's work: a failure is logged with its id and counted, not raised.

    Losing the database itself is not one row's problem: that still ends the pass.
    """
    try:
        yield
    except (OperationalError, InterfaceError):
        raise
    except Exception:
        log.exception("sweeper: skipped %s %s, which it could not handle", kind, key)
        report.skipped.append(f"{kind} {key}")


class StoreCore:
    """The engine, the clock, the dialect, transactions and the one way a run changes.

    Every room of the store (agents, runs, steps, approvals, ...) is a subclass of
    this; :class:`persistence.store.Store` is all of them together.
    """

    def __init__(self, engine: Engine, *, clock: Clock = utcnow, lease_seconds: float = 300.0):
        self.engine = engine
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.dialect: Dialect = dialect_for(engine)

    def ensure_schema(self) -> None:
        from pausepoint.persistence.migrate import upgrade

        upgrade(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads, as this database does them best (see the dialects)."""
        with self.dialect.reading(self.engine) as conn:
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def _apply(
        self,
        conn: Connection | None,
        run: RunRecord,
        *,
        now: datetime,
        actor: str,
        changes: dict[str, Any],
        expect_status: Sequence[str] | None = None,
        expect_owner: str | None = None,
        messages: Sequence[NewMessage] = (),
        state: dict[str, Any] | None = None,
        checkpoint_step: str | None = None,
        events: Sequence[NewEvent] = (),
        wait: WaitSpec | None = None,
        wait_status: str = PENDING,
        wait_outcome: Any = None,
        reset_to: Checkpoint | None = None,
    ) -> RunRecord:
        """Move ``run`` one version forward with ``changes``, or raise StaleVersion.

        ``reset_to`` (a rollback): the new checkpoint's conversation is that checkpoint's,
        instead of the run's latest one. The CAS UPDATE comes first, so nothing is
        appended unless it matched.

        ``conn`` None (Postgres only, no wait): the whole transition is ONE statement in
        autocommit, its appends in data-modifying CTEs that read the UPDATE's RETURNING,
        so they insert nothing when the CAS did not match (see :mod:`persistence.store.postgres`).
        """
        values = dict(changes)
        values["version"] = run.version + 1
        values["updated_at"] = now
        seq = run.seq
        if state is not None:
            seq = run.seq + 1
            values["seq"] = seq
        elif messages:
            raise InvalidInput("messages are appended with a checkpoint")
        base_len, base_segments = (
            (reset_to.history_len, reset_to.segments)
            if reset_to is not None
            else (run.history_len, run.segments)
        )
        first_idx = run.message_count
        values["history_len"] = base_len + len(messages)
        values["message_count"] = first_idx + len(messages)
        values["segments"] = append_segments(base_segments, base_len, first_idx, len(messages))
        event_rows, count, head = chain(run.id, run.event_hash, run.event_count, events, actor, now)
        values["event_count"] = count
        values["event_hash"] = head

        if conn is None:
            if wait is not None or not self.dialect.commits_in_one_statement:
                raise ValueError("this transition needs a transaction")
            self.dialect.commit_in_one_statement(
                self.engine,
                run,
                values,
                expect_status=expect_status,
                expect_owner=expect_owner,
                new_messages=[(first_idx + i, m) for i, m in enumerate(messages)],
                seq=seq,
                checkpoint=None
                if state is None
                else {
                    "step": checkpoint_step,
                    "state": state,
                    "history_len": values["history_len"],
                    "segments": values["segments"],
                },
                event_rows=event_rows,
                now=now,
            )
            return replace(run, **values)
        stmt = update(runs).where(runs.c.id == run.id, runs.c.version == run.version)
        if expect_status is not None:
            stmt = stmt.where(runs.c.status.in_(list(expect_status)))
        if expect_owner is not None:
            stmt = stmt.where(runs.c.lease_owner == expect_owner)
        if conn.execute(stmt.values(**values)).rowcount != 1:
            found = conn.execute(select(runs.c.version).where(runs.c.id == run.id)).scalar()
            raise StaleVersion(run.id, run.version, found)

        if messages:
            conn.execute(
                insert(messages_table),
                [
                    {
                        "run_id": run.id,
                        "idx": first_idx + i,
                        "role": m.role,
                        "content": m.content,
                        "data": m.data or None,
                        "seq": seq,
                        "created_at": now,
                    }
                    for i, m in enumerate(messages)
                ],
            )
        if state is not None:
            conn.execute(
                insert(checkpoints).values(
                    run_id=run.id,
                    seq=seq,
                    step=checkpoint_step,
                    state=state,
                    history_len=values["history_len"],
                    segments=values["segments"],
                    created_at=now,
                )
            )
        if event_rows:
            conn.execute(insert(events_table), event_rows)
        if wait is not None:
            conn.execute(
                insert(waits).values(
                    run_id=run.id,
                    seq=seq,
                    kind=wait.kind,
                    status=wait_status,
                    resume_step=wait.resume_step,
                    approver_group=wait.approver_group,
                    prompt=wait.prompt,
                    deadline=wait.deadline,
                    on_timeout=wait.on_timeout,
                    default_outcome=ensure_json(wait.default_outcome, "a wait's default outcome"),
                    token_hash=wait.token_hash,
                    escalate_to=wait.escalate_to,
                    escalate_after=wait.escalate_after,
                    source=wait.source,
                    event_name=wait.event_name,
                    match_key=wait.match_key,
                    resource=wait.resource,
                    outcome=wait_outcome,
                    decided_by=None if wait_status == PENDING else actor,
                    decided_at=None if wait_status == PENDING else now,
                    created_at=now,
                )
            )
        return replace(run, **values)

    def _close_wait(
        self,
        conn: Connection,
        wait: WaitRecord,
        status: str,
        outcome: Any,
        actor: str,
        now: datetime,
    ) -> None:
        result = conn.execute(
            update(waits)
            .where(waits.c.id == wait.id, waits.c.status == PENDING)
            .values(status=status, outcome=outcome, decided_by=actor, decided_at=now)
        )
        if result.rowcount != 1:
            raise Conflict(f"the {wait.kind} wait of run {wait.run_id} was already decided")


def resume_changes(wait: WaitRecord, now: datetime) -> dict[str, Any]:
    return {"status": QUEUED, "step": wait.resume_step, "due_at": now, "published_at": now}


def chain(
    run_id: str,
    prev_hash: str,
    count: int,
    new_events: Sequence[NewEvent],
    actor: str,
    now: datetime,
) -> tuple[list[dict[str, Any]], int, str]:
    """Rows for ``new_events``, each hashed over the one before it."""
    rows = []
    head = prev_hash
    for event in new_events:
        count += 1
        data = ensure_json(dict(event.data), "event data")
        digest = event_hash(head, run_id, count, event.kind, actor, data, now)
        rows.append(
            {
                "run_id": run_id,
                "n": count,
                "kind": event.kind,
                "actor": actor,
                "data": data,
                "created_at": now,
                "hash": bytes.fromhex(digest),
            }
        )
        head = digest
    return rows, count, head
