"""One model call within budget: assemble, compact when the turns outgrow their share,
send, and when the model still says the context is too long, compact harder once.

Shared by a workflow step's ``ctx.ask`` and the seed ``Agent.execute``, so both build
their calls the same way (:mod:`pausepoint.tasks.context_builder`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pausepoint.persistence.errors import ContextTooLong
from pausepoint.persistence.records import NewSummary
from pausepoint.tasks.compaction import Compactor
from pausepoint.tasks.context_builder import (
    Agentish,
    Assembled,
    ContextBuilder,
    ContextOverflow,
    Recall,
    Summary,
    Turns,
    as_summary,
)
from pausepoint.tasks.counting import REPLY_PRIMING
from pausepoint.tasks.llm import Completion, LLMBackend, chat

log = logging.getLogger(__name__)


@dataclass
class Conversation:
    """What a caller keeps between calls: the summary in effect, the one this step
    wrote (to be committed), and the record of every model call."""

    summary: Summary | None
    new_summary: NewSummary | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)


def ask_within_budget(
    *,
    builder: ContextBuilder,
    llm: LLMBackend,
    agent: Agentish,
    prompt: str | None,
    turns: Turns,
    conversation: Conversation,
    recall: Recall | None,
    model: str | None,
    temperature: float | None,
    key: str,
    task: str = "",
    input: Any = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[Completion, Assembled]:
    """Ask the model ``prompt`` with everything that fits; the reply and what was sent.

    ``prompt=None`` asks for the conversation's next turn (an agent loop); ``tools`` are
    offered in OpenAI's format and count against the budget."""
    compactor = Compactor(builder, llm, model, key, conversation.calls.append)
    settings = builder.settings
    budget = settings.budget
    for attempt in (1, 2):
        assembled: Assembled | None = None
        try:
            assembled = _assemble(
                builder,
                compactor,
                agent,
                prompt,
                turns,
                conversation,
                recall,
                task,
                input,
                budget,
                tools,
            )
            reply = chat(
                llm,
                assembled.messages,
                model=model,
                temperature=temperature,
                idempotency_key=key if attempt == 1 else f"{key}:smaller",
                max_tokens=settings.reply,
                tools=list(tools) if tools else None,
            )
        except ContextTooLong as e:
            what = "a compaction request" if assembled is None else f"{assembled.total} tokens"
            if attempt == 2:
                raise ContextOverflow(
                    f"the model refused the context as too long twice, the second time "
                    f"{what} at half the window ({e}); set model['context_window'] to the "
                    "model's real context size"
                ) from e
            log.warning("the model refused %s as too long; compacting to half the window", what)
            refused: dict[str, Any] = {"purpose": "refused", "budget": budget}
            if assembled is not None:
                refused.update(assembled.record())
            conversation.calls.append(refused)
            # Assume the model holds half the window it was said to: the prompt's budget is
            # that less the reply's room.
            budget = max(settings.window // 2 - settings.reply, settings.reply)
            continue
        call = {"purpose": "ask", **assembled.record()}
        if assembled.memories:
            call["memories"] = assembled.memories
        call["usage_in"] = reply.prompt_tokens
        call["tokens_out"] = (
            reply.completion_tokens
            if reply.completion_tokens is not None
            else builder.counter.count(reply.text)
            + sum(builder.counter.count(c.name + c.arguments) for c in reply.tool_calls)
        )
        if reply.tool_calls:
            call["tool_calls"] = [c.name for c in reply.tool_calls]
        conversation.calls.append(call)
        return reply, assembled
    raise AssertionError("unreachable")  # pragma: no cover


def _assemble(
    builder: ContextBuilder,
    compactor: Compactor,
    agent: Agentish,
    prompt: str | None,
    turns: Turns,
    conversation: Conversation,
    recall: Recall | None,
    task: str,
    input: Any,
    budget: int,
    tools: Sequence[Mapping[str, Any]] | None,
) -> Assembled:
    def build() -> tuple[Assembled, int]:
        return builder.assemble(
            agent,
            prompt,
            turns,
            summary=conversation.summary,
            recall=recall,
            task=task,
            input=input,
            budget=budget,
            tools=tools,
        )

    assembled, first = build()
    start = conversation.summary.covers if conversation.summary else 0
    if first <= start:
        return assembled  # every turn since the summary went in
    # Older turns did not fit: fold them into the summary, keeping the newest that fill
    # `keep_recent` of the recent share, so the next compaction is many calls away.
    _, summary_limit, recent_limit = builder.shares(
        assembled.tokens["system"] + assembled.tokens["task"] + REPLY_PRIMING, budget
    )
    keep = int(recent_limit * builder.settings.keep_recent)
    _, _, upto = builder.recent(turns, start, keep)
    new = compactor.compact(turns, conversation.summary, upto, summary_limit, budget)
    conversation.new_summary = new
    conversation.summary = as_summary(new)
    assembled, _ = build()
    return assembled
