"""The seed API's sessions: a plain-Python ``Agent`` checkpointed as a run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from pausepoint.persistence import queries
from pausepoint.persistence.records import (
    ACTIVE,
    SESSION_WORKFLOW,
    NewEvent,
    NewMemory,
    NewMessage,
    NewSummary,
    RunRecord,
)
from pausepoint.persistence.store.core import ensure_json
from pausepoint.persistence.store.memory import write_memories
from pausepoint.persistence.store.runs import RunsRoom
from pausepoint.persistence.store.summaries import summary_event, write_summary
from pausepoint.persistence.tables import (
    runs,
)


class SessionsRoom(RunsRoom):
    def open_session(self, agent_name: str, actor: str, *, fresh: bool = False) -> RunRecord:
        """The agent's latest script session, created on first use (or when ``fresh``)."""
        with self.read() as conn:
            queries.get_agent(conn, agent_name)
            row = (
                None
                if fresh
                else (
                    conn.execute(
                        select(runs)
                        .where(runs.c.agent_name == agent_name, runs.c.workflow == SESSION_WORKFLOW)
                        .order_by(runs.c.created_at.desc())
                        .limit(1)
                    )
                    .mappings()
                    .first()
                )
            )
        if row is not None:
            return RunRecord.from_row(row)
        run, _ = self.create_run(
            agent_name=agent_name,
            workflow=SESSION_WORKFLOW,
            first_step=None,
            actor=actor,
            status=ACTIVE,
        )
        return run

    def save_session(
        self,
        run: RunRecord,
        *,
        actor: str,
        status: str,
        task: str,
        state: dict[str, Any],
        messages: Sequence[NewMessage] = (),
        events: Sequence[NewEvent] = (),
        memories: Sequence[NewMemory] = (),
        summary: NewSummary | None = None,
    ) -> RunRecord:
        """Checkpoint a script session; StaleVersion if another process saved since ``run``.

        ``memories`` and ``summary`` are written in the same transaction, as a step's are."""
        state = ensure_json(state, "agent state")
        events = list(events)
        now = self.clock()
        with self.write() as conn:
            if summary is not None:
                write_summary(conn, run.id, run.seq + 1, summary, now)
                events.append(NewEvent("compacted", summary_event(summary)))
            events.extend(
                write_memories(
                    conn,
                    run.agent_name,
                    memories,
                    run_id=run.id,
                    seq=run.seq + 1,
                    now=now,
                    actor=actor,
                )
            )
            return self._apply(
                conn,
                run,
                now=now,
                actor=actor,
                changes={"status": status, "task": task},
                messages=messages,
                state=state,
                checkpoint_step=None,
                events=events,
            )
