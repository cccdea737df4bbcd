"""The Store: every state transition of a run, each ONE transaction.

Every transition goes through :meth:`Store._apply`, which compare-and-swaps
the run's ``version`` (and, where it matters, its status and lease owner),
then appends the transition's messages, checkpoint, audit events and wait in
the same transaction. A stale or duplicate call matches no row, changes
nothing and raises :class:`StaleVersion` (or the caller reports "nothing to
do"). Reads go through :mod:`persistence.queries`.
"""

from __future__ import annotations

import json
import logging
import secrets
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import JSON, Connection, Engine, Table, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError

from persistence import queries
from persistence.audit import Finding, event_hash, verify_chain
from persistence.engine import READ_ONLY, make_engine
from persistence.errors import (
    Conflict,
    Forbidden,
    Gone,
    InvalidInput,
    NotFound,
    NotWaiting,
    StaleVersion,
)
from persistence.jsonvalues import check_json
from persistence.records import (
    ACTIVE,
    APPROVAL,
    CALLBACK,
    CANCELLED_WAIT,
    COMPLETED,
    EVENT,
    EXPIRED,
    FAILED,
    FULFILLED,
    PENDING,
    QUEUED,
    RESOURCE,
    RUNNING,
    SESSION_WORKFLOW,
    TIMER,
    WAITING,
    AgentRecord,
    Checkpoint,
    Claim,
    Event,
    Message,
    NewEvent,
    NewMessage,
    ResourceRecord,
    RunRecord,
    SweepReport,
    Transition,
    WaitRecord,
    WaitSpec,
)
from persistence.segments import append as append_segments
from persistence.tables import (
    HexDigest,
    agents,
    checkpoints,
    deliveries,
    meta,
    resource_holders,
    resources,
    runs,
    waits,
)
from persistence.tables import events as events_table
from persistence.tables import messages as messages_table

Clock = Callable[[], datetime]
log = logging.getLogger("pausepoint.store")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_run_id() -> str:
    return uuid.uuid4().hex


def ensure_json(value: Any, what: str) -> Any:
    """Reject what the store could not round-trip, before anything is written."""
    return check_json(value, what)


@contextmanager
def _skipping(kind: str, key: object, report: SweepReport) -> Iterator[None]:
    """One sweeper row's work: a failure is logged with its id and counted, not raised.

    Losing the database itself is not one row's problem: that still ends the pass.
    """
    try:
        yield
    except (OperationalError, InterfaceError):
        raise
    except Exception:
        log.exception("sweeper: skipped %s %s, which it could not handle", kind, key)
        report.skipped.append(f"{kind} {key}")


