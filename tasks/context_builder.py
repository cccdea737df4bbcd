"""The context builder: every model call, assembled under the model's token budget.

What goes in, in order of priority, each section with its own share of the budget:

1. **system**: the agent's persona, instruction and strategy (always whole);
2. **task**: the prompt, and the run's task and input when they differ from it;
3. **memories**: the agent's long-term memories that best fit the task (recall);
4. **summary**: the summary of the conversation's older turns (compaction);
5. **recent**: the newest turns, as many as fit.

The budget is the model's context size (``model["context_window"]``) less the room
kept for the reply (``model["reply_tokens"]``). The builder never sends more: when
the turns that are not yet summarised outgrow their share, the older of them are
compacted first (:mod:`pausepoint.tasks.compaction`); when even the system prompt and
the prompt do not fit, it raises :class:`ContextOverflow` instead of sending.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pausepoint.persistence.errors import ConfigurationError, LLMError
from pausepoint.persistence.records import NewSummary, Recalled
from pausepoint.tasks.counting import (
    REPLY_PRIMING,
    TokenCounter,
    counter_for,
    message_tokens,
    truncate,
)
from pausepoint.tasks.llm import Message
from pausepoint.tasks.prompt import system_prompt

SECTIONS = ("system", "task", "memories", "summary", "recent")
# How many turns are read from the store at a time, newest first.
PAGE = 64


class ContextOverflow(LLMError):
    """Even the least a call needs does not fit the model's context: not retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


@dataclass(frozen=True)
class ContextSettings:
    """How a call's context is budgeted, from the agent's ``model`` settings."""

    window: int = 8192
    reply: int = 1024
    # Shares of what is left once system and task are in (unused shares go to recent).
    memories: float = 0.25
    summary: float = 0.15
    # At most this many memories per call; at most this many recent messages (None: any).
    recall: int = 12
    history_window: int | None = None
    # After a compaction, the recent turns fill at most this share of their budget, so
    # the next compaction is many calls away.
    keep_recent: float = 0.5
    tokenizer: str | None = None
    # Memory: recall before each call; write an episode summary when a run ends.
    use_memories: bool = True
    episodes: bool = False

    @classmethod
    def from_model(cls, model: Mapping[str, Any]) -> ContextSettings:
        ctx = model.get("context") or {}
        memory = model.get("memory") or {}
        if not isinstance(ctx, Mapping) or not isinstance(memory, Mapping):
            raise ConfigurationError("model['context'] and model['memory'] must be objects")
        try:
            settings = cls(
                window=int(model.get("context_window", cls.window)),
                reply=int(model.get("reply_tokens", cls.reply)),
                memories=float(ctx.get("memories", cls.memories)),
                summary=float(ctx.get("summary", cls.summary)),
                recall=int(ctx.get("recall", cls.recall)),
                history_window=(
                    int(model["history_window"])
                    if model.get("history_window") is not None
                    else None
                ),
                keep_recent=float(ctx.get("keep_recent", cls.keep_recent)),
                tokenizer=model.get("tokenizer"),
                use_memories=bool(memory.get("recall", True)),
                episodes=bool(memory.get("episodes", False)),
            )
        except (TypeError, ValueError) as e:
            raise ConfigurationError(f"bad context settings in the agent's model: {e}") from e
        settings.check()
        return settings

    def check(self) -> None:
        if self.window < 256:
            raise ConfigurationError("model['context_window'] must be at least 256 tokens")
        if not 0 < self.reply < self.window // 2:
            raise ConfigurationError(
                "model['reply_tokens'] must be positive and under half the context window"
            )
        if not (0 <= self.memories < 1 and 0 <= self.summary < 1):
            raise ConfigurationError("context shares must be from 0 to less than 1")
        if self.memories + self.summary > 0.8:
            raise ConfigurationError("memories and summary shares together at most 0.8")
        if not 0.1 <= self.keep_recent <= 1:
            raise ConfigurationError("context keep_recent must be from 0.1 to 1")
        if self.recall < 0 or (self.history_window is not None and self.history_window < 0):
            raise ConfigurationError("context recall and history_window cannot be negative")

    @property
    def budget(self) -> int:
        """What a request may hold: the context less the reply's room."""
        return self.window - self.reply


