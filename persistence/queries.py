"""Read-only queries. Each takes an open connection: the caller owns the transaction."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, and_, func, or_, select

from pausepoint.persistence.audit import GENESIS
from pausepoint.persistence.errors import AgentNotFound, InvalidInput, NotFound, RunNotFound
from pausepoint.persistence.jsonvalues import is_unreadable
from pausepoint.persistence.records import (
    PENDING,
    QUEUED,
    RUNNING,
    SESSION_WORKFLOW,
    AgentRecord,
    Checkpoint,
    Event,
    Message,
    RunRecord,
    WaitRecord,
)
from pausepoint.persistence.segments import Segments, physical
from pausepoint.persistence.tables import (
    agents,
    checkpoints,
    events,
    messages,
    resources,
    runs,
    waits,
)

log = logging.getLogger("pausepoint.store")


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
    return _noting_unreadable([RunRecord.from_row(r) for r in conn.execute(query).mappings()])


def _noting_unreadable(found: list[RunRecord]) -> list[RunRecord]:
    """A batch of runs, each row that holds undecodable JSON logged with its run id.

    Such a row is listed with ``{"unreadable": why}`` in place of the value: it stays
    findable (and fixable, or removable) by an operator, and the batch goes on.
    """
    bad = [r.id for r in found if is_unreadable(r.input) or is_unreadable(r.result)]
    for run_id in bad:
        log.warning("run %s: its stored input or result cannot be read", run_id)
    if bad:
        log.warning("%d of %d runs read have undecodable JSON", len(bad), len(found))
    return found


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
    length: int,
    segments: Segments | None = None,
    start: int = 0,
    stop: int | None = None,
) -> list[Message]:
    """Messages ``[start, stop)`` of a conversation of ``length`` messages laid out in
    ``segments`` (see :mod:`persistence.segments`), in order, numbered as the
    conversation numbers them."""
    stop = length if stop is None else min(stop, length)
    start = max(0, start)
    if start >= stop:
        return []
    ranges = physical(segments, length, start, stop)
    query = (
        select(messages)
        .where(
            messages.c.run_id == run_id,
            or_(*(and_(messages.c.idx >= a, messages.c.idx < b) for a, b in ranges)),
        )
        .order_by(messages.c.idx)
    )
    rows = conn.execute(query).mappings()
    return [replace(Message.from_row(r), idx=start + i) for i, r in enumerate(rows)]


def pending_waits(conn: Connection, run_id: str) -> list[WaitRecord]:
    rows = conn.execute(
        select(waits).where(waits.c.run_id == run_id, waits.c.status == PENDING)
    ).mappings()
    return [WaitRecord.from_row(r) for r in rows]


def wait_opened_at(conn: Connection, run_id: str, seq: int) -> WaitRecord | None:
    """The wait the run parked on at checkpoint ``seq`` (whatever became of it), if any."""
    row = (
        conn.execute(select(waits).where(waits.c.run_id == run_id, waits.c.seq == seq))
        .mappings()
        .first()
    )
    return WaitRecord.from_row(row) if row is not None else None


def forks(conn: Connection, run_id: str) -> list[RunRecord]:
    rows = conn.execute(
        select(runs).where(runs.c.parent_run_id == run_id).order_by(runs.c.created_at)
    ).mappings()
    return [RunRecord.from_row(r) for r in rows]


_EVENT_COLUMNS = (
    events.c.n,
    events.c.kind,
    events.c.actor,
    events.c.data,
    events.c.created_at,
    events.c.hash,
)


def _chained(run_id: str, rows: Iterable[Any], prev: str) -> list[Event]:
    """Events from rows in ``n`` order; ``prev`` is the hash of the row before the first."""
    trail: list[Event] = []
    for n, kind, actor, data, created_at, stored in rows:
        # The stored hash is 32 raw bytes; the one before it is the previous row's.
        digest = bytes(stored).hex()
        trail.append(Event(run_id, n, kind, actor, data, created_at, prev, digest))
        prev = digest
    return trail


def list_events(conn: Connection, run_id: str) -> list[Event]:
    rows = conn.execute(
        select(*_EVENT_COLUMNS).where(events.c.run_id == run_id).order_by(events.c.n)
    )
    return _chained(run_id, rows, GENESIS)


# ------------------------------------------- pages of one run (bounded reads)
# Each is a range of a primary key, (run_id, n) or (run_id, seq): it reads the rows of
# the page and at most one more, however long the run.


def _hash_before(conn: Connection, run_id: str, n: int) -> str:
    """The hash of the run's last event numbered ``n`` or less (GENESIS if none)."""
    if n < 1:
        return GENESIS
    stored = conn.execute(
        select(events.c.hash)
        .where(events.c.run_id == run_id, events.c.n <= n)
        .order_by(events.c.n.desc())
        .limit(1)
    ).scalar()
    return GENESIS if stored is None else bytes(stored).hex()


def events_after(conn: Connection, run_id: str, after: int, limit: int) -> list[Event]:
    """The run's first ``limit`` events numbered above ``after``, in order."""
    rows = conn.execute(
        select(*_EVENT_COLUMNS)
        .where(events.c.run_id == run_id, events.c.n > after)
        .order_by(events.c.n)
        .limit(limit)
    ).all()
    return _chained(run_id, rows, _hash_before(conn, run_id, after) if rows else GENESIS)


