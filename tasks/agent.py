"""The seed article's agent API, kept as a plain Python API on the same store.

    persistence = AgentPersistence("agent_memory.db")
    agent = Agent("loan_processor", persistence)
    agent.persona = "I am a loan processing assistant..."
    result = agent.execute("Perform initial loan assessment")
    agent.pause()            # saved; the process may exit here
    ...
    agent = Agent("loan_processor", persistence)   # loads the saved state
    agent.resume()
    agent.execute("Continue processing with approved status")

An agent's script conversation is a run of the ``__session__`` workflow: it
gets checkpoints, messages and an audit trail like any queued run, and
``pausepoint show`` displays it. Workers never advance it.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from pausepoint.persistence.records import (
    ACTIVE,
    PAUSED,
    NewEvent,
    NewMemory,
    NewMessage,
    Recalled,
    RunRecord,
)
from pausepoint.persistence.store import Store
from pausepoint.persistence.store.memory import check_memory
from pausepoint.persistence.store.summaries import CONTEXT_KEY, context_meta, summary_pointer
from pausepoint.tasks.asking import Conversation, ask_within_budget
from pausepoint.tasks.budgets import check_loop_settings
from pausepoint.tasks.context_builder import ContextBuilder, ContextSettings, ListTurns, Summary
from pausepoint.tasks.llm import LLMBackend, Message, ScriptedBackend


def _actor() -> str:
    return f"script:{socket.gethostname()}:{os.getpid()}"


class AgentPersistence:
    """The store behind seed-style agents: a SQLite file path, or any store URL."""

    def __init__(self, db_path: str = "agent_memory.db", *, store: Store | None = None) -> None:
        if store is None:
            url = db_path if "://" in db_path else f"sqlite:///{db_path}"
            store = Store.from_url(url)
        self.db_path = db_path
        self.store = store

    def save_agent_state(self, agent: Agent) -> bool:
        return agent.save_state()

    def load_agent_state(self, agent: Agent) -> bool:
        return agent.load_state()

    def close(self) -> None:
        self.store.close()


class Agent:
    """A named agent with persona, instruction and strategy, whose state outlives the process."""

    def __init__(
        self,
        name: str,
        persistence: AgentPersistence | None = None,
        *,
        llm: LLMBackend | None = None,
    ) -> None:
        self._name = name
        self._persistence = persistence or AgentPersistence()
        self._llm: LLMBackend = llm if llm is not None else ScriptedBackend()
        self._persona = ""
        self._instruction = ""
        self._strategy = ""
        self._model: dict[str, Any] = {}
        self._task = ""
        self._history: list[Message] = []
        self._saved_len = 0
        self._paused = False
        self._session: RunRecord | None = None
        self._fresh_session = False
        self._conversation = Conversation(None)
        # Where the summary in effect is stored (its run and checkpoint), once it is.
        self._summary_at: tuple[str, int] | None = None
        self._pending_memories: list[NewMemory] = []
        self.last_call: dict[str, Any] | None = None
        self._persistence.load_agent_state(self)

    # The configuration, as in the seed article.
    @property
    def name(self) -> str:
        return self._name

    @property
    def persona(self) -> str:
        return self._persona

    @persona.setter
    def persona(self, value: str) -> None:
        self._persona = value

    @property
    def instruction(self) -> str:
        return self._instruction

    @instruction.setter
    def instruction(self, value: str) -> None:
        self._instruction = value

    @property
    def strategy(self) -> str:
        return self._strategy

    @strategy.setter
    def strategy(self, value: str) -> None:
        self._strategy = value

    @property
    def model(self) -> dict[str, Any]:
        """Model settings: ``model``, ``temperature``, ``context_window``, ``reply_tokens``,
        ``context`` shares, ``memory`` (see :class:`ContextSettings`)."""
        return self._model

    @model.setter
    def model(self, value: dict[str, Any]) -> None:
        ContextSettings.from_model(value)  # refuse bad settings now, not at the next call
        check_loop_settings(value)
        self._model = dict(value)

    @property
    def task(self) -> str:
        return self._task

    @property
    def history(self) -> list[Message]:
        return [dict(m) for m in self._history]

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def run_id(self) -> str | None:
        """The id of this agent's script session (a run), once saved."""
        return self._session.id if self._session is not None else None

    def execute(self, task: str) -> str:
        """Run ``task`` with the agent's persona, memories and conversation (within the
        model's budget, compacting older turns when they outgrow it); the result is saved."""
        self._task = task
        settings = ContextSettings.from_model(self._model)
        store = self._persistence.store
        reply, _ = ask_within_budget(
            builder=ContextBuilder(settings),
            llm=self._llm,
            agent=self,
            prompt=task,
            turns=ListTurns(self._history),
            conversation=self._conversation,
            recall=(
                (lambda q, n: store.recall(self._name, q, limit=n))
                if settings.use_memories
                else None
            ),
            model=self._model.get("model"),
            temperature=self._model.get("temperature"),
            key=f"{self.run_id or self._name}:{len(self._history)}",
        )
        self.last_call = self._conversation.calls[-1] if self._conversation.calls else None
        self._history.append({"role": "user", "content": task})
        self._history.append({"role": "assistant", "content": reply.text})
        self._paused = False
        self._save("executed", {"task": task, "model_calls": self._conversation.calls})
        return reply.text

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
        """Add to the agent's long-term memory, which every later run and session of this
        agent can recall (saved at once, with the session)."""
        memory = NewMemory(
            content,
            kind=kind,
            subject=subject,
            key=key,
            importance=importance,
            supersedes=supersedes,
        )
        check_memory(memory)
        self._pending_memories.append(memory)
        self._save("remembered", {})

    def recall(self, query: str, *, subject: str | None = None, limit: int = 10) -> list[Recalled]:
        """The agent's memories that best fit ``query``, best first."""
        return self._persistence.store.recall(self._name, query, subject=subject, limit=limit)

    def save_state(self) -> bool:
        """Save configuration, task and conversation; True when stored."""
        return self._save("saved", {})

    def load_state(self, agent_name: str | None = None) -> bool:
        """Load the saved state of this agent (or of ``agent_name``); False if there is none."""
        store = self._persistence.store
        name = agent_name or self._name
        agents = {a.name: a for a in store.list_agents()}
        if name not in agents:
            return False
        record = agents[name]
        self._persona, self._instruction = record.persona, record.instruction
        self._strategy, self._model = record.strategy, dict(record.model)
        session = store.open_session(name, _actor())
        summary, self._summary_at = _summary_of(store, session)
        self._conversation = Conversation(summary)
        self._task = session.task
        self._history = [m.as_chat() for m in store.history(session.id, stop=session.history_len)]
        self._paused = session.status == PAUSED
        if name == self._name:
            self._session = session
            self._saved_len = len(self._history)
        else:
            # Adopted from another agent: it becomes a new session of this agent, so that
            # what is saved is exactly what is in memory.
            self._session = None
            self._fresh_session = True
            self._saved_len = 0
        return True

    def pause(self) -> bool:
        """Pause: save the current state so the process can stop here."""
        self._paused = True
        return self._save("paused", {"task": self._task})

    def resume(self, agent_name: str | None = None) -> bool:
        """Resume from the saved state (of this agent, or of ``agent_name``)."""
        if not self.load_state(agent_name):
            return False
        self._paused = False
        return self._save("resumed", {"task": self._task})

    def _save(self, kind: str, data: dict[str, Any]) -> bool:
        store = self._persistence.store
        store.save_agent(
            self._name,
            persona=self._persona,
            instruction=self._instruction,
            strategy=self._strategy,
            model=self._model,
        )
        if self._session is None:
            self._session = store.open_session(self._name, _actor(), fresh=self._fresh_session)
            self._fresh_session = False
        new = [NewMessage(m["role"], m["content"]) for m in self._history[self._saved_len :]]
        state: dict[str, Any] = {"task": self._task, "paused": self._paused}
        written = self._conversation.new_summary
        summary = self._conversation.summary
        if summary is not None:
            # The summary in effect: the one this save writes, or the one loaded.
            run, seq = (self._session.id, self._session.seq + 1)
            if written is None and self._summary_at is not None:
                run, seq = self._summary_at
            state[CONTEXT_KEY] = context_meta(run, seq, summary.covers)
        # StaleVersion here means another process saved this agent since we loaded it.
        self._session = store.save_session(
            self._session,
            actor=_actor(),
            status=PAUSED if self._paused else ACTIVE,
            task=self._task,
            state=state,
            messages=new,
            events=[NewEvent(kind, data)],
            memories=self._pending_memories,
            summary=written,
        )
        if written is not None:
            self._summary_at = (self._session.id, self._session.seq)
            self._conversation.new_summary = None
        self._conversation.calls = []
        self._pending_memories = []
        self._saved_len = len(self._history)
        return True


def _summary_of(store: Store, session: RunRecord) -> tuple[Summary | None, tuple[str, int] | None]:
    """The summary a session's latest checkpoint names (if still stored), and where."""
    pointer = summary_pointer(store.checkpoint(session.id).state)
    found = store.summary(*pointer) if pointer is not None else None
    if found is None:
        return None, None
    return Summary(found.covers, found.content, found.tokens), pointer
