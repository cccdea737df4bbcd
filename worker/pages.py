"""Bounded views of one run, one shape for the CLI's --json and the HTTP API.

A run can hold 20,000 messages and as many events; every view here reads a page of
them, never the whole run (unless asked for ``limit=None``, as ``--all`` does):

- :func:`run_detail`: the run, its state and pending waits, and the *latest* ``TAIL``
  messages (``history``) and events (``events``), with ``history_page`` and
  ``events_page`` saying how many there are and where the earlier ones are;
- :func:`timeline`: a page of checkpoints, each with what made it, in one pass over
  the page's checkpoints and the stretch of the trail they span;
- :func:`checkpoint_view`: one checkpoint as it was, its conversation's latest page,
  and what it changed from the checkpoint before (``messages_added`` capped too).

A page's info: ``total`` (how many there are), ``start`` and ``stop`` (the numbers of
the first shown and one past the last: messages count from 0, events from 1),
``before`` / ``after`` (the cursor to the rest, or None) and ``href`` (the request that
reads it).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from pausepoint.persistence.records import Event, Message
from pausepoint.persistence.segments import Segments, explicit
from pausepoint.persistence.store import Store
from pausepoint.persistence.store.reads import TimelineRows
from pausepoint.worker.serialize import message_json, plain, state_changes

# Messages and events in a run's detail, a checkpoint's view and `pausepoint show`.
TAIL = 50
# Items of a list endpoint's page by default (events, messages, checkpoints), and at most.
PAGE = 100
MAX_PAGE = 1000
# Checkpoints per read when a timeline is drawn whole (`pausepoint history --all`).
WHOLE_BATCH = 1000


def href(run_id: str, what: str, **params: int | None) -> str:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"/runs/{run_id}/{what}" + (f"?{query}" if query else "")


def earlier_page(
    run_id: str, what: str, total: int, start: int, stop: int, *, first: int, at: int | None = None
) -> dict[str, Any]:
    """The info of a page that shows ``[start, stop)`` of ``total`` items numbered from
    ``first``, with the cursor to the items before it."""
    before = start if start > first else None
    return {
        "total": total,
        "start": start,
        "stop": stop,
        "before": before,
        "href": None if before is None else href(run_id, what, at=at, before=before),
    }


def run_detail(store: Store, run_id: str, *, limit: int | None = TAIL) -> dict[str, Any]:
    """A run with its state, pending waits, and the latest ``limit`` messages and events
    (None: all), in one snapshot.

    A run whose state retention removed still shows its row and its trail, with
    ``state`` and ``history`` empty and ``purged`` saying when.
    """
    tail = store.tail(run_id, messages=limit, events=limit)
    run = tail.run
    purged = run.purge_state is not None
    length = 0 if purged else run.history_len
    first_n = tail.events[0].n if tail.events else run.event_count + 1
    return {
        "run": plain(run),
        "purged": run.purged_at.isoformat() if purged and run.purged_at else None,
        "state": {} if tail.checkpoint is None else tail.checkpoint.state,
        "waits": [plain(w) for w in tail.waits],
        "history": [message_json(m) for m in tail.history],
        "history_page": earlier_page(
            run_id, "messages", length, length - len(tail.history), length, first=0
        ),
        "events": [plain(e) for e in tail.events],
        "events_page": earlier_page(
            run_id, "events", run.event_count, first_n, first_n + len(tail.events), first=1
        ),
    }


def shared_prefix(a: Segments | None, a_len: int, b: Segments | None, b_len: int) -> int:
    """How many first messages two conversations of one run share: the same stored
    messages (messages are append-only, so the same physical index is the same message)."""
    same = 0
    for (a0, a1), (b0, b1) in zip(explicit(a, a_len), explicit(b, b_len), strict=False):
        if a0 != b0:
            break
        same += min(a1, b1) - a0
        if a1 != b1:
            break
    return same


def checkpoint_view(
    store: Store, run_id: str, seq: int, *, limit: int | None = TAIL
) -> dict[str, Any]:
    """Checkpoint ``seq`` as it was: state, next step, the latest ``limit`` messages of
    its conversation (None: all), and what changed from the checkpoint before it (state
    keys; the first ``limit`` messages it added, and how many a rollback cut)."""
    cp = store.checkpoint(run_id, seq)
    total = cp.history_len
    start = 0 if limit is None else max(0, total - limit)
    history = store.conversation(cp, start=start)
    previous = store.previous_checkpoint(run_id, seq) if seq > 0 else None
    changes: dict[str, Any] | None = None
    if previous is not None:
        same = shared_prefix(previous.segments, previous.history_len, cp.segments, total)
        stop = total if limit is None else min(total, same + limit)
        # What a step added is normally within the latest page already.
        added = history[same - start :] if same >= start else store.conversation(cp, start=same)
        added = added[: stop - same]
        after = stop - 1 if stop < total else None
        changes = {
            "from_seq": previous.seq,
            "state": state_changes(previous.state, cp.state),
            "messages_added": [message_json(m) for m in added],
            "messages_added_page": {
                "total": total - same,
                "start": same,
                "stop": stop,
                "after": after,
                "href": None if after is None else href(run_id, "messages", at=seq, after=after),
            },
            "messages_dropped": previous.history_len - same,
        }
    return {
        "run_id": run_id,
        "seq": cp.seq,
        "step": cp.step,
        "created_at": cp.created_at.isoformat(),
        "state": cp.state,
        "history": [message_json(m) for m in history],
        "history_page": earlier_page(run_id, "messages", total, start, total, first=0, at=seq),
        "changes": changes,
    }


def timeline(
    store: Store,
    run_id: str,
    *,
    after: int | None = None,
    before: int | None = None,
    limit: int = PAGE,
) -> list[dict[str, Any]]:
    """A page of the run's checkpoints in order (the first ``limit`` above ``after``,
    the last below ``before``, or the first of all), each with what made it."""
    return timeline_entries(store.timeline_rows(run_id, after=after, before=before, limit=limit))


def whole_timeline(store: Store, run_id: str) -> list[dict[str, Any]]:
    """Every checkpoint's entry, ``WHOLE_BATCH`` at a time: linear in the run."""
    out: list[dict[str, Any]] = []
    after = -1
    while True:
        page = timeline(store, run_id, after=after, limit=WHOLE_BATCH)
        out += page
        if len(page) < WHOLE_BATCH:
            return out
        after = page[-1]["seq"]