class Store:
    """The run store on one SQLAlchemy engine (SQLite or Postgres)."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow, lease_seconds: float = 300.0):
        self.engine = engine
        self.clock = clock
        self.lease_seconds = lease_seconds

    @classmethod
    def from_url(cls, url: str, *, migrate: bool = True, **kwargs: Any) -> Store:
        """Open the store at ``url``, creating or upgrading its schema unless told not to."""
        store = cls(make_engine(url), **kwargs)
        if migrate:
            store.ensure_schema()
        return store

    def ensure_schema(self) -> None:
        from persistence.migrate import upgrade

        upgrade(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "postgresql":
                # READ COMMITTED gives each statement its own snapshot anyway: a
                # transaction around reads would only add BEGIN and COMMIT round trips.
                yield conn.execution_options(isolation_level="AUTOCOMMIT")
                return
            conn = conn.execution_options(**{READ_ONLY: True})
            with conn.begin():
                yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # ---------------------------------------------------------------- agents

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

    # ------------------------------------------------------------ run start

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
        if idempotency_key is not None and not 0 < len(idempotency_key) <= 200:
            raise InvalidInput("an idempotency key must be 1-200 characters")
        try:
            with self.write() as conn:
                if idempotency_key is not None:
                    existing = queries.run_by_idempotency_key(conn, idempotency_key)
                    if existing is not None:
                        _same_request(existing, agent_name, workflow, task, input)
                        return existing, False
                queries.get_agent(conn, agent_name)
                now = self.clock()
                run = self._insert_run(
                    conn,
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
            _same_request(existing, agent_name, workflow, task, input)
            return existing, False

    def _insert_run(
        self,
        conn: Connection,
        *,
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
    ) -> RunRecord:
        """Insert a run with its checkpoint 0 (and the conversation it starts with)."""
        run_id = new_run_id()
        event_rows, count, head = _chain(run_id, "", 0, events, actor, now)
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
                        "seq": 0,
                        "created_at": m.created_at,
                    }
                    for i, m in enumerate(messages)
                ],
            )
        conn.execute(insert(events_table), event_rows)
        return RunRecord(**values)

    # -------------------------------------------------------------- a step

    def claim(self, run_id: str, version: int, owner: str) -> Claim | None:
        """Take the lease on a queued run for one step; ``None`` if the message is stale.

        Stale means: the run is gone, its version moved on, it is not queued, or
        its next attempt is not due yet. Nothing is changed in that case.
        """
        if self.engine.dialect.name == "postgresql":
            return self._claim_first(run_id, version, owner)
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

    def _claim_first(self, run_id: str, version: int, owner: str) -> Claim | None:
        """Postgres: the claim as ONE statement, one round trip instead of eight: the CAS
        UPDATE ... RETURNING the run, joined with what the step reads (its checkpoint,
        its agent, the wait it resumes from, the slots it holds).

        Once the CAS matched, this worker holds the lease, and what it reads cannot move
        under it: the checkpoint and a fulfilled wait are immutable, slots are held and
        released by the run's own transitions, and rollback refuses a running run. The
        statement is not prepared: its joins are planned for the tables as they are
        now, not with a generic plan made while they were small.
        """
        now = self.clock()
        params = {
            "id": run_id,
            "version": version,
            "owner": owner,
            "now": now,
            "lease": now + timedelta(seconds=self.lease_seconds),
            "queued": QUEUED,
            "running": RUNNING,
            "pending": PENDING,
        }
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            raw: Any = conn.connection.dbapi_connection
            cur = raw.cursor()
            try:
                cur.execute(_CLAIM_SQL, params, prepare=False)
                row = cur.fetchone()
                names = [d.name for d in cur.description]
            except Exception:
                # Bypassing SQLAlchemy here: a dead connection must not go back to the pool.
                if raw.broken:
                    conn.invalidate()
                raise
            finally:
                cur.close()
        if row is None:
            return None
        got = dict(zip(names, row, strict=True))

        def part(prefix: str, table: Table) -> dict[str, Any]:
            return {
                c.name: c.type.process_result_value(got[prefix + c.name], conn.dialect)
                if isinstance(c.type, HexDigest)
                else _utc(got[prefix + c.name])
                for c in table.columns
            }

        run = RunRecord.from_row(part("r_", runs))
        resumed = part("w_", waits)
        return Claim(
            run=run,
            checkpoint=Checkpoint.from_row(part("c_", checkpoints)),
            agent=AgentRecord.from_row(part("a_", agents)),
            resumed=None if resumed["id"] is None else WaitRecord.from_row(resumed),
            holds=tuple(got["holds"] or ()),
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
            if conn.dialect.name == "postgresql":
                # One process's heartbeat renews all its steps' leases in turn: a hung
                # renewal must not hold up the others past their leases.
                timeout_ms = int(self.lease_seconds / 6 * 1000)
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {timeout_ms}")
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
        if self.engine.dialect.name == "postgresql" and not releases and t.status != WAITING:
            # The common step (go on, end, fail): one statement, one round trip.
            return self._apply(None, run, **step)
        with self.write() as conn:
            if releases:
                # The step a slot was held for is over: give the slots back.
                for name in self._release_holds(conn, run.id, below_seq=run.seq + 1):
                    events.append(NewEvent("resource_released", {"resource": name}))
            if t.status == WAITING and t.wait is not None:
                wait_status, wait_outcome = self._open_wait(conn, run, t.wait, now, events, changes)
            new = self._apply(
                conn,
                run,
                **step,
                wait=t.wait,
                wait_status=wait_status,
                wait_outcome=wait_outcome,
            )
            if wait_status == FULFILLED and t.wait is not None and t.wait.kind == RESOURCE:
                self._hold(conn, t.wait.resource or "", run.id, new.seq, now)
            return new

    def _open_wait(
        self,
        conn: Connection,
        run: RunRecord,
        wait: WaitSpec,
        now: datetime,
        events: list[NewEvent],
        changes: dict[str, Any],
    ) -> tuple[str, Any]:
        """The status and outcome ``wait`` opens with. When something already fulfils
        it, its events go to ``events`` and ``changes`` queue the run at once."""
        arrived = self._arrived(conn, run, wait, now)
        if arrived is None:
            return PENDING, None
        events.extend(arrived[1])
        changes.update(status=QUEUED, due_at=now, published_at=now)
        return FULFILLED, arrived[0]

    def _arrived(
        self, conn: Connection, run: RunRecord, wait: WaitSpec, now: datetime
    ) -> tuple[Any, list[NewEvent]] | None:
        """What fulfils ``wait`` at the moment it is opened, if anything already has.

        A free resource slot; a callback posted before this commit; an event that
        came after the run started. Returns the wait's outcome and the events to record.
        """
        if wait.kind == RESOURCE:
            name = wait.resource or ""
            if not self._take_slot(conn, name, now):
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
            conn.execute(
                update(deliveries).where(deliveries.c.id == row["id"]).values(consumed_at=now)
            )
            outcome = _callback_outcome(row["payload"], row["source"], row["received_at"])
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
            outcome = _event_outcome(
                wait.event_name, row["payload"], row["received_at"], int(row["id"])
            )
            info = {"event": wait.event_name, "key": wait.match_key, "early": True}
            return outcome, [
                NewEvent("event_received", info),
                NewEvent("resumed", {"step": wait.resume_step}),
            ]
        return None

    # ------------------------------------------------------------- resumes

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
                changes=_resume_changes(wait, now),
                events=[
                    NewEvent(
                        "decided",
                        {"wait": wait.id, "decision": decision, "comment": comment, "by": actor},
                    ),
                    NewEvent("resumed", {"step": wait.resume_step, "wait": wait.id}),
                ],
            )

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
                conn, wait, FULFILLED, _callback_outcome(payload, source, now), actor, now
            )
            new = self._apply(
                conn,
                run,
                now=now,
                actor=actor,
                expect_status=(WAITING,),
                changes=_resume_changes(wait, now),
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
                outcome = _event_outcome(name, payload, now, int(delivery[0]))
                self._close_wait(conn, wait, FULFILLED, outcome, actor, now)
                resumed.append(
                    self._apply(
                        conn,
                        run,
                        now=now,
                        actor=actor,
                        expect_status=(WAITING,),
                        changes=_resume_changes(wait, now),
                        events=[
                            NewEvent(
                                "event_received", {"event": name, "key": key, "wait": wait.id}
                            ),
                            NewEvent("resumed", {"step": wait.resume_step, "wait": wait.id}),
                        ],
                    )
                )
            return resumed

    # ------------------------------------------------- rollback, fork, hold

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
            for name in self._release_holds(conn, run.id):
                events.append(NewEvent("resource_released", {"resource": name}))
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
        with self.write() as conn:
            parent = queries.get_run(conn, run_id)
            self._check_rewindable(parent)
            seq = _continuable_seq(conn, parent) if at_seq is None else at_seq
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
            child = self._insert_run(
                conn,
                now=now,
                actor=actor,
                agent_name=parent.agent_name,
                workflow=parent.workflow,
                task=parent.task,
                input=parent.input,
                status=QUEUED if parked is None else WAITING,
                step=target.step,
                state=target.state,
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
            raise Gone(_purged_message(run))
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
            spec = _reopened(parked, run.id, seq, now, token_hash)
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
            wait_status, wait_outcome = self._open_wait(conn, run, spec, now, events, changes)
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
            self._hold(conn, spec.resource or "", run.id, new.seq, now)
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

    # ------------------------------------------------------------ resources

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
            if report is None:
                woken.extend(self._wake_all(name))
                continue
            with _skipping("resource", name, report):
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
            if row is None or not self._take_slot(conn, name, now):
                return None
            wait = WaitRecord.from_row(row)
            run = queries.get_run(conn, wait.run_id, for_update=True)
            if run.status != WAITING or run.seq != wait.seq:
                # The run moved on without it: put the slot back, close the wait.
                self._give_slot(conn, name, now)
                self._close_wait(conn, wait, CANCELLED_WAIT, None, "sweeper", now)
                return run
            outcome = {"resource": name, "acquired_at": now.isoformat()}
            self._close_wait(conn, wait, FULFILLED, outcome, "sweeper", now)
            self._hold(conn, name, run.id, run.seq, now)
            return self._apply(
                conn,
                run,
                now=now,
                actor="sweeper",
                expect_status=(WAITING,),
                changes=_resume_changes(wait, now),
                events=[
                    NewEvent("resource_acquired", {"resource": name, "waited": True}),
                    NewEvent("resumed", {"step": wait.resume_step, "wait": wait.id}),
                ],
            )

    def _take_slot(self, conn: Connection, name: str, now: datetime) -> bool:
        result = conn.execute(
            update(resources)
            .where(resources.c.name == name, resources.c.in_use < resources.c.capacity)
            .values(in_use=resources.c.in_use + 1, updated_at=now)
        )
        return result.rowcount == 1

    def _give_slot(self, conn: Connection, name: str, now: datetime) -> None:
        conn.execute(
            update(resources)
            .where(resources.c.name == name, resources.c.in_use > 0)
            .values(in_use=resources.c.in_use - 1, updated_at=now)
        )

    def _hold(self, conn: Connection, name: str, run_id: str, seq: int, now: datetime) -> None:
        conn.execute(
            insert(resource_holders).values(resource=name, run_id=run_id, seq=seq, acquired_at=now)
        )

    def _release_holds(
        self, conn: Connection, run_id: str, below_seq: int | None = None
    ) -> list[str]:
        query = select(resource_holders.c.resource).where(resource_holders.c.run_id == run_id)
        if below_seq is not None:
            query = query.where(resource_holders.c.seq < below_seq)
        names = [str(n) for n in conn.execute(query).scalars()]
        now = self.clock()
        for name in names:
            conn.execute(
                resource_holders.delete().where(
                    resource_holders.c.run_id == run_id, resource_holders.c.resource == name
                )
            )
            self._give_slot(conn, name, now)
        return names

    # ---------------------------------------------------------------- secret

    def secret(self) -> bytes:
        """The store's random 256-bit secret (callback tokens derive from it), made on first use."""
        with self.read() as conn:
            value = conn.execute(select(meta.c.value).where(meta.c.key == "token_secret")).scalar()
        if value is None:
            try:
                with self.write() as conn:
                    conn.execute(
                        insert(meta).values(key="token_secret", value=secrets.token_hex(32))
                    )
            except IntegrityError:
                pass  # another process made it first: use theirs
            with self.read() as conn:
                value = conn.execute(
                    select(meta.c.value).where(meta.c.key == "token_secret")
                ).scalar_one()
        return bytes.fromhex(value)

    # -------------------------------------------------------------- sweeper

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
            with _skipping("run", run_id, report):
                self._sweep_due(run_id, lost_before, actor, report)
        for run_id in expired:
            with _skipping("run", run_id, report):
                self._sweep_lease(run_id, max_attempts, actor, report)
        for wait_id in deadlines:
            with _skipping("wait", wait_id, report):
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
                self._release_holds(conn, run.id)
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
                    changes=_resume_changes(wait, now),
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
                    changes=_resume_changes(wait, now),
                    events=[expired, NewEvent("resumed", {"step": wait.resume_step})],
                )
                report.republished.append((new.id, new.version))
            else:
                self._close_wait(conn, wait, EXPIRED, None, actor, now)
                self._release_holds(conn, run.id)
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

    # ----------------------------------------------- the seed API's sessions

    def open_session(self, agent_name: str, actor: str, *, fresh: bool = False) -> RunRecord:
        """The agent's latest script session, created on first use (or when ``fresh``)."""
        with self.read() as conn:
            queries.get_agent(conn, agent_name)
            row = (
                None
                if fresh
                else (
                    conn.execute(
                        select(runs)
                        .where(runs.c.agent_name == agent_name, runs.c.workflow == SESSION_WORKFLOW)
                        .order_by(runs.c.created_at.desc())
                        .limit(1)
                    )
                    .mappings()
                    .first()
                )
            )
        if row is not None:
            return RunRecord.from_row(row)
        run, _ = self.create_run(
            agent_name=agent_name,
            workflow=SESSION_WORKFLOW,
            first_step=None,
            actor=actor,
            status=ACTIVE,
        )
        return run

    def save_session(
        self,
        run: RunRecord,
        *,
        actor: str,
        status: str,
        task: str,
        state: dict[str, Any],
        messages: Sequence[NewMessage] = (),
        events: Sequence[NewEvent] = (),
    ) -> RunRecord:
        """Checkpoint a script session; StaleVersion if another process saved since ``run``."""
        state = ensure_json(state, "agent state")
        with self.write() as conn:
            return self._apply(
                conn,
                run,
                now=self.clock(),
                actor=actor,
                changes={"status": status, "task": task},
                messages=messages,
                state=state,
                checkpoint_step=None,
                events=events,
            )

    # ----------------------------------------------------------- the core

    def _apply(
        self,
        conn: Connection | None,
        run: RunRecord,
        *,
        now: datetime,
        actor: str,
        changes: dict[str, Any],
        expect_status: Sequence[str] | None = None,
        expect_owner: str | None = None,
        messages: Sequence[NewMessage] = (),
        state: dict[str, Any] | None = None,
        checkpoint_step: str | None = None,
        events: Sequence[NewEvent] = (),
        wait: WaitSpec | None = None,
        wait_status: str = PENDING,
        wait_outcome: Any = None,
        reset_to: Checkpoint | None = None,
    ) -> RunRecord:
        """Move ``run`` one version forward with ``changes``, or raise StaleVersion.

        ``reset_to`` (a rollback): the new checkpoint's conversation is that checkpoint's,
        instead of the run's latest one. The CAS UPDATE comes first, so nothing is
        appended unless it matched.

        ``conn`` None (Postgres only, no wait): the whole transition is ONE statement in
        autocommit, its appends in data-modifying CTEs that read the UPDATE's RETURNING,
        so they insert nothing when the CAS did not match (see :func:`_one_statement`).
        """
        values = dict(changes)
        values["version"] = run.version + 1
        values["updated_at"] = now
        seq = run.seq
        if state is not None:
            seq = run.seq + 1
            values["seq"] = seq
        elif messages:
            raise InvalidInput("messages are appended with a checkpoint")
        base_len, base_segments = (
            (reset_to.history_len, reset_to.segments)
            if reset_to is not None
            else (run.history_len, run.segments)
        )
        first_idx = run.message_count
        values["history_len"] = base_len + len(messages)
        values["message_count"] = first_idx + len(messages)
        values["segments"] = append_segments(base_segments, base_len, first_idx, len(messages))
        event_rows, count, head = _chain(
            run.id, run.event_hash, run.event_count, events, actor, now
        )
        values["event_count"] = count
        values["event_hash"] = head

        if conn is None:
            if wait is not None:
                raise ValueError("a transition that opens a wait needs a transaction")
            sql, params = _one_statement(
                run,
                values,
                expect_status,
                expect_owner,
                [(first_idx + i, m) for i, m in enumerate(messages)],
                seq,
                None
                if state is None
                else {
                    "step": checkpoint_step,
                    "state": state,
                    "history_len": values["history_len"],
                    "segments": values["segments"],
                },
                event_rows,
                now,
            )
            with self.engine.connect() as auto:
                auto = auto.execution_options(isolation_level="AUTOCOMMIT")
                if int(auto.exec_driver_sql(sql, params).scalar_one()) != 1:
                    now_at = auto.execute(select(runs.c.version).where(runs.c.id == run.id))
                    raise StaleVersion(run.id, run.version, now_at.scalar())
            return replace(run, **values)
        stmt = update(runs).where(runs.c.id == run.id, runs.c.version == run.version)
        if expect_status is not None:
            stmt = stmt.where(runs.c.status.in_(list(expect_status)))
        if expect_owner is not None:
            stmt = stmt.where(runs.c.lease_owner == expect_owner)
        if conn.execute(stmt.values(**values)).rowcount != 1:
            found = conn.execute(select(runs.c.version).where(runs.c.id == run.id)).scalar()
            raise StaleVersion(run.id, run.version, found)

        if messages:
            conn.execute(
                insert(messages_table),
                [
                    {
                        "run_id": run.id,
                        "idx": first_idx + i,
                        "role": m.role,
                        "content": m.content,
                        "seq": seq,
                        "created_at": now,
                    }
                    for i, m in enumerate(messages)
                ],
            )
        if state is not None:
            conn.execute(
                insert(checkpoints).values(
                    run_id=run.id,
                    seq=seq,
                    step=checkpoint_step,
                    state=state,
                    history_len=values["history_len"],
                    segments=values["segments"],
                    created_at=now,
                )
            )
        if event_rows:
            conn.execute(insert(events_table), event_rows)
        if wait is not None:
            conn.execute(
                insert(waits).values(
                    run_id=run.id,
                    seq=seq,
                    kind=wait.kind,
                    status=wait_status,
                    resume_step=wait.resume_step,
                    approver_group=wait.approver_group,
                    prompt=wait.prompt,
                    deadline=wait.deadline,
                    on_timeout=wait.on_timeout,
                    default_outcome=ensure_json(wait.default_outcome, "a wait's default outcome"),
                    token_hash=wait.token_hash,
                    escalate_to=wait.escalate_to,
                    escalate_after=wait.escalate_after,
                    source=wait.source,
                    event_name=wait.event_name,
                    match_key=wait.match_key,
                    resource=wait.resource,
                    outcome=wait_outcome,
                    decided_by=None if wait_status == PENDING else actor,
                    decided_at=None if wait_status == PENDING else now,
                    created_at=now,
                )
            )
        return replace(run, **values)

    def _close_wait(
        self,
        conn: Connection,
        wait: WaitRecord,
        status: str,
        outcome: Any,
        actor: str,
        now: datetime,
    ) -> None:
        result = conn.execute(
            update(waits)
            .where(waits.c.id == wait.id, waits.c.status == PENDING)
            .values(status=status, outcome=outcome, decided_by=actor, decided_at=now)
        )
        if result.rowcount != 1:
            raise Conflict(f"the {wait.kind} wait of run {wait.run_id} was already decided")

    # ----------------------------------------------------------------- reads

    def get_run(self, run_id: str) -> RunRecord:
        with self.read() as conn:
            return queries.get_run(conn, run_id)

    def resolve_run_id(self, prefix: str) -> str:
        with self.read() as conn:
            return queries.resolve_run_id(conn, prefix)

    def list_runs(self, **filters: Any) -> list[RunRecord]:
        with self.read() as conn:
            return queries.list_runs(conn, **filters)

    def checkpoint(self, run_id: str, seq: int | None = None) -> Checkpoint:
        with self.read() as conn:
            run = _readable(queries.get_run(conn, run_id))
            if seq is None:
                return queries.latest_checkpoint(conn, run)
            return queries.get_checkpoint(conn, run_id, seq)

    def checkpoints(self, run_id: str) -> list[Checkpoint]:
        with self.read() as conn:
            _readable(queries.get_run(conn, run_id))
            return queries.list_checkpoints(conn, run_id)

    def history(
        self, run_id: str, *, start: int = 0, stop: int | None = None, at: int | None = None
    ) -> list[Message]:
        """Messages ``[start, stop)`` of the run's conversation, as of its latest
        checkpoint or, with ``at``, as of checkpoint ``at``."""
        with self.read() as conn:
            run = _readable(queries.get_run(conn, run_id))
            if at is None:
                length, segments = run.history_len, run.segments
            else:
                cp = queries.get_checkpoint(conn, run_id, at)
                length, segments = cp.history_len, cp.segments
            return queries.history(
                conn, run_id, length=length, segments=segments, start=start, stop=stop
            )

    def conversation(
        self, checkpoint: Checkpoint, *, start: int = 0, stop: int | None = None
    ) -> list[Message]:
        """Messages ``[start, stop)`` of ``checkpoint``'s conversation (a step's history)."""
        with self.read() as conn:
            return queries.history(
                conn,
                checkpoint.run_id,
                length=checkpoint.history_len,
                segments=checkpoint.segments,
                start=start,
                stop=stop,
            )

    def verify(self, run_id: str) -> Finding | None:
        """Check a run's audit trail against its hash chain; the first bad event, or None."""
        with self.read() as conn:
            run = queries.get_run(conn, run_id)
            trail = queries.list_events(conn, run.id)
        return verify_chain(run.id, trail, run.event_count, run.event_hash)

    def verify_all(self, *, batch: int = 500) -> Iterator[tuple[str, Finding | None]]:
        """Every run's verdict, run by run (for ``pausepoint audit verify``)."""
        after = ""
        while True:
            with self.read() as conn:
                ids = list(
                    conn.execute(
                        select(runs.c.id).where(runs.c.id > after).order_by(runs.c.id).limit(batch)
                    ).scalars()
                )
            if not ids:
                return
            for run_id in ids:
                try:
                    yield run_id, self.verify(run_id)
                except NotFound:
                    continue  # deleted by retention meanwhile
            after = ids[-1]

    def count_runs(self) -> int:
        with self.read() as conn:
            return int(conn.execute(select(func.count()).select_from(runs)).scalar_one())

    def forks(self, run_id: str) -> list[RunRecord]:
        with self.read() as conn:
            return queries.forks(conn, run_id)

    def events(self, run_id: str) -> list[Event]:
        with self.read() as conn:
            queries.get_run(conn, run_id)
            return queries.list_events(conn, run_id)

    def waits(self, run_id: str | None = None, *, status: str | None = None) -> list[WaitRecord]:
        with self.read() as conn:
            return queries.list_waits(conn, run_id, status=status)


