"""`pausepoint worker`'s pool options, refused when they cannot work, and the supervisor
of `--processes N`: stop signals reach every child, a child that dies comes back, and
one that keeps dying stops the lot.

The supervisor is driven in a subprocess of its own (it installs signal handlers, which
only a main thread may), over children that are plain `sleep`s and `sh` scripts; the
real worker processes under it are in tests/integration/test_threads_load.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pausepoint.worker.supervise import child_hostname
from tests.unit.test_cli_audit import Home
from tests.unit.test_cli_audit import home as home


def test_a_pool_it_does_not_know_is_refused(home: Home) -> None:
    home.refused("worker", "--pool", "gevent", words=("unknown pool", "prefork", "threads"))


def test_processes_are_for_the_threads_pool(home: Home) -> None:
    home.refused("worker", "--pool", "prefork", "--processes", "2", words=("threads pool",))


def test_a_metrics_port_in_use_is_refused(home: Home) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        home.refused("worker", "--pool", "threads", "--metrics-port", port, words=("metrics", port))


@pytest.mark.parametrize(
    ("given", "index", "name"),
    [(None, 1, "celery-1@%h"), ("w1@%h", 2, "w1-2@%h"), ("bench@box", 3, "bench-3@box")],
)
def test_each_child_is_its_own_celery_node(given: str | None, index: int, name: str) -> None:
    assert child_hostname(given, index) == name


SUPERVISOR = textwrap.dedent(
    """
    import sys
    from pausepoint.worker.supervise import supervise
    script = sys.argv[1]
    env = {"PATH": "/usr/bin:/bin"}
    code = supervise(lambda i: ["sh", "-c", script, "child", str(i)], 2, env, poll=0.05)
    print("supervisor exit", code, flush=True)
    sys.exit(code)
    """
)


Start = Callable[[str], "subprocess.Popen[str]"]


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Start]:
    started: list[subprocess.Popen[str]] = []

    def start(script: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", SUPERVISOR, script],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_stop_reaches_every_child_and_ends_the_supervisor(
    supervisor: Start, tmp_path: Path
) -> None:
    # Each child notes the signal it got, then exits.
    script = "trap 'echo $1 got TERM >> stops; exit 0' TERM; while true; do sleep 0.05; done"
    proc = supervisor(script)
    wait_for(lambda: len(children_of(proc.pid)) == 2)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: passed on as a warm SIGTERM
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert "supervisor exit 0" in out
    assert sorted((tmp_path / "stops").read_text().split("\n")[:-1]) == [
        "1 got TERM",
        "2 got TERM",
    ]


def test_a_child_that_dies_is_started_again(supervisor: Start, tmp_path: Path) -> None:
    proc = supervisor("echo $1 >> starts; exec sleep 60")
    wait_for(lambda: len(children_of(proc.pid)) == 2)
    first = children_of(proc.pid)
    os.kill(first[0], signal.SIGKILL)
    wait_for(lambda: (tmp_path / "starts").read_text().count("\n") == 3)
    wait_for(lambda: len(children_of(proc.pid)) == 2)
    assert first[0] not in children_of(proc.pid)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out


def test_children_that_keep_dying_stop_everything(supervisor: Start) -> None:
    proc = supervisor('if [ "$1" = 1 ]; then exit 3; fi; exec sleep 60')
    out, _ = proc.communicate(timeout=30)
    # Five restarts a minute are allowed; the sixth exit gives up, with its code, and
    # the other child is stopped too.
    assert proc.returncode == 3, out
    assert "supervisor exit 3" in out
