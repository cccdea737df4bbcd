"""Read-only queries. Each takes an open connection: the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, select

from persistence.errors import AgentNotFound, InvalidInput, NotFound, RunNotFound
from persistence.records import (
    PENDING,
    SESSION_WORKFLOW,
    AgentRecord,
    Checkpoint,
    Event,
    Message,
    RunRecord,
    WaitRecord,
)
from persistence.tables import agents, checkpoints, events, messages, runs, waits


def get_agent(conn: Connection, name: str) -> AgentRecord:
    row = conn.execute(select(agents).where(agents.c.name == name)).mappings().first()
    if row is None:
        raise AgentNotFound(name)
    return AgentRecord.from_row(row)


def list_agents(conn: Connection) -> list[AgentRecord]:
    rows = conn.execute(select(agents).order_by(agents.c.name)).mappings()
    return [AgentRecord.from_row(r) for r in rows]


def get_run(conn: Connection, run_id: str, *, for_update: bool = False) -> RunRecord:
    query = select(runs).where(runs.c.id == run_id)
    if for_update:
        # A row lock on Postgres; SQLite's IMMEDIATE transaction already holds the write lock.
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    if row is None:
        raise RunNotFound(run_id)
    return RunRecord.from_row(row)


def resolve_run_id(conn: Connection, prefix: str) -> str:
    """The one run id starting with ``prefix`` (at least 6 characters), as people type them."""
    prefix = prefix.strip().lower()
    if len(prefix) < 6 or any(c not in "0123456789abcdef" for c in prefix):
        raise RunNotFound(prefix)
    if len(prefix) == 32:
        return prefix
    ids = (
        conn.execute(
            select(runs.c.id).where(runs.c.id.startswith(prefix, autoescape=True)).limit(2)
        )
        .scalars()
        .all()
    )
    if not ids:
        raise RunNotFound(prefix)
    if len(ids) > 1:
        raise InvalidInput(f"run id prefix {prefix!r} is ambiguous; give more characters")
    return str(ids[0])


def find_run(conn: Connection, run_id: str) -> RunRecord | None:
    row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
    return RunRecord.from_row(row) if row is not None else None


def run_by_idempotency_key(conn: Connection, key: str) -> RunRecord | None:
    row = conn.execute(select(runs).where(runs.c.idempotency_key == key)).mappings().first()
    return RunRecord.from_row(row) if row is not None else None


def list_runs(
    conn: Connection,
    *,
    status: str | Sequence[str] | None = None,
    agent: str | None = None,
    workflow: str | None = None,
    limit: int = 100,
    include_sessions: bool = True,
) -> list[RunRecord]:
    query = select(runs).order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit)
    if isinstance(status, str):
        query = query.where(runs.c.status == status)
    elif status is not None:
        query = query.where(runs.c.status.in_(list(status)))
    if agent is not None:
        query = query.where(runs.c.agent_name == agent)
    if workflow is not None:
        query = query.where(runs.c.workflow == workflow)
    if not include_sessions:
        query = query.where(runs.c.workflow != SESSION_WORKFLOW)
    return [RunRecord.from_row(r) for r in conn.execute(query).mappings()]


def latest_checkpoint(conn: Connection, run: RunRecord) -> Checkpoint:
    return get_checkpoint(conn, run.id, run.seq)


def get_checkpoint(conn: Connection, run_id: str, seq: int) -> Checkpoint:
    row = (
        conn.execute(
            select(checkpoints).where(checkpoints.c.run_id == run_id, checkpoints.c.seq == seq)
        )
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound(f"run {run_id} has no checkpoint {seq}")
    return Checkpoint.from_row(row)


def list_checkpoints(conn: Connection, run_id: str) -> list[Checkpoint]:
    rows = conn.execute(
        select(checkpoints).where(checkpoints.c.run_id == run_id).order_by(checkpoints.c.seq)
    ).mappings()
    return [Checkpoint.from_row(r) for r in rows]


def history(
    conn: Connection,
    run_id: str,
    *,
    start: int = 0,
    stop: int | None = None,
) -> list[Message]:
    """Messages ``[start, stop)`` of a run's conversation, in order."""
    query = (
        select(messages)
        .where(messages.c.run_id == run_id, messages.c.idx >= start)
        .order_by(messages.c.idx)
    )
    if stop is not None:
        query = query.where(messages.c.idx < stop)
    return [Message.from_row(r) for r in conn.execute(query).mappings()]


def list_events(conn: Connection, run_id: str) -> list[Event]:
    rows = conn.execute(
        select(events).where(events.c.run_id == run_id).order_by(events.c.n)
    ).mappings()
    return [Event.from_row(r) for r in rows]


def list_waits(
    conn: Connection, run_id: str | None = None, *, status: str | None = None
) -> list[WaitRecord]:
    query = select(waits).order_by(waits.c.id)
    if run_id is not None:
        query = query.where(waits.c.run_id == run_id)
    if status is not None:
        query = query.where(waits.c.status == status)
    return [WaitRecord.from_row(r) for r in conn.execute(query).mappings()]


def pending_wait(conn: Connection, run: RunRecord) -> WaitRecord | None:
    """The wait a waiting run is parked on (the one opened at its latest checkpoint)."""
    row = (
        conn.execute(
            select(waits).where(
                waits.c.run_id == run.id, waits.c.seq == run.seq, waits.c.status == PENDING
            )
        )
        .mappings()
        .first()
    )
    return WaitRecord.from_row(row) if row is not None else None


def resumed_wait(conn: Connection, run: RunRecord) -> WaitRecord | None:
    """The wait the run's current step resumes from, if it was parked at its latest checkpoint."""
    row = (
        conn.execute(
            select(waits).where(
                waits.c.run_id == run.id, waits.c.seq == run.seq, waits.c.status != PENDING
            )
        )
        .mappings()
        .first()
    )
    return WaitRecord.from_row(row) if row is not None else None
