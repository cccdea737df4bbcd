"""The Celery tasks workers run. Thin: find this process's runtime, call it.

Defined with ``@shared_task`` so this package never imports the Celery app;
``worker.app`` builds the app and leaves a runtime factory in its config.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

from celery import Task, shared_task

from pausepoint.persistence.errors import ConfigurationError
from pausepoint.tasks.runtime import Runtime

RUN_STEP = "pausepoint.run_step"
SWEEP = "pausepoint.sweep"
GC = "pausepoint.gc"
ANCHOR = "pausepoint.anchor"
FACTORY_KEY = "pausepoint_runtime_factory"
ANCHORS_KEY = "pausepoint_anchors"

# One runtime per (process, app): prefork children build their own after the fork,
# so no database connection crosses a fork. Keyed by id(app), with a weak reference
# to check it is still that app: a new app may get a collected one's id.
_runtimes: dict[tuple[int, int], tuple[weakref.ref[Any], Runtime]] = {}


def runtime_for(app: Any) -> Runtime:
    key = (os.getpid(), id(app))
    cached = _runtimes.get(key)
    if cached is not None:
        ref, runtime = cached
        if ref() is app:
            return runtime
        runtime.store.close()
    factory = app.conf.get(FACTORY_KEY)
    if factory is None:
        raise ConfigurationError(
            "this Celery app has no Pausepoint runtime; build it with worker.app.create_app()"
        )
    built: Runtime = factory(app)
    _runtimes[key] = (weakref.ref(app), built)
    return built


def forget_runtimes() -> None:
    """Drop this process's runtimes (tests, and after a fork)."""
    for _, runtime in _runtimes.values():
        runtime.store.close()
    _runtimes.clear()


@shared_task(  # type: ignore[untyped-decorator]  # celery ships no type hints
    name=RUN_STEP, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True
)
def run_step(self: Task, run_id: str, version: int) -> str:
    """Advance ``run_id`` by one step if it is still at ``version``."""
    report = runtime_for(self.app).run_step(run_id, version)
    return f"{report.outcome} {report.step or ''} -> {report.status or ''}".strip()


@shared_task(name=SWEEP, bind=True, ignore_result=True)  # type: ignore[untyped-decorator]
def sweep(self: Task) -> dict[str, int]:
    """Re-send lost messages, recover expired leases, act on passed deadlines."""
    report = runtime_for(self.app).sweep()
    return {
        "republished": len(report.republished),
        "lease_expired": len(report.lease_expired),
        "deadlines": len(report.deadlines),
        "failed": len(report.failed),
        "skipped": len(report.skipped),
    }


@shared_task(name=GC, bind=True, ignore_result=True)  # type: ignore[untyped-decorator]
def gc(self: Task) -> dict[str, object]:
    """One retention pass (beat runs it every PAUSEPOINT_RETENTION_INTERVAL seconds)."""
    report = runtime_for(self.app).gc(actor="beat")
    return {
        "cleanup": report.cleanup_id,
        "checkpoints_pruned": report.checkpoints_pruned,
        "runs_purged": report.runs_purged,
        "runs_deleted": report.runs_deleted,
        "deliveries_removed": report.deliveries_removed,
    }


@shared_task(name=ANCHOR, bind=True, ignore_result=True)  # type: ignore[untyped-decorator]
def anchor(self: Task) -> dict[str, object]:
    """Seal the ledger and append an anchor to the anchor file (beat, every
    PAUSEPOINT_AUDIT_ANCHOR_INTERVAL seconds)."""
    from pathlib import Path

    from pausepoint.persistence.anchors import write_anchor

    path = Path(self.app.conf.get(ANCHORS_KEY) or "pausepoint-archive/anchors.jsonl")
    written = write_anchor(runtime_for(self.app).store, path)
    return {"ledger": written.ledger_n, "runs": len(written.runs), "file": str(path)}
