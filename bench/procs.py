"""Real processes for benchmarks: each in its own process group, logging to a file.

Stopping a process signals its whole group (SIGTERM, then SIGKILL), so prefork
children and the embedded beat never outlive the benchmark.
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

ROOT = Path(__file__).resolve().parents[1]


def pausepoint_cmd(*args: str) -> list[str]:
    """The `pausepoint` console script of this interpreter (or `python -m worker`)."""
    script = Path(sys.executable).parent / "pausepoint"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "pausepoint.worker", *args]


class Proc:
    """One command in its own session/process group, with readiness and a clean stop."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log = name, list(argv), env, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, ready: Callable[[Proc], bool], timeout: float = 60.0) -> Proc:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.tail()}")
            if ready(self):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} not ready in {timeout}s:\n{self.tail()}")

    def stop(self, grace: float = 15.0) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        if self.proc.poll() is None:
            _killpg(pgid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Children (prefork pool, beat) may outlive a leader that exited.
        _killpg(pgid, signal.SIGKILL)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def tail(self, lines: int = 40) -> str:
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
    """A Celery worker logs `<name> ready.` once it consumes."""
    return proc.log.exists() and b" ready." in proc.log.read_bytes()


def http_ready(url: str) -> Callable[[Proc], bool]:
    def check(_proc: Proc) -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    return check