TokenHasher = Callable[[str, int, "str | None"], str]
"""``(run_id, seq, source) -> token hash``: the token a callback wait opened at ``seq`` has."""


def _continuable_seq(conn: Connection, run: RunRecord) -> int:
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


def _purged_message(run: RunRecord) -> str:
    when = run.purged_at.date().isoformat() if run.purged_at else "?"
    return (
        f"run {run.id}'s state was removed by the retention policy on {when}; "
        "its audit trail remains (`pausepoint audit export`, GET /runs/{id}/events)"
    )


def _readable(run: RunRecord) -> RunRecord:
    """The run, if its checkpoints and conversation are still there."""
    if run.purge_state is not None:
        raise Gone(_purged_message(run))
    return run


def _reopened(
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


def _same_request(
    run: RunRecord, agent_name: str, workflow: str, task: str, input: dict[str, Any]
) -> None:
    """A reused idempotency key must come with the same request, or it is a mistake."""
    if (run.agent_name, run.workflow, run.task, run.input) != (agent_name, workflow, task, input):
        raise Conflict(
            f"idempotency key {run.idempotency_key!r} was used for a different request "
            f"(run {run.id}); use a new key"
        )


def _callback_outcome(payload: Any, source: str | None, received_at: datetime) -> dict[str, Any]:
    return {"payload": payload, "source": source, "received_at": received_at.isoformat()}


def _event_outcome(
    name: str | None, payload: Any, received_at: datetime, delivery: int
) -> dict[str, Any]:
    return {
        "event": name,
        "payload": payload,
        "received_at": received_at.isoformat(),
        "delivery": delivery,
    }


def _resume_changes(wait: WaitRecord, now: datetime) -> dict[str, Any]:
    return {"status": QUEUED, "step": wait.resume_step, "due_at": now, "published_at": now}


def _select_list(alias: str, table: Table, prefix: str) -> str:
    return ", ".join(f"{alias}.{c.name} AS {prefix}{c.name}" for c in table.columns)


# Store._claim_first: the CAS, and what the step reads, in one statement (Postgres).
_CLAIM_SQL = (
    "WITH u AS (UPDATE runs SET status = %(running)s, lease_owner = %(owner)s, "
    "lease_expires_at = %(lease)s, version = version + 1, updated_at = %(now)s "
    "WHERE id = %(id)s AND version = %(version)s AND status = %(queued)s "
    "AND (due_at IS NULL OR due_at <= %(now)s) AND EXISTS (SELECT 1 FROM checkpoints k "
    "WHERE k.run_id = runs.id AND k.seq = runs.seq) RETURNING *) "
    f"SELECT {_select_list('u', runs, 'r_')}, {_select_list('c', checkpoints, 'c_')}, "
    f"{_select_list('a', agents, 'a_')}, {_select_list('w', waits, 'w_')}, "
    "(SELECT array_agg(h.resource ORDER BY h.resource) FROM resource_holders h "
    "WHERE h.run_id = u.id) AS holds "
    "FROM u JOIN checkpoints c ON c.run_id = u.id AND c.seq = u.seq "
    "JOIN agents a ON a.name = u.agent_name "
    "LEFT JOIN LATERAL (SELECT * FROM waits WHERE waits.run_id = u.id "
    "AND waits.seq = u.seq AND waits.status <> %(pending)s LIMIT 1) w ON true"
)


def _utc(value: Any) -> Any:
    """A timestamp as the store's column type gives it: aware, in UTC."""
    return value.astimezone(timezone.utc) if isinstance(value, datetime) else value


# Columns of runs whose values go to Postgres as JSON text (jsonb).
_RUN_JSON = frozenset(c.name for c in runs.columns if isinstance(c.type, JSON))
_ONE_STATEMENT_SQL: dict[tuple[Any, ...], str] = {}


def _one_statement(
    run: RunRecord,
    values: dict[str, Any],
    expect_status: Sequence[str] | None,
    expect_owner: str | None,
    new_messages: Sequence[tuple[int, NewMessage]],
    seq: int,
    checkpoint: dict[str, Any] | None,
    event_rows: Sequence[dict[str, Any]],
    now: datetime,
) -> tuple[str, dict[str, Any]]:
    """A transition as one Postgres statement: one round trip instead of six.

        WITH u AS (UPDATE runs SET ... WHERE id = .. AND version = .. RETURNING id),
             m AS (INSERT INTO messages SELECT u.id, x.* FROM u, unnest(arrays) x),
             c AS (INSERT INTO checkpoints SELECT u.id, ... FROM u),
             e AS (INSERT INTO events SELECT u.id, x.* FROM u, unnest(arrays) x)
        SELECT count(*) FROM u

    Every append selects FROM u, so when the CAS matches no row nothing is appended
    and the count is 0; one statement is atomic, so either all of it happens or none.
    The rows go as arrays, so the SQL depends only on which run columns change and on
    which appends there are: it is built once per shape (and psycopg prepares it).
    """
    columns = tuple(sorted(values))
    shape = (
        columns,
        expect_status is not None,
        expect_owner is not None,
        bool(new_messages),
        checkpoint is not None,
        bool(event_rows),
    )
    sql = _ONE_STATEMENT_SQL.get(shape)
    if sql is None:
        sets = ", ".join(f"{c} = %(u_{c})s" for c in columns)
        where = "id = %(id)s AND version = %(version)s"
        if expect_status is not None:
            where += " AND status = ANY(%(status)s)"
        if expect_owner is not None:
            where += " AND lease_owner = %(owner)s"
        ctes = [f"u AS (UPDATE runs SET {sets} WHERE {where} RETURNING id)"]
        if new_messages:
            ctes.append(
                "m AS (INSERT INTO messages (run_id, idx, role, content, seq, created_at) "
                "SELECT u.id, x.idx, x.role, x.content, %(seq)s, %(now)s FROM u, "
                "unnest(%(m_idx)s::int[], %(m_role)s::text[], %(m_content)s::text[]) "
                "AS x(idx, role, content))"
            )
        if checkpoint is not None:
            ctes.append(
                "c AS (INSERT INTO checkpoints "
                "(run_id, seq, step, state, history_len, segments, created_at) "
                "SELECT u.id, %(seq)s, %(c_step)s, %(c_state)s::jsonb, %(c_len)s, "
                "%(c_segments)s::jsonb, %(now)s FROM u)"
            )
        if event_rows:
            ctes.append(
                "e AS (INSERT INTO events (run_id, n, kind, actor, data, hash, created_at) "
                "SELECT u.id, x.n, x.kind, x.actor, x.data, x.hash, %(now)s FROM u, "
                "unnest(%(e_n)s::int[], %(e_kind)s::text[], %(e_actor)s::text[], "
                "%(e_data)s::jsonb[], %(e_hash)s::bytea[]) AS x(n, kind, actor, data, hash))"
            )
        sql = "WITH " + ", ".join(ctes) + " SELECT count(*) FROM u"
        _ONE_STATEMENT_SQL[shape] = sql

    def bind(column: str, value: Any) -> Any:
        if column == "event_hash":
            return bytes.fromhex(value)
        if column in _RUN_JSON:
            return None if value is None else json.dumps(value)
        if isinstance(value, datetime):
            return value.astimezone(timezone.utc)
        return value

    params: dict[str, Any] = {f"u_{c}": bind(c, values[c]) for c in columns}
    params.update(id=run.id, version=run.version, seq=seq, now=now)
    if expect_status is not None:
        params["status"] = list(expect_status)
    if expect_owner is not None:
        params["owner"] = expect_owner
    if new_messages:
        params["m_idx"] = [idx for idx, _ in new_messages]
        params["m_role"] = [m.role for _, m in new_messages]
        params["m_content"] = [m.content for _, m in new_messages]
    if checkpoint is not None:
        params["c_step"] = checkpoint["step"]
        params["c_state"] = json.dumps(checkpoint["state"])
        params["c_len"] = checkpoint["history_len"]
        segments = checkpoint["segments"]
        params["c_segments"] = None if segments is None else json.dumps(segments)
    if event_rows:
        params["e_n"] = [r["n"] for r in event_rows]
        params["e_kind"] = [r["kind"] for r in event_rows]
        params["e_actor"] = [r["actor"] for r in event_rows]
        params["e_data"] = [json.dumps(r["data"]) for r in event_rows]
        params["e_hash"] = [r["hash"] for r in event_rows]
    return sql, params


def _chain(
    run_id: str,
    prev_hash: str,
    count: int,
    new_events: Sequence[NewEvent],
    actor: str,
    now: datetime,
) -> tuple[list[dict[str, Any]], int, str]:
    """Rows for ``new_events``, each hashed over the one before it."""
    rows = []
    head = prev_hash
    for event in new_events:
        count += 1
        data = ensure_json(dict(event.data), "event data")
        digest = event_hash(head, run_id, count, event.kind, actor, data, now)
        rows.append(
            {
                "run_id": run_id,
                "n": count,
                "kind": event.kind,
                "actor": actor,
                "data": data,
                "created_at": now,
                "hash": bytes.fromhex(digest),
            }
        )
        head = digest
    return rows, count, head
