"""Several worker processes under one `pausepoint worker`: threads pools across cores.

A threads pool runs its steps under one interpreter lock, so one process uses one core
however many threads wait on models. ``pausepoint worker --pool threads --processes N``
starts N worker processes (each its own Celery node, ``name-1@host`` ...,
``concurrency / N`` threads), and this parent only supervises them:

- a stop signal (SIGTERM, SIGINT, SIGQUIT) is passed to every child (SIGINT as
  SIGTERM), and the parent waits for them all (Celery's warm shutdown lets running
  steps finish); the children share the parent's process group, so a SIGKILL of the
  group (a crash) takes them all;
- a child that exits while no stop was asked is started again, after a second, at
  most ``MAX_RESTARTS`` times a minute (then everything stops: something is wrong);
- beat (the sweeper), when asked for, runs in the first child only;
- metrics, when asked for, are served by the parent from the files every child
  writes (prometheus_client's multiprocess mode), so one port covers them all.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType

log = logging.getLogger("pausepoint.worker.supervise")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
MAX_RESTARTS = 5  # a minute, over all children


def child_hostname(hostname: str | None, index: int) -> str:
    """The Celery node name of child ``index`` (from 1): ``w1@%h`` -> ``w1-2@%h``."""
    name, _, host = (hostname or "celery@%h").partition("@")
    return f"{name}-{index}@{host or '%h'}"


def supervise(
    argv_of: Callable[[int], Sequence[str]],
    processes: int,
    env: dict[str, str],
    *,
    poll: float = 0.5,
) -> int:
    """Run ``argv_of(i)`` for i = 1..processes until a stop signal, restarting any that
    exits early; returns 0 after a stop, else the exit code of the child that made it
    give up."""
    children: dict[int, subprocess.Popen[bytes]] = {}
    stopping: list[int] = []
    restarts: list[float] = []

    def start(i: int) -> None:
        children[i] = subprocess.Popen(list(argv_of(i)), env=env)
        log.info("worker process %d of %d started (pid %d)", i, processes, children[i].pid)

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)
        # Ctrl-C in a terminal reaches the children too (one process group); a second
        # SIGINT would be Celery's cold shutdown, so it is passed on as a warm SIGTERM.
        forward = signal.SIGTERM if signum == signal.SIGINT else signum
        for child in children.values():
            if child.poll() is None:
                child.send_signal(forward)

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    failed: int | None = None
    try:
        for i in range(1, processes + 1):
            start(i)
        while not stopping:
            for i, child in list(children.items()):
                status = child.poll()
                if status is None or stopping:
                    continue
                now = time.monotonic()
                restarts[:] = [t for t in restarts if now - t < 60] + [now]
                if len(restarts) > MAX_RESTARTS:
                    log.error(
                        "worker processes keep exiting (%d in a minute): stopping",
                        len(restarts),
                    )
                    failed = status or 1
                    stop(signal.SIGTERM, None)
                    break
                log.warning("worker process %d exited (%s); starting it again", i, status)
                time.sleep(1.0)
                start(i)
            time.sleep(poll)
        for child in children.values():
            child.wait()
        return failed or 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def worker_argv(args: Sequence[str]) -> list[str]:
    """``pausepoint worker ARGS`` in a new interpreter of this one."""
    return [sys.executable, "-m", "pausepoint.worker", "worker", *args]
