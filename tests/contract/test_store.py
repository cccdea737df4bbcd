"""The Store contract: the same cases on SQLite and on the real Postgres."""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, select

from pausepoint.persistence.audit import event_hash
from pausepoint.persistence.errors import (
    AgentNotFound,
    Conflict,
    InvalidInput,
    NotFound,
    NotWaiting,
    RunNotFound,
    StaleVersion,
)
from pausepoint.persistence.records import (
    APPROVAL,
    COMPLETED,
    EXPIRED,
    FAILED,
    FULFILLED,
    QUEUED,
    RUNNING,
    TIMER,
    WAITING,
    NewEvent,
    NewMessage,
    Transition,
    WaitSpec,
)
from pausepoint.persistence.store import Store
from pausepoint.persistence.tables import checkpoints, events, messages, runs, waits


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(store: Store) -> Clock:
    c = Clock()
    store.clock = c
    return c


def counts(store: Store, run_id: str) -> dict[str, int]:
    with store.read() as conn:
        return {
            t.name: conn.execute(
                select(func.count()).select_from(t).where(t.c.run_id == run_id)
            ).scalar_one()
            for t in (checkpoints, messages, events, waits)
        }


def snapshot(store: Store) -> dict[str, list[Any]]:
    with store.read() as conn:
        return {
            t.name: sorted(map(repr, conn.execute(select(t)).all()))
            for t in (runs, checkpoints, messages, events, waits)
        }


def new_run(store: Store, **kw: Any) -> Any:
    store.save_agent("alice", persona="p")
    run, created = store.create_run(
        agent_name="alice", workflow="wf", first_step="one", actor="test", **kw
    )
    assert created
    return run


def park(store: Store, run: Any, **wait: Any) -> Any:
    claim = store.claim(run.id, run.version, "w1")
    assert claim is not None
    spec = WaitSpec(**{"kind": APPROVAL, "resume_step": "two", **wait})
    return store.commit_step(
        claim,
        "w1",
        Transition(
            status=WAITING,
            state={"parked": True},
            wait=spec,
            messages=(NewMessage("assistant", "please approve"),),
        ),
    )


def test_agents_are_upserted_and_listed(store: Store) -> None:
    a = store.save_agent("bob", persona="p1", instruction="i1", model={"model": "m"})
    assert (a.persona, a.instruction, a.strategy, a.model) == ("p1", "i1", "", {"model": "m"})
    b = store.save_agent("bob", strategy="s2")
    assert (b.persona, b.strategy, b.created_at) == ("p1", "s2", a.created_at)
    assert [x.name for x in store.list_agents()] == ["bob"]
    with pytest.raises(AgentNotFound):
        store.get_agent("nobody")
    with pytest.raises(InvalidInput):
        store.save_agent(" bad ")


def test_create_run_writes_run_checkpoint_and_event_in_one_go(store: Store) -> None:
    run = new_run(store, task="t", input={"amount": 5})
    assert (run.status, run.version, run.seq, run.step) == (QUEUED, 1, 0, "one")
    assert store.get_run(run.id) == run
    assert store.checkpoint(run.id).state == {}
    assert [e.kind for e in store.events(run.id)] == ["created"]


def test_create_run_for_unknown_agent_changes_nothing(store: Store) -> None:
    before = snapshot(store)
    with pytest.raises(AgentNotFound):
        store.create_run(agent_name="ghost", workflow="wf", first_step="a", actor="t")
    assert snapshot(store) == before


def test_create_run_rejects_unserializable_input(store: Store) -> None:
    store.save_agent("alice")
    with pytest.raises(InvalidInput):
        store.create_run(
            agent_name="alice", workflow="wf", first_step="a", actor="t", input={"x": object()}
        )
    assert store.list_runs() == []


def test_idempotency_key_returns_the_same_run(store: Store) -> None:
    store.save_agent("alice")
    first, created = store.create_run(
        agent_name="alice", workflow="wf", first_step="a", actor="t", idempotency_key="k1"
    )
    again, created_again = store.create_run(
        agent_name="alice", workflow="wf", first_step="a", actor="t", idempotency_key="k1"
    )
    assert created and not created_again
    assert again.id == first.id
    assert len(store.list_runs()) == 1


