"""Steps that wait on a model, many at once: a real `pausepoint worker --pool threads`
with 64 slots against the loopback OpenAI-compatible server, on both stores.

Every run must finish with each of its steps applied once (one checkpoint, one model
call and one step event a step), and the worker's Prometheus endpoint, scraped while
the runs move, must count what they did. A prefork worker's endpoint sums what its
children recorded (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pausepoint.persistence.records import COMPLETED, FINISHED
from pausepoint.persistence.store import Store
from pausepoint.tasks import examples  # noqa: F401  (registers turns)
from pausepoint.tasks.jobs import forget_runtimes
from pausepoint.tasks.runtime import Runtime
from pausepoint.worker.app import create_app, runtime
from pausepoint.worker.procs import Proc, celery_ready
from pausepoint.worker.settings import Settings
from tests.integration.conftest import ROOT, _backend, free_port
from tests.openai_server import OpenAIServer

pytestmark = pytest.mark.integration

RUNS, STEPS = 200, 2
LATENCY = 0.1  # seconds the model takes to answer


@dataclass
class Load:
    name: str
    env: dict[str, str]
    tmp: Path
    runtime: Runtime
    server: OpenAIServer

    @property
    def store(self) -> Store:
        return self.runtime.store

    def worker(self, pool: str, concurrency: int, *extra: str) -> tuple[Proc, str]:
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "pausepoint.worker",
            "worker",
            "--pool",
            pool,
            "-c",
            str(concurrency),
            "--metrics-port",
            str(port),
            "--hostname",
            f"{pool}@%h",
            "--loglevel",
            "INFO",
            "--beat",
            *extra,
        ]
        proc = Proc(pool, argv, self.env, self.tmp / f"{pool}.log", cwd=ROOT)
        proc.start(celery_ready, timeout=60)
        return proc, f"http://127.0.0.1:{port}/metrics"

    def start(self, runs: int, steps: int) -> list[str]:
        return [
            self.runtime.start(
                "turns", agent="assistant", task=f"case {i}", input={"steps": steps}
            ).id
            for i in range(runs)
        ]

    def wait_finished(self, run_ids: list[str], proc: Proc, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            statuses = Counter(self.store.get_run(r).status for r in run_ids)
            if sum(statuses[s] for s in FINISHED) == len(run_ids):
                return
            if time.monotonic() > deadline or not proc.alive:
                pytest.fail(f"runs not finished: {dict(statuses)}\n{proc.tail()}")
            time.sleep(0.2)


@pytest.fixture(params=["embedded", "postgres_redis"])
def load(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Load]:
    with (
        OpenAIServer(api_key="sk-test", latency=LATENCY) as server,
        _backend(request.param, tmp_path) as (store_url, broker_url),
    ):
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PAUSEPOINT_STORE_URL": store_url,
            "PAUSEPOINT_BROKER_URL": broker_url,
            "PAUSEPOINT_LLM": "openai",
            "PAUSEPOINT_LLM_BASE_URL": server.base_url,
            "PAUSEPOINT_LLM_API_KEY": "sk-test",
            "PAUSEPOINT_LLM_MODEL": "house-model",
            "PAUSEPOINT_SWEEP_INTERVAL": "1",
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        app = create_app(Settings(store_url=store_url, broker_url=broker_url))
        rt = runtime(app)
        rt.store.save_agent("assistant", persona="I answer briefly.")
        try:
            yield Load(request.param, env, tmp_path, rt, server)
        finally:
            forget_runtimes()
            app.close()


Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Scrape:
    """``(sample name, sorted labels) -> value`` of one scrape."""
    text = httpx.get(url, timeout=10).text
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def summed(found: Scrape, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, lb), v in found.items()
        if n == name and all((k, val) in lb for k, val in labels.items())
    )


def check_applied_once(load: Load, run_ids: list[str], steps: int) -> None:
    """Each run completed with ``steps`` turns: one checkpoint a step (and the first),
    one step event a step, and the model asked once a step."""
    for run_id in run_ids:
        run = load.store.get_run(run_id)
        assert run.status == COMPLETED, (run_id, run.status, run.error)
        assert run.result == {"steps": steps}
        assert run.seq == steps
        assert load.store.count_checkpoints(run_id) == steps + 1
        state = load.store.checkpoint(run_id).state
        assert state["done"] == steps
        done = [e for e in load.store.events(run_id) if e.kind == "step_completed"]
        assert len(done) == steps, [e.kind for e in load.store.events(run_id)]
    chats = [r for r in load.server.requests if r.path.endswith("/chat/completions")]
    assert len(chats) == len(run_ids) * steps


def test_two_hundred_runs_on_sixty_four_threads(load: Load) -> None:
    proc, url = load.worker("threads", 64)
    try:
        before = scrape(url)
        assert summed(before, "pausepoint_steps_total") == 0
        run_ids = load.start(RUNS, STEPS)
        # Scraped while the runs move: the counts climb before the last run ends.
        moving = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = scrape(url)
            moving.append(summed(found, "pausepoint_steps_total"))
            if moving[-1] >= RUNS * STEPS:
                break
            time.sleep(0.3)
        assert any(0 < m < RUNS * STEPS for m in moving), moving
        load.wait_finished(run_ids, proc, timeout=120)
        check_applied_once(load, run_ids, STEPS)

        found = scrape(url)
        steps = {"workflow": "turns", "step": "turn"}
        assert summed(found, "pausepoint_steps_total", **steps, outcome="next") == RUNS
        assert summed(found, "pausepoint_steps_total", **steps, outcome="completed") == RUNS
        assert summed(found, "pausepoint_steps_total", outcome="failed") == 0
        assert summed(found, "pausepoint_step_duration_seconds_count", **steps) == RUNS * STEPS
        # Each step waited on the model: no step ran faster than it answers.
        fast = summed(found, "pausepoint_step_duration_seconds_bucket", **steps, le="0.05")
        assert fast == 0
        model = {"model": "house-model"}
        assert summed(found, "pausepoint_model_calls_total", **model, outcome="ok") == RUNS * STEPS
        assert summed(found, "pausepoint_model_tokens_total", **model, direction="prompt") > 0
        assert summed(found, "pausepoint_sweeps_total") >= 1
    finally:
        proc.stop()
    text = proc.output().decode(errors="replace")
    for trouble in ("QueuePool limit", "database is locked", "Traceback"):
        assert trouble not in text, text[-4000:]


def test_a_prefork_worker_sums_its_children(load: Load) -> None:
    if load.name != "embedded":
        pytest.skip("the multiprocess sum does not depend on the store")
    proc, url = load.worker("prefork", 2)
    try:
        run_ids = load.start(20, STEPS)
        load.wait_finished(run_ids, proc, timeout=120)
        check_applied_once(load, run_ids, STEPS)
        found = scrape(url)
        assert summed(found, "pausepoint_steps_total", workflow="turns") == 20 * STEPS
        model = {"model": "house-model", "outcome": "ok"}
        assert summed(found, "pausepoint_model_calls_total", **model) == 20 * STEPS
    finally:
        proc.stop()


def test_threads_across_two_processes(load: Load) -> None:
    """`--processes 2`: two worker processes of 32 threads under one supervisor, one
    metrics port summing both; every step applied once, on both stores."""
    proc, url = load.worker("threads", 64, "--processes", "2")
    try:
        # A worker process that dies is started again by its supervisor.
        children = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(children) == 2, children
        os.kill(int(children[1]), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while b"starting it again" not in proc.output() and time.monotonic() < deadline:
            time.sleep(0.2)
        run_ids = load.start(100, STEPS)
        load.wait_finished(run_ids, proc, timeout=120)
        check_applied_once(load, run_ids, STEPS)
        found = scrape(url)
        assert summed(found, "pausepoint_steps_total", workflow="turns") == 100 * STEPS
        model = {"model": "house-model", "outcome": "ok"}
        assert summed(found, "pausepoint_model_calls_total", **model) == 100 * STEPS
    finally:
        proc.stop()
    text = proc.output().decode(errors="replace")
    assert "worker process 1 of 2 started" in text and "worker process 2 of 2 started" in text
    assert "worker process 2 exited (-9); starting it again" in text
    assert "threads-1@" in text and "threads-2@" in text, text[-3000:]
    for trouble in ("QueuePool limit", "database is locked", "Traceback"):
        assert trouble not in text, text[-4000:]
    # The stop reached both: no worker process outlives the supervisor.
    assert not proc.alive
