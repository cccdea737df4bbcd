"""A run's budget: how far an agent loop may go before a person must say "go on".

From the agent's ``model["budget"]``::

    {"iterations": 25, "tool_calls": 100, "tokens": 200000, "seconds": 3600,
     "on_exceed": "fail" | "approval", "group": "ops"}

``iterations`` counts model calls, ``tokens`` what the model's ``usage`` says it read and
wrote, ``seconds`` the wall time since the loop started (parked time included). Reaching
one fails the run with the reason, or with ``on_exceed: "approval"`` parks it for a
person of ``group``: approving grants as much again of every budget, rejecting fails it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pausepoint.persistence.errors import ConfigurationError

ON_EXCEED = ("fail", "approval")
_LIMITS = ("iterations", "tool_calls", "tokens", "seconds")
_WHAT = {
    "iterations": "model calls",
    "tool_calls": "tool calls",
    "tokens": "tokens",
    "seconds": "seconds",
}


@dataclass(frozen=True)
class Budget:
    iterations: int | None = 25
    tool_calls: int | None = 100
    tokens: int | None = None
    seconds: float | None = None
    on_exceed: str = "fail"
    group: str | None = None

    @classmethod
    def from_model(cls, model: Mapping[str, Any]) -> Budget:
        raw = model.get("budget") if isinstance(model, Mapping) else None
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ConfigurationError("model['budget'] must be an object")
        unknown = set(raw) - {*_LIMITS, "on_exceed", "group"}
        if unknown:
            raise ConfigurationError(
                f"model['budget'] has unknown keys {sorted(unknown)}; "
                f"known: {', '.join((*_LIMITS, 'on_exceed', 'group'))}"
            )
        values: dict[str, Any] = {}
        for key in _LIMITS:
            if key not in raw:
                continue
            value = raw[key]
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
            ):
                raise ConfigurationError(
                    f"model['budget']['{key}'] must be a positive number or null"
                )
            values[key] = value if key == "seconds" or value is None else int(value)
        on_exceed = raw.get("on_exceed", "fail")
        if on_exceed not in ON_EXCEED:
            raise ConfigurationError(f"model['budget']['on_exceed'] must be one of {ON_EXCEED}")
        group = raw.get("group")
        if group is not None and not isinstance(group, str):
            raise ConfigurationError("model['budget']['group'] must be a string")
        return cls(**values, on_exceed=on_exceed, group=group)

    def exceeded(self, usage: Mapping[str, Any], *, about_to: str) -> str | None:
        """Why the next ``about_to`` ("iterations" or "tool_calls") may not start, if so."""
        allowance = int(usage.get("allowance", 1))
        spent = dict(usage)
        spent["seconds"] = time.time() - float(usage.get("started", time.time()))
        for key in (about_to, "tokens", "seconds"):
            limit = getattr(self, key)
            if limit is None:
                continue
            used = spent.get(key, 0) or 0
            if used >= limit * allowance:
                shown = f"{used:.0f}" if key == "seconds" else str(used)
                return (
                    f"the run reached its budget of {limit * allowance:g} {_WHAT[key]} "
                    f"({shown} used)"
                )
        return None


def new_usage() -> dict[str, Any]:
    """What a loop has spent so far, kept in its state."""
    return {"iterations": 0, "tool_calls": 0, "tokens": 0, "started": time.time(), "allowance": 1}


def check_loop_settings(model: Mapping[str, Any]) -> None:
    """Refuse bad loop settings when an agent is saved, not in the middle of a run:
    ``budget`` (see :class:`Budget`) and ``tools`` (a list of tool names)."""
    Budget.from_model(model)
    tool_names(model)


def tool_names(model: Mapping[str, Any]) -> list[str]:
    """The global tools an agent's ``model["tools"]`` names (none when unset)."""
    names = model.get("tools")
    if names is None:
        return []
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigurationError("model['tools'] must be a list of tool names")
    return names
