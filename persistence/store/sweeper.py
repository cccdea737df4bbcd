"""The sweeper: redelivery of lost messages, recovery of expired leases, deadlines."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select, update

from pausepoint.persistence import queries
from pausepoint.persistence.records import (
    EXPIRED,
    FAILED,
    FULFILLED,
    PENDING,
    QUEUED,
    RUNNING,
    TIMER,
    WAITING,
    NewEvent,
    SweepReport,
    WaitRecord,
)
from pausepoint.persistence.store.core import log, resume_changes, skipping
from pausepoint.persistence.store.resources import ResourcesRoom, release_holds
from pausepoint.persistence.tables import (
    runs,
    waits,
)


class SweeperRoom(ResourcesRoom):
    def sweep(
        self,
        *,
        redeliver_after: float,
        max_attempts: int = 5,
        limit: int = 500,
        actor: str = "sweeper",
    ) -> SweepReport:
        """Find what needs a message or a decision, and fix each in its own transaction.

        - queued runs that are due and were not published within ``redeliver_after``
          seconds (a lost message, a crash between commit and publish, a retry whose
          delay has passed): bump the version and report them for publishing;
        - running runs whose lease expired (their worker died): queue them again, or
          fail them after ``max_attempts``;
        - pending waits whose deadline passed: timers fire, other waits fail the run
          or resume it with their default outcome.
        """
        report = SweepReport()
        now = self.clock()
        lost_before = now - timedelta(seconds=redeliver_after)
        with self.read() as conn:
            due = conn.execute(queries.due_runs(now, lost_before, limit)).scalars().all()
            expired = conn.execute(queries.expired_leases(now, limit)).scalars().all()
            deadlines = conn.execute(queries.due_deadlines(now, limit)).scalars().all()
        # Each row in its own transaction and its own guard: one row that cannot be
        # handled (unreadable, or refused by the database) is logged and counted, and
        # every other run still gets its redelivery, its recovery and its deadline.
        for run_id in due:
            with skipping("run", run_id, report):
                self._sweep_due(run_id, lost_before, actor, report)
        for run_id in expired:
            with skipping("run", run_id, report):
                self._sweep_lease(run_id, max_attempts, actor, report)
        for wait_id in deadlines:
            with skipping("wait", wait_id, report):
                self._sweep_deadline(wait_id, actor, report)
        # Slots freed by runs that failed or moved on, or a capacity raised.
        for run in self.wake_resources(report=report):
            report.resource_wakeups.append(run.id)
            report.republished.append((run.id, run.version))
        return report

    def _sweep_due(
        self, run_id: str, lost_before: datetime, actor: str, report: SweepReport
    ) -> None:
        # Re-sending keeps the version: the first message that arrives claims the run and
        # the other copy finds nothing to do. So a message that was only slow (a long broker
        # backlog) keeps its place in the queue instead of being made stale.
        now = self.clock()
        with self.write() as conn:
            run = queries.find_run(conn, run_id)
            if run is None:
                return
            result = conn.execute(
                update(runs)
                .where(
                    runs.c.id == run_id,
                    runs.c.version == run.version,
                    runs.c.status == QUEUED,
                    runs.c.due_at <= now,
                    or_(runs.c.published_at.is_(None), runs.c.published_at <= lost_before),
                )
                .values(published_at=now)
            )
        if result.rowcount == 1:
            log.info(
                "re-sending run %s v%d (%s)",
                run_id,
                run.version,
                "retry due" if run.published_at is None else "no message seen",
            )
            report.republished.append((run_id, run.version))

    def _sweep_lease(self, run_id: str, max_attempts: int, actor: str, report: SweepReport) -> None:
        with self.write() as conn:
            run = queries.find_run(conn, run_id)
            now = self.clock()
            if (
                run is None
                or run.status != RUNNING
                or run.lease_expires_at is None
                or run.lease_expires_at > now
            ):
                return
            info = {"owner": run.lease_owner, "step": run.step, "attempt": run.attempt + 1}
            common = {"lease_owner": None, "lease_expires_at": None}
            if run.attempt + 1 >= max_attempts:
                release_holds(conn, run.id, now)
                error = f"step {run.step!r} lost its worker {run.attempt + 1} times"
                self._apply(
                    conn,
                    run,
                    now=now,
                    actor=actor,
                    expect_status=(RUNNING,),
                    changes={**common, "status": FAILED, "error": error, "finished_at": now},
                    events=[NewEvent("lease_expired", info), NewEvent("failed", {"error": error})],
                )
                report.failed.append(run.id)
                return
            new = self._apply(
                conn,
                run,
                now=now,
                actor=actor,
                expect_status=(RUNNING,),
                changes={
                    **common,
                    "status": QUEUED,
                    "attempt": run.attempt + 1,
                    "due_at": now,
                    "published_at": now,
                },
                events=[NewEvent("lease_expired", info)],
            )
        report.lease_expired.append(new.id)
        report.republished.append((new.id, new.version))

    def _sweep_deadline(self, wait_id: int, actor: str, report: SweepReport) -> None:
        with self.write() as conn:
            row = conn.execute(select(waits).where(waits.c.id == wait_id)).mappings().first()
            now = self.clock()
            if row is None:
                return
            wait = WaitRecord.from_row(row)
            if wait.status != PENDING or wait.deadline is None or wait.deadline > now:
                return
            run = queries.get_run(conn, wait.run_id, for_update=True)
            if run.status != WAITING or run.seq != wait.seq:
                # The run moved on without this wait (cancelled, rolled back): close it.
                self._close_wait(conn, wait, EXPIRED, None, actor, now)
                return
            if wait.kind == TIMER:
                self._close_wait(conn, wait, FULFILLED, {"fired_at": now.isoformat()}, actor, now)
                new = self._apply(
                    conn,
                    run,
                    now=now,
                    actor=actor,
                    expect_status=(WAITING,),
                    changes=resume_changes(wait, now),
                    events=[NewEvent("resumed", {"step": wait.resume_step, "wait": wait.id})],
                )
                report.republished.append((new.id, new.version))
                return
            if wait.on_timeout == "escalate" and wait.escalate_to:
                new_deadline = now + timedelta(seconds=wait.escalate_after or 86400)
                conn.execute(
                    update(waits)
                    .where(waits.c.id == wait.id, waits.c.status == PENDING)
                    .values(
                        approver_group=wait.escalate_to,
                        deadline=new_deadline,
                        on_timeout="fail",
                        escalate_to=None,
                    )
                )
                self._wait_changed(conn, wait.id)
                self._apply(
                    conn,
                    run,
                    now=now,
                    actor=actor,
                    expect_status=(WAITING,),
                    changes={},
                    events=[
                        NewEvent(
                            "escalated",
                            {
                                "wait": wait.id,
                                "from": wait.approver_group,
                                "to": wait.escalate_to,
                                "deadline": new_deadline.isoformat(),
                            },
                        )
                    ],
                )
                report.escalated.append(run.id)
                return
            expired = NewEvent(
                "expired", {"wait": wait.id, "kind": wait.kind, "on_timeout": wait.on_timeout}
            )
            if wait.on_timeout == "default":
                self._close_wait(conn, wait, EXPIRED, wait.default_outcome, actor, now)
                new = self._apply(
                    conn,
                    run,
                    now=now,
                    actor=actor,
                    expect_status=(WAITING,),
                    changes=resume_changes(wait, now),
                    events=[expired, NewEvent("resumed", {"step": wait.resume_step})],
                )
                report.republished.append((new.id, new.version))
            else:
                self._close_wait(conn, wait, EXPIRED, None, actor, now)
                release_holds(conn, run.id, now)
                error = f"{wait.kind} wait passed its deadline {wait.deadline.isoformat()}"
                self._apply(
                    conn,
                    run,
                    now=now,
                    actor=actor,
                    expect_status=(WAITING,),
                    changes={"status": FAILED, "error": error, "finished_at": now, "step": None},
                    events=[expired, NewEvent("failed", {"error": error})],
                )
                report.failed.append(run.id)
        report.deadlines.append(wait.run_id)