def timeline_entries(rows: TimelineRows) -> list[dict[str, Any]]:
    """Each checkpoint of the page with its events (those recorded after the checkpoint
    before it was written, up to its own commit, which has its time) and the state keys
    it changed: one pass over the events, each placed by a binary search on time."""
    cps = rows.checkpoints
    times = [cp.created_at for cp in cps]
    kinds: list[list[str]] = [[] for _ in cps]
    rolled: dict[Any, Any] = {}
    for e in rows.events:
        i = bisect_left(times, e.created_at)
        if i < len(cps):
            kinds[i].append(e.kind)
        if e.kind == "rolled_back":
            rolled.setdefault(e.data.get("new_seq"), e.data.get("to_seq"))
    out: list[dict[str, Any]] = []
    prev_state = None if rows.previous is None else rows.previous.state
    for cp, made_by in zip(cps, kinds, strict=True):
        changed = (
            sorted(cp.state)
            if prev_state is None
            else sorted(
                k
                for k in set(cp.state) | set(prev_state)
                if cp.state.get(k) != prev_state.get(k) or (k in cp.state) != (k in prev_state)
            )
        )
        out.append(
            {
                "seq": cp.seq,
                "created_at": cp.created_at.isoformat(),
                "step": cp.step,
                "messages": cp.history_len,
                "changed": changed,
                "events": made_by,
                "rolled_back_to": rolled.get(cp.seq),
                "current": cp.seq == rows.run.seq,
            }
        )
        prev_state = cp.state
    return out


def conversation_events(
    store: Store, run_id: str, messages: Sequence[Message], trail: Sequence[Event]
) -> Sequence[Event]:
    """The events that say how the tool calls of ``messages`` went (their steps'
    ``step_completed``): ``trail`` when it covers them, else the stretch of the trail
    recorded while the messages were; none when no message calls a tool."""
    if not any(m.data and m.data.get("tool_calls") for m in messages):
        return ()
    first, last = messages[0].created_at, messages[-1].created_at
    if trail and (trail[0].n == 1 or trail[0].created_at < first):
        return trail
    return store.events_during(run_id, first, last, inclusive=True)