class Turns(Protocol):
    """A conversation the builder reads in slices, newest first (a store or a list)."""

    def __len__(self) -> int: ...

    def slice(self, start: int, stop: int) -> list[Message]: ...


@dataclass
class ListTurns:
    """Turns held in memory (the seed ``Agent``'s conversation)."""

    messages: Sequence[Message]

    def __len__(self) -> int:
        return len(self.messages)

    def slice(self, start: int, stop: int) -> list[Message]:
        return [dict(m) for m in self.messages[start:stop]]


@dataclass(frozen=True)
class Summary:
    """The summary in effect: of turns [0, covers)."""

    covers: int
    content: str
    tokens: int


Recall = Callable[[str, int], Sequence[Recalled]]
"""``(query, limit)`` -> the memories that fit best, best first."""


@dataclass
class Assembled:
    """One call's messages and what each section spent."""

    messages: list[Message]
    tokens: dict[str, int]
    total: int
    memories: list[int] = field(default_factory=list)
    recent: int = 0

    def record(self) -> dict[str, Any]:
        return {"tokens_in": dict(self.tokens), "prompt_tokens": self.total}


class Agentish(Protocol):
    """Whose call it is: anything with a persona, an instruction and a strategy."""

    @property
    def persona(self) -> str: ...

    @property
    def instruction(self) -> str: ...

    @property
    def strategy(self) -> str: ...


