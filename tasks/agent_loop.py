"""The parts every agent loop is made of, as ordinary workflow steps.

``think`` is one model turn (offered the tools); ``act`` is one tool call. Each is its
own step, so each is committed (the assistant turn with its ``tool_calls``, then each
tool's result, as OpenAI-format messages) before the next starts: a worker killed at
any point resumes at the first call that has no recorded result, and a finished call
is never run again. An unfinished one runs again with the same idempotency key
(``run:seq:call_id``, seq being the model turn's checkpoint).

    loop = AgentLoop(my_workflow.tools)

    @my_workflow.step(start=True)
    def think(ctx):
        out = loop.think(ctx, prompt=ctx.task if loop.first_turn(ctx) else None)
        return End(loop.result(ctx, out.text)) if isinstance(out, Final) else out

    @my_workflow.step
    def act(ctx):
        return loop.act(ctx)

The loop keeps its bookkeeping in ``ctx.state["loop"]``: what it spent (``usage``,
against :class:`~pausepoint.tasks.budgets.Budget`), and the calls of the last model turn
with their status (``proposed``, ``asked`` an approver, ``waiting`` on a callback or an
event, ``done``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pausepoint.persistence.records import APPROVAL, CALLBACK, EVENT
from pausepoint.tasks.budgets import Budget, new_usage, tool_names
from pausepoint.tasks.context import StepContext
from pausepoint.tasks.llm import Completion
from pausepoint.tasks.tools import Tool, ToolArgumentsError, ToolContext, ToolRegistry, ToolWait
from pausepoint.tasks.tools import registry as global_tools
from pausepoint.tasks.workflow import End, Next, Outcome, Wait

LOOP_KEY = "loop"
# A tool's result longer than this is cut before it goes to the model.
MAX_RESULT_CHARS = 16_000


@dataclass(frozen=True)
class Final:
    """The model answered without asking for a tool: the loop's answer."""

    text: str


