"""What a step sees: the run's agent, task, state and conversation, and a model to ask."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from pausepoint.persistence.records import (
    MESSAGE_FIELDS,
    AgentRecord,
    Checkpoint,
    Claim,
    NewMemory,
    NewMessage,
    NewSummary,
    Recalled,
    WaitRecord,
)
from pausepoint.persistence.store import Store
from pausepoint.persistence.store.memory import check_memory
from pausepoint.persistence.store.summaries import CONTEXT_KEY, context_meta, summary_pointer
from pausepoint.tasks.asking import Conversation, ask_within_budget
from pausepoint.tasks.context_builder import ContextBuilder, ContextSettings, Summary
from pausepoint.tasks.llm import Completion, LLMBackend, Message
from pausepoint.tasks.tokens import make_token

EPISODE_PROMPT = (
    "This run is over. For your long-term memory, write a short episode summary: the "
    "task, what you found and decided, and how it ended. Plain prose, no preamble."
)


class History:
    """The run's conversation, read from the store only when a step asks for it.

    A step that never looks at the history costs the same at message 10 and at
    message 10,000.
    """

    def __init__(self, store: Store, checkpoint: Checkpoint) -> None:
        self._store = store
        self._checkpoint = checkpoint
        self._length = checkpoint.history_len
        self._cache: list[Message] | None = None

    def __len__(self) -> int:
        return self._length

    def all(self) -> list[Message]:
        if self._cache is None:
            rows = self._store.conversation(self._checkpoint)
            self._cache = [m.as_chat() for m in rows]
        return list(self._cache)

    def slice(self, start: int, stop: int) -> list[Message]:
        if self._cache is not None:
            return self._cache[start:stop]
        rows = self._store.conversation(self._checkpoint, start=start, stop=stop)
        return [m.as_chat() for m in rows]

    def tail(self, n: int) -> list[Message]:
        if n <= 0:
            return []
        if self._cache is not None:
            return self._cache[-n:]
        rows = self._store.conversation(self._checkpoint, start=max(0, self._length - n))
        return [m.as_chat() for m in rows]


class StepContext:
    """Handed to every step. Mutate ``state``; add to the conversation with ``say``/``ask``.

    Nothing a step does here is stored until the step returns: a step that
    raises leaves no trace but a ``retried`` or ``failed`` event.
    """

    def __init__(
        self,
        *,
        store: Store,
        claim: Claim,
        llm: LLMBackend,
        secret: bytes = b"",
        public_url: str = "http://127.0.0.1:8000",
    ) -> None:
        run = claim.run
        self.run_id = run.id
        self.workflow = run.workflow
        self.step = run.step
        self.task = run.task
        self.input: dict[str, Any] = copy.deepcopy(run.input)
        self.state: dict[str, Any] = copy.deepcopy(claim.checkpoint.state)
        # The store's own part of the state (the summary in effect): not the step's.
        self._context_meta = self.state.pop(CONTEXT_KEY, None)
        self.attempt = run.attempt
        self.agent: AgentRecord = claim.agent
        self.llm = llm
        self.resumed: WaitRecord | None = claim.resumed
        self.history = History(store, claim.checkpoint)
        self.idempotency_key = claim.idempotency_key
        # The checkpoint this step's commit will write.
        self.next_seq = claim.checkpoint.seq + 1
        self.new_messages: list[NewMessage] = []
        self.new_memories: list[NewMemory] = []
        # Merged into this step's ``step_completed`` event (what a loop's tool call did).
        self.info: dict[str, Any] = {}
        # Whom this run is about, for memories (``input["subject"]``, when a string).
        subject = run.input.get("subject") if isinstance(run.input, dict) else None
        self.subject: str | None = subject if isinstance(subject, str) and subject else None
        self._store = store
        self._checkpoint = claim.checkpoint
        self._conversation: Conversation | None = None
        self._secret = secret
        self._public_url = public_url.rstrip("/")

    def callback_url(self, source: str | None = None) -> str:
        """The single-use URL an external system POSTs its result to; pair it with
        ``Wait.callback(then=..., source=source)``. The same on every attempt of this step."""
        token = make_token(self._secret, self.run_id, self.next_seq, source)
        return f"{self._public_url}/callbacks/{token.token}"

    def say(self, role: str, content: str, **fields: Any) -> None:
        """Append a message to the run's conversation (stored when the step commits).

        ``fields`` are OpenAI's other message fields: ``tool_calls`` on an assistant
        turn, ``tool_call_id`` (and ``name``) on a tool's result."""
        if role not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"unknown message role {role!r}")
        unknown = set(fields) - set(MESSAGE_FIELDS)
        if unknown:
            raise ValueError(f"unknown message fields {sorted(unknown)}; known: {MESSAGE_FIELDS}")
        data = {k: v for k, v in fields.items() if v is not None} or None
        self.new_messages.append(NewMessage(role, content or "", data))

    def conversation(self, window: int | None = None) -> list[Message]:
        """The conversation so far, including what this step has said."""
        stored = self.history.all() if window is None else self.history.tail(window)
        pending = [m.as_chat() for m in self.new_messages]
        out = stored + pending
        return out[-window:] if window is not None else out

    # ------------------------------------------------------------ the model

    @property
    def context_settings(self) -> ContextSettings:
        return ContextSettings.from_model(self.agent.model)

    def _loaded_conversation(self) -> Conversation:
        if self._conversation is None:
            summary = None
            pointer = summary_pointer({CONTEXT_KEY: self._context_meta})
            if pointer is not None:
                found = self._store.summary(*pointer)
                if found is not None:  # gone with retention: compacted again when needed
                    summary = Summary(found.covers, found.content, found.tokens)
            self._conversation = Conversation(summary)
        return self._conversation

    def ask(self, prompt: str, *, window: int | None = None, subject: str | None = None) -> str:
        """Ask the agent's model, and record both turns.

        The call is assembled under the model's budget (see
        :mod:`pausepoint.tasks.context_builder`): persona, the prompt and the run's
        task, the memories that fit it (about ``subject``, by default the run's), the
        summary of older turns and the newest turns. ``window`` caps how many recent
        messages go along (the agent's ``model["history_window"]`` when not given).
        """
        reply = self._call(prompt, window=window, subject=subject)
        self.say("user", prompt)
        self.say("assistant", reply.text)
        return reply.text

    def next_turn(
        self,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        prompt: str | None = None,
    ) -> Completion:
        """The model's next turn of the conversation, offered ``tools`` (OpenAI format),
        recorded as an assistant message with its ``tool_calls``; with ``prompt``, that
        user turn first. Assembled under the budget like :meth:`ask`."""
        reply = self._call(prompt, tools=tools)
        if prompt is not None:
            self.say("user", prompt)
        calls = [c.as_openai() for c in reply.tool_calls]
        self.say("assistant", reply.text, tool_calls=calls or None)
        return reply

    def _call(
        self,
        prompt: str | None,
        *,
        window: int | None = None,
        subject: str | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> Completion:
        settings = self.context_settings
        if window is not None:
            settings = replace(settings, history_window=window)
        conversation = self._loaded_conversation()
        about = subject or self.subject
        reply, _ = ask_within_budget(
            builder=ContextBuilder(settings),
            llm=self.llm,
            agent=self.agent,
            prompt=prompt,
            turns=_StepTurns(self),
            conversation=conversation,
            recall=(
                (lambda q, n: self._store.recall(self.agent.name, q, subject=about, limit=n))
                if settings.use_memories
                else None
            ),
            model=self.agent.model.get("model"),
            temperature=self.agent.model.get("temperature"),
            key=f"{self.idempotency_key}:{len(self.new_messages)}",
            task=self.task,
            input=self.input,
            tools=tools,
        )
        return reply

    def remember(
        self,
        content: str,
        *,
        kind: str = "fact",
        subject: str | None = None,
        key: str | None = None,
        importance: float | None = None,
        supersedes: int | None = None,
    ) -> None:
        """Add to the agent's long-term memory (written with this step's commit).

        A memory with a ``key`` supersedes the agent's current one with the same
        subject and key: "the customer's address" is then the new one."""
        memory = NewMemory(
            content,
            kind=kind,
            subject=subject or self.subject,
            key=key,
            importance=importance,
            supersedes=supersedes,
        )
        check_memory(memory)
        self.new_memories.append(memory)

    def recall(self, query: str, *, subject: str | None = None, limit: int = 10) -> list[Recalled]:
        """The agent's memories that best fit ``query`` (about ``subject`` or none)."""
        return self._store.recall(
            self.agent.name, query, subject=subject or self.subject, limit=limit
        )

    def write_episode(self) -> None:
        """At the end of a run: the model's summary of it, as an ``episode`` memory."""
        text = self.ask_quietly(EPISODE_PROMPT)
        if text.strip():
            self.remember(text.strip(), kind="episode")

    def ask_quietly(self, prompt: str) -> str:
        """Like :meth:`ask`, but the two turns are not added to the conversation."""
        before = len(self.new_messages)
        reply = self.ask(prompt)
        del self.new_messages[before:]
        return reply

    @property
    def model_calls(self) -> list[dict[str, Any]]:
        """What every model call of this step sent and got, per section (tokens)."""
        return self._conversation.calls if self._conversation else []

    @property
    def new_summary(self) -> NewSummary | None:
        return self._conversation.new_summary if self._conversation else None

    def stored_state(self) -> dict[str, Any]:
        """The state to checkpoint: the step's, and the store's part of it."""
        meta = self._context_meta
        new = self.new_summary
        if new is not None:
            meta = context_meta(self.run_id, self.next_seq, new.covers)
        return {**self.state, CONTEXT_KEY: meta} if meta else self.state


class _StepTurns:
    """The conversation a step sees: stored turns, then what this step has said."""

    def __init__(self, ctx: StepContext) -> None:
        self._history = ctx.history
        self._pending = [m.as_chat() for m in ctx.new_messages]

    def __len__(self) -> int:
        return len(self._history) + len(self._pending)

    def slice(self, start: int, stop: int) -> list[Message]:
        stored = len(self._history)
        out: list[Message] = []
        if start < stored:
            out.extend(self._history.slice(start, min(stop, stored)))
        if stop > stored:
            out.extend(self._pending[max(0, start - stored) : stop - stored])
        return out
