"""Reads of runs, checkpoints, conversations, trails and waits (each its own snapshot).

A run of 20,000 messages is read a page at a time: the ``*_page`` reads, :meth:`tail`
and :meth:`timeline_rows` each read the rows they return (and one or two more), by
the primary keys ``(run_id, n)``, ``(run_id, seq)`` and ``(run_id, idx)``; only
:meth:`events`, :meth:`checkpoints` and an unbounded :meth:`history` read a run whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, select

from pausepoint.persistence import queries
from pausepoint.persistence.errors import (
    Gone,
)
from pausepoint.persistence.jsonvalues import check_seq
from pausepoint.persistence.records import (
    PENDING,
    Checkpoint,
    Event,
    Message,
    RunRecord,
    WaitRecord,
)
from pausepoint.persistence.store.core import StoreCore
from pausepoint.persistence.tables import (
    runs,
)

# Events read per query by the reads that walk a stretch of the trail.
EVENT_BATCH = 1000


@dataclass(frozen=True)
class RunTail:
    """The latest of a run, read in one snapshot: its row, latest checkpoint (None when
    retention removed its state), the last messages of its conversation, its pending
    waits and the last events of its trail."""

    run: RunRecord
    checkpoint: Checkpoint | None
    history: list[Message]
    waits: list[WaitRecord]
    events: list[Event]


@dataclass(frozen=True)
class TimelineRows:
    """A page of a run's checkpoints with what a timeline needs around them, in one
    snapshot: the checkpoint before the page (what the first one changed), the trail's
    events from after that one up to the page's last, and how many checkpoints the run
    has."""

    run: RunRecord
    previous: Checkpoint | None
    checkpoints: list[Checkpoint]
    events: list[Event]
    total: int


class ReadsRoom(StoreCore):
    def get_run(self, run_id: str) -> RunRecord:
        with self.read() as conn:
            return queries.get_run(conn, run_id)

    def resolve_run_id(self, prefix: str) -> str:
        with self.read() as conn:
            return queries.resolve_run_id(conn, prefix)

    def list_runs(self, **filters: Any) -> list[RunRecord]:
        with self.read() as conn:
            return queries.list_runs(conn, **filters)

    def checkpoint(self, run_id: str, seq: int | None = None) -> Checkpoint:
        check_seq(seq)
        with self.read() as conn:
            run = readable(queries.get_run(conn, run_id))
            if seq is None:
                return queries.latest_checkpoint(conn, run)
            return queries.get_checkpoint(conn, run_id, seq)

    def checkpoints(self, run_id: str) -> list[Checkpoint]:
        with self.read() as conn:
            readable(queries.get_run(conn, run_id))
            return queries.list_checkpoints(conn, run_id)

    def history(
        self, run_id: str, *, start: int = 0, stop: int | None = None, at: int | None = None
    ) -> list[Message]:
        """Messages ``[start, stop)`` of the run's conversation, as of its latest
        checkpoint or, with ``at``, as of checkpoint ``at``."""
        with self.read() as conn:
            length, segments = _conversation_at(conn, run_id, at)
            return queries.history(
                conn, run_id, length=length, segments=segments, start=start, stop=stop
            )

    def conversation(
        self, checkpoint: Checkpoint, *, start: int = 0, stop: int | None = None
    ) -> list[Message]:
        """Messages ``[start, stop)`` of ``checkpoint``'s conversation (a step's history)."""
        with self.read() as conn:
            return queries.history(
                conn,
                checkpoint.run_id,
                length=checkpoint.history_len,
                segments=checkpoint.segments,
                start=start,
                stop=stop,
            )

    def count_runs(self) -> int:
        with self.read() as conn:
            return int(conn.execute(select(func.count()).select_from(runs)).scalar_one())

    def forks(self, run_id: str) -> list[RunRecord]:
        with self.read() as conn:
            return queries.forks(conn, run_id)

    def events(self, run_id: str) -> list[Event]:
        with self.read() as conn:
            queries.get_run(conn, run_id)
            return queries.list_events(conn, run_id)

    def waits(self, run_id: str | None = None, *, status: str | None = None) -> list[WaitRecord]:
        with self.read() as conn:
            return queries.list_waits(conn, run_id, status=status)

    # ------------------------------------------------------------ pages of a run

    def events_page(
        self, run_id: str, *, after: int | None = None, before: int | None = None, limit: int
    ) -> list[Event]:
        """At most ``limit`` events of the run's trail, in order: the first numbered above
        ``after``, or the last below ``before``, or (neither) the first of all."""
        with self.read() as conn:
            queries.get_run(conn, run_id)
            if before is not None:
                return queries.events_before(conn, run_id, before, limit)
            return queries.events_after(conn, run_id, after or 0, limit)

    def iter_events(self, run_id: str, *, batch: int = EVENT_BATCH) -> Iterator[Event]:
        """The run's whole trail as it is now, read ``batch`` events at a time (an export
        never holds a long trail in memory). Raises at once for an unknown run."""
        with self.read() as conn:
            last = queries.get_run(conn, run_id).event_count

        def walk() -> Iterator[Event]:
            after = 0
            while after < last:
                with self.read() as conn:
                    page = queries.events_after(conn, run_id, after, min(batch, last - after))
                if not page:
                    return
                # The first of a batch chains to the last of the one before: the same
                # prev_hash as one read of the whole trail gives.
                yield from page
                after = page[-1].n

        return walk()

    def messages_page(
        self,
        run_id: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int,
        at: int | None = None,
    ) -> tuple[list[Message], int]:
        """At most ``limit`` messages of the run's conversation (as of checkpoint ``at``,
        else its latest), numbered as it numbers them: the first above ``after``, the last
        below ``before``, or the first of all; and how many the conversation has."""
        check_seq(at)
        with self.read() as conn:
            length, segments = _conversation_at(conn, run_id, at)
            if before is not None:
                stop = min(before, length)
                start = max(0, stop - limit)
            else:
                start = 0 if after is None else after + 1
                stop = start + limit
            page = queries.history(
                conn, run_id, length=length, segments=segments, start=start, stop=stop
            )
            return page, length

    def tail(self, run_id: str, *, messages: int | None, events: int | None) -> RunTail:
        """The run's latest state with its last ``messages`` messages and ``events``
        events (None: all of them), in one snapshot."""
        with self.snapshot() as conn:
            run = queries.get_run(conn, run_id)
            if events is None:
                trail = queries.list_events(conn, run_id)
            else:
                trail = queries.events_before(conn, run_id, run.event_count + 1, events)
            if run.purge_state is not None:
                return RunTail(run, None, [], [], trail)
            length = run.history_len
            start = 0 if messages is None else max(0, length - messages)
            history = queries.history(
                conn, run_id, length=length, segments=run.segments, start=start
            )
            return RunTail(
                run,
                queries.latest_checkpoint(conn, run),
                history,
                queries.list_waits(conn, run_id, status=PENDING),
                trail,
            )

    def checkpoints_page(
        self, run_id: str, *, after: int | None = None, before: int | None = None, limit: int
    ) -> list[Checkpoint]:
        """At most ``limit`` of the run's checkpoints, in order: the first numbered above
        ``after``, the last below ``before``, or the first of all."""
        with self.read() as conn:
            readable(queries.get_run(conn, run_id))
            return _checkpoints(conn, run_id, after, before, limit)

    def previous_checkpoint(self, run_id: str, seq: int) -> Checkpoint | None:
        """The run's checkpoint before ``seq``, if it has one (retention may have pruned
        ``seq - 1``)."""
        check_seq(seq)
        with self.read() as conn:
            readable(queries.get_run(conn, run_id))
            return queries.previous_checkpoint(conn, run_id, seq)

    def count_checkpoints(self, run_id: str) -> int:
        with self.read() as conn:
            readable(queries.get_run(conn, run_id))
            return queries.count_checkpoints(conn, run_id)

    def timeline_rows(
        self, run_id: str, *, after: int | None = None, before: int | None = None, limit: int
    ) -> TimelineRows:
        """A page of checkpoints (as :meth:`checkpoints_page`) and, in the same snapshot,
        what a timeline of them needs (:class:`TimelineRows`)."""
        with self.snapshot() as conn:
            run = readable(queries.get_run(conn, run_id))
            page = _checkpoints(conn, run_id, after, before, limit)
            total = queries.count_checkpoints(conn, run_id)
            if not page:
                return TimelineRows(run, None, [], [], total)
            previous = queries.previous_checkpoint(conn, run_id, page[0].seq)
            since = None if previous is None else previous.created_at
            trail = _events_during(conn, run, since, page[-1].created_at)
            return TimelineRows(run, previous, page, trail, total)

    def events_during(
        self, run_id: str, since: datetime | None, until: datetime, *, inclusive: bool = False
    ) -> list[Event]:
        """The run's events recorded after ``since`` (or at it, ``inclusive``; None: from
        the first) up to ``until``, in order: a stretch of the trail found by time."""
        with self.read() as conn:
            run = queries.get_run(conn, run_id)
            return _events_during(conn, run, since, until, inclusive=inclusive)


def purged_message(run: RunRecord) -> str:
    when = run.purged_at.date().isoformat() if run.purged_at else "?"
    return (
        f"run {run.id}'s state was removed by the retention policy on {when}; "
        "its audit trail remains (`pausepoint audit export`, GET /runs/{id}/events)"
    )


def readable(run: RunRecord) -> RunRecord:
    """The run, if its checkpoints and conversation are still there."""
    if run.purge_state is not None:
        raise Gone(purged_message(run))
    return run


def _checkpoints(
    conn: Connection, run_id: str, after: int | None, before: int | None, limit: int
) -> list[Checkpoint]:
    if before is not None:
        return queries.checkpoints_before(conn, run_id, before, limit)
    return queries.checkpoints_after(conn, run_id, -1 if after is None else after, limit)


def _events_during(
    conn: Connection,
    run: RunRecord,
    since: datetime | None,
    until: datetime,
    *,
    inclusive: bool = False,
) -> list[Event]:
    """Events after ``since`` (at it too, ``inclusive``) up to ``until``: found by
    :func:`queries.first_event_after`, then read in batches until one is past ``until``."""
    after = 0
    if since is not None:
        edge = since - timedelta(microseconds=1) if inclusive else since
        after = queries.first_event_after(conn, run.id, edge, run.event_count) - 1
    found: list[Event] = []
    while True:
        batch = queries.events_after(conn, run.id, after, EVENT_BATCH)
        for e in batch:
            if e.created_at > until:
                return found
            found.append(e)
        if len(batch) < EVENT_BATCH:
            return found
        after = batch[-1].n


def _conversation_at(conn: Connection, run_id: str, at: int | None) -> tuple[int, Any]:
    """The length and segments of the run's conversation, as of checkpoint ``at`` (None:
    its latest)."""
    run = readable(queries.get_run(conn, run_id))
    if at is None:
        return run.history_len, run.segments
    cp = queries.get_checkpoint(conn, run_id, at)
    return cp.history_len, cp.segments
