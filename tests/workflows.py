"""Workflows the integration tests load into real workers (PAUSEPOINT_WORKFLOWS)."""

from __future__ import annotations

import time

from tasks.context import StepContext
from tasks.workflow import End, Next, Outcome, Workflow

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
