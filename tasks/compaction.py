"""Compaction: older turns folded into a running summary by the agent's own model.

A conversation's summary covers its turns ``[0, covers)``. When the turns after it
outgrow their share of the budget, :func:`compact` folds the older of them (and the
summary so far) into a new summary, in as many model calls as it takes for each call
to fit the model's context: ``S1 = summarise(S0 + chunk1)``, ``S2 = summarise(S1 +
chunk2)``... The result never exceeds the summary's share of the budget. The turns
themselves stay in the store (audit, time travel); the step's commit stores the
summary, and the new checkpoint's state names it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pausepoint.persistence.records import NewSummary
from pausepoint.tasks.context_builder import ContextBuilder, ContextOverflow, Summary, Turns
from pausepoint.tasks.counting import REPLY_PRIMING, prompt_tokens, truncate
from pausepoint.tasks.llm import SUMMARY_REQUEST, LLMBackend, Message, chat

log = logging.getLogger(__name__)

INSTRUCTIONS = (
    SUMMARY_REQUEST
    + " Rewrite the summary so far together with the new turns into one summary that "
    "keeps every fact, name, number, decision and open question a later turn may need. "
    "Write plain prose, no preamble."
)
# Turns are read from the store this many at a time while folding.
READ_PAGE = 500


@dataclass
class Compactor:
    """Folds turns into a summary for one step, recording every model call it makes."""

    builder: ContextBuilder
    llm: LLMBackend
    model: str | None
    idempotency_key: str
    record: Callable[[dict[str, Any]], None]

    def compact(
        self,
        turns: Turns,
        summary: Summary | None,
        upto: int,
        limit: int,
        budget: int | None = None,
    ) -> NewSummary:
        """A summary of turns ``[0, upto)``, at most ``limit`` tokens, in calls of at
        most ``budget`` tokens (the settings' budget by default)."""
        counter = self.builder.counter
        settings = self.builder.settings
        limit = max(16, limit)
        text = summary.content if summary else ""
        start = summary.covers if summary else 0
        system: Message = {"role": "system", "content": INSTRUCTIONS}
        # One call's room for the new turns: the budget less the instructions, the
        # summary so far (at most `limit`) and the framing.
        budget = budget or settings.budget
        room = budget - self.builder.tokens(system) - limit - REPLY_PRIMING - 16
        if room < 64:
            raise ContextOverflow(
                f"the model's context ({settings.window} tokens) leaves no room to compact "
                "the conversation; raise model['context_window'] or lower the summary share"
            )
        calls = 0
        position = start
        while position < upto:
            chunk: list[str] = []
            spent = 0
            while position < upto:
                page = turns.slice(position, min(upto, position + READ_PAGE))
                taken = 0
                for m in page:
                    line = f"{m['role']}: {m['content']}"
                    cost = counter.count(line) + 1
                    if cost > room:  # one turn larger than a call: its beginning
                        line = truncate(counter, line, room - 1)
                        cost = counter.count(line) + 1
                    if spent + cost > room and chunk:
                        break
                    chunk.append(line)
                    spent += cost
                    taken += 1
                position += taken
                if taken < len(page) or not page:
                    break
            text = self._fold(text, chunk, limit, calls)
            calls += 1
        content = truncate(counter, text, limit)
        return NewSummary(covers=upto, content=content, tokens=counter.count(content))

    def _fold(self, summary: str, chunk: list[str], limit: int, n: int) -> str:
        body = (
            f"Summary so far: {summary or '(none yet)'}\n\nNew turns:\n"
            + "\n".join(chunk)
            + f"\n\nThe new summary, in at most {limit} tokens:"
        )
        messages: list[Message] = [
            {"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": body},
        ]
        sent = prompt_tokens(self.builder.counter, messages)
        # A ContextTooLong here goes up to ask_within_budget, which halves the budget once.
        reply = chat(
            self.llm,
            messages,
            model=self.model,
            idempotency_key=f"{self.idempotency_key}:compact:{n}",
            max_tokens=min(limit, self.builder.settings.reply),
        )
        self.record(
            {
                "purpose": "compact",
                "prompt_tokens": sent,
                "turns": len(chunk),
                "usage_in": reply.prompt_tokens,
                "tokens_out": reply.completion_tokens,
            }
        )
        return truncate(self.builder.counter, reply.text.strip(), limit)
