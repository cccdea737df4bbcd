"""The agent loops that ship with Pausepoint, as ordinary workflows.

* ``direct``: one answer from the model, no tools;
* ``react``: model, tool calls, their results, model ... until an answer without tools;
* ``plan_and_execute``: a plan (a numbered list, kept in state), each item worked
  through with tools like ``react``; an item answered ``FAILED: why`` is re-planned;
* ``agent``: whichever of these the agent's ``strategy`` names first (``"react: ..."``),
  else ``react`` when the agent has tools and ``direct`` when it has none.

    pausepoint start react --agent support --task "Refund order A-1001, it arrived broken"

Each model call and each tool call is its own step (:mod:`pausepoint.tasks.agent_loop`).
Your own loops use the same parts: :class:`~pausepoint.tasks.agent_loop.AgentLoop`.
"""

from __future__ import annotations

import re
from typing import Any

from pausepoint.persistence.errors import ConfigurationError
from pausepoint.tasks.agent_loop import AgentLoop, Final
from pausepoint.tasks.context import StepContext
from pausepoint.tasks.workflow import End, Next, Outcome, Workflow

STRATEGIES = ("direct", "react", "plan_and_execute")
PLAN_KEY = "plan"
MAX_REPLANS = 2

PLAN_PROMPT = (
    "Make a plan for this task: a numbered list of short steps, one per line, nothing "
    "else. Task: {task}"
)
ITEM_PROMPT = (
    "Step {n} of {total} of the plan: {item}\nWork on this step only; use the tools you "
    "need. When it is done, answer with what it found or did. If it cannot be done, "
    "answer FAILED: and why."
)
REPLAN_PROMPT = (
    "Step {n} of the plan failed: {why}\nMake a new plan for the rest of the task: a "
    "numbered list of short steps, one per line, nothing else. Task: {task}"
)
FINISH_PROMPT = "Every step of the plan is done. Give the final answer to the task."

_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*])\s+(.+?)\s*$")


def strategy_of(ctx: StepContext, loop: AgentLoop) -> str:
    """The loop an agent's ``strategy`` names, or the default for its tools."""
    words = re.findall(r"[a-z_-]+", (ctx.agent.strategy or "").lower())[:3]
    for word in words:
        name = str(word).replace("-", "_")
        if name in STRATEGIES:
            return name
    return "react" if loop.offered(ctx) else "direct"


def plan_items(text: str) -> list[str]:
    """The steps of a plan the model wrote as a list (numbered or bulleted)."""
    items = [m.group(1) for line in text.splitlines() if (m := _ITEM.match(line))]
    return [i for i in items if i]


def _task(ctx: StepContext) -> str:
    if ctx.task.strip():
        return ctx.task
    raise ConfigurationError(f"an agent loop needs a task: start run {ctx.run_id} with --task")


# ------------------------------------------------------------------ the parts


def add_direct(wf: Workflow, *, name: str = "answer", start: bool = False) -> None:
    @wf.step(name=name, start=start, max_retries=3)
    def answer(ctx: StepContext) -> Outcome:
        text = ctx.ask(_task(ctx))
        return End({"answer": text})


def add_react(wf: Workflow, *, think: str = "think", act: str = "act", start: bool = False) -> None:
    loop = AgentLoop(wf.tools, think=think, act=act)

    def think_step(ctx: StepContext) -> Outcome:
        prompt = _task(ctx) if loop.first_turn(ctx) else None
        out = loop.think(ctx, prompt=prompt)
        return End(loop.result(ctx, out.text)) if isinstance(out, Final) else out

    wf.step(name=think, start=start)(think_step)
    wf.step(name=act)(loop.act)