def events_before(conn: Connection, run_id: str, before: int, limit: int) -> list[Event]:
    """The run's last ``limit`` events numbered below ``before``, in order."""
    rows = conn.execute(
        select(*_EVENT_COLUMNS)
        .where(events.c.run_id == run_id, events.c.n < before)
        .order_by(events.c.n.desc())
        .limit(limit + 1)
    ).all()[::-1]
    # One row more than the page: the one before its first, whose hash the first chains to.
    if len(rows) > limit:
        return _chained(run_id, rows[1:], bytes(rows[0].hash).hex())
    return _chained(run_id, rows, GENESIS)


# Event numbers probed per query by first_event_after: 20,000 events take three queries.
PROBES = 32


def first_event_after(conn: Connection, run_id: str, when: datetime, last: int) -> int:
    """The number of the run's first event recorded after ``when`` (``last + 1`` when
    none is), for a trail of ``last`` events whose times grow with their numbers.

    There is no index on the events' time (a parked run would pay for it in every
    event), so this searches the primary key: each query reads the times of PROBES
    events spread over the range still in question, and the range shrinks PROBES-fold.
    """
    lo, hi = 1, last + 1  # events below lo were recorded by ``when``; hi is after, or the end
    while lo < hi:
        step = max(1, -(-(hi - lo) // PROBES))
        probes = list(range(lo, hi, step))
        times = dict(
            conn.execute(
                select(events.c.n, events.c.created_at).where(
                    events.c.run_id == run_id, events.c.n.in_(probes)
                )
            ).all()
        )
        top = hi
        for n in probes:
            at = times.get(n)
            if at is not None and at > when:
                top = n
                break
            lo = n + 1  # a missing event counts as recorded by then: the search goes on
        hi = min(top, hi)
        if step == 1:
            return min(lo, hi)
    return lo


def checkpoints_after(conn: Connection, run_id: str, after: int, limit: int) -> list[Checkpoint]:
    """The run's first ``limit`` checkpoints numbered above ``after``, in order."""
    rows = conn.execute(
        select(checkpoints)
        .where(checkpoints.c.run_id == run_id, checkpoints.c.seq > after)
        .order_by(checkpoints.c.seq)
        .limit(limit)
    ).mappings()
    return [Checkpoint.from_row(r) for r in rows]


def checkpoints_before(conn: Connection, run_id: str, before: int, limit: int) -> list[Checkpoint]:
    """The run's last ``limit`` checkpoints numbered below ``before``, in order."""
    rows = conn.execute(
        select(checkpoints)
        .where(checkpoints.c.run_id == run_id, checkpoints.c.seq < before)
        .order_by(checkpoints.c.seq.desc())
        .limit(limit)
    ).mappings()
    return [Checkpoint.from_row(r) for r in reversed(list(rows))]


def previous_checkpoint(conn: Connection, run_id: str, seq: int) -> Checkpoint | None:
    """The run's checkpoint before ``seq`` (not always ``seq - 1``: retention prunes)."""
    found = checkpoints_before(conn, run_id, seq, 1)
    return found[0] if found else None


def count_checkpoints(conn: Connection, run_id: str) -> int:
    return int(
        conn.execute(
            select(func.count()).select_from(checkpoints).where(checkpoints.c.run_id == run_id)
        ).scalar_one()
    )


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


# ------------------------------------------------- the sweeper's reads (Store.sweep)
# Statements, so that bench/parked.py times and plans exactly what the sweeper runs.


def due_runs(now: datetime, lost_before: datetime, limit: int) -> Select[Any]:
    """Queued runs that are due and whose message was not sent since ``lost_before``."""
    return (
        select(runs.c.id)
        .where(
            runs.c.status == QUEUED,
            runs.c.due_at <= now,
            or_(runs.c.published_at.is_(None), runs.c.published_at <= lost_before),
        )
        .order_by(runs.c.due_at)
        .limit(limit)
    )


def expired_leases(now: datetime, limit: int) -> Select[Any]:
    """Running runs whose worker stopped renewing the lease."""
    return (
        select(runs.c.id)
        .where(runs.c.status == RUNNING, runs.c.lease_expires_at <= now)
        .limit(limit)
    )


def due_deadlines(now: datetime, limit: int) -> Select[Any]:
    """Pending waits whose deadline passed, oldest first (by ix_waits_status_deadline)."""
    return (
        select(waits.c.id)
        .where(waits.c.status == PENDING, waits.c.deadline <= now)
        .order_by(waits.c.deadline)
        .limit(limit)
    )


def resources_with_waiters(names: Sequence[str] | None = None) -> Select[Any]:
    """Resources some pending wait waits for: from the (few) resources, each probing its
    waiters by index, as a scan of pending waits would cost every sweep in proportion
    to all parked runs."""
    waiting = (
        select(waits.c.id)
        .where(waits.c.resource == resources.c.name, waits.c.status == PENDING)
        .exists()
    )
    query = select(resources.c.name).where(waiting)
    if names is not None:
        query = query.where(resources.c.name.in_(list(names)))
    return query
