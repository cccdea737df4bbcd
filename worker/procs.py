"""Real processes, each in its own process group, logging to a file: one runner for
the demo, the tests and the benchmarks.

A stop asks the group's leader to shut down warmly (SIGTERM: Celery lets running
steps finish; signalling the whole group would also hit the pool children and can
stall that shutdown), then SIGKILLs whatever of the group is left, so prefork
children and an embedded beat never outlive their leader. A kill is the crash:
SIGKILL to the whole group at once, no warm shutdown, no acks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx


def pausepoint_cmd(*args: str) -> list[str]:
    """``pausepoint ARGS`` with this interpreter's install (its console script, or ``-m``)."""
    script = Path(sys.executable).parent / "pausepoint"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "pausepoint.worker", *args]


class Proc:
    """One command in its own session/process group, with readiness and a clean stop."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str],
        log: Path,
        *,
        cwd: Path | None = None,
    ) -> None:
        self.name, self.argv, self.env, self.log, self.cwd = name, list(argv), env, log, cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, ready: Callable[[Proc], bool] | None = None, timeout: float = 60.0) -> Proc:
        """Start it (again), and wait until ``ready`` says so (or it exits: an error)."""
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if ready is None:
            return self
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.tail()}")
            if ready(self):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} not ready in {timeout}s:\n{self.tail()}")

    def output(self) -> bytes:
        """What it logged since its latest start."""
        if not self.log.exists():
            return b""
        return self.log.read_bytes()[self._offset :]

    def text(self) -> str:
        return self.output().decode(errors="replace")

    def stop(self, grace: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL the whole group (start_new_session: its id is the leader's pid)."""
        if self.proc is None:
            return
        _killpg(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def tail(self, lines: int = 60) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def celery_ready(proc: Proc) -> bool:
    """A Celery worker logs ``<name> ready.`` once it consumes."""
    return b" ready." in proc.output()


def http_ready(url: str) -> Callable[[Proc], bool]:
    """Ready once ``url`` answers 200."""

    def check(_proc: Proc) -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    return check
