"""A run's conversation summaries: written by the step that compacted, named by the
checkpoint's state (``state["__context__"]``), copied to a fork."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from pausepoint.persistence.records import NewSummary
from pausepoint.persistence.tables import summaries


def write_summary(
    conn: Connection, run_id: str, seq: int, summary: NewSummary, now: datetime
) -> None:
    conn.execute(
        insert(summaries).values(
            run_id=run_id,
            seq=seq,
            covers=summary.covers,
            content=summary.content,
            tokens=summary.tokens,
            created_at=now,
        )
    )


CONTEXT_KEY = "__context__"


def summary_event(summary: NewSummary) -> dict[str, Any]:
    """The ``compacted`` event of a step that wrote ``summary`` (its size, not its text)."""
    return {"covers": summary.covers, "tokens": summary.tokens}


def context_meta(run_id: str, seq: int, covers: int) -> dict[str, Any]:
    """What a checkpoint's ``state["__context__"]`` holds: the summary in effect (its run
    and checkpoint) and how many messages it covers; read by :func:`summary_pointer`."""
    return {"summary_run": run_id, "summary_seq": seq, "covers": covers}


def summary_pointer(state: dict[str, Any]) -> tuple[str, int] | None:
    """The (run, seq) of the summary a checkpoint's state names, if it names one."""
    meta = state.get(CONTEXT_KEY) if isinstance(state, dict) else None
    if isinstance(meta, dict):
        run, seq = meta.get("summary_run"), meta.get("summary_seq")
        if isinstance(run, str) and isinstance(seq, int):
            return run, seq
    return None


def forked_summary(
    conn: Connection, state: dict[str, Any], run_id: str
) -> tuple[dict[str, Any], NewSummary | None]:
    """A fork's checkpoint 0 state, naming a copy (at seq 0 of ``run_id``) of the summary
    its parent's checkpoint names, and that copy to write once the run exists."""
    pointer = summary_pointer(state)
    if pointer is None:
        return state, None
    row = (
        conn.execute(
            select(summaries).where(summaries.c.run_id == pointer[0], summaries.c.seq == pointer[1])
        )
        .mappings()
        .first()
    )
    meta = dict(state[CONTEXT_KEY])
    if row is None:  # gone with its run's retention: the fork compacts anew
        meta.pop("summary_run", None)
        meta.pop("summary_seq", None)
        meta["covers"] = 0
        return {**state, CONTEXT_KEY: meta}, None
    meta.update(context_meta(run_id, 0, row["covers"]))
    copy = NewSummary(row["covers"], row["content"], row["tokens"])
    return {**state, CONTEXT_KEY: meta}, copy
