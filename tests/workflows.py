"""Workflows the integration tests load into real workers (PAUSEPOINT_WORKFLOWS)."""

from __future__ import annotations

import time

from pausepoint.tasks.context import StepContext
from pausepoint.tasks.workflow import End, Next, Outcome, Wait, Workflow

slow = Workflow("slow", description="A step that takes input.sleep seconds on its first attempt.")


@slow.step
def work(ctx: StepContext) -> Outcome:
    if ctx.attempt == 0:
        time.sleep(float(ctx.input.get("sleep", 0)))
    ctx.say("assistant", f"worked on {ctx.task}")
    return Next("finish")


@slow.step
def finish(ctx: StepContext) -> Outcome:
    return End({"attempt": ctx.attempt, "history": len(ctx.history)})


payment = Workflow("payment", description="Hand a payment system a callback URL and wait for it.")


@payment.step
def request(ctx: StepContext) -> Outcome:
    url = ctx.callback_url(ctx.input.get("source"))
    ctx.state["callback_url"] = url
    if ctx.input.get("answer_at_once"):
        # An external system so fast that its callback arrives before this step commits.
        import httpx

        answer = httpx.post(url, json={"paid": True, "early": True}, timeout=10)
        ctx.state["early_status"] = answer.status_code
    return Wait.callback("settle", source=ctx.input.get("source"))


@payment.step
def settle(ctx: StepContext) -> Outcome:
    assert ctx.resumed is not None
    return End({"callback": ctx.resumed.outcome["payload"]})


order = Workflow("order", description="Wait for the order.paid event of input.order_id.")


@order.step
def await_payment(ctx: StepContext) -> Outcome:
    return Wait.event("order.paid", key=str(ctx.input["order_id"]), then="ship")


@order.step
def ship(ctx: StepContext) -> Outcome:
    assert ctx.resumed is not None
    return End({"shipped": ctx.input["order_id"], "event": ctx.resumed.outcome["payload"]})


gpu = Workflow("gpu", description="Take a slot of the `gpu` resource for one step.")


@gpu.step
def enter(ctx: StepContext) -> Outcome:
    return Wait.resource(str(ctx.input.get("resource", "gpu")), then="compute")


@gpu.step
def compute(ctx: StepContext) -> Outcome:
    started = time.time()
    time.sleep(float(ctx.input.get("sleep", 0)))
    return End({"start": started, "end": time.time()})


deadline = Workflow("deadline", description="An approval that times out after input.seconds.")


@deadline.step
def ask_approval(ctx: StepContext) -> Outcome:
    from datetime import timedelta

    return Wait.approval(
        "decided",
        group="underwriters",
        timeout=timedelta(seconds=float(ctx.input.get("seconds", 1))),
        on_timeout=str(ctx.input.get("on_timeout", "fail")),
        default={"approved": False, "decision": "timed out", "by": "policy"},
        escalate_to=ctx.input.get("escalate_to"),
        escalate_after=timedelta(seconds=float(ctx.input.get("escalate_after", 1))),
    )


@deadline.step
def decided(ctx: StepContext) -> Outcome:
    assert ctx.resumed is not None
    return End({"decision": ctx.resumed.outcome["decision"], "by": ctx.resumed.outcome["by"]})


# ---------------------------------------------------------------- an agent loop to kill
# Its tools write to the ledger file PAUSEPOINT_TEST_LEDGER; PAUSEPOINT_TEST_SLOW says
# where the first attempt hangs, so a test can SIGKILL the worker there: "tool" (inside
# charge, after it started), or "think" (in the model turn after charge was recorded).

import os  # noqa: E402
from pathlib import Path  # noqa: E402

from pausepoint.tasks.agent_loop import AgentLoop, Final  # noqa: E402
from pausepoint.tasks.tools import ToolContext  # noqa: E402

tool_loop = Workflow("tool_loop", description="react over charge and notify, killable.")
_loop = AgentLoop(tool_loop.tools)


def _ledger(line: str) -> list[str]:
    path = Path(os.environ["PAUSEPOINT_TEST_LEDGER"])
    with path.open("a") as f:
        f.write(line + "\n")
    return path.read_text().splitlines()


@tool_loop.tool
def charge(order_id: str, ctx: ToolContext) -> str:
    """Charge the customer's card for an order."""
    seen = _ledger(f"start charge {ctx.idempotency_key}")
    if os.environ.get("PAUSEPOINT_TEST_SLOW") == "tool" and seen.count(seen[-1]) == 1:
        time.sleep(60)
    _ledger(f"done charge {ctx.idempotency_key}")
    return f"charged {order_id}"


@tool_loop.tool
def notify(order_id: str, ctx: ToolContext) -> str:
    """Tell the customer."""
    _ledger(f"start notify {ctx.idempotency_key}")
    _ledger(f"done notify {ctx.idempotency_key}")
    return f"notified about {order_id}"


@tool_loop.step(start=True)
def think(ctx: StepContext) -> Outcome:
    if os.environ.get("PAUSEPOINT_TEST_SLOW") == "think" and not _loop.first_turn(ctx):
        seen = _ledger(f"think {ctx.next_seq}")
        if seen.count(seen[-1]) == 1:
            time.sleep(60)  # a slow model, after charge's result was recorded
    out = _loop.think(ctx, prompt=ctx.task if _loop.first_turn(ctx) else None)
    return End(_loop.result(ctx, out.text)) if isinstance(out, Final) else out


tool_loop.step(name="act")(_loop.act)
