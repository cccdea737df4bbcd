"""The hash chain of a run's audit trail.

Each event's hash covers the previous event's hash and the event's own
content, so editing, deleting or reordering any event breaks every hash after
it. Canonical JSON (sorted keys, no whitespace) keeps hashes identical on
SQLite and Postgres.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

GENESIS = ""


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def event_hash(
    prev_hash: str,
    run_id: str,
    n: int,
    kind: str,
    actor: str,
    data: dict[str, Any],
    created_at: datetime,
) -> str:
    body = canonical(
        {
            "run_id": run_id,
            "n": n,
            "kind": kind,
            "actor": actor,
            "data": data,
            # Microseconds and UTC, as both backends store them.
            "at": created_at.isoformat(timespec="microseconds"),
        }
    )
    return hashlib.sha256((prev_hash + "\n" + body).encode()).hexdigest()
