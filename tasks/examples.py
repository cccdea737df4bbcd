"""The workflows that ship with Pausepoint: the seed article's loan example, and a no-op chain.

Loaded by default (``PAUSEPOINT_WORKFLOWS``); your own modules go beside them.
"""

from __future__ import annotations

from datetime import timedelta

from pausepoint.tasks.context import StepContext
from pausepoint.tasks.workflow import End, Next, Outcome, Wait, Workflow

loan = Workflow(
    "loan",
    description="Assess a loan application, wait for an underwriter's decision, then finish.",
)


@loan.step(start=True)
def assess(ctx: StepContext) -> Outcome:
    answer = ctx.ask(f"Perform initial loan assessment for this application: {ctx.task}")
    recommendation = "APPROVE" if "RECOMMENDATION: APPROVE" in answer else "DECLINE"
    ctx.state["assessment"] = answer
    ctx.state["recommendation"] = recommendation
    if recommendation == "DECLINE" and ctx.input.get("auto_decline", False):
        return End({"outcome": "declined", "by": "agent", "assessment": answer})
    hours = float(ctx.input.get("approval_hours", 72))
    return Wait.approval(
        then="finalize",
        prompt=f"The agent recommends {recommendation}. Approve this loan? {ctx.task}",
        # Who may approve is the agent's setting, never the run's input: a producer who
        # could name the group could send its loans to a group of its choosing.
        group=_approver_group(ctx),
        timeout=timedelta(hours=hours),
    )


def _approver_group(ctx: StepContext) -> str:
    group = ctx.agent.model.get("approver_group") if isinstance(ctx.agent.model, dict) else None
    return group if isinstance(group, str) and group else "underwriters"


@loan.step
def finalize(ctx: StepContext) -> Outcome:
    assert ctx.resumed is not None and ctx.resumed.outcome is not None
    decision = ctx.resumed.outcome
    if decision["approved"]:
        note = ctx.ask("Continue processing with approved status")
        outcome = "approved"
    else:
        comment = decision.get("comment") or "no reason given"
        note = ctx.ask(f"The application was rejected by the reviewer ({comment}); close it")
        outcome = "rejected"
    ctx.state["decision"] = outcome
    return End(
        {
            "outcome": outcome,
            "by": decision["by"],
            "comment": decision.get("comment", ""),
            "recommendation": ctx.state.get("recommendation"),
            "note": note,
        }
    )


noop = Workflow("noop", description="`input.steps` no-op steps in a row (benchmarks, smoke tests).")


@noop.step
def tick(ctx: StepContext) -> Outcome:
    done = int(ctx.state.get("done", 0)) + 1
    ctx.state["done"] = done
    if message := ctx.input.get("message"):
        ctx.say("assistant", f"{message} #{done}")
    if done >= int(ctx.input.get("steps", 1)):
        return End({"steps": done})
    return Next("tick")


turns = Workflow(
    "turns",
    description="`input.steps` steps, each one model call (`ctx.ask`): steps that wait on "
    "a model, for the threads pool and the I/O benchmarks.",
)


@turns.step
def turn(ctx: StepContext) -> Outcome:
    done = int(ctx.state.get("done", 0)) + 1
    ctx.state["done"] = done
    ctx.ask(f"Turn {done} of {ctx.input.get('steps', 1)}: {ctx.task or 'go on'}")
    if done >= int(ctx.input.get("steps", 1)):
        return End({"steps": done})
    return Next("turn")


# The tools demo's agent and its tools (`pausepoint demo`, second part).
from pausepoint.tasks import support_example  # noqa: E402, F401