class AgentLoop:
    """Think and act steps over the tools of a workflow and of the run's agent."""

    def __init__(
        self, tools: ToolRegistry | None = None, *, think: str = "think", act: str = "act"
    ) -> None:
        self.tools = tools
        self.think_step = think
        self.act_step = act

    # ------------------------------------------------------------------ tools

    def offered(self, ctx: StepContext) -> dict[str, Tool]:
        """The tools this run's model may call: the workflow's, the agent's own, and
        the global ones its ``model["tools"]`` names."""
        found: dict[str, Tool] = {}
        named = global_tools.named(tool_names(ctx.agent.model))
        own = self.tools.all() if self.tools is not None else []
        for t in (*named, *global_tools.of_agent(ctx.agent.name), *own):
            found[t.name] = t
        return found

    # ------------------------------------------------------------------ state

    @staticmethod
    def state(ctx: StepContext) -> dict[str, Any]:
        loop = ctx.state.setdefault(LOOP_KEY, {})
        loop.setdefault("usage", new_usage())
        loop.setdefault("calls", [])
        return loop  # type: ignore[no-any-return]

    def first_turn(self, ctx: StepContext) -> bool:
        return int(self.state(ctx)["usage"]["iterations"]) == 0

    def result(self, ctx: StepContext, answer: str) -> dict[str, Any]:
        """A loop's result: the answer and what it took."""
        usage = self.state(ctx)["usage"]
        return {
            "answer": answer,
            "iterations": usage["iterations"],
            "tool_calls": usage["tool_calls"],
            "tokens": usage["tokens"],
        }

    # ------------------------------------------------------------------ think

    def think(self, ctx: StepContext, *, prompt: str | None = None) -> Outcome | Final:
        """One model turn: a :class:`Final` answer, or ``Next(act)`` for its tool calls."""
        loop = self.state(ctx)
        stop = self.gate(ctx, loop, "iterations", self.think_step)
        if stop is not None:
            return stop
        tools = self.offered(ctx)
        reply = self.turn(ctx, tools=[t.schema() for t in tools.values()] or None, prompt=prompt)
        if not reply.tool_calls:
            loop["calls"] = []
            return Final(reply.text)
        seen: set[str] = set()
        calls = []
        for c in reply.tool_calls:
            call_id = c.id if c.id and c.id not in seen else f"{c.id or 'call'}_{len(seen)}"
            seen.add(call_id)
            calls.append(
                {
                    "id": call_id,
                    "name": c.name,
                    "arguments": c.arguments,
                    "key": f"{ctx.run_id}:{ctx.next_seq}:{call_id}",
                    "status": "proposed",
                }
            )
        loop["calls"] = calls
        loop["reason"] = reply.text
        return Next(self.act_step)

    def turn(
        self,
        ctx: StepContext,
        *,
        prompt: str | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> Completion:
        """The model's next turn (``ctx.next_turn``), its calls added to the loop's usage."""
        before = len(ctx.model_calls)
        reply = ctx.next_turn(tools=tools, prompt=prompt)
        usage = self.state(ctx)["usage"]
        for call in ctx.model_calls[before:]:
            if call.get("purpose") == "refused":
                continue
            if call.get("purpose") == "ask":
                usage["iterations"] += 1
            read = call.get("usage_in") or call.get("prompt_tokens") or 0
            usage["tokens"] += int(read) + int(call.get("tokens_out") or 0)
        return reply

    def gate(
        self, ctx: StepContext, loop: dict[str, Any], about_to: str, step: str
    ) -> Outcome | None:
        """``None`` when the budget lets ``about_to`` go on; else the run's way out."""
        over = loop.get("over")
        resumed = ctx.resumed
        if over is not None and resumed is not None and resumed.kind == APPROVAL:
            del loop["over"]
            decision = resumed.outcome if isinstance(resumed.outcome, dict) else {}
            if not decision.get("approved"):
                comment = decision.get("comment") or ""
                return End(
                    error=f"{over}; {decision.get('by') or 'the approver'} did not let it go on"
                    + (f": {comment}" if comment else "")
                )
            loop["usage"]["allowance"] = int(loop["usage"].get("allowance", 1)) + 1
            ctx.info["budget"] = {"continued": over, "by": decision.get("by")}
            return None
        budget = Budget.from_model(ctx.agent.model)
        reason = budget.exceeded(loop["usage"], about_to=about_to)
        if reason is None:
            return None
        if budget.on_exceed == "fail":
            return End(error=reason)
        loop["over"] = reason
        return Wait.approval(
            then=step,
            prompt=f"{reason}. Approve to let it go on with as much again; reject to stop it.",
            group=budget.group,
        )

    # ------------------------------------------------------------------ act

    def act(self, ctx: StepContext) -> Outcome:
        """One tool call of the last model turn: the first without a recorded result."""
        loop = self.state(ctx)
        call = next((c for c in loop["calls"] if c["status"] != "done"), None)
        if call is None:
            return Next(self.think_step)
        tools = self.offered(ctx)
        t = tools.get(call["name"])
        status = call["status"]
        resumed = ctx.resumed
        if status == "asked":
            if resumed is None or resumed.kind != APPROVAL:
                return self._ask(ctx, call, t)  # resumed some other way: ask again
            return self._decided(ctx, loop, call, t, resumed.outcome)
        if status == "waiting":
            outcome = resumed.outcome if resumed is not None else None
            if resumed is None or resumed.kind not in (CALLBACK, EVENT):
                return self._finish(ctx, loop, call, "Error: the call's result never came", "error")
            if isinstance(outcome, dict) and "payload" in outcome:
                return self._finish(ctx, loop, call, _text(outcome["payload"]), "done")
            return self._finish(
                ctx, loop, call, f"Error: {call.get('on_timeout') or 'timed out'}", "timeout"
            )
        stop = self.gate(ctx, loop, "tool_calls", self.act_step)
        if stop is not None:
            return stop
        if t is None:
            known = ", ".join(sorted(tools)) or "none"
            return self._finish(
                ctx,
                loop,
                call,
                f"Error: there is no tool {call['name']!r} (tools: {known})",
                "error",
            )
        try:
            arguments = t.parse(call["arguments"])
        except ToolArgumentsError as e:
            return self._finish(ctx, loop, call, f"Error: {e}", "invalid")
        if t.wants_approval(arguments):
            return self._ask(ctx, call, t)
        return self._run(ctx, loop, call, t, arguments)

    def _ask(self, ctx: StepContext, call: dict[str, Any], t: Tool | None) -> Outcome:
        call["status"] = "asked"
        reason = (self.state(ctx).get("reason") or "").strip()
        prompt = f"{ctx.agent.name} wants to call {call['name']} with {call['arguments']}."
        if reason:
            prompt += f" Its reason: {reason}"
        prompt += " Approve, reject with a reason, or approve with edited arguments."
        ctx.info["tool_call"] = {"id": call["id"], "name": call["name"], "asked": True}
        return Wait.approval(then=self.act_step, prompt=prompt, group=t.group if t else None)

    def _decided(
        self,
        ctx: StepContext,
        loop: dict[str, Any],
        call: dict[str, Any],
        t: Tool | None,
        decision: Any,
    ) -> Outcome:
        decision = decision if isinstance(decision, dict) else {}
        by = decision.get("by") or "the approver"
        call["decided_by"] = by
        if not decision.get("approved"):
            comment = (decision.get("comment") or "").strip()
            text = f"The call was rejected by {by}" + (f": {comment}" if comment else ".")
            return self._finish(ctx, loop, call, text, "rejected")
        if t is None:
            return self._finish(ctx, loop, call, f"Error: no tool {call['name']!r}", "error")
        data = decision.get("data") if isinstance(decision.get("data"), dict) else {}
        edited = data.get("arguments") if data else None
        try:
            if edited is not None:
                arguments = t.parse(edited if isinstance(edited, str | dict) else "")
                call["arguments"] = json.dumps(edited) if isinstance(edited, dict) else edited
                call["edited_by"] = by
            else:
                arguments = t.parse(call["arguments"])
        except ToolArgumentsError as e:
            return self._finish(ctx, loop, call, f"Error: the approved arguments: {e}", "invalid")
        return self._run(ctx, loop, call, t, arguments)

    def _run(
        self,
        ctx: StepContext,
        loop: dict[str, Any],
        call: dict[str, Any],
        t: Tool,
        arguments: dict[str, Any],
    ) -> Outcome:
        loop["usage"]["tool_calls"] += 1
        # A callback source is short and lowercase: the call id, hashed.
        source = "tool-" + hashlib.sha256(call["id"].encode()).hexdigest()[:20]
        tctx = ToolContext(
            run_id=ctx.run_id,
            call_id=call["id"],
            idempotency_key=call["key"],
            agent=ctx.agent.name,
            callback_url=ctx.callback_url(source),
            edited_by=call.get("edited_by"),
        )
        started = time.perf_counter()
        try:
            value = t.call(arguments, tctx)
        except TimeoutError as e:
            return self._failed_call(ctx, loop, call, t, str(e), "timeout", started)
        except Exception as e:
            return self._failed_call(
                ctx, loop, call, t, f"{type(e).__name__}: {e}", "error", started
            )
        if isinstance(value, ToolWait):
            call["status"] = "waiting"
            call["on_timeout"] = value.on_timeout
            ctx.info["tool_call"] = {"id": call["id"], "name": call["name"], "waits": value.kind}
            return _park(value, self.act_step, source)
        ms = round((time.perf_counter() - started) * 1000, 3)
        return self._finish(ctx, loop, call, _text(value), "done", ms)

    def _failed_call(
        self,
        ctx: StepContext,
        loop: dict[str, Any],
        call: dict[str, Any],
        t: Tool,
        error: str,
        status: str,
        started: float,
    ) -> Outcome:
        if t.on_error == "fail":
            return End(error=f"tool {t.name} failed: {error}")
        ms = round((time.perf_counter() - started) * 1000, 3)
        return self._finish(ctx, loop, call, f"Error: {error}", status, ms)

    def _finish(
        self,
        ctx: StepContext,
        loop: dict[str, Any],
        call: dict[str, Any],
        content: str,
        outcome: str,
        ms: float | None = None,
    ) -> Outcome:
        """Record the call's result (the tool message) and go on."""
        if len(content) > MAX_RESULT_CHARS:
            content = content[: MAX_RESULT_CHARS - 40] + f" ... (cut from {len(content)} chars)"
        ctx.say("tool", content, tool_call_id=call["id"])
        call["status"] = "done"
        call["outcome"] = outcome
        record = {
            "id": call["id"],
            "name": call["name"],
            "key": call["key"],
            "arguments": call["arguments"],
            "outcome": outcome,
        }
        for extra in ("decided_by", "edited_by"):
            if call.get(extra):
                record[extra] = call[extra]
        if ms is not None:
            record["ms"] = ms
        ctx.info["tool_call"] = record
        more = any(c["status"] != "done" for c in loop["calls"])
        return Next(self.act_step if more else self.think_step)


def _park(wait: ToolWait, then: str, source: str) -> Wait:
    default = {"timed_out": True}
    if wait.kind == "event":
        return Wait.event(
            wait.event_name or "",
            wait.match_key or "",
            then,
            timeout=wait.timeout,
            on_timeout="default",
            default=default,
        )
    return Wait.callback(
        then,
        source=source,
        timeout=wait.timeout if wait.timeout is not None else timedelta(days=7),
        on_timeout="default",
        default=default,
    )


def _text(value: Any) -> str:
    """A tool's result as the text the model reads."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)
