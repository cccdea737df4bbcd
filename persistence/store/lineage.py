"""Lineage: rollback to a checkpoint, fork a new run from one, and legal holds."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, or_, select

from pausepoint.persistence import queries
from pausepoint.persistence.errors import (
    Conflict,
    Gone,
    InvalidInput,
)
from pausepoint.persistence.jsonvalues import check_seq
from pausepoint.persistence.records import (
    CANCELLED_WAIT,
    FULFILLED,
    PENDING,
    QUEUED,
    RESOURCE,
    RUNNING,
    SESSION_WORKFLOW,
    WAITING,
    Checkpoint,
    NewEvent,
    RunRecord,
    WaitRecord,
)
from pausepoint.persistence.store.core import StoreCore, new_run_id
from pausepoint.persistence.store.memory import retract_memories
from pausepoint.persistence.store.reads import purged_message
from pausepoint.persistence.store.resources import hold_slot, release_holds
from pausepoint.persistence.store.runs import insert_run
from pausepoint.persistence.store.summaries import forked_summary, write_summary
from pausepoint.persistence.store.waits import TokenHasher, open_wait, reopened
from pausepoint.persistence.tables import (
    checkpoints,
    waits,
)


class LineageRoom(StoreCore):
    def rollback(
        self,
        run_id: str,
        to_seq: int,
        *,
        actor: str,
        reason: str = "",
        token_hash: TokenHasher | None = None,
    ) -> RunRecord:
        """Make a run continue from its checkpoint ``to_seq``, in one transaction.

        Appends checkpoint ``seq + 1`` equal to checkpoint ``to_seq`` (the messages
        after it leave the run's context but stay stored), cancels the run's pending
        waits, gives back its resource slots and records who did it and why. The run
        is then queued for the step that checkpoint was to run next, or parked again
        on the wait it was parked on then (``token_hash(run_id, seq, source)`` gives a
        reopened callback wait its new token). A running run cannot be rolled back.
        """
        check_seq(to_seq, f"the checkpoint run {run_id} can roll back to")
        with self.write() as conn:
            run = queries.get_run(conn, run_id, for_update=True)
            self._check_rewindable(run)
            if run.status == RUNNING:
                raise Conflict(
                    f"run {run.id} is running step {run.step!r}; roll it back when the step is over"
                )
            if not 0 <= to_seq < run.seq:
                raise InvalidInput(
                    f"run {run.id} can roll back to a checkpoint from 0 to {run.seq - 1}, "
                    f"not {to_seq}"
                )
            target = queries.get_checkpoint(conn, run.id, to_seq)
            parked = queries.wait_opened_at(conn, run.id, to_seq)
            if target.step is None and parked is None:
                raise InvalidInput(f"checkpoint {to_seq} of run {run.id} is where it ended")
            now = self.clock()
            events: list[NewEvent] = []
            for wait in queries.pending_waits(conn, run.id):
                self._close_wait(conn, wait, CANCELLED_WAIT, None, actor, now)
                events.append(NewEvent("wait_cancelled", {"wait": wait.id, "kind": wait.kind}))
            for name in release_holds(conn, run.id, now):
                events.append(NewEvent("resource_released", {"resource": name}))
            retracted = retract_memories(conn, run.id, to_seq, now)
            if retracted:
                # What the undone steps remembered is no longer what the agent knows.
                events.append(NewEvent("memories_retracted", {"memories": retracted}))
            events.insert(
                0,
                NewEvent(
                    "rolled_back",
                    {
                        "from_seq": run.seq,
                        "to_seq": to_seq,
                        "new_seq": run.seq + 1,
                        "status_before": run.status,
                        "reason": reason,
                        "by": actor,
                    },
                ),
            )
            changes: dict[str, Any] = {
                "step": target.step,
                "attempt": 0,
                "result": None,
                "error": None,
                "finished_at": None,
                "lease_owner": None,
                "lease_expires_at": None,
            }
            return self._continue_from(
                conn,
                run,
                target,
                parked,
                seq=run.seq + 1,
                now=now,
                actor=actor,
                changes=changes,
                events=events,
                token_hash=token_hash,
                expect_status=(run.status,),
            )

    def fork(
        self,
        run_id: str,
        at_seq: int | None = None,
        *,
        actor: str,
        reason: str = "",
        token_hash: TokenHasher | None = None,
    ) -> RunRecord:
        """Start a new run from checkpoint ``at_seq`` of ``run_id`` (by default its latest
        one that has a next step or a wait: for a finished run, the one before its end).

        The new run has the same agent, workflow, task and input, the checkpoint's state
        and a copy of its conversation, and records its parent and the checkpoint it
        forked at. From there the two runs are independent. The parent is not changed:
        it may even be running.
        """
        check_seq(at_seq, f"the checkpoint run {run_id} can fork at")
        with self.write() as conn:
            parent = queries.get_run(conn, run_id)
            self._check_rewindable(parent)
            seq = continuable_seq(conn, parent) if at_seq is None else at_seq
            if not 0 <= seq <= parent.seq:
                raise InvalidInput(
                    f"run {parent.id} has checkpoints 0 to {parent.seq}; cannot fork at {seq}"
                )
            target = queries.get_checkpoint(conn, parent.id, seq)
            parked = queries.wait_opened_at(conn, parent.id, seq)
            if target.step is None and parked is None:
                raise InvalidInput(
                    f"checkpoint {seq} of run {parent.id} is where it ended; fork at an earlier one"
                )
            now = self.clock()
            conversation = queries.history(
                conn, parent.id, length=target.history_len, segments=target.segments
            )
            child_id = new_run_id()
            state, summary = forked_summary(conn, target.state, child_id)
            child = insert_run(
                conn,
                keys=self.audit_keys,
                run_id=child_id,
                now=now,
                actor=actor,
                agent_name=parent.agent_name,
                workflow=parent.workflow,
                task=parent.task,
                input=parent.input,
                status=QUEUED if parked is None else WAITING,
                step=target.step,
                state=state,
                messages=conversation,
                parent=(parent.id, seq),
                events=[
                    NewEvent(
                        "created",
                        {
                            "workflow": parent.workflow,
                            "agent": parent.agent_name,
                            "step": target.step,
                            "task": parent.task,
                        },
                    ),
                    NewEvent(
                        "forked",
                        {
                            "from_run": parent.id,
                            "from_seq": seq,
                            "messages": len(conversation),
                            "reason": reason,
                            "by": actor,
                        },
                    ),
                ],
            )
            if summary is not None:
                write_summary(conn, child.id, 0, summary, now)
            if parked is None:
                return child
            # Park the new run on the wait its parent was parked on at that checkpoint.
            child_cp = queries.get_checkpoint(conn, child.id, 0)
            return self._continue_from(
                conn,
                child,
                child_cp,
                parked,
                seq=0,
                now=now,
                actor=actor,
                changes={},
                events=[],
                token_hash=token_hash,
                expect_status=(WAITING,),
                checkpoint=False,
            )

    def _check_rewindable(self, run: RunRecord) -> None:
        if run.purge_state is not None:
            raise Gone(purged_message(run))
        if run.workflow == SESSION_WORKFLOW:
            raise InvalidInput(
                f"run {run.id} is an Agent session of the Python API; it has no steps to rerun"
            )

    def _continue_from(
        self,
        conn: Connection,
        run: RunRecord,
        target: Checkpoint,
        parked: WaitRecord | None,
        *,
        seq: int,
        now: datetime,
        actor: str,
        changes: dict[str, Any],
        events: list[NewEvent],
        token_hash: TokenHasher | None,
        expect_status: Sequence[str],
        checkpoint: bool = True,
    ) -> RunRecord:
        """Queue ``run`` for ``target``'s next step, or park it again on ``parked``'s kind
        of wait (a copy with a fresh deadline as long as the first one's), at checkpoint
        ``seq``."""
        spec = None
        wait_status, wait_outcome = PENDING, None
        if parked is None:
            changes.update(status=QUEUED, due_at=now, published_at=now)
        else:
            spec = reopened(parked, run.id, seq, now, token_hash)
            changes.update(status=WAITING, step=parked.resume_step, due_at=None, published_at=None)
            events.append(
                NewEvent(
                    "paused",
                    {
                        "kind": spec.kind,
                        "resume_step": spec.resume_step,
                        "prompt": spec.prompt,
                        "group": spec.approver_group,
                        "deadline": spec.deadline.isoformat() if spec.deadline else None,
                        "reopened_from": parked.id,
                    },
                )
            )
            wait_status, wait_outcome = open_wait(conn, run, spec, now, events, changes)
        new = self._apply(
            conn,
            run,
            now=now,
            actor=actor,
            expect_status=expect_status,
            changes=changes,
            state=dict(target.state) if checkpoint else None,
            checkpoint_step=changes.get("step", target.step),
            events=events,
            wait=spec,
            wait_status=wait_status,
            wait_outcome=wait_outcome,
            reset_to=target if checkpoint else None,
        )
        if wait_status == FULFILLED and spec is not None and spec.kind == RESOURCE:
            hold_slot(conn, spec.resource or "", run.id, new.seq, now)
        return new

    def set_legal_hold(self, run_id: str, on: bool, *, actor: str, reason: str = "") -> RunRecord:
        """Exempt a run from retention (``on``), or lift the hold; recorded in its trail."""
        with self.write() as conn:
            run = queries.get_run(conn, run_id, for_update=True)
            if run.legal_hold == on:
                return run
            if run.status == RUNNING:
                raise Conflict(
                    f"run {run.id} is running step {run.step!r}; set its hold when the step is over"
                )
            now = self.clock()
            changes: dict[str, Any] = {"legal_hold": on}
            if run.status == QUEUED and run.due_at is not None and run.due_at <= now:
                # The version moves on, so the message in flight goes stale: send another.
                changes["published_at"] = now
            return self._apply(
                conn,
                run,
                now=now,
                actor=actor,
                expect_status=(run.status,),
                changes=changes,
                events=[NewEvent("legal_hold", {"on": on, "reason": reason, "by": actor})],
            )


def continuable_seq(conn: Connection, run: RunRecord) -> int:
    """The run's latest checkpoint that has a next step or a wait (a finished run's last
    checkpoint has neither)."""
    seq = conn.execute(
        select(func.max(checkpoints.c.seq)).where(
            checkpoints.c.run_id == run.id,
            or_(
                checkpoints.c.step.is_not(None),
                checkpoints.c.seq.in_(select(waits.c.seq).where(waits.c.run_id == run.id)),
            ),
        )
    ).scalar()
    return run.seq if seq is None else int(seq)
