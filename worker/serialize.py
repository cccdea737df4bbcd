"""Records as JSON-ready dicts, one shape for the CLI's --json and the HTTP API.

The bounded views of a run built from them (its detail, timeline, a checkpoint as it
was) are in :mod:`worker.pages`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import Any

from pausepoint.persistence.errors import Conflict, InvalidInput, PausepointError
from pausepoint.persistence.records import (
    APPROVAL,
    MESSAGE_FIELDS,
    PENDING,
    WAITING,
    Event,
    Message,
    RunRecord,
)
from pausepoint.persistence.store import Store


def plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: plain(v) for k, v in asdict(value).items()}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def message_json(m: Message) -> dict[str, Any]:
    """A stored message as JSON: its fields, and beside them OpenAI's ``tool_calls`` /
    ``tool_call_id`` when it has them (they are in ``data`` too)."""
    out: dict[str, Any] = plain(m)
    for key in MESSAGE_FIELDS:
        if m.data and key in m.data:
            out[key] = m.data[key]
    return out


def state_changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What changed from one state to the next, key by key (top level)."""
    return {
        "added": {k: after[k] for k in after if k not in before},
        "removed": sorted(k for k in before if k not in after),
        "changed": {
            k: {"from": before[k], "to": after[k]}
            for k in after
            if k in before and before[k] != after[k]
        },
    }


# ------------------------------------------------------------------ tool calls


def pretty_arguments(arguments: Any) -> str:
    """A tool call's arguments (JSON text, or already an object) indented for people;
    text that is not JSON as it is."""
    value = arguments
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments)
        except ValueError:
            return arguments
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def arguments_object(arguments: Any) -> dict[str, Any] | None:
    """The arguments as an object, or None when they are not a JSON object."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments) if isinstance(arguments, str) else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def pending_tool_call(store: Store, run: RunRecord) -> dict[str, Any] | None:
    """The tool call a waiting run asks an approver about, from its latest checkpoint:
    ``id``, ``name``, ``key``, ``arguments`` (the JSON text the model wrote), ``parsed``
    (those as an object, or None) and ``reason`` (what the model said with the call).
    None when the run waits on anything else."""
    # Here, not at the top: the agent loop's imports would slow every CLI command.
    from pausepoint.tasks.agent_loop import LOOP_KEY

    if run.status != WAITING or run.purge_state is not None:
        return None
    if not any(w.kind == APPROVAL for w in store.waits(run.id, status=PENDING)):
        return None
    try:
        loop = store.checkpoint(run.id).state.get(LOOP_KEY)
    except PausepointError:
        return None
    # A loop over its budget parks on an approval too: that one is about going on.
    if not isinstance(loop, dict) or loop.get("over") or not isinstance(loop.get("calls"), list):
        return None
    asked = [c for c in loop["calls"] if isinstance(c, dict) and c.get("status") == "asked"]
    if not asked:
        return None
    call = asked[0]
    return {
        "id": str(call.get("id") or ""),
        "name": str(call.get("name") or ""),
        "key": str(call.get("key") or ""),
        "arguments": call.get("arguments"),
        "parsed": arguments_object(call.get("arguments")),
        "reason": str(loop.get("reason") or "").strip(),
    }


def decision_data(
    store: Store, run_id: str, data: dict[str, Any] | None, arguments: dict[str, Any] | None
) -> dict[str, Any] | None:
    """A decision's ``data``: ``data`` with the edited ``arguments`` of the tool call the
    run waits on as ``data["arguments"]``. Raises Conflict for ``arguments`` when the run
    waits on no tool call, InvalidInput when edited arguments are not a JSON object."""
    edits = data is not None and "arguments" in data
    if arguments is None and not edits:
        return data
    call = pending_tool_call(store, store.get_run(run_id))
    if arguments is not None:
        if call is None:
            raise Conflict(
                f"run {run_id} does not wait on a tool call, so there are no arguments to "
                "edit; nothing changed"
            )
        if edits:
            raise InvalidInput("give the edited arguments once: as arguments or in the data")
        data = {**(data or {}), "arguments": arguments}
    if call is not None and data is not None and not isinstance(data["arguments"], dict):
        like = json.dumps(call["parsed"] or {"amount": 40}, ensure_ascii=False)
        raise InvalidInput(
            f"the edited arguments of {call['name']} must be a JSON object, like {like}"
        )
    return data


def conversation(
    messages: Sequence[dict[str, Any]], events: Sequence[Event] = ()
) -> list[dict[str, Any]]:
    """A conversation (``message_json`` dicts) as a timeline: each message once, in
    order, except that a tool's result moves under the call it answers (by
    ``tool_call_id``). An assistant turn's ``calls`` each have ``id``, ``name``,
    ``arguments`` (indented), ``result`` (the tool message, or None) and, from the
    trail's events when given, ``outcome``, ``decided_by``, ``edited_by`` and
    ``ran_with`` (the arguments the tool ran with, when an approver edited them)."""
    records: dict[tuple[Any, str], dict[str, Any]] = {}
    for e in events:
        tc = e.data.get("tool_call")
        if e.kind == "step_completed" and isinstance(tc, dict) and "outcome" in tc:
            records[(e.data.get("seq"), str(tc.get("id")))] = tc
    out: list[dict[str, Any]] = []
    unanswered: dict[str, dict[str, Any]] = {}
    for m in messages:
        if m.get("role") == "tool":
            call = unanswered.pop(str(m.get("tool_call_id")), None)
            if call is not None:
                call["result"] = m
                call.update(_how_it_went(records.get((m.get("seq"), call["id"])), call))
                continue
        entry = {**m, "calls": []}
        for c in m.get("tool_calls") or []:
            fn = c.get("function") or {} if isinstance(c, dict) else {}
            call = {
                "id": str(c.get("id") or "") if isinstance(c, dict) else "",
                "name": str(fn.get("name") or "?"),
                "arguments": pretty_arguments(fn.get("arguments") or {}),
                "result": None,
            }
            entry["calls"].append(call)
            unanswered[call["id"]] = call  # a later turn's call of the same id wins
        out.append(entry)
    return out


def _how_it_went(record: dict[str, Any] | None, call: dict[str, Any]) -> dict[str, Any]:
    if record is None:
        return {}
    found = {k: record[k] for k in ("outcome", "decided_by", "edited_by") if record.get(k)}
    if record.get("edited_by") and "arguments" in record:
        ran_with = pretty_arguments(record["arguments"])
        if ran_with != call["arguments"]:
            found["ran_with"] = ran_with
    return found
