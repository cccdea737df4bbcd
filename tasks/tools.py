"""Tools: plain Python functions an agent's model may call.

    @tool
    def lookup_order(order_id: str) -> dict:
        '''Look up an order.

        Args:
            order_id: The order's number, e.g. "A-1001".
        '''
        return crm.get(order_id)

    @tool(needs_approval=lambda args: args["amount"] > 100, group="finance")
    def refund(order_id: str, amount: float, ctx: ToolContext) -> str:
        '''Refund part of an order.'''
        return payments.refund(order_id, amount, idempotency_key=ctx.idempotency_key)

The JSON schema offered to the model (OpenAI's ``tools`` format) comes from the type
hints and the docstring, through pydantic; the model's arguments are validated against
it before the function runs. A parameter typed :class:`ToolContext` is not offered: it
receives the call's stable idempotency key (``run:seq:call_id``, the same on every
attempt) and the callback URL of an asynchronous call.

Where a tool is registered decides who may call it: ``@tool`` registers it by name in
the global :data:`registry` (an agent offers it when its ``model["tools"]`` names it),
``@tool(agent="support")`` for that agent's loops, ``@workflow.tool`` for one workflow.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from pausepoint.persistence.errors import ConfigurationError

__all__ = [
    "Tool",
    "ToolArgumentsError",
    "ToolContext",
    "ToolRegistry",
    "ToolWait",
    "registry",
    "tool",
]

ON_ERROR = ("model", "fail")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ToolArgumentsError(ValueError):
    """The model's arguments do not fit the tool's schema (told to the model)."""


@dataclass(frozen=True)
class ToolWait:
    """What an asynchronous tool returns: it started work elsewhere, and the run parks
    (no worker held) until that work reports back; the payload becomes the result.

    ``ToolWait.callback()``: the other system POSTs to ``ctx.callback_url``.
    ``ToolWait.event(name, key)``: someone posts the event ``name`` with ``key``.
    """

    kind: str
    timeout: timedelta | None = None
    event_name: str | None = None
    match_key: str | None = None
    # What the model is told when the deadline passes first.
    on_timeout: str = "the tool did not report back in time"

    @classmethod
    def callback(cls, *, timeout: timedelta | None = None) -> ToolWait:
        return cls("callback", timeout)

    @classmethod
    def event(cls, name: str, key: str, *, timeout: timedelta | None = None) -> ToolWait:
        return cls("event", timeout, event_name=name, match_key=key)


@dataclass(frozen=True)
class ToolContext:
    """Given to a tool that asks for it (a parameter typed ``ToolContext``)."""

    run_id: str
    call_id: str
    # ``run:seq:call_id``: seq is the checkpoint of the model turn that asked for the
    # call, so the key is the same on every attempt, before and after an approval.
    idempotency_key: str
    agent: str
    # Where an asynchronous tool's result is POSTed (pair with ToolWait.callback()).
    callback_url: str = ""
    # The arguments as an approver edited them, when one did (they are the ones given).
    edited_by: str | None = None


@dataclass(frozen=True)
class Tool:
    """A function, its schema, and how its calls are governed."""

    name: str
    fn: Callable[..., Any]
    description: str
    arguments: type[BaseModel]
    needs_approval: bool | Callable[[dict[str, Any]], bool] = False
    group: str | None = None
    timeout: float | None = None
    on_error: str = "model"
    context_param: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    def schema(self) -> dict[str, Any]:
        """The tool as OpenAI's ``tools`` list wants it."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def parse(self, arguments: str | Mapping[str, Any]) -> dict[str, Any]:
        """The model's arguments (JSON text or a dict), validated: the values the
        function gets. Raises :class:`ToolArgumentsError` with what is wrong."""
        if isinstance(arguments, str):
            try:
                loaded = json.loads(arguments) if arguments.strip() else {}
            except ValueError as e:
                raise ToolArgumentsError(f"the arguments are not valid JSON: {e}") from None
        else:
            loaded = dict(arguments)
        if not isinstance(loaded, dict):
            raise ToolArgumentsError("the arguments must be a JSON object")
        try:
            model = self.arguments.model_validate(loaded)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}"
                for err in e.errors()
            )
            raise ToolArgumentsError(f"invalid arguments for {self.name}: {problems}") from None
        return {name: getattr(model, name) for name in type(model).model_fields}

    def wants_approval(self, arguments: dict[str, Any]) -> bool:
        if callable(self.needs_approval):
            return bool(self.needs_approval(dict(arguments)))
        return bool(self.needs_approval)

    def call(self, arguments: dict[str, Any], ctx: ToolContext) -> Any:
        """Run the function; with a timeout, :class:`TimeoutError` when it is passed.

        A timed-out call cannot be killed (it is a thread): it is abandoned, and the
        step goes on. Its side effects must be idempotent under ``ctx.idempotency_key``.
        """
        kwargs = dict(arguments)
        if self.context_param is not None:
            kwargs[self.context_param] = ctx
        if self.timeout is None:
            return self.fn(**kwargs)
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"tool-{self.name}")
        try:
            future = pool.submit(self.fn, **kwargs)
            try:
                return future.result(timeout=self.timeout)
            except concurrent.futures.TimeoutError:
                raise TimeoutError(
                    f"tool {self.name} did not return within {self.timeout:g} s"
                ) from None
        finally:
            pool.shutdown(wait=False)


