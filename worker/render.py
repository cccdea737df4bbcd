"""Tables and timelines for people (rich)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from rich import box
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from pausepoint.persistence.records import Checkpoint, Event, Message, RunRecord, WaitRecord
from pausepoint.persistence.retention import GcReport
from pausepoint.worker.render_tools import conversation_table
from pausepoint.worker.serialize import message_json

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


def history_table(messages: Sequence[Message], events: Sequence[Event] = ()) -> Table:
    """The conversation, each assistant turn's tool calls and their results under it."""
    return conversation_table([message_json(m) for m in messages], events)


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
    # The digests are for `audit verify`, not for people reading the trail.
    hidden = ("traceback", "digests")
    d = {k: v for k, v in e.data.items() if v not in (None, "", [], {}) and k not in hidden}
    return short(
        " ".join(
            f"{k}={v if isinstance(v, str) else json.dumps(v, default=str)}" for k, v in d.items()
        ),
        90,
    )


def run_panel(
    run: RunRecord,
    checkpoint: Checkpoint | None,
    history: Sequence[Message],
    waits: Sequence[WaitRecord],
    events: Sequence[Event],
    calls: Sequence[Event] | None = None,
) -> Group:
    """A run's summary, state, conversation, waits and trail (all, or the latest of
    them). ``checkpoint`` is None for a run whose state retention removed: its row and
    trail are all there is. ``calls``: the events that say how the conversation's tool
    calls went (``worker.pages.conversation_events``), if not ``events``."""
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
    if run.parent_run_id:
        rows.append(("forked from", f"{run.parent_run_id} at checkpoint #{run.parent_seq}"))
    if run.legal_hold:
        rows.append(("legal hold", Text("on: retention leaves this run alone", style="bold")))
    if run.purge_state is not None:
        rows.append(("state", Text(purged_note(run), style="yellow")))
    for key, value in rows:
        summary.add_row(key, value if isinstance(value, Text) else Text(str(value)))
    parts: list[Any] = [Panel(summary, title=f"Run {run.id}", expand=False)]
    if checkpoint is not None:
        state = Text(json.dumps(checkpoint.state, indent=2, default=str))
        parts.append(Panel(state, title=f"State at checkpoint #{checkpoint.seq}", expand=False))
    if history:
        parts.append(history_table(history, events if calls is None else calls))
    if waits:
        parts.append(waits_table(waits))
    parts.append(events_table(events))
    return Group(*parts)


def earlier_note(run_id: str, count: int, one: str, path: str) -> Text:
    """A line under a view that shows the latest of a run's ``path``: how many earlier
    ones are not shown, and how to see them."""
    many = one if count == 1 else path
    text = Text(f"… {count:,} earlier {many} not shown: ", style="dim")
    text.append(f"--all shows every one, GET /runs/{run_id}/{path} pages them", style="dim")
    return text


def purged_note(run: RunRecord) -> str:
    day = run.purged_at.date().isoformat() if run.purged_at else "?"
    return f"removed by the retention policy on {day}; the audit trail remains"


# ------------------------------------------------------ history, checkpoints


