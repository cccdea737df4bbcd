"""Agent loops and tools, in process, on the SQLite store and on the real Postgres.

The model is scripted (deterministic) and the runtime's publish is a list, so every
step, approval and callback is driven by the test, one at a time.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from pausepoint.persistence.records import COMPLETED, FAILED, WAITING
from pausepoint.persistence.store import Store
from pausepoint.tasks.llm import Completion, Message, ScriptedBackend
from pausepoint.tasks.runtime import Runtime
from pausepoint.tasks.scripted import tool_call
from pausepoint.tasks.strategies import add_plan_and_execute, add_react
from pausepoint.tasks.tools import ToolContext, ToolWait
from pausepoint.tasks.workflow import Registry, Workflow

_names = itertools.count()
Turn = str | list[tuple[str, Any]]


def play(*turns: Turn) -> ScriptedBackend:
    """A model that answers the n-th turn after the last user message with ``turns[n]``:
    a list of (tool, arguments) calls, or the final text."""

    def reply(transcript: Sequence[Message]) -> str | Completion:
        last = max(i for i, m in enumerate(transcript) if m.get("role") == "user")
        n = sum(1 for m in transcript[last + 1 :] if m.get("role") == "assistant")
        turn = turns[min(n, len(turns) - 1)]
        if isinstance(turn, str):
            return turn
        calls = tuple(tool_call(name, args, id=f"c{n}_{i}") for i, (name, args) in enumerate(turn))
        return Completion("I will use tools.", tool_calls=calls)

    return ScriptedBackend([(".", reply)])


class Harness:
    def __init__(self, store: Store, llm: ScriptedBackend, kind: str = "react") -> None:
        self.store = store
        self.llm = llm
        self.registry = Registry()
        self.wf = Workflow(f"loop_{next(_names)}", registry=self.registry)
        if kind == "react":
            add_react(self.wf, start=True)
        else:
            add_plan_and_execute(self.wf, start=True)
        self.published: list[tuple[str, int]] = []
        self.rt = Runtime(
            store,
            llm=llm,
            publish=lambda r, v: self.published.append((r, v)),
            workflows=self.registry,
        )
        self.ran: list[tuple[str, dict[str, Any]]] = []

    def agent(self, **model: Any) -> None:
        self.store.save_agent("helper", persona="You help.", model=model)

    def start(self, task: str = "Refund order A-1001, $40") -> str:
        return self.rt.start(self.wf.name, agent="helper", task=task).id

    def drain(self, limit: int = 100) -> None:
        n = 0
        while self.published and n < limit:
            run_id, version = self.published.pop(0)
            self.rt.run_step(run_id, version, owner="test")
            n += 1

    def tool(self, name: str, **options: Any) -> Callable[..., Any]:
        """A tool that records every call (name, arguments) and returns ``result``."""

        def register(result: Any) -> None:
            def fn(order_id: str, amount: float = 0.0) -> Any:
                self.ran.append((name, {"order_id": order_id, "amount": amount}))
                if isinstance(result, BaseException):
                    raise result
                return result

            fn.__name__ = name
            fn.__doc__ = f"The {name} tool."
            self.wf.tool(fn, **options)

        return register

    def tool_messages(self, run_id: str) -> list[dict[str, Any]]:
        return [m.as_chat() for m in self.store.history(run_id) if m.role == "tool"]


@pytest.fixture
def make(store: Store) -> Callable[..., Harness]:
    def build(*turns: Turn, kind: str = "react", **model: Any) -> Harness:
        h = Harness(store, play(*turns), kind)
        h.agent(**model)
        return h

    return build


def test_react_calls_tools_in_turn_and_answers(make: Callable[..., Harness]) -> None:
    h = make(
        [("lookup", {"order_id": "A-1"})],
        [("refund", {"order_id": "A-1", "amount": 40})],
        "All done.",
    )
    h.tool("lookup")({"order_id": "A-1", "total": 40})
    h.tool("refund")("refunded")
    run_id = h.start()
    h.drain()
    run = h.store.get_run(run_id)
    assert run.status == COMPLETED, run.error
    assert run.result == {
        "answer": "All done.",
        "iterations": 3,
        "tool_calls": 2,
        "tokens": run.result["tokens"],
    }
    assert run.result["tokens"] > 0
    assert h.ran == [
        ("lookup", {"order_id": "A-1", "amount": 0.0}),
        ("refund", {"order_id": "A-1", "amount": 40.0}),
    ]
    chat = [m.as_chat() for m in h.store.history(run_id)]
    assert [m["role"] for m in chat] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]
    assert chat[1]["tool_calls"][0]["function"] == {
        "name": "lookup",
        "arguments": '{"order_id":"A-1"}',
    }
    assert chat[2] == {
        "role": "tool",
        "content": '{"order_id": "A-1", "total": 40}',
        "tool_call_id": "c0_0",
    }
    # The model saw the tools in OpenAI's format, and the first result before its second turn.
    offered = h.llm.offered[0]
    assert {t["function"]["name"] for t in offered} == {"lookup", "refund"}
    assert offered[0]["function"]["parameters"]["required"] == ["order_id"]
    assert any(m.get("tool_call_id") == "c0_0" for m in h.llm.calls[1])
    # Each call's step event names its stable key, run:seq:call_id.
    calls = [e.data["tool_call"] for e in h.store.events(run_id) if "tool_call" in e.data]
    assert [c["key"] for c in calls] == [f"{run_id}:1:c0_0", f"{run_id}:3:c1_0"]


def test_parallel_calls_are_each_their_own_step_and_never_run_twice(
    make: Callable[..., Harness],
) -> None:
    h = make(
        [
            ("lookup", {"order_id": "A-1"}),
            ("lookup", {"order_id": "B-2"}),
            ("lookup", {"order_id": "C-3"}),
        ],
        "ok",
    )
    h.tool("lookup")("found")
    run_id = h.start()
    # Deliver each message twice, as a broker may: the stale copy does nothing.
    while h.published:
        run, version = h.published.pop(0)
        h.rt.run_step(run, version, owner="a")
        h.rt.run_step(run, version, owner="b")
    assert h.store.get_run(run_id).status == COMPLETED
    assert [a["order_id"] for _, a in h.ran] == ["A-1", "B-2", "C-3"]
    steps = [e.data["step"] for e in h.store.events(run_id) if e.kind == "step_completed"]
    assert steps == ["think", "act", "act", "act", "think"]
    assert [m["tool_call_id"] for m in h.tool_messages(run_id)] == ["c0_0", "c0_1", "c0_2"]


def test_approval_with_edited_arguments_runs_the_edit(make: Callable[..., Harness]) -> None:
    h = make([("refund", {"order_id": "A-1", "amount": 400})], "Refunded.")
    h.tool("refund", needs_approval=lambda args: args["amount"] > 100, group="finance")("ok")
    run_id = h.start()
    h.drain()
    run = h.store.get_run(run_id)
    assert run.status == WAITING and h.ran == []
    wait = h.store.waits(run_id=run_id)[0]
    assert wait.approver_group == "finance"
    assert "refund" in wait.prompt and '"amount":400' in wait.prompt
    h.rt.decide(
        run_id, approved=True, actor="carol", data={"arguments": {"order_id": "A-1", "amount": 40}}
    )
    h.drain()
    assert h.store.get_run(run_id).status == COMPLETED
    assert h.ran == [("refund", {"order_id": "A-1", "amount": 40.0})]
    record = [
        e.data["tool_call"]
        for e in h.store.events(run_id)
        if e.data.get("tool_call", {}).get("outcome")
    ]
    assert record[0]["edited_by"] == "carol" and json.loads(record[0]["arguments"])["amount"] == 40


def test_a_small_call_needs_no_approval(make: Callable[..., Harness]) -> None:
    h = make([("refund", {"order_id": "A-1", "amount": 40})], "Refunded.")
    h.tool("refund", needs_approval=lambda args: args["amount"] > 100)("ok")
    run_id = h.start()
    h.drain()
    assert h.store.get_run(run_id).status == COMPLETED and len(h.ran) == 1


def test_a_rejection_goes_back_to_the_model(make: Callable[..., Harness]) -> None:
    h = make([("refund", {"order_id": "A-1", "amount": 400})], "Understood, no refund.")
    h.tool("refund", needs_approval=True)("ok")
    run_id = h.start()
    h.drain()
    h.rt.decide(run_id, approved=False, actor="bob", comment="over the limit")
    h.drain()
    run = h.store.get_run(run_id)
    assert run.status == COMPLETED and run.result["answer"] == "Understood, no refund."
    assert h.ran == []
    assert h.tool_messages(run_id)[0]["content"] == "The call was rejected by bob: over the limit"
    assert any("over the limit" in (m.get("content") or "") for m in h.llm.calls[-1])


def test_an_async_tool_parks_on_a_callback_whose_payload_is_the_result(
    make: Callable[..., Harness],
) -> None:
    h = make([("ship", {"order_id": "A-1"})], "Shipped.")
    urls: list[str] = []

    def ship(order_id: str, ctx: ToolContext) -> ToolWait:
        """Ask the warehouse to ship; it calls back."""
        urls.append(ctx.callback_url)
        return ToolWait.callback()

    h.wf.tool(ship)
    run_id = h.start()
    h.drain()
    assert h.store.get_run(run_id).status == WAITING
    token = urls[0].rsplit("/", 1)[1]
    h.rt.deliver_callback(token, {"tracking": "ZX9"}, actor="warehouse")
    h.drain()
    assert h.store.get_run(run_id).status == COMPLETED
    assert json.loads(h.tool_messages(run_id)[0]["content"]) == {"tracking": "ZX9"}
    assert len(urls) == 1  # the tool started the work once


def test_bad_arguments_and_unknown_tools_are_told_to_the_model(
    make: Callable[..., Harness],
) -> None:
    h = make([("refund", "{not json"), ("refund", {"amount": 3}), ("nope", {})], "Gave up.")
    h.tool("refund")("ok")
    run_id = h.start()
    h.drain()
    assert h.store.get_run(run_id).status == COMPLETED and h.ran == []
    texts = [m["content"] for m in h.tool_messages(run_id)]
    assert texts[0].startswith("Error: the arguments are not valid JSON")
    assert "order_id: Field required" in texts[1]
    assert texts[2].startswith("Error: there is no tool 'nope'")


def test_a_tool_that_raises_or_times_out_tells_the_model_or_fails_the_run(
    make: Callable[..., Harness],
) -> None:
    h = make([("flaky", {"order_id": "A-1"}), ("slow", {"order_id": "A-1"})], "Noted.")
    h.tool("flaky")(RuntimeError("CRM is down"))

    def slow(order_id: str) -> str:
        """Slow."""
        import time

        time.sleep(2)
        return "late"

    h.wf.tool(slow, timeout=0.2)
    run_id = h.start()
    h.drain()
    assert h.store.get_run(run_id).status == COMPLETED
    texts = [m["content"] for m in h.tool_messages(run_id)]
    assert texts == [
        "Error: RuntimeError: CRM is down",
        "Error: tool slow did not return within 0.2 s",
    ]

    strict = make([("flaky", {"order_id": "A-1"})], "never")
    strict.tool("flaky", on_error="fail")(RuntimeError("CRM is down"))
    run2 = strict.start()
    strict.drain()
    failed = strict.store.get_run(run2)
    assert (
        failed.status == FAILED and failed.error == "tool flaky failed: RuntimeError: CRM is down"
    )


def test_budgets_fail_the_run_with_the_reason(make: Callable[..., Harness]) -> None:
    h = make([("lookup", {"order_id": "A-1"})], budget={"iterations": 3})
    h.tool("lookup")("again")
    run_id = h.start()
    h.drain()
    run = h.store.get_run(run_id)
    assert run.status == FAILED
    assert run.error == "the run reached its budget of 3 model calls (3 used)"
    tools = make(
        [("lookup", {"order_id": "A-1"}), ("lookup", {"order_id": "B-2"})], budget={"tool_calls": 1}
    )
    tools.tool("lookup")("x")
    run2 = tools.start()
    tools.drain()
    assert tools.store.get_run(run2).error == "the run reached its budget of 1 tool calls (1 used)"
    assert len(tools.ran) == 1


def test_a_budget_can_park_for_approval_to_go_on(make: Callable[..., Harness]) -> None:
    h = make(
        *[[("lookup", {"order_id": f"A-{i}"})] for i in range(5)],
        "Finished.",
        budget={"iterations": 2, "on_exceed": "approval", "group": "ops"},
    )
    h.tool("lookup")("x")
    run_id = h.start()
    h.drain()
    assert h.store.get_run(run_id).status == WAITING
    wait = h.store.waits(run_id=run_id)[0]
    assert wait.approver_group == "ops" and "budget of 2 model calls" in wait.prompt
    h.rt.decide(run_id, approved=True, actor="dana")
    h.drain()
    # As much again: two more model calls, then it parks again; a rejection ends it.
    assert h.store.get_run(run_id).status == WAITING
    h.rt.decide(run_id, approved=False, actor="dana", comment="enough")
    h.drain()
    run = h.store.get_run(run_id)
    assert run.status == FAILED
    assert (
        run.error
        == "the run reached its budget of 4 model calls (4 used); dana did not let it go on: enough"
    )


def test_plan_and_execute_replans_a_failed_step(store: Store) -> None:
    def model(transcript: Sequence[Message]) -> str | Completion:
        last = next(m for m in reversed(transcript) if m.get("role") == "user")["content"]
        after = transcript[
            [i for i, m in enumerate(transcript) if m.get("role") == "user"][-1] + 1 :
        ]
        if last.startswith("Make a plan"):
            return "1. Look up the order\n2. Refund by cheque"
        if last.startswith("Step 2 of the plan failed"):
            return "1. Refund to the card"
        if "Refund by cheque" in last:
            return "FAILED: cheques are not possible"
        if last.startswith("Step") and not any(m.get("role") == "tool" for m in after):
            return Completion(
                "calling", tool_calls=(tool_call("lookup", {"order_id": "A-1"}, id="p1"),)
            )
        if last.startswith("Every step"):
            return "Refunded to the card."
        return "step done"

    h = Harness(store, ScriptedBackend([(".", model)]), kind="plan")
    h.agent()
    h.tool("lookup")("found")
    run_id = h.start()
    h.drain()
    run = h.store.get_run(run_id)
    assert run.status == COMPLETED, run.error
    assert run.result["answer"] == "Refunded to the card."
    assert [(p["step"], p["status"]) for p in run.result["plan"]] == [
        ("Look up the order", "done"),
        ("Refund by cheque", "failed"),
        ("Refund to the card", "done"),
    ]
    assert len(h.ran) == 2  # step 1 and step 3 each looked the order up once


def test_shipped_strategies_run_for_any_agent(store: Store) -> None:
    from pausepoint.tasks.workflow import registry

    published: list[tuple[str, int]] = []
    rt = Runtime(
        store,
        llm=ScriptedBackend(),
        publish=lambda r, v: published.append((r, v)),
        workflows=registry,
    )
    store.save_agent("plain", persona="You answer.", strategy="direct: answer at once")
    store.save_agent("planner", persona="You plan.", strategy="plan-and-execute carefully")
    ids = {
        "direct": rt.start("direct", agent="plain", task="Say hello").id,
        "react": rt.start("react", agent="plain", task="Say hello").id,
        "agent-direct": rt.start("agent", agent="plain", task="Say hello").id,
        "agent-plan": rt.start("agent", agent="planner", task="Say hello").id,
    }
    while published:
        rt.run_step(*published.pop(0), owner="t")
    for what, run_id in ids.items():
        run = store.get_run(run_id)
        assert run.status == COMPLETED, (what, run.error)
        assert isinstance(run.result["answer"], str) and run.result["answer"]
    chosen = [
        e.data.get("strategy") for e in store.events(ids["agent-plan"]) if "strategy" in e.data
    ]
    assert chosen == ["plan_and_execute"]


def test_tool_schema_comes_from_hints_and_docstring() -> None:
    from pausepoint.tasks.tools import make_tool

    def refund(
        order_id: str, amount: float, reason: str = "", ctx: ToolContext | None = None
    ) -> str:
        """Refund part of an order.

        Args:
            order_id: The order's number.
            amount: How much, in dollars.
        """
        return "ok"

    refund.__annotations__["ctx"] = ToolContext
    t = make_tool(refund)
    schema = t.schema()
    assert schema["type"] == "function"
    fn = schema["function"]
    assert fn["description"] == "Refund part of an order."
    params = fn["parameters"]
    assert params["required"] == ["order_id", "amount"]
    assert params["properties"]["amount"] == {
        "type": "number",
        "description": "How much, in dollars.",
    }
    assert "ctx" not in params["properties"] and params["additionalProperties"] is False
    assert t.parse('{"order_id": "A", "amount": "2.5"}') == {
        "order_id": "A",
        "amount": 2.5,
        "reason": "",
    }


def test_the_key_a_tool_gets_is_the_same_before_and_after_its_approval(
    make: Callable[..., Harness],
) -> None:
    h = make([("pay", {"order_id": "A-1"})], "Paid.")
    keys: list[str] = []

    def pay(order_id: str, ctx: ToolContext) -> str:
        """Pay."""
        keys.append(ctx.idempotency_key)
        return "paid"

    h.wf.tool(pay, needs_approval=True)
    run_id = h.start()
    h.drain()
    h.rt.decide(run_id, approved=True, actor="eve")
    h.drain()
    assert keys == [f"{run_id}:1:c0_0"]


def test_the_loop_sees_its_tools_through_the_context_budget(
    make: Callable[..., Harness],
) -> None:
    h = make([("lookup", {"order_id": "A-1"})], "ok", context_window=2048, reply_tokens=256)
    h.tool("lookup")("x" * 30_000)  # a result far over the budget
    run_id = h.start()
    h.drain()
    assert h.store.get_run(run_id).status == COMPLETED
    calls = [c for e in h.store.events(run_id) for c in e.data.get("model_calls", [])]
    assert calls and all(c["prompt_tokens"] <= 2048 - 256 for c in calls)
    assert len(h.tool_messages(run_id)[0]["content"]) <= 16_000


def test_an_async_tool_can_wait_for_an_event_or_time_out(make: Callable[..., Harness]) -> None:
    from datetime import timedelta

    h = make([("await_payment", {"order_id": "A-1"}), ("ship", {"order_id": "A-1"})], "Done.")

    def await_payment(order_id: str) -> ToolWait:
        """Wait until the order is paid."""
        return ToolWait.event("order.paid", order_id)

    def ship(order_id: str) -> ToolWait:
        """Ship it; the warehouse calls back (it never does)."""
        return ToolWait.callback(timeout=timedelta(seconds=0))

    h.wf.tool(await_payment)
    h.wf.tool(ship)
    run_id = h.start()
    h.drain()
    assert h.store.get_run(run_id).status == WAITING
    assert [r.id for r in h.rt.publish_event("order.paid", "A-1", {"paid": 40}, actor="shop")] == [
        run_id
    ]
    h.drain()
    assert h.store.get_run(run_id).status == WAITING  # now on ship's callback
    h.rt.sweep()  # its deadline has passed: the model is told
    h.drain()
    run = h.store.get_run(run_id)
    assert run.status == COMPLETED, run.error
    texts = [m["content"] for m in h.tool_messages(run_id)]
    assert json.loads(texts[0]) == {"paid": 40}
    assert texts[1] == "Error: the tool did not report back in time"


def test_a_react_loop_through_the_real_openai_client(store: Store) -> None:
    """Tools, tool calls, results and retries over HTTP, the way a real model sees them."""
    from pausepoint.tasks.openai_backend import OpenAIBackend
    from tests.openai_server import OpenAIServer

    def reply(body: dict[str, Any]) -> Any:
        messages = body["messages"]
        if not any(m["role"] == "tool" for m in messages):
            return {
                "content": None,
                "tool_calls": [{"name": "lookup", "arguments": {"order_id": "A-7"}}],
            }
        return "The order is found."

    with OpenAIServer(reply=reply) as server:
        llm = OpenAIBackend(server.base_url, model="m", max_retries=2, timeout=5)
        h = Harness(store, ScriptedBackend(), "react")
        h.rt.llm = llm
        h.agent()
        h.tool("lookup")({"found": True})
        server.plan(status=500)  # the first model call fails once: retried, same key
        run_id = h.start()
        h.drain()
        run = h.store.get_run(run_id)
        assert run.status == COMPLETED, run.error
        assert run.result["answer"] == "The order is found." and run.result["tool_calls"] == 1
        chats = [r for r in server.requests if r.path.endswith("/chat/completions")]
        assert len(chats) == 3
        assert chats[0].headers["idempotency-key"] == chats[1].headers["idempotency-key"]
        assert chats[0].body["tools"][0]["function"]["name"] == "lookup"
        sent = chats[2].body["messages"]
        call = next(m for m in sent if m.get("tool_calls"))
        result = next(m for m in sent if m["role"] == "tool")
        assert result["tool_call_id"] == call["tool_calls"][0]["id"]
        assert json.loads(result["content"]) == {"found": True}
        assert h.ran == [("lookup", {"order_id": "A-7", "amount": 0.0})]
        usage = [c for e in h.store.events(run_id) for c in e.data.get("model_calls", [])]
        assert all(isinstance(c["usage_in"], int) for c in usage)  # the server's usage
        llm.close()


def test_tokens_and_wall_time_budgets(make: Callable[..., Harness]) -> None:
    h = make([("lookup", {"order_id": "A-1"})], budget={"tokens": 50, "iterations": None})
    h.tool("lookup")("x")
    run_id = h.start()
    h.drain()
    run = h.store.get_run(run_id)
    assert run.status == FAILED and run.error.startswith("the run reached its budget of 50 tokens")
    slow = make([("lookup", {"order_id": "A-1"})], budget={"seconds": 0.05})
    slow.tool("lookup")("x")
    run2 = slow.start()
    slow.rt.run_step(*slow.published.pop(0), owner="t")  # some steps (inline), then later
    import time

    time.sleep(0.1)
    slow.drain()
    failed = slow.store.get_run(run2)
    assert failed.status == FAILED and "budget of 0.05 seconds" in (failed.error or "")


def test_a_global_tool_is_offered_when_the_agent_names_it(store: Store) -> None:
    from pausepoint.tasks.tools import ToolRegistry, tool

    own = ToolRegistry()
    calls: list[str] = []

    @tool(into=own)
    def weather(city: str) -> str:
        """Today's weather in a city."""
        calls.append(city)
        return "sunny"

    # The loop reads the global registry: stand a fresh one in for this test.
    import pausepoint.tasks.agent_loop as loop_module

    saved = loop_module.global_tools
    loop_module.global_tools = own
    try:

        @tool(agent="helper", into=own)
        def forecast(city: str) -> str:
            """Tomorrow's weather: offered to the agent "helper" without its naming it."""
            return "rain"

        agents_own = [t.name for t in own.of_agent("helper")]
        assert agents_own == ["forecast"] and own.of_agent("someone-else") == []
        h = Harness(store, play([("weather", {"city": "Oslo"})], "Sunny."), "react")
        store.save_agent("helper", persona="You help.", model={"tools": ["weather"]})
        run_id = h.start()
        h.drain()
        assert h.store.get_run(run_id).status == COMPLETED and calls == ["Oslo"]
        offered = {t["function"]["name"] for t in h.llm.offered[0]}
        assert offered == {"weather", "forecast"}  # named by the agent, and its own
        store.save_agent("helper", model={"tools": ["weather", "teleport"]})
        bad = h.start()
        h.drain()
        failed = h.store.get_run(bad)
        assert failed.status == FAILED
        assert "no tool is registered as 'teleport'" in (failed.error or "")
    finally:
        loop_module.global_tools = saved
