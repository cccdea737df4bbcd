"""``pausepoint memory ...``: list, search, add and forget an agent's memories."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from pausepoint.persistence.errors import InvalidInput
from pausepoint.persistence.records import MEMORY_KINDS, MemoryRecord, NewMemory, Recalled
from pausepoint.worker.cli import console, default_actor, fail, friendly, open_store
from pausepoint.worker.render import short

memory_cli = typer.Typer(
    help="Agents' long-term memories: list, search, add, forget.", no_args_is_help=True
)

AgentArg = Annotated[str, typer.Argument(help="The agent's name.")]
Subject = Annotated[str | None, typer.Option(help="Only memories about this subject.")]
Json = Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")]


def _table(title: str, rows: list[MemoryRecord], found: list[Recalled] | None = None) -> Table:
    table = Table(title=title, header_style="bold")
    for col in ("id", "kind", "subject", "key", "when", "from", "content"):
        table.add_column(col, overflow="fold")
    if found is not None:
        table.add_column("score", justify="right")
    for i, m in enumerate(rows):
        status = "" if m.current else (" (superseded)" if m.superseded_by else " (retracted)")
        cells = [
            Text(str(m.id)),
            Text(m.kind + status),
            Text(m.subject or "-"),
            Text(m.key or "-"),
            Text(f"{m.created_at:%Y-%m-%d %H:%M}"),
            Text(f"run {m.run_id[:8]}@{m.seq}" if m.run_id and m.seq is not None else m.actor),
            Text(short(m.content, 90)),
        ]
        if found is not None:
            cells.append(Text(f"{found[i].score:.3f}"))
        table.add_row(*cells)
    return table


def _jsonl(rows: list[MemoryRecord]) -> None:
    from pausepoint.worker.serialize import plain

    for m in rows:
        print(json.dumps(plain(m), ensure_ascii=False))


@memory_cli.command("list")
@friendly
def list_cmd(
    agent: AgentArg,
    subject: Subject = None,
    kind: Annotated[str | None, typer.Option(help=f"One of: {', '.join(MEMORY_KINDS)}.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Superseded and retracted ones too.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    before: Annotated[int | None, typer.Option(help="Page: memories older than this id.")] = None,
    as_json: Json = False,
) -> None:
    """An agent's memories, newest first, a page at a time."""
    if kind is not None and kind not in MEMORY_KINDS:
        raise InvalidInput(f"unknown kind {kind!r}; one of: {', '.join(MEMORY_KINDS)}")
    store = open_store()
    store.get_agent(agent)
    rows = store.memories(
        agent, subject=subject, kind=kind, include_superseded=all_, before=before, limit=limit
    )
    if as_json:
        _jsonl(rows)
        return
    console.print(_table(f"Memories of {agent}", rows))
    if len(rows) == limit:
        console.print(Text(f"more: --before {rows[-1].id}", style="dim"))


@memory_cli.command("search")
@friendly
def search_cmd(
    agent: AgentArg,
    query: Annotated[str, typer.Argument(help="What to look for.")],
    subject: Subject = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 10,
    as_json: Json = False,
) -> None:
    """The agent's current memories that best fit QUERY (relevance, recency, importance)."""
    store = open_store()
    store.get_agent(agent)
    found = store.recall(agent, query, subject=subject, limit=limit)
    if as_json:
        _jsonl([r.memory for r in found])
        return
    console.print(_table(f"Memories of {agent} for {query!r}", [r.memory for r in found], found))


@memory_cli.command("add")
@friendly
def add_cmd(
    agent: AgentArg,
    content: Annotated[str, typer.Argument(help="What the agent should remember.")],
    kind: Annotated[str, typer.Option(help=f"One of: {', '.join(MEMORY_KINDS)}.")] = "fact",
    subject: Annotated[str | None, typer.Option(help="Whom or what it is about.")] = None,
    key: Annotated[
        str | None, typer.Option(help="Which attribute: a newer one with the same key supersedes.")
    ] = None,
    importance: Annotated[float | None, typer.Option(min=0, max=1)] = None,
    supersedes: Annotated[
        int | None, typer.Option(help="The id of the memory this one replaces.")
    ] = None,
    by: Annotated[str | None, typer.Option(help="Who adds it (default cli:<user>).")] = None,
) -> None:
    """Write one memory for AGENT."""
    memory = NewMemory(
        content,
        kind=kind,
        subject=subject,
        key=key,
        importance=importance,
        supersedes=supersedes,
    )
    record = open_store().remember(agent, memory, actor=by or default_actor())
    console.print(f"remembered #{record.id} for {agent}")


@memory_cli.command("forget")
@friendly
def forget_cmd(
    agent: AgentArg,
    subject: Annotated[str, typer.Option(help="Whose memories are erased.")],
    reason: Annotated[str, typer.Option(help="Why (kept with the erasure).")] = "",
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    by: Annotated[str | None, typer.Option(help="Who erases (default cli:<user>).")] = None,
) -> None:
    """Erase every memory of AGENT about SUBJECT (content and all), recorded as an erasure."""
    store = open_store()
    store.get_agent(agent)
    if not yes:
        if not sys.stdin.isatty():
            fail("erasing cannot be undone: pass --yes to confirm without a prompt")
            raise typer.Exit(1)
        count = len(store.memories(agent, subject=subject, include_superseded=True, limit=500))
        if not typer.confirm(f"erase {count} memories of {agent} about {subject!r}?"):
            fail("nothing was erased")
            raise typer.Exit(1)
    erased = store.forget(agent, subject, actor=by or default_actor(), reason=reason)
    console.print(f"erased {erased} memories of {agent} about {subject!r}")


@memory_cli.command("erasures")
@friendly
def erasures_cmd(agent: AgentArg) -> None:
    """Who erased which subject's memories of AGENT, when and why."""
    store = open_store()
    store.get_agent(agent)
    table = Table(title=f"Erasures of {agent}'s memories", header_style="bold")
    for col in ("when", "subject", "erased", "by", "reason"):
        table.add_column(col, overflow="fold")
    for e in store.erasures(agent):
        table.add_row(
            Text(f"{e['created_at']:%Y-%m-%d %H:%M}"),
            Text(e["subject"] or "-"),
            Text(str(e["count"])),
            Text(e["actor"]),
            Text(e["reason"] or "-"),
        )
    console.print(table)
