"""Records as JSON-ready dicts, one shape for the CLI's --json and the HTTP API."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import Any

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


def run_detail(store: Store, run_id: str) -> dict[str, Any]:
    """A run with its state, conversation, waits and audit trail.

    A run whose state retention removed still shows its row and its trail, with
    ``state`` and ``history`` empty and ``purged`` saying when.
    """
    run = store.get_run(run_id)
    purged = run.purge_state is not None
    return {
        "run": plain(run),
        "purged": run.purged_at.isoformat() if purged and run.purged_at else None,
        "state": {} if purged else store.checkpoint(run_id).state,
        "history": [] if purged else [plain(m) for m in store.history(run_id)],
        "waits": [] if purged else [plain(w) for w in store.waits(run_id)],
        "events": [plain(e) for e in store.events(run_id)],
    }


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


def checkpoint_view(store: Store, run_id: str, seq: int) -> dict[str, Any]:
    """Checkpoint ``seq`` as it was: state, next step, conversation, and what changed
    from the checkpoint before it (state keys, messages added or cut by a rollback)."""
    cp = store.checkpoint(run_id, seq)
    history = store.history(run_id, at=seq)
    previous = None
    if seq > 0:
        earlier = [c for c in store.checkpoints(run_id) if c.seq < seq]
        previous = earlier[-1] if earlier else None
    changes: dict[str, Any] | None = None
    if previous is not None:
        before = store.history(run_id, at=previous.seq)
        same = 0
        for a, b in zip(before, history, strict=False):
            if (a.role, a.content, a.created_at) != (b.role, b.content, b.created_at):
                break
            same += 1
        changes = {
            "from_seq": previous.seq,
            "state": state_changes(previous.state, cp.state),
            "messages_added": [plain(m) for m in history[same:]],
            "messages_dropped": len(before) - same,
        }
    return {
        "run_id": run_id,
        "seq": cp.seq,
        "step": cp.step,
        "created_at": cp.created_at.isoformat(),
        "state": cp.state,
        "history": [plain(m) for m in history],
        "changes": changes,
    }


def timeline(store: Store, run_id: str) -> list[dict[str, Any]]:
    """The run's checkpoints in order, each with what made it (the trail's events that
    led up to it) and which state keys it changed."""
    run = store.get_run(run_id)
    cps = store.checkpoints(run_id)
    trail = store.events(run_id)
    # A checkpoint's events are those recorded after the checkpoint before it was written
    # and up to its own commit (same timestamp as the checkpoint).
    out: list[dict[str, Any]] = []
    prev_state: dict[str, Any] | None = None
    prev_at = None
    for cp in cps:
        kinds = [
            e.kind
            for e in trail
            if (prev_at is None or e.created_at > prev_at) and e.created_at <= cp.created_at
        ]
        rolled = next(
            (e.data for e in trail if e.kind == "rolled_back" and e.data.get("new_seq") == cp.seq),
            None,
        )
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
                "events": kinds,
                "rolled_back_to": rolled.get("to_seq") if rolled else None,
                "current": cp.seq == run.seq,
            }
        )
        prev_state, prev_at = cp.state, cp.created_at
    return out