def timeline_table(run: RunRecord, timeline: Sequence[dict[str, Any]]) -> Table:
    """A run's checkpoints, oldest first (``worker.serialize.timeline``); ▶ marks the
    current one, and a note says which checkpoint a rollback went back to."""
    rollbacks = any(cp.get("rolled_back_to") is not None for cp in timeline)
    table = Table(
        title=f"Checkpoints of run {run.id}",
        caption="▶ current · events: recorded since the checkpoint before"
        + (" · ↩ to: where a rollback went back to" if rollbacks else ""),
        header_style="bold",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("at (UTC)", min_width=8)
    table.add_column("next step", overflow="fold")
    table.add_column("msgs", justify="right", no_wrap=True)
    table.add_column("changed", overflow="fold", min_width=12)
    table.add_column("events", overflow="fold", min_width=14)
    if rollbacks:
        table.add_column("↩ to", no_wrap=True)
    for cp in timeline:
        at = datetime.fromisoformat(cp["created_at"]).astimezone(timezone.utc)
        row: list[Any] = [
            Text.assemble(("▶ ", "bold green"), str(cp["seq"]))
            if cp["current"]
            else Text(str(cp["seq"])),
            at.strftime("%m-%d %H:%M:%S"),
            Text(cp["step"] or "(end)", style="" if cp["step"] else "dim"),
            str(cp["messages"]),
            Text(", ".join(cp["changed"])),
            Text(", ".join(cp["events"])),
        ]
        if rollbacks:
            back = cp.get("rolled_back_to")
            row.append(Text(f"#{back}" if back is not None else "", style="bold"))
        table.add_row(*row)
    return table


def lineage(run: RunRecord, forks: Sequence[RunRecord]) -> Text:
    """Where a run came from and which runs were forked from it."""
    text = Text()
    if run.parent_run_id:
        text.append("forked from run ")
        text.append(run.parent_run_id, style="bold")
        text.append(f" at checkpoint #{run.parent_seq}\n")
    if forks:
        text.append(f"forks ({len(forks)}):\n")
        for f in forks:
            text.append("  ")
            text.append(f.id, style="bold")
            text.append(f" at checkpoint #{f.parent_seq}, ")
            text.append(f.status, style=STATUS_STYLE.get(f.status, ""))
            text.append("\n")
    if not text:
        text.append("no parent run, no forks\n", style="dim")
    text.rstrip()
    return text


def history_view(
    run: RunRecord, timeline: Sequence[dict[str, Any]], forks: Sequence[RunRecord]
) -> Group:
    return Group(timeline_table(run, timeline), lineage(run, forks))


def checkpoint_panel(view: dict[str, Any]) -> Group:
    """One checkpoint as it was (``worker.serialize.checkpoint_view``): its state, the
    conversation then, and what changed from the checkpoint before it."""
    at = datetime.fromisoformat(view["created_at"])
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("run", Text(view["run_id"]))
    summary.add_row("checkpoint", f"#{view['seq']}")
    summary.add_row("written", when(at))
    summary.add_row("next step", Text(view["step"] or "(end)"))
    page = view["history_page"]
    summary.add_row("messages", str(page["total"]))
    parts: list[Any] = [
        Panel(summary, title=f"Checkpoint #{view['seq']}", expand=False),
        Panel(
            Text(json.dumps(view["state"], indent=2, default=str)),
            title=f"State at checkpoint #{view['seq']}",
            expand=False,
        ),
    ]
    if view["history"]:
        title = f"Conversation as of checkpoint #{view['seq']}"
        parts.append(conversation_table(view["history"], title=title))
        if page["start"]:
            parts.append(earlier_note(view["run_id"], page["start"], "message", "messages"))
    parts.append(changes_table(view))
    return Group(*parts)


def changes_table(view: dict[str, Any]) -> Table | Text:
    changes = view.get("changes")
    if changes is None:
        return Text("the first checkpoint: nothing before it to compare", style="dim")
    table = Table(
        title=f"Changes from #{changes['from_seq']} to #{view['seq']}", header_style="bold"
    )
    table.add_column("what")
    table.add_column("key / #")
    table.add_column("value", ratio=1)
    state = changes["state"]
    for key, value in state["added"].items():
        table.add_row(Text("state added", style="green"), Text(key), Text(short(value, 80)))
    for key in state["removed"]:
        table.add_row(Text("state removed", style="red"), Text(key), "")
    for key, change in state["changed"].items():
        table.add_row(
            Text("state changed", style="yellow"),
            Text(key),
            Text(f"{short(change['from'], 38)} → {short(change['to'], 38)}"),
        )
    for m in changes["messages_added"]:
        table.add_row(
            Text("message added", style="green"),
            str(m["idx"]),
            Text(f"{m['role']}: {short(m['content'] + _calls_of(m), 70)}"),
        )
    more = changes["messages_added_page"]["total"] - len(changes["messages_added"])
    if more:
        table.add_row(
            Text("messages added", style="green"),
            f"+{more:,}",
            Text(f"{more:,} more message(s) added, not shown (--all shows them)", style="dim"),
        )
    dropped = changes["messages_dropped"]
    if dropped:
        table.add_row(
            Text("messages dropped", style="red"),
            str(dropped),
            Text(f"{dropped} message(s) left the conversation (a rollback); they stay stored"),
        )
    if not table.row_count:
        table.add_row(Text("nothing", style="dim"), "", "")
    return table


def _calls_of(message: dict[str, Any]) -> str:
    names = [str((c.get("function") or {}).get("name")) for c in message.get("tool_calls") or []]
    return f" → calls {', '.join(names)}" if names else ""


# ----------------------------------------------------------------- retention


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def gc_table(report: GcReport, policy: dict[str, Any]) -> Group:
    """What one retention pass removed or, on a dry run, would remove
    (``persistence.retention.GcReport``)."""
    verb = "would remove" if report.dry_run else "removed"
    title = "Retention: dry run, nothing was changed" if report.dry_run else "Retention pass"
    table = Table(title=title, header_style="bold")
    table.add_column("what")
    table.add_column(verb, justify="right")
    table.add_column("detail")
    rows = report.rows_purged
    table.add_row(
        "old checkpoints (pruned)",
        str(report.checkpoints_pruned),
        f"from {report.runs_pruned} finished run(s)",
    )
    table.add_row(
        "run state (purged)",
        str(report.runs_purged),
        "run(s): " + ", ".join(f"{rows.get(k, 0)} {k}" for k in sorted(rows)),
    )
    if report.purges_finished:
        table.add_row("interrupted purges finished", str(report.purges_finished), "run(s)")
    table.add_row(
        "audit trails (archived, then deleted with their runs)",
        str(report.runs_deleted),
        f"run(s), {report.events_archived} event(s)",
    )
    table.add_row("early deliveries for no run", str(report.deliveries_removed), "")
    if report.memories_removed:
        table.add_row("agents' memories (old, superseded)", str(report.memories_removed), "")
    if report.skipped:
        table.add_row("skipped (changed while the pass ran)", str(report.skipped), "run(s)")
    if report.bytes_before is not None:
        after = report.bytes_after
        detail = (
            f"{human_bytes(report.bytes_before)} → {human_bytes(after)}"
            if after is not None
            else f"{human_bytes(report.bytes_before)} now"
        )
        freed = report.bytes_before - after if after is not None else None
        table.add_row("SQLite file", human_bytes(freed) if freed and freed > 0 else "-", detail)
    parts: list[Any] = [table]
    for path in report.archive_files:
        parts.append(Text.assemble("archived: ", (path, "bold")))
    if report.cleanup_id is not None:
        parts.append(Text(f"recorded as cleanup #{report.cleanup_id}", style="dim"))
    parts.append(Text("policy: " + json.dumps(policy, default=str), style="dim"))
    return Group(*parts)
