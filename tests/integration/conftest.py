"""Real worker processes for integration tests, on the embedded default or Postgres + Redis."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pausepoint.persistence.records import RunRecord
from pausepoint.persistence.store import Store
from pausepoint.tasks.jobs import forget_runtimes
from pausepoint.tasks.runtime import Runtime
from pausepoint.worker.app import create_app, runtime
from pausepoint.worker.procs import Proc, celery_ready, http_ready
from pausepoint.worker.settings import Settings
from tests import services

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess(Proc):
    """`pausepoint worker` in its own process group, logging to a file."""

    def __init__(self, env: dict[str, str], log: Path, name: str, beat: bool) -> None:
        argv = [
            sys.executable,
            "-m",
            "pausepoint.worker",
            "worker",
            "--concurrency",
            "2",
            "--hostname",
            f"{name}@%h",
            "--loglevel",
            "INFO",
            "--beat" if beat else "--no-beat",
        ]
        super().__init__(name, argv, env, log, cwd=ROOT)
        self.beat = beat

    def start(  # type: ignore[override]
        self, ready: Callable[[Proc], bool] | None = celery_ready, timeout: float = 30.0
    ) -> WorkerProcess:
        super().start(ready, timeout)
        return self

    def stop(self, grace: float = 10.0) -> None:
        super().stop(grace)


API_KEYS = [
    {"name": "alice", "key": "key-alice", "roles": ["approver"], "groups": ["underwriters"]},
    {"name": "mallory", "key": "key-mallory", "roles": ["approver"], "groups": ["interns"]},
    {"name": "producer", "key": "key-producer", "roles": ["producer"]},
    {"name": "partner", "key": "key-partner", "roles": ["system"]},
    {"name": "viewer", "key": "key-viewer", "roles": ["viewer"]},
    {"name": "root", "key": "key-root", "roles": ["admin"]},
]
CALLBACK_SECRETS = {"signed": "shared-secret-of-signed"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ApiProcess(Proc):
    """`pausepoint api` (uvicorn) as a real process on a free loopback port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = int(env["PAUSEPOINT_API_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "pausepoint.worker", "api"]
        super().__init__("api", argv, env, log, cwd=ROOT)

    def start(  # type: ignore[override]
        self, ready: Callable[[Proc], bool] | None = None, timeout: float = 30.0
    ) -> ApiProcess:
        super().start(ready or http_ready(self.url + "/healthz"), timeout)
        return self

    def stop(self, grace: float = 10.0) -> None:
        super().stop(grace)


@dataclass
class Cluster:
    """A store, a broker, a producer runtime, and the worker processes of one test."""

    name: str
    env: dict[str, str]
    tmp: Path
    runtime: Runtime
    workers: list[WorkerProcess] = field(default_factory=list)
    app: Any = None
    apis: list[ApiProcess] = field(default_factory=list)

    def api(self) -> ApiProcess:
        """Start `pausepoint api` on this cluster's store and broker (keys: API_KEYS)."""
        a = ApiProcess(self.env, self.tmp / f"api{len(self.apis)}.log")
        self.apis.append(a)
        return a.start()

    @property
    def store(self) -> Store:
        return self.runtime.store

    def worker(self, name: str = "w1", beat: bool = True) -> WorkerProcess:
        w = WorkerProcess(self.env, self.tmp / f"{name}.log", name, beat)
        self.workers.append(w)
        return w.start()

    def wait_for(
        self,
        run_ids: list[str],
        predicate: Callable[[RunRecord], bool],
        what: str,
        timeout: float = 60.0,
    ) -> list[RunRecord]:
        deadline = time.monotonic() + timeout
        while True:
            runs = [self.store.get_run(r) for r in run_ids]
            if all(predicate(r) for r in runs):
                return runs
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {w.name}\n{w.tail()}" for w in self.workers)
                states = [(r.id[:8], r.status, r.step, r.error) for r in runs]
                pytest.fail(f"timed out waiting for {what}: {states}\n{logs}")
            time.sleep(0.1)


@pytest.fixture(params=["embedded", "postgres_redis"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    with _backend(request.param, tmp_path) as (store_url, broker_url):
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PAUSEPOINT_STORE_URL": store_url,
            "PAUSEPOINT_BROKER_URL": broker_url,
            "PAUSEPOINT_WORKFLOWS": "pausepoint.tasks.examples,tests.workflows",
            "PAUSEPOINT_LLM": "scripted",
            "PAUSEPOINT_SWEEP_INTERVAL": "0.5",
            "PAUSEPOINT_REDELIVER_AFTER": "3",
            "PAUSEPOINT_LEASE_SECONDS": "4",
            "PAUSEPOINT_API_PORT": str(port),
            "PAUSEPOINT_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "PAUSEPOINT_API_KEYS": json.dumps(API_KEYS),
            "PAUSEPOINT_CALLBACK_SECRETS": json.dumps(CALLBACK_SECRETS),
            "PAUSEPOINT_RESOURCES": "gpu=2",
        }
        settings = Settings(
            store_url=store_url,
            broker_url=broker_url,
            workflows=["pausepoint.tasks.examples", "tests.workflows"],
            redeliver_after=3,
            lease_seconds=4,
            resources={"gpu": 2},
            public_url=f"http://127.0.0.1:{env['PAUSEPOINT_API_PORT']}",
        )
        app = create_app(settings)
        c = Cluster(request.param, env, tmp_path, runtime(app), app=app)
        c.store.save_agent("loan_processor", persona="I am a loan processing assistant.")
        try:
            yield c
        finally:
            for a in c.apis:
                a.stop()
            for w in c.workers:
                w.stop()
            forget_runtimes()
            app.close()


class _backend:
    def __init__(self, name: str, tmp: Path) -> None:
        self.name, self.tmp = name, tmp
        self._pg: Any = None
        self._redis: Any = None

    def __enter__(self) -> tuple[str, str]:
        if self.name == "embedded":
            return f"sqlite:///{self.tmp / 'store.db'}", f"sqla+sqlite:///{self.tmp / 'broker.db'}"
        self._pg = services.pg_schema_url()
        self._redis = services.redis_url()
        store_url = self._pg.__enter__()
        try:
            broker_url = self._redis.__enter__()
        except BaseException:
            self._pg.__exit__(None, None, None)
            raise
        return store_url, broker_url

    def __exit__(self, *exc: object) -> None:
        if self._redis is not None:
            self._redis.__exit__(None, None, None)
        if self._pg is not None:
            self._pg.__exit__(None, None, None)
