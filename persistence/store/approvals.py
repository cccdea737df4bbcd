"""Approvals: a person decides a run's pending approval, once."""

from __future__ import annotations

from typing import Any

from pausepoint.persistence import queries
from pausepoint.persistence.errors import (
    Forbidden,
    NotWaiting,
)
from pausepoint.persistence.jsonvalues import check_text
from pausepoint.persistence.records import (
    APPROVAL,
    FULFILLED,
    WAITING,
    NewEvent,
    RunRecord,
)
from pausepoint.persistence.store.core import StoreCore, ensure_json, resume_changes


class ApprovalsRoom(StoreCore):
    def decide(
        self,
        run_id: str,
        *,
        approved: bool,
        actor: str,
        comment: str = "",
        data: dict[str, Any] | None = None,
        groups: frozenset[str] | None = None,
    ) -> RunRecord:
        """Decide a run's pending approval and queue its resume, in one transaction.

        ``groups``: the approver groups the decider belongs to (``None``: any group,
        for operators). Raises RunNotFound, NotWaiting (not parked on an approval),
        Forbidden (not an approver of the wait's group) or Conflict (someone decided
        first). Nothing is changed when it raises.
        """
        data = ensure_json(dict(data or {}), "approval data")
        check_text(comment, "the comment", limit=10_000)
        check_text(actor, "the actor", limit=200)
        with self.write() as conn:
            run = queries.get_run(conn, run_id, for_update=True)
            if run.status != WAITING:
                raise NotWaiting(run.id, run.status)
            wait = queries.pending_wait(conn, run)
            if wait is None or wait.kind != APPROVAL:
                kind = wait.kind if wait is not None else "nothing"
                raise NotWaiting(run.id, run.status, f"it waits for {kind}")
            if groups is not None and wait.approver_group not in groups:
                raise Forbidden(
                    f"{actor} may not decide run {run.id}: it waits for an approver of "
                    f"group {wait.approver_group!r}"
                )
            now = self.clock()
            decision = "approved" if approved else "rejected"
            outcome = {
                "approved": approved,
                "decision": decision,
                "comment": comment,
                "by": actor,
                "data": data,
            }
            self._close_wait(conn, wait, FULFILLED, outcome, actor, now)
            return self._apply(
                conn,
                run,
                now=now,
                actor=actor,
                expect_status=(WAITING,),
                changes=resume_changes(wait, now),
                events=[
                    NewEvent(
                        "decided",
                        {"wait": wait.id, "decision": decision, "comment": comment, "by": actor},
                    ),
                    NewEvent("resumed", {"step": wait.resume_step, "wait": wait.id}),
                ],
            )
