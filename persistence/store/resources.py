"""Resources: named capacities, the slots runs hold, and handing freed slots to waiters."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from datetime import datetime

from sqlalchemy import Connection, insert, select, update

from pausepoint.persistence import queries
from pausepoint.persistence.errors import (
    InvalidInput,
    NotFound,
)
from pausepoint.persistence.records import (
    CANCELLED_WAIT,
    FULFILLED,
    PENDING,
    QUEUED,
    RESOURCE,
    WAITING,
    NewEvent,
    ResourceRecord,
    RunRecord,
    SweepReport,
    WaitRecord,
)
from pausepoint.persistence.store.core import StoreCore, resume_changes, skipping
from pausepoint.persistence.tables import (
    resource_holders,
    resources,
    waits,
)


class ResourcesRoom(StoreCore):
    def set_resource(self, name: str, capacity: int) -> ResourceRecord:
        """Create a named capacity, or change its number of slots."""
        if not name or len(name) > 200:
            raise InvalidInput(f"bad resource name {name!r}")
        if capacity < 0:
            raise InvalidInput("a resource's capacity cannot be negative")
        with self.write() as conn:
            now = self.clock()
            exists = conn.execute(select(resources.c.name).where(resources.c.name == name)).first()
            if exists is None:
                conn.execute(
                    insert(resources).values(name=name, capacity=capacity, in_use=0, updated_at=now)
                )
            else:
                conn.execute(
                    update(resources)
                    .where(resources.c.name == name)
                    .values(capacity=capacity, updated_at=now)
                )
            row = conn.execute(select(resources).where(resources.c.name == name)).mappings().one()
            return ResourceRecord.from_row(row)

    def get_resource(self, name: str) -> ResourceRecord:
        with self.read() as conn:
            row = conn.execute(select(resources).where(resources.c.name == name)).mappings().first()
        if row is None:
            raise NotFound(
                f"no resource named {name!r}; create it with `pausepoint resource {name} --slots N`"
                " or PAUSEPOINT_RESOURCES"
            )
        return ResourceRecord.from_row(row)

    def list_resources(self) -> list[ResourceRecord]:
        with self.read() as conn:
            rows = conn.execute(select(resources).order_by(resources.c.name)).mappings()
            return [ResourceRecord.from_row(r) for r in rows]

    def holds(self, run_id: str) -> list[str]:
        with self.read() as conn:
            return list(
                conn.execute(
                    select(resource_holders.c.resource).where(resource_holders.c.run_id == run_id)
                ).scalars()
            )

    def wake_resources(
        self, names: Sequence[str] | None = None, *, report: SweepReport | None = None
    ) -> list[RunRecord]:
        """Give free slots to the runs waiting longest for them; returns the runs queued.

        With a sweeper's ``report``, a resource whose next waiter cannot be woken is
        logged and counted there, and the other resources still hand out their slots.
        """
        with self.read() as conn:
            query = queries.resources_with_waiters(names)
            wanted = [str(n) for n in conn.execute(query).scalars()]
        woken: list[RunRecord] = []
        for name in wanted:
            guard = nullcontext() if report is None else skipping("resource", name, report)
            with guard:
                woken.extend(self._wake_all(name))
        return woken

    def _wake_all(self, name: str) -> list[RunRecord]:
        woken = []
        while (run := self._wake_one(name)) is not None:
            if run.status == QUEUED:
                woken.append(run)
        return woken

    def _wake_one(self, name: str) -> RunRecord | None:
        """One waiter of ``name`` gets a slot, in one transaction; None when none can."""
        with self.write() as conn:
            now = self.clock()
            row = (
                conn.execute(
                    select(waits)
                    .where(
                        waits.c.resource == name,
                        waits.c.kind == RESOURCE,
                        waits.c.status == PENDING,
                    )
                    .order_by(waits.c.id)
                    .limit(1)
                )
                .mappings()
                .first()
            )
            if row is None or not take_slot(conn, name, now):
                return None
            wait = WaitRecord.from_row(row)
            run = queries.get_run(conn, wait.run_id, for_update=True)
            if run.status != WAITING or run.seq != wait.seq:
                # The run moved on without it: put the slot back, close the wait.
                give_slot(conn, name, now)
                self._close_wait(conn, wait, CANCELLED_WAIT, None, "sweeper", now)
                return run
            outcome = {"resource": name, "acquired_at": now.isoformat()}
            self._close_wait(conn, wait, FULFILLED, outcome, "sweeper", now)
            hold_slot(conn, name, run.id, run.seq, now)
            return self._apply(
                conn,
                run,
                now=now,
                actor="sweeper",
                expect_status=(WAITING,),
                changes=resume_changes(wait, now),
                events=[
                    NewEvent("resource_acquired", {"resource": name, "waited": True}),
                    NewEvent("resumed", {"step": wait.resume_step, "wait": wait.id}),
                ],
            )


def take_slot(conn: Connection, name: str, now: datetime) -> bool:
    result = conn.execute(
        update(resources)
        .where(resources.c.name == name, resources.c.in_use < resources.c.capacity)
        .values(in_use=resources.c.in_use + 1, updated_at=now)
    )
    return result.rowcount == 1


def give_slot(conn: Connection, name: str, now: datetime) -> None:
    conn.execute(
        update(resources)
        .where(resources.c.name == name, resources.c.in_use > 0)
        .values(in_use=resources.c.in_use - 1, updated_at=now)
    )


def hold_slot(conn: Connection, name: str, run_id: str, seq: int, now: datetime) -> None:
    conn.execute(
        insert(resource_holders).values(resource=name, run_id=run_id, seq=seq, acquired_at=now)
    )


def release_holds(
    conn: Connection, run_id: str, now: datetime, below_seq: int | None = None
) -> list[str]:
    query = select(resource_holders.c.resource).where(resource_holders.c.run_id == run_id)
    if below_seq is not None:
        query = query.where(resource_holders.c.seq < below_seq)
    names = [str(n) for n in conn.execute(query).scalars()]
    for name in names:
        conn.execute(
            resource_holders.delete().where(
                resource_holders.c.run_id == run_id, resource_holders.c.resource == name
            )
        )
        give_slot(conn, name, now)
    return names
