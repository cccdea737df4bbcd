"""Reads of runs, checkpoints, conversations, trails and waits (each its own snapshot)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from pausepoint.persistence import queries
from pausepoint.persistence.errors import (
    Gone,
)
from pausepoint.persistence.jsonvalues import check_seq
from pausepoint.persistence.records import (
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
            run = readable(queries.get_run(conn, run_id))
            if at is None:
                length, segments = run.history_len, run.segments
            else:
                cp = queries.get_checkpoint(conn, run_id, at)
                length, segments = cp.history_len, cp.segments
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
