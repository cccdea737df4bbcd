"""Real processes for benchmarks: the project's one runner, started from the repository.

The runner is :mod:`pausepoint.worker.procs` (the demo and the tests use it too).
"""

from __future__ import annotations

from pathlib import Path

from pausepoint.worker.procs import Proc, celery_ready, group_alive, http_ready, pausepoint_cmd

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["ROOT", "Proc", "celery_ready", "group_alive", "http_ready", "pausepoint_cmd"]
