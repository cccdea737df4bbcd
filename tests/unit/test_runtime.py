"""The runtime without a broker: publish is a list, the store a SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, select

from pausepoint.persistence.errors import AgentNotFound, InvalidInput, Retry, WorkflowNotFound
from pausepoint.persistence.records import COMPLETED, FAILED, QUEUED, WAITING
from pausepoint.persistence.store import Store
from pausepoint.persistence.tables import checkpoints, events, messages, runs
from pausepoint.tasks import examples  # noqa: F401  (registers loan and noop)
from pausepoint.tasks.context import StepContext
from pausepoint.tasks.llm import ScriptedBackend
from pausepoint.tasks.runtime import Runtime
from pausepoint.tasks.workflow import End, Next, Outcome, Registry, Wait, Workflow, registry


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    s = Store.from_url(sqlite_url)
    s.save_agent("loan_processor", persona="I am a loan processing assistant.")
    yield s
    s.close()


@pytest.fixture
def published() -> list[tuple[str, int]]:
    return []


@pytest.fixture
def llm() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
def rt(store: Store, llm: ScriptedBackend, published: list[tuple[str, int]]) -> Runtime:
    return Runtime(store, llm=llm, publish=lambda r, v: published.append((r, v)))


def runtime_for(store: Store, workflows: Registry) -> tuple[Runtime, list[tuple[str, int]]]:
    """A runtime over ``workflows`` whose publish appends to the list it returns."""
    published: list[tuple[str, int]] = []
    rt = Runtime(
        store,
        llm=ScriptedBackend(),
        publish=lambda r, v: published.append((r, v)),
        workflows=workflows,
    )
    return rt, published


def drain(rt: Runtime, published: list[tuple[str, int]], limit: int = 50) -> int:
    """Deliver every published message, like a worker would; returns how many ran."""
    n = 0
    while published and n < limit:
        run_id, version = published.pop(0)
        rt.run_step(run_id, version, owner="test-worker")
        n += 1
    return n


def table_counts(store: Store) -> dict[str, int]:
    with store.read() as conn:
        return {
            t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (runs, checkpoints, messages, events)
        }


HEALTHY = "Loan application: amount 20000, income 90000, debt 3000"
RISKY = "Loan application: amount 200000, income 30000, debt 25000"


def test_loan_runs_assess_park_and_finish_when_approved(
    rt: Runtime, store: Store, published: list[tuple[str, int]], llm: ScriptedBackend
) -> None:
    run = rt.start("loan", agent="loan_processor", task=HEALTHY)
    assert published == [(run.id, run.version)]
    drain(rt, published)
    parked = store.get_run(run.id)
    assert parked.status == WAITING and parked.step == "finalize"
    assert store.checkpoint(run.id).state["recommendation"] == "APPROVE"
    assert published == []  # a waiting run has no message in flight
    assert llm.calls[0][0] == {"role": "system", "content": "I am a loan processing assistant."}

    rt.decide(run.id, approved=True, actor="alice", comment="ok")
    drain(rt, published)
    done = store.get_run(run.id)
    assert done.status == COMPLETED
    assert done.result["outcome"] == "approved" and done.result["by"] == "alice"
    history = store.history(run.id)
    assert [m.role for m in history] == ["user", "assistant", "user", "assistant"]
    assert "approved" in history[-1].content.lower()
    # The resumed step saw the first step's turns.
    assert any("RECOMMENDATION" in m["content"] for m in llm.calls[1])
    kinds = [e.kind for e in store.events(run.id)]
    assert kinds == [
        "created",
        "step_completed",
        "decided",
        "resumed",
        "step_completed",
        "completed",
    ]


def test_a_rejected_loan_finishes_rejected(
    rt: Runtime, store: Store, published: list[tuple[str, int]]
) -> None:
    run = rt.start("loan", agent="loan_processor", task=RISKY)
    drain(rt, published)
    assert store.checkpoint(run.id).state["recommendation"] == "DECLINE"
    rt.decide(run.id, approved=False, actor="bob", comment="too much debt")
    drain(rt, published)
    done = store.get_run(run.id)
    assert done.result["outcome"] == "rejected" and done.result["comment"] == "too much debt"


def test_the_same_message_twice_applies_once(
    rt: Runtime, store: Store, published: list[tuple[str, int]]
) -> None:
    run = rt.start("noop", agent="loan_processor", input={"steps": 2, "message": "hi"})
    first = rt.run_step(run.id, run.version, owner="w1")
    before = table_counts(store)
    second = rt.run_step(run.id, run.version, owner="w2")
    assert first.outcome == "committed" and second.outcome == "stale"
    assert table_counts(store) == before
    drain(rt, published)
    done = store.get_run(run.id)
    assert done.status == COMPLETED and done.result == {"steps": 2}
    assert [m.content for m in store.history(run.id)] == ["hi #1", "hi #2"]
    kinds = [e.kind for e in store.events(run.id)]
    assert kinds.count("step_completed") == 2


def test_unknown_workflow_or_agent_stores_nothing(rt: Runtime, store: Store) -> None:
    before = table_counts(store)
    with pytest.raises(WorkflowNotFound, match="loan"):
        rt.start("nope", agent="loan_processor")
    with pytest.raises(AgentNotFound):
        rt.start("loan", agent="ghost")
    with pytest.raises(InvalidInput):
        rt.start("loan", agent="loan_processor", input=[1, 2])  # type: ignore[arg-type]
    assert table_counts(store) == before


def test_idempotent_start_publishes_once(rt: Runtime, published: list[tuple[str, int]]) -> None:
    a = rt.start("noop", agent="loan_processor", idempotency_key="order-17")
    b = rt.start("noop", agent="loan_processor", idempotency_key="order-17")
    assert a.id == b.id and len(published) == 1


@pytest.fixture
def flaky() -> Iterator[tuple[Registry, dict[str, Any]]]:
    reg = Registry()
    calls: dict[str, Any] = {"n": 0, "fail": 2}
    wf = Workflow("flaky", registry=reg)

    @wf.step(max_retries=3, retry_delay=2.0)
    def work(ctx: StepContext) -> Outcome:
        calls["n"] += 1
        ctx.say("assistant", f"attempt {calls['n']}")
        if calls["n"] <= calls["fail"]:
            raise RuntimeError(f"boom {calls['n']}")
        return End({"attempts": calls["n"], "key": ctx.idempotency_key})

    yield reg, calls


def test_failing_steps_retry_with_backoff_from_the_database(
    store: Store, flaky: tuple[Registry, dict[str, Any]]
) -> None:
    reg, _ = flaky
    clock = Clock()
    store.clock = clock
    rt, published = runtime_for(store, reg)
    run = rt.start("flaky", agent="loan_processor")
    drain(rt, published)
    retrying = store.get_run(run.id)
    assert retrying.status == QUEUED and retrying.attempt == 1 and published == []
    clock.now += timedelta(seconds=1.9)
    assert rt.sweep().republished == []
    clock.now += timedelta(seconds=0.2)
    assert len(rt.sweep().republished) == 1
    drain(rt, published)
    clock.now += timedelta(seconds=3.9)  # second backoff is 4 s
    assert rt.sweep().republished == []
    clock.now += timedelta(seconds=0.2)
    rt.sweep()
    drain(rt, published)
    done = store.get_run(run.id)
    assert done.status == COMPLETED and done.result["attempts"] == 3
    # Every attempt saw the same idempotency key; failed attempts left no messages.
    assert done.result["key"] == f"{run.id}:1"
    assert [m.content for m in store.history(run.id)] == ["attempt 3"]
    retried = [e for e in store.events(run.id) if e.kind == "retried"]
    assert [e.data["delay"] for e in retried] == [2.0, 4.0]
    assert "boom 1" in retried[0].data["error"]


def test_a_step_that_keeps_failing_fails_the_run(
    store: Store, flaky: tuple[Registry, dict[str, Any]]
) -> None:
    reg, calls = flaky
    calls["fail"] = 100
    clock = Clock()
    store.clock = clock
    rt, published = runtime_for(store, reg)
    run = rt.start("flaky", agent="loan_processor")
    for _ in range(6):
        drain(rt, published)
        clock.now += timedelta(seconds=60)
        rt.sweep()
    done = store.get_run(run.id)
    assert done.status == FAILED and "boom 4" in (done.error or "")
    assert calls["n"] == 4  # the first try and three retries
    assert [e.kind for e in store.events(run.id)][-1] == "failed"


def test_retry_exception_carries_its_delay(store: Store) -> None:
    reg = Registry()
    wf = Workflow("rate_limited", registry=reg)
    seen: list[int] = []

    @wf.step
    def call(ctx: StepContext) -> Outcome:
        seen.append(ctx.attempt)
        if ctx.attempt == 0:
            raise Retry("quota exhausted", delay=30)
        return End("ok")

    clock = Clock()
    store.clock = clock
    rt, published = runtime_for(store, reg)
    run = rt.start("rate_limited", agent="loan_processor")
    drain(rt, published)
    clock.now += timedelta(seconds=29)
    assert rt.sweep().republished == []
    clock.now += timedelta(seconds=1)
    rt.sweep()
    drain(rt, published)
    assert store.get_run(run.id).status == COMPLETED and seen == [0, 1]


def test_a_bad_step_result_fails_the_run_with_a_clear_error(store: Store) -> None:
    reg = Registry()
    wf = Workflow("broken", registry=reg)

    @wf.step
    def first(ctx: StepContext) -> Outcome:
        return Next("no_such_step")

    rt, published = runtime_for(store, reg)
    run = rt.start("broken", agent="loan_processor")
    drain(rt, published)
    done = store.get_run(run.id)
    assert done.status == FAILED and "no step 'no_such_step'" in (done.error or "")


def test_a_lost_publish_is_recovered_by_the_sweeper(store: Store) -> None:
    clock = Clock()
    store.clock = clock
    sent: list[tuple[str, int]] = []
    broken = {"on": True}

    def publish(run_id: str, version: int) -> None:
        if broken["on"]:
            raise ConnectionError("broker down")
        sent.append((run_id, version))

    rt = Runtime(store, llm=ScriptedBackend(), publish=publish, redeliver_after=10)
    run = rt.start("noop", agent="loan_processor")  # committed, publish failed
    assert store.get_run(run.id).status == QUEUED and sent == []
    broken["on"] = False
    clock.now += timedelta(seconds=11)
    rt.sweep()
    assert len(sent) == 1
    drain(rt, sent)
    assert store.get_run(run.id).status == COMPLETED


def test_timer_wait_holds_no_message_and_fires_from_the_sweeper(store: Store) -> None:
    reg = Registry()
    wf = Workflow("sleepy", registry=reg)

    @wf.step
    def nap(ctx: StepContext) -> Outcome:
        return Wait.timer("wake", delay=timedelta(hours=2))

    @wf.step
    def wake(ctx: StepContext) -> Outcome:
        assert ctx.resumed is not None and ctx.resumed.kind == "timer"
        return End("rested")

    clock = Clock()
    store.clock = clock
    rt, published = runtime_for(store, reg)
    run = rt.start("sleepy", agent="loan_processor")
    drain(rt, published)
    assert store.get_run(run.id).status == WAITING and published == []
    clock.now += timedelta(hours=2)
    rt.sweep()
    drain(rt, published)
    assert store.get_run(run.id).result == "rested"


def test_history_is_read_lazily(store: Store) -> None:
    reg = Registry()
    wf = Workflow("counter", registry=reg)
    seen: list[int] = []

    @wf.step
    def talk(ctx: StepContext) -> Outcome:
        seen.append(len(ctx.history))
        ctx.say("assistant", "x" * 10)
        if len(seen) < 5:
            return Next("talk")
        assert [m["content"] for m in ctx.history.tail(2)] == ["x" * 10] * 2
        return End(len(ctx.history.all()))

    rt, published = runtime_for(store, reg)
    run = rt.start("counter", agent="loan_processor")
    drain(rt, published)
    assert seen == [0, 1, 2, 3, 4] and store.get_run(run.id).result == 4


def test_registry_rejects_duplicates_and_names_known_workflows() -> None:
    assert {"loan", "noop"} <= set(registry.names())
    with pytest.raises(WorkflowNotFound, match=r"known workflows: .*loan"):
        registry.get("nope")


def test_a_long_step_keeps_its_lease_while_it_runs(store: Store) -> None:
    """The heartbeat renews the lease: a step longer than the lease is not taken away."""
    import threading
    import time as _time

    reg = Registry()
    wf = Workflow("long", registry=reg)

    @wf.step
    def crunch(ctx: StepContext) -> Outcome:
        _time.sleep(1.5)
        return End("crunched")

    store.lease_seconds = 0.6
    rt, published = runtime_for(store, reg)
    run = rt.start("long", agent="loan_processor")
    sweeps: list[Any] = []
    stop = threading.Event()

    def sweeper() -> None:
        while not stop.wait(0.1):
            sweeps.append(rt.sweep())

    t = threading.Thread(target=sweeper)
    t.start()
    try:
        report = rt.run_step(*published.pop(0), owner="w1")
    finally:
        stop.set()
        t.join()
    assert report.outcome == "committed"
    assert store.get_run(run.id).result == "crunched"
    assert len(sweeps) >= 5 and not any(s.lease_expired for s in sweeps)
    assert "lease_expired" not in [e.kind for e in store.events(run.id)]


def test_sequential_steps_run_inline_one_checkpoint_each(store: Store) -> None:
    published: list[tuple[str, int]] = []
    rt = Runtime(
        store, llm=ScriptedBackend(), publish=lambda r, v: published.append((r, v)), inline_steps=5
    )
    run = rt.start("noop", agent="loan_processor", input={"steps": 12, "message": "m"})
    sent = 1
    while published:
        run_id, version = published.pop(0)
        report = rt.run_step(run_id, version, owner="w")
        assert report.outcome == "committed"
        sent += len(published)
    final = store.get_run(run.id)
    assert final.status == COMPLETED and final.result == {"steps": 12}
    # 12 steps in 3 messages: 5 + 5 + 2, each step still its own checkpoint.
    assert sent == 3
    assert [c.seq for c in store.checkpoints(run.id)] == list(range(13))
    assert [m.content for m in store.history(run.id)] == [f"m #{i}" for i in range(1, 13)]
    trail = store.events(run.id)
    steps = [e.data["seq"] for e in trail if e.kind == "step_completed"]
    assert steps == list(range(1, 13))
    assert store.verify(run.id) is None


def test_inline_steps_stop_at_a_wait(store: Store) -> None:
    published: list[tuple[str, int]] = []
    rt = Runtime(
        store, llm=ScriptedBackend(), publish=lambda r, v: published.append((r, v)), inline_steps=9
    )
    run = rt.start("loan", agent="loan_processor", task="Name: A, credit 780, income 99000")
    rt.run_step(*published.pop(0), owner="w")
    assert store.get_run(run.id).status == WAITING and published == []
    rt.decide(run.id, approved=True, actor="bob")
    rt.run_step(*published.pop(0), owner="w")
    assert store.get_run(run.id).status == COMPLETED
    with pytest.raises(InvalidInput):
        Runtime(store, llm=ScriptedBackend(), publish=lambda r, v: None, inline_steps=0)


def test_chained_steps_move_the_lease_only_when_half_of_it_is_used(store: Store) -> None:
    """An inline step keeps the run's lease (no indexed column changes: a HOT update on
    Postgres) until less than half of it is left; then its commit renews it."""
    reg = Registry()
    wf = Workflow("ticking", registry=reg)
    start = datetime(2030, 1, 1, tzinfo=timezone.utc)
    now = [start]
    store.clock = lambda: now[0]
    store.lease_seconds = 100.0
    seen: list[tuple[float, float]] = []  # (seconds since start, lease left) in each step

    @wf.step(start=True)
    def tick(ctx: StepContext) -> Outcome:
        lease = store.get_run(ctx.run_id).lease_expires_at
        assert lease is not None
        seen.append(((now[0] - start).total_seconds(), (lease - now[0]).total_seconds()))
        now[0] += timedelta(seconds=30)
        return Next("tick") if len(seen) < 6 else End("done")

    rt, published = runtime_for(store, reg)
    rt.inline_steps = 10
    rt.inline_seconds = 60.0
    rt.start("ticking", agent="loan_processor")
    rt.run_step(*published.pop(0), owner="w")
    # Claimed at 0 (lease to 100); at 30 and 60 a step commits with 70 and 40 left:
    # kept, then renewed to 60 + 100; at 90 (70 left) kept; at 120 (40 left) renewed.
    assert seen == [(0, 100), (30, 70), (60, 100), (90, 70), (120, 100), (150, 70)]
    assert all(left > 0 for _, left in seen)


def test_one_heartbeat_thread_renews_every_running_step_until_it_ends() -> None:
    import threading
    import time as _time
    from types import SimpleNamespace

    from pausepoint.persistence.errors import StaleVersion
    from pausepoint.tasks.heartbeats import _heartbeats

    calls: list[str] = []

    class Stub:
        lease_seconds = 0.3  # a beat every 0.1 s

        def renew_lease(self, claim: Any, owner: str) -> None:
            calls.append(claim.run.id)
            if claim.run.id == "lost":
                raise StaleVersion("lost", 1)

    def claim(run_id: str) -> Any:
        return SimpleNamespace(run=SimpleNamespace(id=run_id, lease_expires_at=None))

    store: Any = Stub()
    before = {t.name for t in threading.enumerate()}
    with _heartbeats.beating(store, claim("a"), "w"), _heartbeats.beating(store, claim("b"), "w"):
        with _heartbeats.beating(store, claim("lost"), "w"):
            _time.sleep(0.45)
    ended = len(calls)
    _time.sleep(0.25)
    assert len(calls) == ended, "a step that ended is not renewed any more"
    assert calls.count("a") >= 3 and calls.count("b") >= 3
    assert calls.count("lost") == 1, "a lease taken over is not renewed again"
    threads = [t for t in threading.enumerate() if t.name == "pausepoint-lease"]
    assert len(threads) <= 1 and ("pausepoint-lease" in before or len(threads) == 1)


def test_a_chained_step_with_part_of_its_lease_left_is_renewed_at_once() -> None:
    """A chained step may start with only half its lease left: the first beat comes
    early enough that two beats still fall before the lease runs out."""
    import threading
    import time as _time
    from types import SimpleNamespace

    from pausepoint.tasks.heartbeats import _heartbeats

    renewed: list[float] = []
    start = datetime.now(timezone.utc)

    class Stub:
        lease_seconds = 3.0  # a beat every second after a full lease

        def clock(self) -> datetime:
            return datetime.now(timezone.utc)

        def renew_lease(self, claim: Any, owner: str) -> None:
            renewed.append(_time.monotonic())

    half = SimpleNamespace(
        run=SimpleNamespace(id="r", lease_expires_at=start + timedelta(seconds=1.5))
    )
    store: Any = Stub()
    # A dead heartbeat thread is replaced on the next step.
    dead = threading.Thread(target=lambda: None, name="pausepoint-lease")
    dead.start()
    dead.join()
    _heartbeats._thread = dead
    t0 = _time.monotonic()
    with _heartbeats.beating(store, half, "w"):
        _time.sleep(0.3)
    assert _heartbeats._thread is not dead and _heartbeats._thread.is_alive()
    assert renewed and renewed[0] - t0 < 0.25, "1.5 s left of 3: renewed at once"
