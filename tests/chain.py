"""Small workflows and a worker stand-in for store-level tests of whole runs.

``Driver`` plays the worker: its runtime's publish appends to a list and
``drain`` runs every published step through the real claim/commit path.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pausepoint.persistence.store import Store
from pausepoint.tasks.context import StepContext
from pausepoint.tasks.llm import ScriptedBackend
from pausepoint.tasks.runtime import Runtime
from pausepoint.tasks.workflow import End, Next, Outcome, Registry, Wait, Workflow

# one -> two -> (approval) -> three -> end. Each step appends its name to
# state["path"] and says one message, so the final state shows which steps
# built it, and the conversation shows it too.
workflows = Registry()
chain = Workflow("chain", registry=workflows)


def _visit(ctx: StepContext, name: str) -> None:
    ctx.state["path"] = [*ctx.state.get("path", []), name]
    ctx.say("assistant", f"{name} after {len(ctx.history)} messages")
    if pad := int(ctx.input.get("pad", 0)):
        ctx.say("assistant", "x" * pad)


@chain.step(start=True)
def one(ctx: StepContext) -> Outcome:
    _visit(ctx, "one")
    return Next("two")


@chain.step
def two(ctx: StepContext) -> Outcome:
    _visit(ctx, f"two:{ctx.input.get('flavour', 'plain')}")
    return Wait.approval(then="three", group="ops", timeout=timedelta(hours=1))


@chain.step
def three(ctx: StepContext) -> Outcome:
    assert ctx.resumed is not None and ctx.resumed.outcome is not None
    verdict = "yes" if ctx.resumed.outcome["approved"] else "no"
    _visit(ctx, f"three:{verdict}")
    if ctx.input.get("fail"):
        return End(error="asked to fail")
    return End({"path": ctx.state["path"], "history": len(ctx.history)})


paying = Workflow("paying", registry=workflows)


@paying.step(start=True)
def ask_payment(ctx: StepContext) -> Outcome:
    ctx.state["url"] = ctx.callback_url("bank")
    return Wait.callback("paid", source="bank", timeout=timedelta(minutes=5))


@paying.step
def paid(ctx: StepContext) -> Outcome:
    assert ctx.resumed is not None
    return End({"payload": ctx.resumed.outcome["payload"]})


kept = Workflow("kept", registry=workflows)


@kept.step(start=True)
def only(ctx: StepContext) -> Outcome:
    _visit(ctx, "only")
    return End({"kept": True})


class Driver:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.published: list[tuple[str, int]] = []
        self.rt = Runtime(
            store,
            llm=ScriptedBackend(),
            publish=lambda r, v: self.published.append((r, v)),
            workflows=workflows,
        )

    def drain(self) -> None:
        while self.published:
            run_id, version = self.published.pop(0)
            self.rt.run_step(run_id, version, owner="test-worker")

    def start(self, workflow: str = "chain", **input: Any) -> str:
        run = self.rt.start(workflow, agent="agent", input=input, actor="test")
        self.drain()
        return run.id

    def approve(self, run_id: str, approved: bool = True, who: str = "alice") -> None:
        self.rt.decide(run_id, approved=approved, actor=who)
        self.drain()
