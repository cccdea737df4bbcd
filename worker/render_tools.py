"""Conversations for people (rich): each turn in order, and under an assistant turn the
tool calls it made, their arguments, how each went and its result."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from pausepoint.persistence.records import Event
from pausepoint.worker.serialize import conversation

ROLE_STYLE = {"user": "cyan", "assistant": "green", "system": "magenta", "tool": "yellow"}
OUTCOME_STYLE = {"done": "green", "rejected": "bold red"}


def conversation_table(
    messages: Sequence[dict[str, Any]],
    events: Sequence[Event] = (),
    title: str = "Conversation",
) -> Table:
    """``messages`` (``worker.serialize.message_json`` dicts) as a timeline; with the run's
    ``events``, each call also says its outcome, who decided it, and edited arguments."""
    table = Table(title=title, header_style="bold", expand=True)
    table.add_column("#", justify="right", width=4)
    table.add_column("role", width=9)
    table.add_column("content", ratio=1)
    for entry in conversation(messages, events):
        role = str(entry["role"])
        content = Text(str(entry.get("content") or ""))
        if role == "tool" and entry.get("tool_call_id"):
            # Its call is not in view (cut from the context, or before a rollback).
            content = Text.assemble((f"result of call {entry['tool_call_id']}: ", "dim"), content)
        table.add_row(str(entry["idx"]), Text(role, style=ROLE_STYLE.get(role, "")), content)
        for call in entry["calls"]:
            table.add_row("", Text("  call", style="bold yellow"), call_text(call))
            result = call["result"]
            if result is None:
                table.add_row("", "", Text("    no result yet", style="dim"))
            else:
                table.add_row(
                    str(result["idx"]),
                    Text("  result", style="yellow"),
                    Text.assemble(("← ", "bold"), str(result.get("content") or "")),
                )
    return table


def call_text(call: dict[str, Any]) -> Text:
    """One tool call: ``→ name  id  outcome``, then its arguments (and those it ran with)."""
    text = Text.assemble(("→ ", "bold"), (call["name"], "bold"), (f"  {call['id']}", "dim"))
    outcome = call.get("outcome")
    if outcome:
        text.append(f"  {outcome}", style=OUTCOME_STYLE.get(outcome, "red"))
    if call.get("decided_by"):
        text.append(f"  decided by {call['decided_by']}")
    text.append("\n")
    text.append(call["arguments"], style="cyan")
    if call.get("ran_with"):
        text.append(f"\nedited by {call.get('edited_by')}; it ran with:\n", style="bold")
        text.append(call["ran_with"], style="cyan")
    return text
