"""Deliveries from other systems: callbacks (early ones kept) and keyed events."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select

from pausepoint.persistence import queries
from pausepoint.persistence.errors import (
    Conflict,
    Gone,
)
from pausepoint.persistence.jsonvalues import check_text
from pausepoint.persistence.records import (
    CALLBACK,
    EVENT,
    FULFILLED,
    PENDING,
    WAITING,
    NewEvent,
    RunRecord,
    WaitRecord,
)
from pausepoint.persistence.store.core import StoreCore, ensure_json, resume_changes
from pausepoint.persistence.store.waits import callback_outcome, event_outcome
from pausepoint.persistence.tables import (
    deliveries,
    waits,
)


class DeliveriesRoom(StoreCore):
    def deliver_callback(
        self,
        *,
        token_hash: str,
        run_id: str,
        seq: int,
        source: str | None,
        payload: Any,
        actor: str,
    ) -> tuple[str, RunRecord | None]:
        """A callback for the wait that ``token_hash`` names, in one transaction.

        Returns ``("resumed", run)`` when it fulfilled a pending wait (the run is queued),
        or ``("stored", None)`` when it came before the run parked: it is kept and
        delivered when the wait opens. Raises Conflict for a second use, Gone for an
        expired wait or a run that moved past that checkpoint, RunNotFound for a run
        that is not there. Nothing is changed when it raises.
        """
        payload = ensure_json(payload, "callback payload")
        with self.write() as conn:
            now = self.clock()
            row = (
                conn.execute(select(waits).where(waits.c.token_hash == token_hash))
                .mappings()
                .first()
            )
            if row is None:
                run = queries.get_run(conn, run_id, for_update=True)
                if run.finished or run.seq >= seq:
                    raise Gone(f"run {run_id} is past the step that handed out this callback")
                early = conn.execute(
                    select(deliveries.c.id).where(deliveries.c.token_hash == token_hash)
                ).first()
                if early is not None:
                    raise Conflict("this callback was already received; a token is single-use")
                conn.execute(
                    insert(deliveries).values(
                        kind=CALLBACK,
                        token_hash=token_hash,
                        run_id=run_id,
                        source=source,
                        actor=actor,
                        payload=payload,
                        received_at=now,
                    )
                )
                return "stored", None
            wait = WaitRecord.from_row(row)
            if wait.status == FULFILLED:
                raise Conflict("this callback was already received; a token is single-use")
            if wait.status != PENDING or (wait.deadline is not None and wait.deadline <= now):
                raise Gone(f"the callback wait of run {wait.run_id} expired")
            run = queries.get_run(conn, wait.run_id, for_update=True)
            self._close_wait(
                conn, wait, FULFILLED, callback_outcome(payload, source, now), actor, now
            )
            new = self._apply(
                conn,
                run,
                now=now,
                actor=actor,
                expect_status=(WAITING,),
                changes=resume_changes(wait, now),
                events=[
                    NewEvent("callback_received", {"wait": wait.id, "source": source}),
                    NewEvent("resumed", {"step": wait.resume_step, "wait": wait.id}),
                ],
            )
            return "resumed", new

    def publish_event(self, name: str, key: str, payload: Any, *, actor: str) -> list[RunRecord]:
        """Record an event and resume every run waiting for it with this key, in one transaction.

        The event is kept, so a run that parks on it later (but started before it came)
        is resumed at once.
        """
        payload = ensure_json(payload, "event payload")
        check_text(name, "the event name", limit=200)
        check_text(key, "the event key", limit=200)
        check_text(actor, "the actor", limit=200)
        with self.write() as conn:
            now = self.clock()
            delivery = conn.execute(
                insert(deliveries).values(
                    kind=EVENT,
                    event_name=name,
                    match_key=key,
                    actor=actor,
                    payload=payload,
                    received_at=now,
                )
            ).inserted_primary_key
            assert delivery is not None
            rows = (
                conn.execute(
                    select(waits)
                    .where(
                        waits.c.event_name == name,
                        waits.c.match_key == key,
                        waits.c.status == PENDING,
                    )
                    .order_by(waits.c.id)
                )
                .mappings()
                .all()
            )
            resumed = []
            for row in rows:
                wait = WaitRecord.from_row(row)
                run = queries.get_run(conn, wait.run_id, for_update=True)
                if run.status != WAITING or run.seq != wait.seq:
                    continue
                outcome = event_outcome(name, payload, now, int(delivery[0]))
                self._close_wait(conn, wait, FULFILLED, outcome, actor, now)
                resumed.append(
                    self._apply(
                        conn,
                        run,
                        now=now,
                        actor=actor,
                        expect_status=(WAITING,),
                        changes=resume_changes(wait, now),
                        events=[
                            NewEvent(
                                "event_received", {"event": name, "key": key, "wait": wait.id}
                            ),
                            NewEvent("resumed", {"step": wait.resume_step, "wait": wait.id}),
                        ],
                    )
                )
            return resumed
