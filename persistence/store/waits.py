"""Opening a wait: what already fulfils it (a free slot, an early callback, an event)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from pausepoint.persistence.errors import (
    InvalidInput,
)
from pausepoint.persistence.records import (
    CALLBACK,
    EVENT,
    FULFILLED,
    PENDING,
    QUEUED,
    RESOURCE,
    NewEvent,
    RunRecord,
    WaitRecord,
    WaitSpec,
)
from pausepoint.persistence.store.resources import take_slot
from pausepoint.persistence.tables import (
    deliveries,
    waits,
)


def open_wait(
    conn: Connection,
    run: RunRecord,
    wait: WaitSpec,
    now: datetime,
    events: list[NewEvent],
    changes: dict[str, Any],
) -> tuple[str, Any]:
    """The status and outcome ``wait`` opens with. When something already fulfils
    it, its events go to ``events`` and ``changes`` queue the run at once."""
    found = arrived(conn, run, wait, now)
    if found is None:
        return PENDING, None
    events.extend(found[1])
    changes.update(status=QUEUED, due_at=now, published_at=now)
    return FULFILLED, found[0]


def arrived(
    conn: Connection, run: RunRecord, wait: WaitSpec, now: datetime
) -> tuple[Any, list[NewEvent]] | None:
    """What fulfils ``wait`` at the moment it is opened, if anything already has.

    A free resource slot; a callback posted before this commit; an event that
    came after the run started. Returns the wait's outcome and the events to record.
    """
    if wait.kind == RESOURCE:
        name = wait.resource or ""
        if not take_slot(conn, name, now):
            return None
        outcome = {"resource": name, "acquired_at": now.isoformat()}
        return outcome, [NewEvent("resource_acquired", {"resource": name, "waited": False})]
    if wait.kind == CALLBACK and wait.token_hash is not None:
        row = (
            conn.execute(
                select(deliveries).where(
                    deliveries.c.token_hash == wait.token_hash,
                    deliveries.c.consumed_at.is_(None),
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            return None
        conn.execute(update(deliveries).where(deliveries.c.id == row["id"]).values(consumed_at=now))
        outcome = callback_outcome(row["payload"], row["source"], row["received_at"])
        info = {"source": row["source"], "early": True, "by": row["actor"]}
        return outcome, [
            NewEvent("callback_received", info),
            NewEvent("resumed", {"step": wait.resume_step}),
        ]
    if wait.kind == EVENT:
        # An event this run was already resumed by does not count twice.
        used = [
            o["delivery"]
            for o in conn.execute(
                select(waits.c.outcome).where(
                    waits.c.run_id == run.id, waits.c.kind == EVENT, waits.c.status == FULFILLED
                )
            ).scalars()
            if isinstance(o, dict) and isinstance(o.get("delivery"), int)
        ]
        query = (
            select(deliveries)
            .where(
                deliveries.c.kind == EVENT,
                deliveries.c.event_name == wait.event_name,
                deliveries.c.match_key == wait.match_key,
                deliveries.c.received_at >= run.created_at,
            )
            .order_by(deliveries.c.id.desc())
            .limit(1)
        )
        if used:
            query = query.where(deliveries.c.id.not_in(used))
        row = conn.execute(query).mappings().first()
        if row is None:
            return None
        outcome = event_outcome(wait.event_name, row["payload"], row["received_at"], int(row["id"]))
        info = {"event": wait.event_name, "key": wait.match_key, "early": True}
        return outcome, [
            NewEvent("event_received", info),
            NewEvent("resumed", {"step": wait.resume_step}),
        ]
    return None


def reopened(
    wait: WaitRecord, run_id: str, seq: int, now: datetime, token_hash: TokenHasher | None
) -> WaitSpec:
    """A new wait like ``wait``, for ``run_id`` at checkpoint ``seq``, its deadline as far
    from now as the first one's was from its opening."""
    deadline = None if wait.deadline is None else now + (wait.deadline - wait.created_at)
    token = None
    if wait.kind == CALLBACK:
        if token_hash is None:
            raise InvalidInput("reopening a callback wait needs the store's token derivation")
        token = token_hash(run_id, seq, wait.source)
    # An escalated approval is asked again of the group it ended with.
    return WaitSpec(
        kind=wait.kind,
        resume_step=wait.resume_step,
        prompt=wait.prompt,
        approver_group=wait.approver_group,
        deadline=deadline,
        on_timeout=wait.on_timeout,
        default_outcome=wait.default_outcome,
        token_hash=token,
        escalate_to=wait.escalate_to,
        escalate_after=wait.escalate_after,
        source=wait.source,
        event_name=wait.event_name,
        match_key=wait.match_key,
        resource=wait.resource,
    )


def callback_outcome(payload: Any, source: str | None, received_at: datetime) -> dict[str, Any]:
    return {"payload": payload, "source": source, "received_at": received_at.isoformat()}


def event_outcome(
    name: str | None, payload: Any, received_at: datetime, delivery: int
) -> dict[str, Any]:
    return {
        "event": name,
        "payload": payload,
        "received_at": received_at.isoformat(),
        "delivery": delivery,
    }


TokenHasher = Callable[[str, int, "str | None"], str]
