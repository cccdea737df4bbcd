"""Tables and timelines for people (rich)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from persistence.records import Checkpoint, Event, Message, RunRecord, WaitRecord

STATUS_STYLE = {
    "queued": "cyan",
    "running": "bold blue",
    "waiting": "yellow",
    "completed": "green",
    "failed": "bold red",
    "cancelled": "dim",
    "active": "cyan",
    "paused": "yellow",
}


# Run ids shown in narrow tables; every command accepts a unique prefix this long.
SHORT_ID = 12


def status(value: str) -> Text:
    return Text(value, style=STATUS_STYLE.get(value, ""))


def when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def ago(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return "-"
    seconds = ((now or datetime.now(timezone.utc)) - value).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            text = f"{seconds / size:.0f}{unit}"
            break
    else:
        text = f"{seconds:.0f}s"
    return f"in {text}" if future else f"{text} ago"


def short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def outcome_of(run: RunRecord) -> str:
    if run.error:
        return run.error
    if isinstance(run.result, dict) and "outcome" in run.result:
        return str(run.result["outcome"])
    return short(run.result, 30) if run.result is not None else ""


def runs_table(runs: Sequence[RunRecord], title: str = "Runs", compact: bool = False) -> Table:
    """A table of runs; ``compact`` fits 80 columns: short ids (commands take unique prefixes),
    and one column that shows the outcome once there is one, the task before."""
    table = Table(title=title, header_style="bold")
    table.add_column("run", no_wrap=True)
    names = [len(r.agent_name) for r in runs] + [len(r.workflow) for r in runs] + [5]
    # Names are what people look for: never squeezed to nothing.
    table.add_column("agent", min_width=min(max(names), 20))
    table.add_column(
        "workflow", min_width=min(max(len(r.workflow) for r in runs), 12) if runs else None
    )
    table.add_column("status", no_wrap=True)
    table.add_column("step", no_wrap=compact)
    if compact:
        table.add_column("task / outcome", ratio=1)
    else:
        table.add_column("seq", justify="right")
        table.add_column("task", ratio=1)
        table.add_column("outcome")
        table.add_column("updated", no_wrap=True)
    for run in runs:
        row: list[Any] = [
            run.id[:SHORT_ID] if compact else run.id,
            Text(run.agent_name),
            Text(run.workflow),
            status(run.status),
            Text(run.step or ""),
        ]
        outcome = outcome_of(run)
        if compact:
            row.append(Text(short(outcome or run.task, 40)))
        else:
            row += [
                str(run.seq),
                Text(short(run.task, 40)),
                Text(short(outcome, 30)),
                ago(run.updated_at),
            ]
        table.add_row(*row)
    return table


def history_table(messages: Sequence[Message]) -> Table:
    table = Table(title="Conversation", header_style="bold", expand=True)
    table.add_column("#", justify="right", width=4)
    table.add_column("role", width=9)
    table.add_column("content", ratio=1)
    for m in messages:
        style = {"user": "cyan", "assistant": "green", "system": "magenta"}.get(m.role, "")
        table.add_row(str(m.idx), Text(m.role, style=style), Text(m.content))
    return table


def waits_table(waits: Sequence[WaitRecord]) -> Table:
    table = Table(title="Waits", header_style="bold")
    for col in ("kind", "status", "group", "deadline", "prompt", "outcome", "by"):
        table.add_column(col)
    for w in waits:
        outcome = ""
        if isinstance(w.outcome, dict) and "decision" in w.outcome:
            outcome = w.outcome["decision"] + (
                f": {w.outcome['comment']}" if w.outcome.get("comment") else ""
            )
        elif w.outcome is not None:
            outcome = short(w.outcome, 30)
        table.add_row(
            w.kind,
            status(w.status if w.status != "pending" else "waiting"),
            Text(w.approver_group or ""),
            f"{when(w.deadline)} ({ago(w.deadline)})" if w.deadline else "-",
            Text(short(w.prompt, 50)),
            Text(outcome),
            Text(w.decided_by or ""),
        )
    return table


def events_table(events: Sequence[Event], title: str = "Audit trail") -> Table:
    table = Table(title=title, header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("at")
    table.add_column("event")
    table.add_column("actor")
    table.add_column("details")
    for e in events:
        table.add_row(
            str(e.n),
            when(e.created_at),
            Text(e.kind, style="bold"),
            Text(e.actor),
            Text(_details(e)),
        )
    return table


def _details(e: Event) -> str:
    d = {k: v for k, v in e.data.items() if v not in (None, "", [], {}) and k != "traceback"}
    return short(
        " ".join(
            f"{k}={v if isinstance(v, str) else json.dumps(v, default=str)}" for k, v in d.items()
        ),
        90,
    )


def run_panel(
    run: RunRecord,
    checkpoint: Checkpoint,
    history: Sequence[Message],
    waits: Sequence[WaitRecord],
    events: Sequence[Event],
) -> Group:
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    rows: list[tuple[str, Any]] = [
        ("run", run.id),
        ("agent", run.agent_name),
        ("workflow", run.workflow),
        ("status", status(run.status)),
        ("step", run.step or "-"),
        ("task", run.task or "-"),
        ("input", short(run.input, 100)),
        ("checkpoint", f"#{run.seq}  (version {run.version}, {run.history_len} messages)"),
        ("created", when(run.created_at)),
        ("updated", when(run.updated_at)),
    ]
    if run.finished_at:
        rows.append(("finished", when(run.finished_at)))
    if run.result is not None:
        rows.append(("result", short(run.result, 200)))
    if run.error:
        rows.append(("error", Text(run.error, style="red")))
    for key, value in rows:
        summary.add_row(key, value if isinstance(value, Text) else Text(str(value)))
    state = Text(json.dumps(checkpoint.state, indent=2, default=str))
    parts: list[Any] = [
        Panel(summary, title=f"Run {run.id}", expand=False),
        Panel(state, title=f"State at checkpoint #{checkpoint.seq}", expand=False),
    ]
    if history:
        parts.append(history_table(history))
    if waits:
        parts.append(waits_table(waits))
    parts.append(events_table(events))
    return Group(*parts)
