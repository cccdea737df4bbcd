"""What the store holds right now, for a metrics scrape: runs by status and workflow,
pending waits by kind and the age of the oldest. Two grouped reads in one snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, select

from pausepoint.persistence.records import PENDING
from pausepoint.persistence.tables import runs, waits


@dataclass(frozen=True)
class PendingWaits:
    kind: str
    count: int
    oldest: datetime | None


@dataclass(frozen=True)
class StoreGauges:
    runs: dict[tuple[str, str], int]  # (status, workflow) -> runs
    waits: list[PendingWaits]


def store_gauges(conn: Connection) -> StoreGauges:
    counted = conn.execute(
        select(runs.c.status, runs.c.workflow, func.count()).group_by(
            runs.c.status, runs.c.workflow
        )
    ).all()
    pending = conn.execute(
        select(waits.c.kind, func.count(), func.min(waits.c.created_at))
        .where(waits.c.status == PENDING)
        .group_by(waits.c.kind)
    ).all()
    return StoreGauges(
        runs={(str(s), str(w)): int(n) for s, w, n in counted},
        waits=[PendingWaits(str(k), int(n), oldest) for k, n, oldest in pending],
    )