def make_tool(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    needs_approval: bool | Callable[[dict[str, Any]], bool] = False,
    group: str | None = None,
    timeout: float | None = None,
    on_error: str = "model",
) -> Tool:
    """A :class:`Tool` from a function: its schema from the hints and the docstring."""
    tool_name = name or fn.__name__
    if not _NAME.match(tool_name):
        raise ConfigurationError(
            f"tool name {tool_name!r}: use 1-64 letters, digits, '_' or '-' (OpenAI's rule)"
        )
    if on_error not in ON_ERROR:
        raise ConfigurationError(f"tool {tool_name}: on_error must be one of {ON_ERROR}")
    if timeout is not None and timeout <= 0:
        raise ConfigurationError(f"tool {tool_name}: timeout must be positive")
    summary, documented = _docstring(inspect.getdoc(fn) or "")
    try:
        hints = get_type_hints(fn)
    except Exception as e:  # a hint that names something not importable
        raise ConfigurationError(f"tool {tool_name}: cannot read its type hints: {e}") from e
    fields: dict[str, Any] = {}
    context_param = None
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigurationError(f"tool {tool_name}: *args and **kwargs cannot be offered")
        hint = hints.get(param.name, Any)
        if hint is ToolContext:
            context_param = param.name
            continue
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (hint, Field(default, description=documented.get(param.name)))
    model = create_model(
        f"{tool_name}_arguments",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )
    return Tool(
        name=tool_name,
        fn=fn,
        description=description or summary or tool_name,
        arguments=model,
        needs_approval=needs_approval,
        group=group,
        timeout=timeout,
        on_error=on_error,
        context_param=context_param,
        parameters=_clean_schema(model.model_json_schema()),
    )


def _clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """pydantic's schema without its titles (noise to the model, tokens to pay)."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: strip(v) for k, v in node.items() if not (k == "title" and isinstance(v, str))
            }
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    out = strip(schema)
    out.setdefault("properties", {})
    out["additionalProperties"] = False
    return dict(out)


_ARG_LINE = re.compile(r"^\s*[:@]?(?:param\s+)?(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Returns|Raises|Yields)\s*:?\s*$", re.I)


def _docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The description and per-argument help of a Google-style (``Args:``) or reST-style
    (``:param x:``) docstring."""
    lines = doc.splitlines()
    summary: list[str] = []
    args: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    for line in lines:
        header = _SECTION.match(line)
        if header:
            section = header.group(1).lower()
            current = None
            continue
        if line.strip().startswith(":param"):
            found = _ARG_LINE.match(line.strip())
            if found:
                args[found.group(1)] = found.group(2).strip()
            continue
        if section in ("args", "arguments", "parameters"):
            found = _ARG_LINE.match(line)
            if found and (line.startswith((" ", "\t")) or current is None):
                current = found.group(1)
                args[current] = found.group(2).strip()
            elif current is not None and line.strip():
                args[current] = (args[current] + " " + line.strip()).strip()
            continue
        if section is None:
            summary.append(line)
    return " ".join(" ".join(summary).split()), args


class ToolRegistry:
    """Tools by name, and which agents may call them without naming them."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}
        # Per agent, in the order registered (the order they are offered in).
        self._agents: dict[str, dict[str, None]] = {}

    def add(self, t: Tool, agents: Iterable[str] = ()) -> Tool:
        existing = self._tools.get(t.name)
        if existing is not None and existing.fn is not t.fn:
            raise ConfigurationError(f"two tools are named {t.name!r}")
        self._tools[t.name] = t
        for agent in agents:
            self._agents.setdefault(agent, {})[t.name] = None
        return t

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        """In the order registered."""
        return list(self._tools)

    def all(self) -> list[Tool]:
        """Every tool, in the order registered."""
        return list(self._tools.values())

    def of_agent(self, agent: str) -> list[Tool]:
        return [self._tools[n] for n in self._agents.get(agent, {})]

    def named(self, names: Sequence[str]) -> list[Tool]:
        missing = [n for n in names if n not in self._tools]
        if missing:
            raise ConfigurationError(
                f"no tool is registered as {', '.join(map(repr, missing))} "
                f"(registered: {', '.join(self.names()) or 'none'}); is its module "
                "among the worker's workflow modules?"
            )
        return [self._tools[n] for n in names]


registry = ToolRegistry()
"""The global tools, filled as tool modules are imported."""


@overload
def tool(fn: Callable[..., Any], /) -> Callable[..., Any]: ...


@overload
def tool(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    needs_approval: bool | Callable[[dict[str, Any]], bool] = False,
    group: str | None = None,
    timeout: float | None = None,
    on_error: str = "model",
    agent: str | Sequence[str] | None = None,
    into: ToolRegistry | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    needs_approval: bool | Callable[[dict[str, Any]], bool] = False,
    group: str | None = None,
    timeout: float | None = None,
    on_error: str = "model",
    agent: str | Sequence[str] | None = None,
    into: ToolRegistry | None = None,
) -> Callable[..., Any]:
    """Register a function as a tool (see the module's docstring); the function itself
    is returned unchanged, so it stays callable as plain Python.

    ``needs_approval``: ``True``, or a predicate on the validated arguments; such a call
    parks the run for a person of ``group``. ``timeout``: seconds. ``on_error``:
    ``"model"`` (the error is the call's result, the model goes on) or ``"fail"`` (the
    run fails). ``agent``: the agents whose loops offer it without naming it. ``into``:
    another registry than the global one (a workflow's, a test's).
    """
    target = into if into is not None else registry
    agents = [agent] if isinstance(agent, str) else list(agent or ())

    def register(f: Callable[..., Any]) -> Callable[..., Any]:
        made = make_tool(
            f,
            name=name,
            description=description,
            needs_approval=needs_approval,
            group=group,
            timeout=timeout,
            on_error=on_error,
        )
        target.add(made, agents)
        return f

    return register(fn) if fn is not None else register
