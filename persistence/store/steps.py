"""A step: the claim of a queued run, its lease, and the commit of its outcome."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, select, update

from pausepoint.persistence import queries
from pausepoint.persistence.errors import (
    InvalidInput,
    StaleVersion,
)
from pausepoint.persistence.jsonvalues import check_text
from pausepoint.persistence.records import (
    COMPLETED,
    FAILED,
    FULFILLED,
    PENDING,
    QUEUED,
    RESOURCE,
    RUNNING,
    WAITING,
    Checkpoint,
    Claim,
    NewEvent,
    RunRecord,
    Transition,
)
from pausepoint.persistence.store.core import StoreCore, ensure_json
from pausepoint.persistence.store.memory import write_memories
from pausepoint.persistence.store.resources import hold_slot, release_holds
from pausepoint.persistence.store.summaries import summary_event, write_summary
from pausepoint.persistence.store.waits import open_wait
from pausepoint.persistence.tables import (
    resource_holders,
    runs,
)


class StepsRoom(StoreCore):
    def claim(self, run_id: str, version: int, owner: str) -> Claim | None:
        """Take the lease on a queued run for one step; ``None`` if the message is stale.

        Stale means: the run is gone, its version moved on, it is not queued, or
        its next attempt is not due yet. Nothing is changed in that case.
        """
        if self.dialect.claims_in_one_statement:
            now = self.clock()
            return self.dialect.claim(
                self.engine,
                run_id=run_id,
                version=version,
                owner=owner,
                now=now,
                lease_until=now + timedelta(seconds=self.lease_seconds),
            )
        with self.write() as conn:
            run = queries.find_run(conn, run_id)
            now = self.clock()
            if run is None or run.version != version or run.status != QUEUED:
                return None
            if run.due_at is not None and run.due_at > now:
                return None
            checkpoint = queries.latest_checkpoint(conn, run)
            agent = queries.get_agent(conn, run.agent_name)
            resumed = queries.resumed_wait(conn, run)
            holds = self._holds(conn, run.id)
            try:
                claimed = self._apply(
                    conn,
                    run,
                    now=now,
                    actor=owner,
                    expect_status=(QUEUED,),
                    changes={
                        "status": RUNNING,
                        "lease_owner": owner,
                        "lease_expires_at": now + timedelta(seconds=self.lease_seconds),
                    },
                )
            except StaleVersion:
                return None
            return Claim(
                run=claimed, checkpoint=checkpoint, agent=agent, resumed=resumed, holds=holds
            )

    def _holds(self, conn: Connection, run_id: str) -> tuple[str, ...]:
        return tuple(
            conn.execute(
                select(resource_holders.c.resource).where(resource_holders.c.run_id == run_id)
            ).scalars()
        )

    def next_claim(self, claim: Claim, run: RunRecord, state: dict[str, Any]) -> Claim:
        """The claim a ``keep_lease`` commit took: ``run`` as committed, its new checkpoint."""
        checkpoint = Checkpoint(
            run_id=run.id,
            seq=run.seq,
            step=run.step,
            state=state,
            history_len=run.history_len,
            segments=run.segments,
            created_at=run.updated_at,
        )
        return Claim(run=run, checkpoint=checkpoint, agent=claim.agent)

    def renew_lease(self, claim: Claim, owner: str) -> None:
        """Push a long step's lease forward, so the sweeper does not take its run away."""
        now = self.clock()
        with self.write() as conn:
            # One process's heartbeat renews all its steps' leases in turn: a hung
            # renewal must not hold up the others past their leases.
            self.dialect.bound_statement_time(conn, int(self.lease_seconds / 6 * 1000))
            result = conn.execute(
                update(runs)
                .where(
                    runs.c.id == claim.run.id,
                    runs.c.version == claim.run.version,
                    runs.c.lease_owner == owner,
                )
                .values(lease_expires_at=now + timedelta(seconds=self.lease_seconds))
            )
            if result.rowcount != 1:
                raise StaleVersion(claim.run.id, claim.run.version)

    def commit_step(
        self, claim: Claim, owner: str, transition: Transition, *, keep_lease: bool = False
    ) -> RunRecord:
        """Commit one step's result atomically; raise StaleVersion if the lease was lost.

        ``keep_lease``: when the next step is due now, the same transaction also claims it
        for ``owner`` (status stays ``running``), so the worker runs it at once without a
        broker round trip: see :meth:`next_claim`.
        """
        t = transition
        now = self.clock()
        run = claim.run
        changes: dict[str, Any] = {
            "status": t.status,
            "lease_owner": None,
            "lease_expires_at": None,
            "due_at": None,
            "published_at": None,
            "attempt": run.attempt + 1 if t.retry else 0,
        }
        chained = keep_lease and t.status == QUEUED and not t.retry and t.delay <= 0
        if chained:
            changes.update(status=RUNNING, step=t.step, lease_owner=owner)
            del changes["lease_expires_at"]
            # The lease moves only when less than half of it is left (the heartbeat moves
            # it too), so most chained steps change no indexed column of the run: on
            # Postgres the update is HOT and adds nothing to the runs indexes.
            left = run.lease_expires_at - now if run.lease_expires_at else timedelta(0)
            if left < timedelta(seconds=self.lease_seconds / 2):
                changes["lease_expires_at"] = now + timedelta(seconds=self.lease_seconds)
        elif t.status == QUEUED:
            changes["step"] = t.step
            changes["due_at"] = now + timedelta(seconds=t.delay)
            changes["published_at"] = now if t.delay <= 0 else None
        elif t.status == WAITING:
            if t.wait is None:
                raise InvalidInput("a waiting transition needs a wait")
            changes["step"] = t.wait.resume_step
        elif t.status in (COMPLETED, FAILED):
            changes["result"] = ensure_json(t.result, "a run's result")
            changes["error"] = t.error
            changes["finished_at"] = now
        else:
            raise InvalidInput(f"a step cannot move a run to {t.status!r}")
        # A retry keeps the state of the checkpoint it retries: no new checkpoint.
        state = None if t.retry else ensure_json(t.state, "step state")
        for i, m in enumerate(t.messages):
            check_text(m.content, f"message {i} of the step")
            if m.data:
                ensure_json(m.data, f"message {i} of the step's fields")
        check_text(t.error, "the run's error")
        events = list(t.events)
        wait_status, wait_outcome = PENDING, None
        releases = not t.retry and bool(claim.holds)
        step: dict[str, Any] = {
            "now": now,
            "actor": owner,
            "expect_status": (RUNNING,),
            "expect_owner": owner,
            "changes": changes,
            "messages": t.messages,
            "state": state,
            "checkpoint_step": None if t.status in (COMPLETED, FAILED) else changes["step"],
            "events": events,  # the transaction below may add to both
        }
        remembers = not t.retry and (bool(t.memories) or t.summary is not None)
        if (
            self.dialect.commits_in_one_statement
            and not releases
            and not remembers
            and t.status != WAITING
        ):
            # The common step (go on, end, fail): one statement, one round trip.
            return self._apply(None, run, **step)
        with self.write() as conn:
            if releases:
                # The step a slot was held for is over: give the slots back.
                for name in release_holds(conn, run.id, now, below_seq=run.seq + 1):
                    events.append(NewEvent("resource_released", {"resource": name}))
            if t.status == WAITING and t.wait is not None:
                wait_status, wait_outcome = open_wait(conn, run, t.wait, now, events, changes)
            if remembers:
                # In this transaction: if its CAS below does not match, none of it is kept.
                if t.summary is not None:
                    write_summary(conn, run.id, run.seq + 1, t.summary, now)
                    events.append(NewEvent("compacted", summary_event(t.summary)))
                events.extend(
                    write_memories(
                        conn,
                        run.agent_name,
                        t.memories,
                        run_id=run.id,
                        seq=run.seq + 1,
                        now=now,
                        actor=owner,
                    )
                )
            new = self._apply(
                conn,
                run,
                **step,
                wait=t.wait,
                wait_status=wait_status,
                wait_outcome=wait_outcome,
            )
            if wait_status == FULFILLED and t.wait is not None and t.wait.kind == RESOURCE:
                hold_slot(conn, t.wait.resource or "", run.id, new.seq, now)
            return new
