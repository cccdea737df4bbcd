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
from pausepoint.persistence.audit_keys import AuditKeys
from pausepoint.persistence.digests import (
    checkpoint_digest,
    messages_digest,
    run_digest,
    wait_digest,
)
from pausepoint.persistence.errors import (
    Conflict,
    InvalidInput,
    StaleVersion,
)
from pausepoint.persistence.jsonvalues import check_json
from pausepoint.persistence.ledger import ENDED, entry_row
from pausepoint.persistence.records import (
    FINISHED,
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
    ledger,
    runs,
    waits,
)
from pausepoint.persistence.tables import events as events_table
from pausepoint.persistence.tables import messages as messages_table

Clock = Callable[[], datetime]
log = logging.getLogger("pausepoint.store")
# conn.info: digests of the waits this transaction changed, for its transition's event.
WAITS_CHANGED = "pausepoint_waits_changed"


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

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Clock = utcnow,
        lease_seconds: float = 300.0,
        audit_keys: AuditKeys | None = None,
    ):
        self.engine = engine
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.dialect: Dialect = dialect_for(engine)
        # The trail's key, from the environment unless given: never from the store.
        self.audit_keys = AuditKeys.from_env() if audit_keys is None else audit_keys

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
            try:
                yield conn
            finally:
                conn.info.pop(WAITS_CHANGED, None)

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A connection whose every read sees one snapshot of the store (verification)."""
        with self.dialect.snapshot(self.engine) as conn:
            yield conn

    def _wait_changed(self, conn: Connection, wait_id: int) -> None:
        """Digest a wait this transaction changed, for the transition's event."""
        row = conn.execute(select(waits).where(waits.c.id == wait_id)).mappings().one()
        noted = conn.info.setdefault(WAITS_CHANGED, [])
        noted.append([row["seq"], row["kind"], wait_digest(self.audit_keys, row)])

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
        keys = self.audit_keys
        digests: dict[str, Any] = {}
        if state is not None:
            digests["checkpoint"] = [
                seq,
                checkpoint_digest(
                    keys,
                    {
                        "seq": seq,
                        "step": checkpoint_step,
                        "state": state,
                        "history_len": values["history_len"],
                        "segments": values["segments"],
                    },
                ),
            ]
        if messages:
            digests["messages"] = [
                first_idx,
                len(messages),
                messages_digest(
                    keys,
                    [
                        {
                            "idx": first_idx + i,
                            "role": m.role,
                            "content": m.content,
                            "data": m.data or None,
                        }
                        for i, m in enumerate(messages)
                    ],
                ),
            ]
        wait_row = (
            None
            if wait is None
            else self._wait_row(run, seq, wait, wait_status, wait_outcome, actor, now)
        )
        changed = list(conn.info.pop(WAITS_CHANGED, [])) if conn is not None else []
        if wait_row is not None:
            changed.append([seq, wait.kind, wait_digest(keys, wait_row)])  # type: ignore[union-attr]
        if changed:
            digests["waits"] = changed
        ends = changes.get("status") in FINISHED
        if ends:
            digests["run"] = run_digest(
                keys,
                {
                    "status": changes["status"],
                    "result": values.get("result", run.result),
                    "error": values.get("error", run.error),
                    "seq": seq,
                },
            )
        events = with_digests(events, digests)
        event_rows, count, head = chain(
            keys, run.id, run.event_hash, run.event_count, events, actor, now
        )
        values["event_count"] = count
        values["event_hash"] = head
        ledger_rows = (
            [
                entry_row(
                    keys,
                    ENDED,
                    run.id,
                    {"status": changes["status"], "count": count, "head": head},
                    now,
                )
            ]
            if ends
            else []
        )

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
                ledger_rows=ledger_rows,
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
        if wait_row is not None:
            conn.execute(insert(waits).values(**wait_row))
        if ledger_rows:
            conn.execute(insert(ledger), ledger_rows)
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
        self._wait_changed(conn, wait.id)

    @staticmethod
    def _wait_row(
        run: RunRecord,
        seq: int,
        wait: WaitSpec,
        status: str,
        outcome: Any,
        actor: str,
        now: datetime,
    ) -> dict[str, Any]:
        return {
            "run_id": run.id,
            "seq": seq,
            "kind": wait.kind,
            "status": status,
            "resume_step": wait.resume_step,
            "approver_group": wait.approver_group,
            "prompt": wait.prompt,
            "deadline": wait.deadline,
            "on_timeout": wait.on_timeout,
            "default_outcome": ensure_json(wait.default_outcome, "a wait's default outcome"),
            "token_hash": wait.token_hash,
            "escalate_to": wait.escalate_to,
            "escalate_after": wait.escalate_after,
            "source": wait.source,
            "event_name": wait.event_name,
            "match_key": wait.match_key,
            "resource": wait.resource,
            "outcome": outcome,
            "decided_by": None if status == PENDING else actor,
            "decided_at": None if status == PENDING else now,
            "created_at": now,
        }


def resume_changes(wait: WaitRecord, now: datetime) -> dict[str, Any]:
    return {"status": QUEUED, "step": wait.resume_step, "due_at": now, "published_at": now}


def with_digests(events: Sequence[NewEvent], digests: dict[str, Any]) -> Sequence[NewEvent]:
    """``events`` with the transition's digests on the last one (persistence/digests.py)."""
    if not digests:
        return events
    if not events:
        # Every transition that writes state says so in the trail.
        return [NewEvent("wrote", {"digests": digests})]
    last = events[-1]
    return [*events[:-1], NewEvent(last.kind, {**dict(last.data), "digests": digests})]


def chain(
    keys: AuditKeys,
    run_id: str,
    prev_hash: str,
    count: int,
    new_events: Sequence[NewEvent],
    actor: str,
    now: datetime,
) -> tuple[list[dict[str, Any]], int, str]:
    """Rows for ``new_events``, each hashed (keyed) over the one before it."""
    rows = []
    head = prev_hash
    for event in new_events:
        count += 1
        data = ensure_json(dict(event.data), "event data")
        digest = event_hash(keys, head, run_id, count, event.kind, actor, data, now)
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