def test_claim_is_exclusive_and_stale_versions_do_nothing(store: Store, clock: Clock) -> None:
    run = new_run(store)
    claim = store.claim(run.id, run.version, "w1")
    assert claim is not None and claim.run.status == RUNNING
    assert claim.idempotency_key == f"{run.id}:1"
    before = snapshot(store)
    assert store.claim(run.id, run.version, "w2") is None
    assert store.claim(run.id, run.version + 1, "w2") is None  # running, not queued
    assert store.claim("nope", 1, "w2") is None
    assert snapshot(store) == before


def test_a_claim_that_cannot_read_its_checkpoint_takes_no_lease(store: Store) -> None:
    run = new_run(store)
    with store.write() as conn:
        conn.execute(checkpoints.delete().where(checkpoints.c.run_id == run.id))
    before = snapshot(store)
    try:
        assert store.claim(run.id, run.version, "w1") is None
    except NotFound:
        pass  # the SQLite path reads before its CAS and says so
    assert snapshot(store) == before
    assert store.get_run(run.id).status == QUEUED


def test_commit_appends_and_bumps_version(store: Store) -> None:
    run = new_run(store)
    claim = store.claim(run.id, run.version, "w1")
    assert claim is not None
    new = store.commit_step(
        claim,
        "w1",
        Transition(
            status=QUEUED,
            step="two",
            state={"n": 1},
            messages=(NewMessage("user", "hi"), NewMessage("assistant", "hello")),
            events=(NewEvent("step_completed", {"step": "one"}),),
        ),
    )
    assert (new.status, new.step, new.seq, new.history_len) == (QUEUED, "two", 1, 2)
    assert new.version == claim.run.version + 1
    assert store.get_run(run.id) == new
    cp = store.checkpoint(run.id)
    assert (cp.seq, cp.state, cp.history_len, cp.step) == (1, {"n": 1}, 2, "two")
    assert [m.content for m in store.history(run.id)] == ["hi", "hello"]


def test_duplicate_commit_is_refused_and_changes_nothing(store: Store) -> None:
    run = new_run(store)
    claim = store.claim(run.id, run.version, "w1")
    assert claim is not None
    t = Transition(status=COMPLETED, state={}, messages=(NewMessage("assistant", "done"),))
    store.commit_step(claim, "w1", t)
    before = snapshot(store)
    with pytest.raises(StaleVersion):
        store.commit_step(claim, "w1", t)
    assert snapshot(store) == before


def test_commit_by_a_worker_that_lost_its_lease_is_refused(store: Store, clock: Clock) -> None:
    store.lease_seconds = 10
    run = new_run(store)
    claim = store.claim(run.id, run.version, "w1")
    assert claim is not None
    clock.advance(11)
    report = store.sweep(redeliver_after=30)
    assert report.lease_expired == [run.id]
    ((rid, version),) = report.republished
    claim2 = store.claim(rid, version, "w2")
    assert claim2 is not None
    with pytest.raises(StaleVersion):
        store.commit_step(claim, "w1", Transition(status=COMPLETED, state={"by": "w1"}))
    store.commit_step(claim2, "w2", Transition(status=COMPLETED, state={"by": "w2"}))
    assert store.checkpoint(run.id).state == {"by": "w2"}
    assert counts(store, run.id)["checkpoints"] == 2


def test_concurrent_claims_one_wins(store: Store) -> None:
    run = new_run(store)
    results: list[object] = []
    barrier = threading.Barrier(8)

    def go(i: int) -> None:
        barrier.wait()
        results.append(store.claim(run.id, run.version, f"w{i}"))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1
    winner = next(r for r in results if r is not None)
    after = store.get_run(run.id)
    assert after.version == run.version + 1 and after.lease_owner == winner.run.lease_owner


def test_message_writes_do_not_copy_the_history(store: Store) -> None:
    """A checkpoint refers to the conversation by length: each step adds only its own rows."""
    run = new_run(store)
    for i in range(30):
        claim = store.claim(run.id, run.version, "w1")
        assert claim is not None
        run = store.commit_step(
            claim,
            "w1",
            Transition(
                status=QUEUED,
                step="one",
                state={"i": i},
                messages=(NewMessage("assistant", f"m{i}"),),
            ),
        )
        c = counts(store, run.id)
        assert c["messages"] == i + 1 and c["checkpoints"] == i + 2
    cp = store.checkpoint(run.id)
    assert cp.history_len == 30 and cp.state == {"i": 29}
    assert "m0" not in repr(cp.state)
    assert [m.content for m in store.history(run.id, start=28)] == ["m28", "m29"]


