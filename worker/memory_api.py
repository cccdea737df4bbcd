"""The HTTP API of agents' memories: list, search, write and forget.

    GET  /agents/{name}/memories?query=...&subject=...     search (best first) or list
    POST /agents/{name}/memories                            write one (producer)
    POST /agents/{name}/memories/forget                     erase a subject's (admin)
    GET  /agents/{name}/memories/erasures                   what was erased, by whom

Roles as for runs: any key reads, a producer writes, an admin erases.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Query
from pydantic import BaseModel, ConfigDict, Field

from pausepoint.persistence.errors import InvalidInput
from pausepoint.persistence.records import MEMORY_KINDS, NewMemory
from pausepoint.persistence.store.memory import MAX_CONTENT, MAX_PAGE
from pausepoint.tasks.runtime import Runtime
from pausepoint.worker.api import Caller
from pausepoint.worker.serialize import plain

Name = Annotated[str, Field(min_length=1, max_length=200)]


class NewMemoryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    content: str = Field(min_length=1, max_length=MAX_CONTENT)
    kind: str = Field("fact", description=f"one of: {', '.join(MEMORY_KINDS)}")
    subject: Name | None = None
    key: Name | None = Field(None, description="A newer memory with the same key supersedes.")
    importance: float | None = Field(None, ge=0, le=1)
    supersedes: int | None = Field(None, ge=1, description="The id of the memory it replaces.")


class Forget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subject: Name = Field(description="Whose memories are erased.")
    reason: str = Field("", max_length=2000, description="Why; kept with the erasure.")


def memory_view(memory: Any, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = plain(memory)
    out["current"] = memory.current
    out.update(extra)
    return out


def add_memory_routes(app: FastAPI, rt: Runtime) -> None:

    @app.get("/agents/{name}/memories", tags=["agents"])
    def memories(
        name: str,
        caller: Caller,
        query: Annotated[str | None, Query(max_length=2000)] = None,
        subject: Annotated[str | None, Query(max_length=200)] = None,
        kind: str | None = None,
        include_superseded: bool = False,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        before: Annotated[int | None, Query(ge=1)] = None,
    ) -> dict[str, Any]:
        """With `query`: the current memories that best fit it, best first (score,
        relevance, recency). Without: the agent's memories, newest first, a page at a
        time (`before` = the `next_before` of the page before)."""
        rt.store.get_agent(name)  # 404 for an agent that does not exist
        if kind is not None and kind not in MEMORY_KINDS:
            raise InvalidInput(f"unknown kind {kind!r}; one of: {', '.join(MEMORY_KINDS)}")
        if query is not None and query.strip():
            found = rt.store.recall(name, query, subject=subject, limit=limit)
            return {
                "query": query,
                "memories": [
                    memory_view(r.memory, score=r.score, relevance=r.relevance, recency=r.recency)
                    for r in found
                ],
            }
        page = rt.store.memories(
            name,
            subject=subject,
            kind=kind,
            include_superseded=include_superseded,
            before=before,
            limit=limit,
        )
        return {
            "memories": [memory_view(m) for m in page],
            "next_before": page[-1].id if len(page) == limit else None,
        }

    @app.post("/agents/{name}/memories", status_code=201, tags=["agents"])
    def remember(name: str, body: NewMemoryBody, caller: Caller) -> dict[str, Any]:
        """Write one memory for the agent (a newer one with the same subject and key
        supersedes the current one)."""
        caller.require("producer")
        memory = NewMemory(
            body.content,
            kind=body.kind,
            subject=body.subject,
            key=body.key,
            importance=body.importance,
            supersedes=body.supersedes,
        )
        return memory_view(rt.store.remember(name, memory, actor=caller.actor))

    @app.post("/agents/{name}/memories/forget", tags=["agents"])
    def forget(name: str, body: Forget, caller: Caller) -> dict[str, Any]:
        """Erase every memory of the agent about `subject`, recorded as an erasure."""
        caller.require("admin")
        erased = rt.store.forget(name, body.subject, actor=caller.actor, reason=body.reason)
        return {"agent": name, "subject": body.subject, "erased": erased}

    @app.get("/agents/{name}/memories/erasures", tags=["auditors"])
    def erasures(name: str, caller: Caller) -> list[dict[str, Any]]:
        rt.store.get_agent(name)
        return [plain(e) for e in rt.store.erasures(name)]
