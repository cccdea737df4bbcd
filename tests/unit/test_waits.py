"""Callback, event, resource and escalating approval waits, through the runtime (no broker)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from pausepoint.persistence.errors import Conflict, Forbidden, Gone, NotFound
from pausepoint.persistence.records import COMPLETED, FAILED, QUEUED, WAITING
from pausepoint.persistence.store import Store
from pausepoint.tasks.context import StepContext
from pausepoint.tasks.llm import ScriptedBackend
from pausepoint.tasks.runtime import Runtime
from pausepoint.tasks.tokens import parse_token
from pausepoint.tasks.workflow import End, Outcome, Registry, Wait, Workflow, registry
from tests import workflows  # noqa: F401  (payment, order, gpu)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 5, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store.from_url(store_url)
    s.clock = Clock()
    s.save_agent("ops")
    yield s
    s.close()


@pytest.fixture
def published() -> list[tuple[str, int]]:
    return []


@pytest.fixture
def rt(store: Store, published: list[tuple[str, int]]) -> Runtime:
    return Runtime(store, llm=ScriptedBackend(), publish=lambda r, v: published.append((r, v)))


def drain(rt: Runtime, published: list[tuple[str, int]]) -> None:
    while published:
        rt.run_step(*published.pop(0), owner="w")


def callback_token(rt: Runtime, run_id: str) -> str:
    url = rt.store.checkpoint(run_id).state["callback_url"]
    return str(url.rsplit("/", 1)[1])


def test_callback_resumes_once_and_says_why_not_twice(
    rt: Runtime, store: Store, published: list[tuple[str, int]]
) -> None:
    run = rt.start("payment", agent="ops")
    drain(rt, published)
    assert store.get_run(run.id).status == WAITING
    token = callback_token(rt, run.id)
    assert parse_token(rt.secret, token) is not None
    (wait,) = store.waits(run.id)
    assert wait.kind == "callback" and token not in repr(wait)  # only its hash is stored
    outcome, _ = rt.deliver_callback(token, {"amount": 12}, actor="payments")
    assert outcome == "resumed"
    with pytest.raises(Conflict):
        rt.deliver_callback(token, {"amount": 12}, actor="payments")
    drain(rt, published)
    assert store.get_run(run.id).result == {"callback": {"amount": 12}}
    with pytest.raises(NotFound):
        rt.deliver_callback(token[:-1] + ("0" if token[-1] != "0" else "1"), {}, actor="x")
    with pytest.raises(NotFound):
        rt.deliver_callback("garbage", {}, actor="x")


def test_a_callback_before_the_run_parks_is_delivered_when_it_parks(
    rt: Runtime, store: Store, published: list[tuple[str, int]]
) -> None:
    reg = Registry()
    wf = Workflow("fast_partner", registry=reg)
    seen: dict[str, str] = {}

    @wf.step
    def ask(ctx: StepContext) -> Outcome:
        url = ctx.callback_url()
        # The partner answers while this step is still running.
        seen["outcome"] = rt.deliver_callback(url.rsplit("/", 1)[1], {"ok": 1}, actor="p")[0]
        return Wait.callback("done")

    @wf.step
    def done(ctx: StepContext) -> Outcome:
        assert ctx.resumed is not None
        return End(ctx.resumed.outcome["payload"])

    rt.workflows = reg
    run = rt.start("fast_partner", agent="ops")
    drain(rt, published)
    assert seen["outcome"] == "stored"
    final = store.get_run(run.id)
    assert final.status == COMPLETED and final.result == {"ok": 1}
    kinds = [e.kind for e in store.events(run.id)]
    assert kinds.count("callback_received") == 1


def test_an_expired_callback_is_gone(
    rt: Runtime, store: Store, published: list[tuple[str, int]]
) -> None:
    reg = Registry()
    wf = Workflow("slow_partner", registry=reg)

    @wf.step
    def ask(ctx: StepContext) -> Outcome:
        ctx.state["callback_url"] = ctx.callback_url()
        return Wait.callback("done", timeout=timedelta(minutes=5))

    @wf.step
    def done(ctx: StepContext) -> Outcome:
        return End("late")

    rt.workflows = reg
    run = rt.start("slow_partner", agent="ops")
    drain(rt, published)
    token = callback_token(rt, run.id)
    clock = store.clock
    assert isinstance(clock, Clock)
    clock.now += timedelta(minutes=6)
    with pytest.raises(Gone):
        rt.deliver_callback(token, {}, actor="p")
    rt.sweep()
    assert store.get_run(run.id).status == FAILED
    with pytest.raises(Gone):
        rt.deliver_callback(token, {}, actor="p")


def test_events_resume_every_run_with_the_key_and_are_kept_for_later(
    rt: Runtime, store: Store, published: list[tuple[str, int]]
) -> None:
    a = rt.start("order", agent="ops", input={"order_id": "A1"})
    b = rt.start("order", agent="ops", input={"order_id": "A1"})
    c = rt.start("order", agent="ops", input={"order_id": "B2"})
    late = rt.start("order", agent="ops", input={"order_id": "A1"})
    late_msg = [p for p in published if p[0] == late.id]
    published[:] = [p for p in published if p[0] != late.id]
    drain(rt, published)
    assert {store.get_run(r.id).status for r in (a, b, c)} == {WAITING}
    resumed = rt.publish_event("order.paid", "A1", {"amount": 5}, actor="shop")
    assert {r.id for r in resumed} == {a.id, b.id}
    drain(rt, published)
    assert store.get_run(a.id).result == {"shipped": "A1", "event": {"amount": 5}}
    assert store.get_run(c.id).status == WAITING
    # A run that started before the event but parks after it is resumed at once.
    published.extend(late_msg)
    drain(rt, published)
    assert store.get_run(late.id).status == COMPLETED


def test_a_resource_with_two_slots_lets_two_in_and_all_six_finish(
    rt: Runtime, store: Store, published: list[tuple[str, int]]
) -> None:
    store.set_resource("gpu", 2)
    ids = [rt.start("gpu", agent="ops").id for _ in range(6)]
    # Every run takes its first step: two get a slot, four park.
    for _ in range(6):
        rt.run_step(*published.pop(0), owner="w")
    statuses = [store.get_run(i).status for i in ids]
    assert statuses.count(QUEUED) == 2 and statuses.count(WAITING) == 4
    assert store.get_resource("gpu").in_use == 2
    while published:
        assert store.get_resource("gpu").in_use <= 2
        rt.run_step(*published.pop(0), owner="w")
    assert all(store.get_run(i).status == COMPLETED for i in ids)
    assert store.get_resource("gpu").in_use == 0
    assert store.holds(ids[0]) == []


def test_an_unknown_resource_fails_the_run_clearly(
    rt: Runtime, store: Store, published: list[tuple[str, int]]
) -> None:
    run = rt.start("gpu", agent="ops", input={"resource": "tpu"})
    drain(rt, published)
    final = store.get_run(run.id)
    assert final.status == FAILED and "no resource named 'tpu'" in (final.error or "")


def test_approvals_are_limited_to_their_group_and_escalate_at_the_deadline(
    rt: Runtime, store: Store, published: list[tuple[str, int]]
) -> None:
    reg = Registry()
    wf = Workflow("big_loan", registry=reg)

    @wf.step
    def ask(ctx: StepContext) -> Outcome:
        return Wait.approval(
            "done",
            group="underwriters",
            timeout=timedelta(hours=1),
            escalate_to="managers",
            escalate_after=timedelta(hours=2),
        )

    @wf.step
    def done(ctx: StepContext) -> Outcome:
        assert ctx.resumed is not None
        return End(ctx.resumed.outcome["by"])

    rt.workflows = reg
    run = rt.start("big_loan", agent="ops")
    drain(rt, published)
    with pytest.raises(Forbidden):
        rt.decide(run.id, approved=True, actor="mallory", groups=frozenset({"managers"}))
    clock = store.clock
    assert isinstance(clock, Clock)
    clock.now += timedelta(hours=1, seconds=1)
    assert rt.sweep().escalated == [run.id]
    assert rt.sweep().escalated == []
    (wait,) = store.waits(run.id)
    assert wait.approver_group == "managers" and wait.status == "pending"
    with pytest.raises(Forbidden):
        rt.decide(run.id, approved=True, actor="ulla", groups=frozenset({"underwriters"}))
    rt.decide(run.id, approved=True, actor="mia", groups=frozenset({"managers"}))
    drain(rt, published)
    assert store.get_run(run.id).result == "mia"
    assert [e.kind for e in store.events(run.id)].count("escalated") == 1


def test_workflows_module_registers_the_test_workflows() -> None:
    assert {"payment", "order", "gpu"} <= set(registry.names())


def test_an_event_resumes_a_run_once_even_if_it_waits_for_it_again(
    rt: Runtime, store: Store, published: list[tuple[str, int]]
) -> None:
    reg = Registry()
    wf = Workflow("twice", registry=reg)

    @wf.step
    def first(ctx: StepContext) -> Outcome:
        return Wait.event("tick", key="k", then="second")

    @wf.step
    def second(ctx: StepContext) -> Outcome:
        return Wait.event("tick", key="k", then="third")

    @wf.step
    def third(ctx: StepContext) -> Outcome:
        return End("two ticks")

    rt.workflows = reg
    run = rt.start("twice", agent="ops")
    drain(rt, published)
    rt.publish_event("tick", "k", {"n": 1}, actor="clock")
    drain(rt, published)
    assert store.get_run(run.id).status == WAITING  # the first tick does not count twice
    rt.publish_event("tick", "k", {"n": 2}, actor="clock")
    drain(rt, published)
    assert store.get_run(run.id).result == "two ticks"