def test_decide_resumes_exactly_once(store: Store) -> None:
    run = park(store, new_run(store))
    assert run.status == WAITING
    (wait,) = store.waits(run.id)
    assert wait.kind == APPROVAL and wait.status == "pending"
    resumed = store.decide(run.id, approved=True, actor="carol", comment="fine")
    assert (resumed.status, resumed.step) == (QUEUED, "two")
    (wait,) = store.waits(run.id)
    assert wait.status == FULFILLED and wait.decided_by == "carol"
    assert wait.outcome["approved"] is True and wait.outcome["comment"] == "fine"
    before = snapshot(store)
    with pytest.raises(NotWaiting):
        store.decide(run.id, approved=False, actor="dave")
    assert snapshot(store) == before
    kinds = [e.kind for e in store.events(run.id)]
    assert kinds.count("decided") == 1


def test_decide_errors_change_nothing(store: Store) -> None:
    run = new_run(store)
    before = snapshot(store)
    with pytest.raises(RunNotFound):
        store.decide("nope", approved=True, actor="x")
    with pytest.raises(NotWaiting):
        store.decide(run.id, approved=True, actor="x")  # queued, not waiting
    with pytest.raises(InvalidInput):
        store.decide(run.id, approved=True, actor="x", data={"x": {1, 2}})
    assert snapshot(store) == before


def test_many_concurrent_decisions_one_wins(store: Store) -> None:
    run = park(store, new_run(store))
    outcomes: list[str] = []
    barrier = threading.Barrier(20)

    def go(i: int) -> None:
        barrier.wait()
        try:
            store.decide(run.id, approved=i % 2 == 0, actor=f"approver{i}")
            outcomes.append("ok")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=go, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 1 and outcomes.count("conflict") == 19
    assert [e.kind for e in store.events(run.id)].count("decided") == 1


def test_sweeper_resends_lost_messages_once_per_interval(store: Store, clock: Clock) -> None:
    run = new_run(store)
    assert store.sweep(redeliver_after=30).republished == []  # just published
    clock.advance(31)
    before = counts(store, run.id)
    report = store.sweep(redeliver_after=30)
    # Same version: if the first message was only slow, it still counts, and the
    # two copies between them apply the step once.
    assert report.republished == [(run.id, run.version)]
    assert store.sweep(redeliver_after=30).republished == []  # not again until 30 s more
    assert counts(store, run.id) == before
    assert store.claim(run.id, run.version, "w1") is not None
    assert store.claim(run.id, run.version, "w2") is None


def test_delayed_retry_is_published_by_the_sweeper_when_due(store: Store, clock: Clock) -> None:
    run = new_run(store)
    claim = store.claim(run.id, run.version, "w1")
    assert claim is not None
    retry = store.commit_step(
        claim,
        "w1",
        Transition(status=QUEUED, step="one", state={}, retry=True, delay=10),
    )
    assert retry.attempt == 1 and retry.published_at is None
    assert store.claim(run.id, retry.version, "w1") is None  # not due yet
    assert store.sweep(redeliver_after=30).republished == []
    clock.advance(10)
    ((rid, version),) = store.sweep(redeliver_after=30).republished
    assert store.claim(rid, version, "w1") is not None
    assert counts(store, run.id)["checkpoints"] == 1  # a retry writes no checkpoint


def test_worker_lost_too_often_fails_the_run(store: Store, clock: Clock) -> None:
    store.lease_seconds = 5
    run = new_run(store)
    for _ in range(3):
        claim = store.claim(run.id, run.version, "w")
        assert claim is not None
        clock.advance(6)
        report = store.sweep(redeliver_after=30, max_attempts=3)
        if report.failed:
            break
        run = store.get_run(run.id)
    final = store.get_run(run.id)
    assert final.status == FAILED and "lost its worker 3 times" in (final.error or "")


