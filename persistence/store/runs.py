"""Starting runs: a run row, its checkpoint 0 and its ``created`` event, idempotently."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert
from sqlalchemy.exc import IntegrityError

from pausepoint.persistence import queries
from pausepoint.persistence.audit_keys import AuditKeys
from pausepoint.persistence.digests import checkpoint_digest, messages_digest
from pausepoint.persistence.errors import (
    Conflict,
    InvalidInput,
)
from pausepoint.persistence.jsonvalues import check_text
from pausepoint.persistence.ledger import CREATED, entry_row
from pausepoint.persistence.records import (
    QUEUED,
    Message,
    NewEvent,
    RunRecord,
)
from pausepoint.persistence.store.core import (
    StoreCore,
    chain,
    ensure_json,
    new_run_id,
    with_digests,
)
from pausepoint.persistence.tables import (
    checkpoints,
    ledger,
    runs,
)
from pausepoint.persistence.tables import events as events_table
from pausepoint.persistence.tables import messages as messages_table

# A run's task is read by people (the approval page) and sent to the model on every call:
# 100,000 characters is far more than a task needs and far less than an inbox can carry.
MAX_TASK = 100_000


class RunsRoom(StoreCore):
    def create_run(
        self,
        *,
        agent_name: str,
        workflow: str,
        first_step: str | None,
        actor: str,
        task: str = "",
        input: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        status: str = QUEUED,
        state: dict[str, Any] | None = None,
    ) -> tuple[RunRecord, bool]:
        """Insert a run, its checkpoint 0 and its ``created`` event in one transaction.

        Returns ``(run, created)``: with an ``idempotency_key`` already used, the
        existing run and ``False``, and nothing is written.
        """
        input = ensure_json(dict(input or {}), "run input")
        state = ensure_json(dict(state or {}), "run state")
        check_text(task, "a run's task", limit=MAX_TASK)
        check_text(actor, "the actor", limit=200)
        check_text(workflow, "the workflow name", limit=200)
        check_text(idempotency_key, "an idempotency key")
        if idempotency_key is not None and not 0 < len(idempotency_key) <= 200:
            raise InvalidInput("an idempotency key must be 1-200 characters")
        try:
            with self.write() as conn:
                if idempotency_key is not None:
                    existing = queries.run_by_idempotency_key(conn, idempotency_key)
                    if existing is not None:
                        same_request(existing, agent_name, workflow, task, input)
                        return existing, False
                queries.get_agent(conn, agent_name)
                now = self.clock()
                run = insert_run(
                    conn,
                    keys=self.audit_keys,
                    now=now,
                    actor=actor,
                    agent_name=agent_name,
                    workflow=workflow,
                    task=task,
                    input=input,
                    status=status,
                    step=first_step,
                    state=state,
                    idempotency_key=idempotency_key,
                    events=[
                        NewEvent(
                            "created",
                            {
                                "workflow": workflow,
                                "agent": agent_name,
                                "step": first_step,
                                "task": task,
                            },
                        )
                    ],
                )
                return run, True
        except IntegrityError:
            if idempotency_key is None:
                raise
            # Lost a race with a producer using the same key: theirs is the run.
            with self.read() as conn:
                existing = queries.run_by_idempotency_key(conn, idempotency_key)
            if existing is None:
                raise
            same_request(existing, agent_name, workflow, task, input)
            return existing, False


def insert_run(
    conn: Connection,
    *,
    keys: AuditKeys,
    now: datetime,
    actor: str,
    agent_name: str,
    workflow: str,
    task: str,
    input: dict[str, Any],
    status: str,
    step: str | None,
    state: dict[str, Any],
    events: Sequence[NewEvent],
    idempotency_key: str | None = None,
    messages: Sequence[Message] = (),
    parent: tuple[str, int] | None = None,
    run_id: str | None = None,
) -> RunRecord:
    """Insert a run with its checkpoint 0 (and the conversation it starts with), and its
    ``created`` ledger entry; the last of ``events`` carries their digests."""
    run_id = run_id or new_run_id()
    digests: dict[str, Any] = {
        "checkpoint": [
            0,
            checkpoint_digest(
                keys,
                {
                    "seq": 0,
                    "step": step,
                    "state": state,
                    "history_len": len(messages),
                    "segments": None,
                },
            ),
        ]
    }
    if messages:
        digests["messages"] = [
            0,
            len(messages),
            messages_digest(
                keys,
                [
                    {"idx": i, "role": m.role, "content": m.content, "data": m.data or None}
                    for i, m in enumerate(messages)
                ],
            ),
        ]
    events = with_digests(events, digests)
    event_rows, count, head = chain(keys, run_id, "", 0, events, actor, now)
    queued = status == QUEUED
    values: dict[str, Any] = {
        "id": run_id,
        "agent_name": agent_name,
        "workflow": workflow,
        "task": task,
        "input": input,
        "status": status,
        "step": step,
        "seq": 0,
        "version": 1,
        "attempt": 0,
        "history_len": len(messages),
        "message_count": len(messages),
        "segments": None,
        "lease_owner": None,
        "lease_expires_at": None,
        "due_at": now if queued else None,
        "published_at": now if queued else None,
        "result": None,
        "error": None,
        "idempotency_key": idempotency_key,
        "parent_run_id": parent[0] if parent else None,
        "parent_seq": parent[1] if parent else None,
        "event_count": count,
        "event_hash": head,
        "legal_hold": False,
        "created_at": now,
        "updated_at": now,
        "finished_at": None,
        "purged_at": None,
        "purge_state": None,
    }
    conn.execute(insert(runs).values(**values))
    conn.execute(
        insert(checkpoints).values(
            run_id=run_id,
            seq=0,
            step=step,
            state=state,
            history_len=len(messages),
            segments=None,
            created_at=now,
        )
    )
    if messages:
        conn.execute(
            insert(messages_table),
            [
                {
                    "run_id": run_id,
                    "idx": i,
                    "role": m.role,
                    "content": m.content,
                    "data": m.data or None,
                    "seq": 0,
                    "created_at": m.created_at,
                }
                for i, m in enumerate(messages)
            ],
        )
    conn.execute(insert(events_table), event_rows)
    conn.execute(
        insert(ledger).values(
            **entry_row(keys, CREATED, run_id, {"parent": parent[0]} if parent else {}, now)
        )
    )
    return RunRecord(**values)


def same_request(
    run: RunRecord, agent_name: str, workflow: str, task: str, input: dict[str, Any]
) -> None:
    """A reused idempotency key must come with the same request, or it is a mistake."""
    if (run.agent_name, run.workflow, run.task, run.input) != (agent_name, workflow, task, input):
        raise Conflict(
            f"idempotency key {run.idempotency_key!r} was used for a different request "
            f"(run {run.id}); use a new key"
        )