class ContextBuilder:
    """Assembles the messages of one call; see the module's docstring for the order."""

    def __init__(self, settings: ContextSettings, counter: TokenCounter | None = None) -> None:
        self.settings = settings
        self.counter = counter or counter_for(settings.tokenizer)

    def tokens(self, message: Message) -> int:
        return message_tokens(self.counter, message)

    def fixed(
        self,
        agent: Agentish,
        prompt: str | None,
        task: str = "",
        input: Any = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> tuple[list[Message], Message | None, dict[str, int]]:
        """The system and task sections, which every call sends whole.

        ``prompt=None`` continues the conversation (an agent loop's next turn): no new
        user turn, and the run's task is kept in the head so compaction never loses it.
        The tools offered are part of the request, so they count as system."""
        system_text = system_prompt(agent.persona, agent.instruction, agent.strategy)
        head: list[Message] = [{"role": "system", "content": system_text}] if system_text else []
        tokens = {name: 0 for name in SECTIONS}
        tokens["system"] = sum(self.tokens(m) for m in head)
        if tools:
            tokens["system"] += self.counter.count(json.dumps(list(tools), sort_keys=True))
        about = []
        if task and task.strip() != (prompt or "").strip():
            about.append("The task of this run: " + task.strip())
        if input:
            about.append("Its input: " + json.dumps(input, ensure_ascii=False, sort_keys=True))
        if about:
            # The run's task and input may be long: they get at most a quarter of the budget.
            text = truncate(self.counter, "\n".join(about), self.settings.budget // 4)
            head.append({"role": "system", "content": text})
            tokens["task"] += self.tokens(head[-1])
        ask: Message | None = {"role": "user", "content": prompt} if prompt is not None else None
        if ask is not None:
            tokens["task"] += self.tokens(ask)
        used = REPLY_PRIMING + tokens["system"] + tokens["task"]
        if used > self.settings.budget:
            raise ContextOverflow(
                f"the agent's persona, instruction and strategy and this prompt need {used} "
                f"tokens, more than the {self.settings.budget} its model's context leaves "
                f"({self.settings.window} less {self.settings.reply} for the reply)"
            )
        return head, ask, tokens

    def shares(self, used: int, budget: int | None = None) -> tuple[int, int, int]:
        """(memories, summary, recent) budgets once ``used`` tokens are spent."""
        left = (budget or self.settings.budget) - used
        memories = int(left * self.settings.memories) if self.settings.use_memories else 0
        summary = int(left * self.settings.summary)
        return memories, summary, left - memories - summary

    def memory_section(
        self, recall: Recall | None, query: str, limit: int
    ) -> tuple[Message | None, list[int], int]:
        """The recalled memories that fit ``limit`` tokens, best first, as one message."""
        if recall is None or self.settings.recall == 0 or limit <= 0:
            return None, [], 0
        header = "What you remember from earlier work (most relevant first):"
        found = recall(query, self.settings.recall)
        lines: list[str] = []
        ids: list[int] = []
        spent = self.tokens({"role": "system", "content": header})
        for item in found:
            m = item.memory
            about = f" ({m.subject})" if m.subject else ""
            line = f"- [{m.kind}{about}, {m.created_at:%Y-%m-%d}] {m.content.strip()}"
            cost = self.counter.count(line) + 1
            if spent + cost > limit:
                continue  # a shorter one further down may still fit
            lines.append(line)
            ids.append(m.id)
            spent += cost
        if not lines:
            return None, [], 0
        message: Message = {"role": "system", "content": "\n".join([header, *lines])}
        return message, ids, self.tokens(message)

    def summary_message(self, summary: Summary | None, limit: int) -> Message | None:
        """The summary as a message of at most ``limit`` tokens (settings may have
        shrunk since it was written)."""
        if summary is None or not summary.content:
            return None
        prefix = "Summary of the earlier conversation: "
        room = limit - self.tokens({"role": "system", "content": prefix})
        if room <= 0:
            return None
        return {"role": "system", "content": prefix + truncate(self.counter, summary.content, room)}

    def recent(self, turns: Turns, start: int, limit: int) -> tuple[list[Message], int, int]:
        """The newest turns after ``start`` that fit ``limit``: (turns, tokens, first index)."""
        out: list[Message] = []
        spent = 0
        stop = len(turns)
        cap = self.settings.history_window
        first = stop
        while first > start:
            lo = max(start, first - PAGE)
            page = turns.slice(lo, first)
            for i in range(len(page) - 1, -1, -1):
                if cap is not None and len(out) >= cap:
                    return _without_orphans(self, out, spent, first)
                cost = self.tokens(page[i])
                if spent + cost > limit:
                    return _without_orphans(self, out, spent, first)
                out.insert(0, page[i])
                spent += cost
                first -= 1
            if first > lo:  # the page was shorter than asked (should not happen)
                break
        return _without_orphans(self, out, spent, first)

    def assemble(
        self,
        agent: Agentish,
        prompt: str | None,
        turns: Turns,
        *,
        summary: Summary | None,
        recall: Recall | None = None,
        task: str = "",
        input: Any = None,
        budget: int | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> tuple[Assembled, int]:
        """The call's messages, and the index of the oldest turn that could not go in
        beside the summary (``summary.covers`` when every later turn went in)."""
        head, ask, tokens = self.fixed(agent, prompt, task, input, tools)
        used = REPLY_PRIMING + tokens["system"] + tokens["task"]
        mem_limit, sum_limit, recent_limit = self.shares(used, budget)
        query = "\n".join(p for p in (task, prompt) if p)
        memory, ids, tokens["memories"] = self.memory_section(recall, query, mem_limit)
        summary_msg = self.summary_message(summary, sum_limit)
        tokens["summary"] = self.tokens(summary_msg) if summary_msg else 0
        # What memories and summary leave unused goes to the recent turns.
        recent_limit += (mem_limit - tokens["memories"]) + (sum_limit - tokens["summary"])
        start = summary.covers if summary else 0
        recent, tokens["recent"], first = self.recent(turns, start, recent_limit)
        messages = list(head)
        if memory is not None:
            messages.append(memory)
        if summary_msg is not None:
            messages.append(summary_msg)
        messages.extend(recent)
        if ask is not None:
            messages.append(ask)
        total = REPLY_PRIMING + sum(tokens.values())
        return Assembled(messages, tokens, total, ids, len(recent)), first


def _without_orphans(
    builder: ContextBuilder, out: list[Message], spent: int, first: int
) -> tuple[list[Message], int, int]:
    """Recent turns never start with a tool's result whose call was cut off: OpenAI
    refuses a ``tool`` message that does not follow the assistant turn asking for it."""
    while out and out[0].get("role") == "tool":
        spent -= builder.tokens(out.pop(0))
        first += 1
    return out, spent, first


def as_summary(new: NewSummary) -> Summary:
    return Summary(new.covers, new.content, new.tokens)
