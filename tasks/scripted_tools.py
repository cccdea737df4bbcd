"""How the scripted model uses tools when no rules are given: deterministic and offline,
so ``pausepoint start react`` and the tools demo mean something without a real model.

Its policy, from the transcript alone (so a replayed step gets the same turn):

* after the last user turn, call each offered tool once, in the order offered, one per
  turn, filling its arguments from the task and from earlier tools' results (a result's
  key of the same name, ``name: value`` or ``name=value`` in the text, an id such as
  ``A-1001`` for ``*_id``, an amount such as ``$40`` for numbers, the task itself for a
  ``message``/``query``/``text``); a tool whose required arguments cannot be filled is
  skipped;
* then answer, naming what each call returned (or that it was rejected or failed).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pausepoint.tasks.llm import Completion, Message
from pausepoint.tasks.scripted import tool_call

_ID = re.compile(r"\b[A-Z]{1,6}-?\d{2,}\b")
_AMOUNT = re.compile(
    r"\$\s*(\d[\d,]*(?:\.\d+)?)|(\d[\d,]*(?:\.\d+)?)\s*(?:dollars|usd|eur|€)", re.I
)
_NUMBER = re.compile(r"(?<![\w.-])(\d+(?:\.\d+)?)(?![\w.-])")
_FREE_TEXT = ("message", "query", "text", "body", "question", "note", "content", "request")


def reply(transcript: Sequence[Message], tools: Sequence[Mapping[str, Any]]) -> Completion | None:
    last_user = max((i for i, m in enumerate(transcript) if m.get("role") == "user"), default=-1)
    if last_user < 0:
        return None
    task = str(transcript[last_user].get("content") or "")
    called: list[str] = []
    results: list[tuple[str, str]] = []
    names_by_id: dict[str, str] = {}
    for m in transcript[last_user + 1 :]:
        for c in m.get("tool_calls") or []:
            fn = c.get("function") or {}
            called.append(str(fn.get("name")))
            names_by_id[str(c.get("id"))] = str(fn.get("name"))
        if m.get("role") == "tool":
            name = names_by_id.get(str(m.get("tool_call_id")), "a tool")
            results.append((name, str(m.get("content") or "")))
    known = _known_values(r for _, r in results)
    for spec in tools:
        fn = spec.get("function") or {}
        tool_name = fn.get("name")
        if not isinstance(tool_name, str) or tool_name in called:
            continue
        arguments = _fill(fn.get("parameters") or {}, task, known)
        if arguments is None:
            continue
        return Completion(
            f"Next I call {tool_name}.",
            tool_calls=(tool_call(tool_name, arguments),),
            finish_reason="tool_calls",
        )
    if not results:
        return None  # nothing to call: the text rules answer
    lines = [f"- {name}: {_short(result)}" for name, result in results]
    return Completion("Done. What the tools returned:\n" + "\n".join(lines), finish_reason="stop")


def _known_values(results: Any) -> dict[str, Any]:
    known: dict[str, Any] = {}
    for text in results:
        try:
            value = json.loads(text)
        except ValueError:
            continue
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, str | int | float) and not isinstance(v, bool):
                    known.setdefault(k, v)
    return known


def _fill(
    parameters: Mapping[str, Any], task: str, known: Mapping[str, Any]
) -> dict[str, Any] | None:
    props = parameters.get("properties") or {}
    required = set(parameters.get("required") or [])
    out: dict[str, Any] = {}
    for prop, schema in props.items():
        kind = schema.get("type") if isinstance(schema, dict) else None
        value = _value(prop, kind, task, known)
        if value is None:
            if prop in required:
                return None
            continue
        out[prop] = value
    return out


def _value(prop: str, kind: Any, task: str, known: Mapping[str, Any]) -> Any:
    if prop in known:
        return _typed(known[prop], kind)
    labelled = re.search(rf"\b{re.escape(prop)}\s*[:=]\s*(\"[^\"]*\"|[^\s,;]+)", task, re.I)
    if labelled:
        return _typed(labelled.group(1).strip('"'), kind)
    if kind in ("number", "integer"):
        found = _AMOUNT.search(task) or _NUMBER.search(task)
        if found:
            return _typed(
                (found.group(1) or found.group(found.lastindex or 1)).replace(",", ""), kind
            )
        return None
    if kind in ("string", None):
        if prop.endswith("id"):
            found_id = _ID.search(task)
            return found_id.group(0) if found_id else None
        if prop in _FREE_TEXT:
            return task
    return None


def _typed(value: Any, kind: Any) -> Any:
    try:
        if kind == "integer":
            return int(float(value))
        if kind == "number":
            return float(value)
    except (TypeError, ValueError):
        return None
    return str(value) if kind == "string" else value


def _short(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
