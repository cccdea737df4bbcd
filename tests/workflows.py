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
