"""Agents: who runs are for (persona, instruction, strategy, model settings)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select, update

from pausepoint.persistence import queries
from pausepoint.persistence.errors import (
    InvalidInput,
)
from pausepoint.persistence.jsonvalues import check_text
from pausepoint.persistence.records import (
    AgentRecord,
)
from pausepoint.persistence.store.core import StoreCore, ensure_json
from pausepoint.persistence.tables import (
    agents,
)

# Persona, instruction and strategy go into every model call's system prompt.
MAX_AGENT_TEXT = 50_000


class AgentsRoom(StoreCore):
    def save_agent(
        self,
        name: str,
        *,
        persona: str | None = None,
        instruction: str | None = None,
        strategy: str | None = None,
        model: dict[str, Any] | None = None,
    ) -> AgentRecord:
        """Create the agent, or update the fields given; returns it as stored."""
        if not name or len(name) > 200 or name.strip() != name:
            raise InvalidInput(f"bad agent name {name!r}: 1-200 characters, no outer spaces")
        if model is not None:
            ensure_json(model, "model settings")
        check_text(name, "the agent name")
        for what, value in (
            ("persona", persona),
            ("instruction", instruction),
            ("strategy", strategy),
        ):
            check_text(value, f"the agent's {what}", limit=MAX_AGENT_TEXT)
        now = self.clock()
        given = {
            k: v
            for k, v in {
                "persona": persona,
                "instruction": instruction,
                "strategy": strategy,
                "model": model,
            }.items()
            if v is not None
        }
        with self.write() as conn:
            exists = conn.execute(select(agents.c.name).where(agents.c.name == name)).first()
            if exists is None:
                conn.execute(
                    insert(agents).values(
                        name=name,
                        persona=given.get("persona", ""),
                        instruction=given.get("instruction", ""),
                        strategy=given.get("strategy", ""),
                        model=given.get("model", {}),
                        created_at=now,
                        updated_at=now,
                    )
                )
            elif given:
                conn.execute(
                    update(agents).where(agents.c.name == name).values(**given, updated_at=now)
                )
            return queries.get_agent(conn, name)

    def get_agent(self, name: str) -> AgentRecord:
        with self.read() as conn:
            return queries.get_agent(conn, name)

    def list_agents(self) -> list[AgentRecord]:
        with self.read() as conn:
            return queries.list_agents(conn)
