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
    NewMessage,
    RunRecord,
)
from pausepoint.persistence.store.core import ensure_json
from pausepoint.persistence.store.runs import RunsRoom
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
    ) -> RunRecord:
        """Checkpoint a script session; StaleVersion if another process saved since ``run``."""
        state = ensure_json(state, "agent state")
        with self.write() as conn:
            return self._apply(
                conn,
                run,
                now=self.clock(),
                actor=actor,
                changes={"status": status, "task": task},
                messages=messages,
                state=state,
                checkpoint_step=None,
                events=events,
            )
