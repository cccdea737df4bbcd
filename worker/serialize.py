"""Records as JSON-ready dicts, one shape for the CLI's --json and the HTTP API."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import Any

from persistence.store import Store


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
    """A run with its state, conversation, waits and audit trail."""
    run = store.get_run(run_id)
    return {
        "run": plain(run),
        "state": store.checkpoint(run_id).state,
        "history": [plain(m) for m in store.history(run_id, stop=run.history_len)],
        "waits": [plain(w) for w in store.waits(run_id)],
        "events": [plain(e) for e in store.events(run_id)],
    }