def add_plan_and_execute(
    wf: Workflow,
    *,
    plan: str = "plan",
    work: str = "work",
    act: str = "use_tool",
    replan: str = "replan",
    finish: str = "finish",
    start: bool = False,
) -> None:
    loop = AgentLoop(wf.tools, think=work, act=act)

    def plan_step(ctx: StepContext) -> Outcome:
        state = loop.state(ctx)
        stop = loop.gate(ctx, state, "iterations", plan)
        if stop is not None:
            return stop
        reply = loop.turn(ctx, prompt=PLAN_PROMPT.format(task=_task(ctx)))
        items = plan_items(reply.text) or [_task(ctx)]
        ctx.state[PLAN_KEY] = {
            "items": [{"text": i, "status": "todo"} for i in items],
            "current": 0,
            "replans": 0,
        }
        ctx.info["plan"] = items
        return Next(work)

    def work_step(ctx: StepContext) -> Outcome:
        p = ctx.state[PLAN_KEY]
        item = p["items"][p["current"]]
        prompt = None
        if item["status"] == "todo":
            item["status"] = "working"
            prompt = ITEM_PROMPT.format(
                n=p["current"] + 1, total=len(p["items"]), item=item["text"]
            )
        out = loop.think(ctx, prompt=prompt)
        if not isinstance(out, Final):
            return out
        if out.text.strip().upper().startswith("FAILED"):
            item["status"] = "failed"
            item["result"] = out.text.strip()
            if p["replans"] >= MAX_REPLANS:
                return End(
                    error=f"step {p['current'] + 1} of the plan failed after "
                    f"{p['replans']} re-plans: {out.text.strip()}"
                )
            return Next(replan)
        item["status"] = "done"
        item["result"] = out.text
        p["current"] += 1
        return Next(work if p["current"] < len(p["items"]) else finish)

    def replan_step(ctx: StepContext) -> Outcome:
        p = ctx.state[PLAN_KEY]
        state = loop.state(ctx)
        stop = loop.gate(ctx, state, "iterations", replan)
        if stop is not None:
            return stop
        failed = p["items"][p["current"]]
        reply = loop.turn(
            ctx,
            prompt=REPLAN_PROMPT.format(
                n=p["current"] + 1, why=failed.get("result", ""), task=_task(ctx)
            ),
        )
        items = plan_items(reply.text)
        if not items:
            return End(error=f"the re-plan after step {p['current'] + 1} failed is empty")
        p["items"] = p["items"][: p["current"] + 1] + [{"text": i, "status": "todo"} for i in items]
        p["current"] += 1
        p["replans"] += 1
        ctx.info["plan"] = items
        return Next(work)

    def finish_step(ctx: StepContext) -> Outcome:
        reply = loop.turn(ctx, prompt=FINISH_PROMPT)
        result: dict[str, Any] = loop.result(ctx, reply.text)
        result["plan"] = [
            {"step": i["text"], "status": i["status"], "result": i.get("result")}
            for i in ctx.state[PLAN_KEY]["items"]
        ]
        return End(result)

    wf.step(name=plan, start=start)(plan_step)
    wf.step(name=work)(work_step)
    wf.step(name=act)(loop.act)
    wf.step(name=replan)(replan_step)
    wf.step(name=finish)(finish_step)


# ------------------------------------------------------------------ the workflows

direct = Workflow("direct", "One answer from the agent's model (no tools).")
add_direct(direct, start=True)

react = Workflow("react", "The model calls tools until it answers: each call its own step.")
add_react(react, start=True)

plan_and_execute = Workflow(
    "plan_and_execute", "A plan kept in state, each step worked with tools, re-planned on failure."
)
add_plan_and_execute(plan_and_execute, start=True)

agent = Workflow("agent", "The loop the agent's strategy names (direct, react, plan_and_execute).")


@agent.step(start=True)
def choose(ctx: StepContext) -> Outcome:
    chosen = strategy_of(ctx, AgentLoop(agent.tools))
    ctx.state["strategy"] = chosen
    ctx.info["strategy"] = chosen
    first = {"direct": "answer", "react": "think", "plan_and_execute": "plan"}[chosen]
    return Next(first)


add_direct(agent)
add_react(agent)
add_plan_and_execute(agent)
