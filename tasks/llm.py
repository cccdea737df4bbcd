"""Language models: the interface every backend speaks, and the factory that builds one.

A backend turns a chat transcript in OpenAI's format (a list of ``{"role", "content"}``
messages, an assistant's possibly carrying ``tool_calls`` and a tool's result its
``tool_call_id``) into the assistant's next message. Two ship with Pausepoint:
:class:`~pausepoint.tasks.openai_backend.OpenAIBackend`, a client for any
OpenAI-compatible server, and :class:`~pausepoint.tasks.scripted.ScriptedBackend`, a
deterministic offline one for the demo and the tests. Both are importable from here.

Nothing here reads settings or environment variables; callers pass everything in
(see :func:`build_backend`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pausepoint.persistence.errors import ConfigurationError
from pausepoint.tasks import metrics

if TYPE_CHECKING:
    from pausepoint.tasks.openai_backend import OpenAIBackend
    from pausepoint.tasks.scripted import Reply, ScriptedBackend

__all__ = [
    "SUMMARY_REQUEST",
    "Completion",
    "LLMBackend",
    "Message",
    "OpenAIBackend",
    "Reply",
    "ScriptedBackend",
    "ToolCall",
    "build_backend",
    "chat",
]

Message = dict[str, Any]
"""One chat message in OpenAI format: ``{"role": "user", "content": "..."}``; an
assistant's may carry ``tool_calls`` (see :meth:`ToolCall.as_openai`), a tool result
the ``tool_call_id`` it answers."""

# The first words of every compaction request (tasks/compaction.py); the scripted
# backend answers such a request with an extractive summary.
SUMMARY_REQUEST = "You keep the running summary of a conversation."


@dataclass(frozen=True)
class ToolCall:
    """One function the model asks to have called."""

    id: str
    name: str
    arguments: str
    """The raw JSON text the model sent, possibly malformed: judging it is the caller's."""

    def as_openai(self) -> dict[str, Any]:
        """The call as an assistant message's ``tool_calls`` entry."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }

    @classmethod
    def from_openai(cls, d: Mapping[str, Any]) -> ToolCall:
        """Read a ``tool_calls`` entry; arguments that are not text are kept as JSON."""
        fn = d.get("function")
        fn = fn if isinstance(fn, Mapping) else {}
        arguments = fn.get("arguments")
        if arguments is None:
            arguments = ""
        elif not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        return cls(id=str(d.get("id") or ""), name=str(fn.get("name") or ""), arguments=arguments)


@dataclass(frozen=True)
class Completion:
    """A model's reply, with what the model says it spent (``usage``), when it says."""

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None


@runtime_checkable
class LLMBackend(Protocol):
    """Anything that turns a chat transcript into the assistant's next message.

    ``complete`` is all a backend must have. One that also has ``chat`` (the same
    arguments plus ``max_tokens``, ``tools`` and ``tool_choice``, returning a
    :class:`Completion`) reports its usage and can answer with tool calls.
    """

    def complete(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        temperature: float | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Return the assistant's reply to ``messages``; raise ``LLMError`` on failure."""
        ...


def chat(
    llm: LLMBackend,
    messages: Sequence[Message],
    *,
    model: str | None = None,
    temperature: float | None = None,
    idempotency_key: str | None = None,
    max_tokens: int | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    tool_choice: str | Mapping[str, Any] | None = None,
) -> Completion:
    """Ask ``llm``, with its usage and tool calls where the backend has ``chat``, else
    only the text (any backend with ``complete``).

    ``tools`` and ``tool_choice`` reach the backend only when given, so a backend
    written before tools existed keeps working for every call that offers none.
    """
    started = time.monotonic()
    name = model or getattr(llm, "model", None)
    try:
        reply = _chat(
            llm,
            messages,
            model=model,
            temperature=temperature,
            idempotency_key=idempotency_key,
            max_tokens=max_tokens,
            tools=tools,
            tool_choice=tool_choice,
        )
    except Exception as exc:
        metrics.model_called(name, time.monotonic() - started, type(exc).__name__)
        raise
    metrics.model_called(
        name,
        time.monotonic() - started,
        "ok",
        reply.prompt_tokens,
        reply.completion_tokens,
    )
    return reply


def _chat(
    llm: LLMBackend,
    messages: Sequence[Message],
    *,
    model: str | None,
    temperature: float | None,
    idempotency_key: str | None,
    max_tokens: int | None,
    tools: Sequence[Mapping[str, Any]] | None,
    tool_choice: str | Mapping[str, Any] | None,
) -> Completion:
    method = getattr(llm, "chat", None)
    asks_tools = tools is not None or tool_choice is not None
    if asks_tools and not callable(method):
        raise ConfigurationError(
            f"the LLM backend {type(llm).__name__} has no chat() method, so it cannot be "
            "offered tools; give it chat(messages, *, ..., tools=None, tool_choice=None) "
            "returning a Completion"
        )
    if callable(method):
        extra: dict[str, Any] = {}
        if tools is not None:
            extra["tools"] = [dict(t) for t in tools]
        if tool_choice is not None:
            extra["tool_choice"] = tool_choice
        result = method(
            messages,
            model=model,
            temperature=temperature,
            idempotency_key=idempotency_key,
            max_tokens=max_tokens,
            **extra,
        )
        if isinstance(result, Completion):
            return result
        if asks_tools:
            raise ConfigurationError(
                f"chat() of the LLM backend {type(llm).__name__} returned "
                f"{type(result).__name__}, not a Completion, so its tool calls are lost"
            )
    text = llm.complete(
        messages, model=model, temperature=temperature, idempotency_key=idempotency_key
    )
    return Completion(text)


BACKEND_KINDS = ("scripted", "openai")


def build_backend(
    kind: str,
    *,
    base_url: str | None,
    model: str,
    api_key: str | None,
    timeout: float,
    max_retries: int,
) -> LLMBackend:
    """Build the backend named by ``kind`` (``"scripted"`` or ``"openai"``)."""
    from pausepoint.tasks.openai_backend import OpenAIBackend
    from pausepoint.tasks.scripted import ScriptedBackend

    normalized = kind.strip().lower()
    if normalized == "scripted":
        return ScriptedBackend()
    if normalized == "openai":
        if not base_url:
            raise ConfigurationError(
                "the 'openai' LLM backend needs a base URL, e.g. https://api.openai.com/v1 "
                "or http://localhost:11434/v1 for a local OpenAI-compatible server"
            )
        return OpenAIBackend(
            base_url=base_url,
            model=model,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
        )
    raise ConfigurationError(
        f"unknown LLM backend {kind!r}; accepted values: {', '.join(BACKEND_KINDS)}"
    )


# The backends import the types above from this module, so they are loaded on first use
# of their names here rather than at import time: importing either module first works.
_LAZY = {
    "OpenAIBackend": "pausepoint.tasks.openai_backend",
    "ScriptedBackend": "pausepoint.tasks.scripted",
    "Reply": "pausepoint.tasks.scripted",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    try:
        loaded = importlib.import_module(module)
    except AttributeError as e:
        # Raised as it is, `from ... import` would report it as this name missing here.
        raise ImportError(f"importing {module} for {name} failed: {e}") from e
    value = getattr(loaded, name)
    globals()[name] = value
    return value
