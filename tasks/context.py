"""What a step sees: the run's agent, task, state and conversation, and a model to ask."""

from __future__ import annotations

import copy
from typing import Any

from pausepoint.persistence.records import AgentRecord, Checkpoint, Claim, NewMessage, WaitRecord
from pausepoint.persistence.store import Store
from pausepoint.tasks.llm import LLMBackend, Message
from pausepoint.tasks.prompt import build_messages
from pausepoint.tasks.tokens import make_token


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
        self.attempt = run.attempt
        self.agent: AgentRecord = claim.agent
        self.llm = llm
        self.resumed: WaitRecord | None = claim.resumed
        self.history = History(store, claim.checkpoint)
        self.idempotency_key = claim.idempotency_key
        # The checkpoint this step's commit will write.
        self.next_seq = claim.checkpoint.seq + 1
        self.new_messages: list[NewMessage] = []
        self._secret = secret
        self._public_url = public_url.rstrip("/")

    def callback_url(self, source: str | None = None) -> str:
        """The single-use URL an external system POSTs its result to; pair it with
        ``Wait.callback(then=..., source=source)``. The same on every attempt of this step."""
        token = make_token(self._secret, self.run_id, self.next_seq, source)
        return f"{self._public_url}/callbacks/{token.token}"

    def say(self, role: str, content: str) -> None:
        """Append a message to the run's conversation (stored when the step commits)."""
        if role not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"unknown message role {role!r}")
        self.new_messages.append(NewMessage(role, content))

    def conversation(self, window: int | None = None) -> list[Message]:
        """The conversation so far, including what this step has said."""
        stored = self.history.all() if window is None else self.history.tail(window)
        pending = [{"role": m.role, "content": m.content} for m in self.new_messages]
        out = stored + pending
        return out[-window:] if window is not None else out

    def ask(self, prompt: str, *, window: int | None = None) -> str:
        """Ask the agent's model, with its persona and the conversation; record both turns.

        ``window`` limits how many past messages go along (the agent's
        ``model["history_window"]`` when not given).
        """
        if window is None:
            configured = self.agent.model.get("history_window")
            window = int(configured) if configured is not None else None
        messages = build_messages(
            self.agent.persona,
            self.agent.instruction,
            self.agent.strategy,
            self.conversation(window),
            prompt,
        )
        reply = self.llm.complete(
            messages,
            model=self.agent.model.get("model"),
            temperature=self.agent.model.get("temperature"),
            idempotency_key=f"{self.idempotency_key}:{len(self.new_messages)}",
        )
        self.say("user", prompt)
        self.say("assistant", reply)
        return reply