@pytest.mark.parametrize("on_timeout", ["fail", "default"])
def test_deadline_outcome_happens_once(store: Store, clock: Clock, on_timeout: str) -> None:
    run = park(
        store,
        new_run(store),
        deadline=clock.now + timedelta(hours=1),
        on_timeout=on_timeout,
        default_outcome={"approved": False, "decision": "expired"},
    )
    clock.advance(3599)
    assert store.sweep(redeliver_after=30).deadlines == []
    clock.advance(2)
    report = store.sweep(redeliver_after=30)
    assert report.deadlines == [run.id]
    assert store.sweep(redeliver_after=30).deadlines == []
    final = store.get_run(run.id)
    (wait,) = store.waits(run.id)
    assert wait.status == EXPIRED
    if on_timeout == "fail":
        assert final.status == FAILED and "deadline" in (final.error or "")
    else:
        assert (final.status, final.step) == (QUEUED, "two")
        assert wait.outcome == {"approved": False, "decision": "expired"}
    assert [e.kind for e in store.events(run.id)].count("expired") == 1
    with pytest.raises(NotWaiting):
        store.decide(run.id, approved=True, actor="late")


def test_timer_fires_at_its_deadline(store: Store, clock: Clock) -> None:
    run = park(store, new_run(store), kind=TIMER, deadline=clock.now + timedelta(minutes=5))
    clock.advance(299)
    assert store.sweep(redeliver_after=30).republished == []
    clock.advance(1)
    ((rid, _),) = store.sweep(redeliver_after=30).republished
    assert rid == run.id and store.get_run(run.id).step == "two"
    (wait,) = store.waits(run.id)
    assert wait.status == FULFILLED


def test_events_form_a_hash_chain(store: Store) -> None:
    run = park(store, new_run(store))
    store.decide(run.id, approved=True, actor="x")
    trail = store.events(run.id)
    assert [e.n for e in trail] == list(range(1, len(trail) + 1))
    prev = ""
    for e in trail:
        assert e.prev_hash == prev
        assert e.hash == event_hash(
            store.audit_keys, prev, e.run_id, e.n, e.kind, e.actor, e.data, e.created_at
        )
        prev = e.hash
    assert store.get_run(run.id).event_hash == prev


def test_two_runs_of_one_agent_keep_separate_state(store: Store) -> None:
    a = new_run(store)
    b, _ = store.create_run(agent_name="alice", workflow="wf", first_step="one", actor="t")
    for run, text in ((a, "for a"), (b, "for b")):
        claim = store.claim(run.id, run.version, "w")
        assert claim is not None
        store.commit_step(
            claim,
            "w",
            Transition(
                status=COMPLETED, state={"who": text}, messages=(NewMessage("assistant", text),)
            ),
        )
    assert [m.content for m in store.history(a.id)] == ["for a"]
    assert [m.content for m in store.history(b.id)] == ["for b"]
    assert store.checkpoint(a.id).state == {"who": "for a"}
    assert store.checkpoint(b.id).state == {"who": "for b"}


def test_session_saves_are_compare_and_swap(store: Store) -> None:
    store.save_agent("alice")
    session = store.open_session("alice", "script")
    assert store.open_session("alice", "script").id == session.id
    saved = store.save_session(
        session,
        actor="s",
        status="paused",
        task="t",
        state={"x": 1},
        messages=[NewMessage("user", "u")],
    )
    with pytest.raises(StaleVersion):
        store.save_session(session, actor="s", status="active", task="t", state={})
    assert store.get_run(session.id) == saved


def test_sqlite_connections_are_hardened(sqlite_url: str) -> None:
    s = Store.from_url(sqlite_url)
    try:
        with s.engine.connect() as conn:
            pragmas = {
                p: conn.exec_driver_sql(f"PRAGMA {p}").scalar()
                for p in ("journal_mode", "busy_timeout", "foreign_keys")
            }
        assert pragmas == {"journal_mode": "wal", "busy_timeout": 30000, "foreign_keys": 1}
        # Writers take the write lock at BEGIN, so two processes cannot both read a
        # version and then deadlock upgrading: a second writer waits at BEGIN.
        with s.write():
            other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=0)
            other.isolation_level = None
            try:
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
            finally:
                other.close()
    finally:
        s.close()
