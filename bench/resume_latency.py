"""Resume latency: from a webhook's arrival to the next step starting on a worker.

    .venv/bin/python -m bench resume [--resumes N] [--backend embedded|redis|all]

For each backend this starts a real ``pausepoint worker`` (2 prefork children,
beat on) and a real ``pausepoint api``, parks N ``payment`` runs (tests.workflows)
on a callback wait, then resumes them one at a time by POSTing to each run's
callback URL. Per resume it records

* **server**: the step's start - ``callback_received.created_at``, both written
  by the system itself: the API's transaction that fulfils the wait (the request
  has reached the store) and the worker's ``step_completed`` event, whose time
  minus its ``duration_ms`` is when the step began, after the worker's claim of
  the run committed (the claim writes no event of its own);
* **e2e**: client clock, from sending the POST to seeing ``step_completed`` in
  the store (polled every ``--poll-ms``) less the step's ``duration_ms``, so it
  includes HTTP, the step's commit and up to one poll.

Then, on the same broker with the Pausepoint processes stopped, a bare Celery
worker (``bench.celery_app``, configured like Pausepoint's) runs a no-op task N
times, one at a time: **baseline** = task start (``time.time()`` in the task) -
send (just before ``apply_async``). The ratio server/baseline is what Pausepoint
adds to a plain Celery hop.
"""

from __future__ import annotations

import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, func, select

from bench.events import EventTap
from bench.procs import ROOT, Proc, celery_ready, group_alive, http_ready, pausepoint_cmd
from bench.services import PG_BASE, REDIS_URL, pg_schema, redis_db, schema_url

if str(ROOT) not in sys.path:  # tests.workflows is imported by the producer runtime too
    sys.path.insert(0, str(ROOT))

WORKFLOWS = "pausepoint.tasks.examples,tests.workflows"
AGENT = "bench_agent"
RESULTS = ROOT / "bench" / "results"
TARGETS = {"redis": {"p50": 10.0, "p99": 50.0}}
MARK_KINDS = ("callback_received", "step_completed", "completed", "failed")
PACKAGES = (
    "pausepoint",
    "celery",
    "kombu",
    "redis",
    "SQLAlchemy",
    "psycopg",
    "fastapi",
    "starlette",
    "uvicorn",
    "httpx",
    "pydantic",
)


# ------------------------------------------------------------------ statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "min": round(min(values), 3) if values else float("nan"),
        "p50": round(percentile(values, 50), 3),
        "p90": round(percentile(values, 90), 3),
        "p99": round(percentile(values, 99), 3),
        "max": round(max(values), 3) if values else float("nan"),
        "mean": round(sum(values) / len(values), 3) if values else float("nan"),
    }


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs, from /proc/stat (0, 0 where there is none)."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def busy_since(start: tuple[float, float]) -> float | None:
    """Share of all CPUs busy (any process, ours included) since ``start``."""
    busy, total = cpu_times()
    if total <= start[1]:
        return None
    return round((busy - start[0]) / (total - start[1]), 3)


# -------------------------------------------------------------------- backends


@dataclass
class Backend:
    name: str
    store_url: str
    broker_url: str
    sink_url: str
    tmp: Path
    poll_interval: float


def broker_poll_interval() -> float:
    return float(os.environ.get("PAUSEPOINT_BROKER_POLL_INTERVAL", "0.05"))


@contextmanager
def backend(name: str) -> Iterator[Backend]:
    """Fresh store and broker for one backend, removed afterwards."""
    from bench.tasks import create_sqlite_sink

    with tempfile.TemporaryDirectory(prefix=f"pausepoint-bench-{name}-") as tmp_dir:
        tmp = Path(tmp_dir)
        if name == "embedded":
            sink = tmp / "baseline-sink.db"
            create_sqlite_sink(str(sink))
            yield Backend(
                name,
                f"sqlite:///{tmp / 'store.db'}",
                f"sqla+sqlite:///{tmp / 'broker.db'}",
                f"sqlite:///{sink}",
                tmp,
                broker_poll_interval(),
            )
            return
        if name != "redis":
            raise ValueError(f"unknown backend {name!r}")
        with pg_schema("bench") as schema, redis_db() as redis_url:
            yield Backend(
                name, schema_url(schema), redis_url, redis_url, tmp, broker_poll_interval()
            )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_env(b: Backend, api_port: int) -> dict[str, str]:
    """The environment of the worker and API: ours, minus any PAUSEPOINT_* but the poll."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PAUSEPOINT_") or k == "PAUSEPOINT_BROKER_POLL_INTERVAL"
    }
    env.update(
        PYTHONPATH=str(ROOT),
        PAUSEPOINT_STORE_URL=b.store_url,
        PAUSEPOINT_BROKER_URL=b.broker_url,
        PAUSEPOINT_WORKFLOWS=WORKFLOWS,
        PAUSEPOINT_LLM="scripted",
        PAUSEPOINT_CONCURRENCY="2",
        PAUSEPOINT_API_HOST="127.0.0.1",
        PAUSEPOINT_API_PORT=str(api_port),
        PAUSEPOINT_PUBLIC_URL=f"http://127.0.0.1:{api_port}",
        BENCH_BROKER_URL=b.broker_url,
        BENCH_SINK_URL=b.sink_url,
    )
    return env


class StorePoller:
    """Reads the events the system wrote, on one held connection (cheap to poll)."""

    def __init__(self, store_url: str) -> None:
        from pausepoint.persistence.engine import normalize_url
        from pausepoint.persistence.tables import events, runs

        url = normalize_url(store_url)
        if url.startswith("sqlite"):
            self.engine = create_engine(url, connect_args={"timeout": 30})
        else:
            self.engine = create_engine(url, pool_size=1, max_overflow=0)
        self.conn = self.engine.connect()
        self._events, self._runs = events, runs

    def marks(self, run_id: str) -> list[tuple[int, str, datetime, float]]:
        """(n, kind, time, seconds) of the events that mark a resume: a step's time is its
        start, and seconds its duration, by which its event comes later (else 0)."""
        e = self._events
        rows = self.conn.execute(
            select(e.c.n, e.c.kind, e.c.created_at, e.c.data)
            .where(e.c.run_id == run_id, e.c.kind.in_(MARK_KINDS))
            .order_by(e.c.n)
        ).all()
        self.conn.rollback()  # end the read, so the next poll sees newer commits
        marks = []
        for n, kind, at, data in rows:
            took = float(data["duration_ms"]) / 1000 if kind == "step_completed" else 0.0
            marks.append((int(n), str(kind), at - timedelta(seconds=took), took))
        return marks

    def status_counts(self) -> dict[str, int]:
        r = self._runs
        rows = self.conn.execute(select(r.c.status, func.count()).group_by(r.c.status)).all()
        self.conn.rollback()
        return {str(s): int(c) for s, c in rows}

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()


# ------------------------------------------------------------------ pausepoint


class BenchError(RuntimeError):
    pass


def _logs_dir(b: Backend) -> Path:
    d = RESULTS / "logs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def measure_pausepoint(
    b: Backend, n: int, warmup: int, poll: float, gap: float, procs: list[Proc], say: Any
) -> dict[str, Any]:
    from pausepoint.tasks.jobs import forget_runtimes
    from pausepoint.worker.app import create_app, runtime
    from pausepoint.worker.settings import Settings

    port = free_port()
    env = process_env(b, port)
    logs = _logs_dir(b)
    worker = Proc(
        "pausepoint worker",
        pausepoint_cmd(
            "worker",
            "--concurrency",
            "2",
            "--beat",
            "--hostname",
            f"bench-{b.name}@%h",
            "--loglevel",
            "INFO",
        ),
        env,
        logs / f"{b.name}-pausepoint-worker.log",
        cwd=ROOT,
    )
    api = Proc(
        "pausepoint api",
        pausepoint_cmd("api"),
        env,
        logs / f"{b.name}-pausepoint-api.log",
        cwd=ROOT,
    )
    for p in (worker, api):
        p.log.unlink(missing_ok=True)
    procs += [worker, api]
    # One after the other: each migrates the store on start.
    worker.start(celery_ready)
    api.start(http_ready(f"http://127.0.0.1:{port}/healthz"))
    say(f"[{b.name}] worker pid {worker.pid}, api pid {api.pid} on :{port}")

    settings = Settings(
        store_url=b.store_url,
        broker_url=b.broker_url,
        workflows=WORKFLOWS.split(","),
        public_url=f"http://127.0.0.1:{port}",
        broker_poll_interval=b.poll_interval,
    )
    app = create_app(settings)
    rt = runtime(app)
    poller = StorePoller(b.store_url)
    hops: dict[str, Any] | None = None
    cpu_busy: float | None = None
    try:
        rt.store.save_agent(AGENT, persona="A benchmark agent that only waits for callbacks.")
        total = n + warmup
        t0 = time.monotonic()
        ids = [rt.start("payment", agent=AGENT, input={"bench": i}).id for i in range(total)]
        deadline = time.monotonic() + 120 + total * 0.2
        while True:
            counts = poller.status_counts()
            if counts.get("waiting", 0) >= total:
                break
            if counts.get("failed", 0):
                raise BenchError(f"runs failed while parking: {counts}\n{worker.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"runs not parked in time: {counts}\n{worker.tail()}")
            time.sleep(0.2)
        say(f"[{b.name}] {total} payment runs parked in {time.monotonic() - t0:.1f}s")
        urls = [rt.store.checkpoint(run_id).state["callback_url"] for run_id in ids]

        samples: list[dict[str, Any]] = []
        rng = random.Random(f"{b.name}-pausepoint")
        t1 = time.monotonic()
        cpu = cpu_times()
        with ExitStack() as stack:
            tap = stack.enter_context(EventTap(b.broker_url)) if b.name == "redis" else None
            client = stack.enter_context(httpx.Client(timeout=30))
            for i, (run_id, url) in enumerate(zip(ids, urls, strict=True)):
                time.sleep(rng.uniform(0, gap))
                sample = _resume_one(client, poller, run_id, url, i, poll)
                if i >= warmup:
                    samples.append(sample)
            cpu_busy = busy_since(cpu)
            say(f"[{b.name}] {total} resumes in {time.monotonic() - t1:.1f}s, CPU busy {cpu_busy}")
            if tap is not None:
                time.sleep(1.0)  # the last events
                hops = _pausepoint_hops(tap, samples)
    finally:
        poller.close()
        api.stop()
        worker.stop()
        forget_runtimes()
        app.close()

    def col(key: str) -> list[float]:
        return [s[key] for s in samples]

    breakdown = {
        "post_to_callback_received": summary(col("ingress_ms")),
        "post_round_trip": summary(col("http_ms")),
        "callback_received_to_response": summary(col("cb_to_response_ms")),
        "step_start_to_observed": summary(col("observe_lag_ms")),
        "step_start_to_completed": summary(col("step_ms")),
    }
    if hops is not None:
        breakdown.update(hops)

    return {
        "server_ms": summary(col("server_ms")),
        "e2e_ms": summary(col("e2e_ms")),
        "breakdown_ms": breakdown,
        "cpu_busy_share": cpu_busy,
        "samples": samples,
        "logs": {"worker": str(worker.log), "api": str(api.log)},
    }


def _pausepoint_hops(tap: EventTap, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """server_ms split at Celery's task events of each resume's run_step message."""
    from pausepoint.tasks.jobs import RUN_STEP

    by_run = tap.by_first_arg(RUN_STEP)
    hops: dict[str, list[float]] = {
        "api: callback_received -> task-sent (rest of txn, commit, publish)": [],
        "broker: task-sent -> task-received (worker main)": [],
        "pool: task-received -> task-started (child took it)": [],
        "claim: task-started -> step start (claim txn)": [],
    }
    names = list(hops)
    matched = 0
    for s in samples:
        task = next(
            (
                t
                for t in by_run.get(s["run_id"], [])
                if t.get("task-sent", 0) >= s["cb_at"] - 0.001
                and all(k in t for k in ("task-sent", "task-received", "task-started"))
            ),
            None,
        )
        if task is None:
            continue
        matched += 1
        points = [s["cb_at"], task["task-sent"], task["task-received"], task["task-started"]]
        points.append(s["started_at"])
        for name, a, z in zip(names, points, points[1:], strict=False):
            hops[name].append((z - a) * 1000)
    out: dict[str, Any] = {name: summary(v) for name, v in hops.items() if v}
    out["celery_events_matched"] = f"{matched}/{len(samples)}"
    return out


def _resume_one(
    client: httpx.Client, poller: StorePoller, run_id: str, url: str, i: int, poll: float
) -> dict[str, Any]:
    sent = time.time()
    response = client.post(url, json={"paid": True, "bench": i})
    answered = time.time()
    if response.status_code != 200 or response.json().get("status") != "resumed":
        raise BenchError(f"callback of run {run_id}: {response.status_code} {response.text}")
    observed: float | None = None
    deadline = time.monotonic() + 30
    while True:
        marks = poller.marks(run_id)
        received = [m for m in marks if m[1] == "callback_received"]
        after = received[0][0] if received else None
        started = [m for m in marks if m[1] == "step_completed" and after and m[0] > after]
        if started and observed is None:
            observed = time.time()
        if any(m[1] == "failed" for m in marks):
            raise BenchError(f"run {run_id} failed after its callback")
        if any(m[1] == "completed" for m in marks):
            break
        if time.monotonic() > deadline:
            raise BenchError(f"run {run_id}: no settle step 30s after its callback: {marks}")
        time.sleep(poll)
    if observed is None:  # started and completed between two polls
        observed = time.time()
    cb_at = received[0][2].timestamp()
    started_at = started[0][2].timestamp()
    # Seen when it committed: the client saw the start only the step's duration later.
    observed -= started[0][3]
    completed_at = next(m[2] for m in marks if m[1] == "completed").timestamp()
    return {
        "run_id": run_id,
        "cb_at": cb_at,
        "started_at": started_at,
        "server_ms": (started_at - cb_at) * 1000,
        "e2e_ms": (observed - sent) * 1000,
        "ingress_ms": (cb_at - sent) * 1000,
        "http_ms": (answered - sent) * 1000,
        "cb_to_response_ms": (answered - cb_at) * 1000,
        "observe_lag_ms": (observed - started_at) * 1000,
        "step_ms": (completed_at - started_at) * 1000,
    }


# -------------------------------------------------------------------- baseline


def measure_baseline(
    b: Backend, n: int, warmup: int, poll: float, gap: float, procs: list[Proc], say: Any
) -> dict[str, Any]:
    from bench import celery_app
    from bench.tasks import NOOP, SinkReader

    env = process_env(b, 0)
    log = _logs_dir(b) / f"{b.name}-baseline-worker.log"
    log.unlink(missing_ok=True)
    worker = Proc(
        "celery baseline worker",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.celery_app",
            "worker",
            "--concurrency",
            "2",
            "--task-events",
            "--hostname",
            f"bench-noop-{b.name}@%h",
            "--loglevel",
            "INFO",
        ],
        env,
        log,
        cwd=ROOT,
    )
    procs.append(worker)
    worker.start(celery_ready)
    say(f"[{b.name}] baseline celery worker pid {worker.pid}")
    app = celery_app.create(b.broker_url, b.poll_interval)
    task = app.tasks[NOOP]
    sink = SinkReader(b.sink_url)
    samples: list[dict[str, Any]] = []
    rng = random.Random(f"{b.name}-baseline")
    hops: dict[str, Any] | None = None
    cpu_busy: float | None = None
    try:
        with ExitStack() as stack:
            tap = stack.enter_context(EventTap(b.broker_url)) if b.name == "redis" else None
            t1 = time.monotonic()
            cpu = cpu_times()
            for i in range(n + warmup):
                time.sleep(rng.uniform(0, gap))
                key = f"{b.name}-{i}-{uuid.uuid4().hex[:8]}"
                sent = time.time()
                task.apply_async((key,))
                deadline = time.monotonic() + 30
                while (started := sink.get(key)) is None:
                    if time.monotonic() > deadline:
                        raise BenchError(
                            f"baseline task {key} did not start in 30s\n{worker.tail()}"
                        )
                    time.sleep(poll)
                observed = time.time()
                if i >= warmup:
                    samples.append(
                        {
                            "key": key,
                            "sent": sent,
                            "started": started,
                            "celery_ms": (started - sent) * 1000,
                            "e2e_ms": (observed - sent) * 1000,
                        }
                    )
            cpu_busy = busy_since(cpu)
            say(
                f"[{b.name}] {n + warmup} baseline tasks in {time.monotonic() - t1:.1f}s, "
                f"CPU busy {cpu_busy}"
            )
            if tap is not None:
                time.sleep(1.0)
                hops = _baseline_hops(tap, samples)
    finally:
        sink.close()
        worker.stop()
        app.close()
    return {
        "celery_ms": summary([s["celery_ms"] for s in samples]),
        "e2e_ms": summary([s["e2e_ms"] for s in samples]),
        "breakdown_ms": hops,
        "cpu_busy_share": cpu_busy,
        "samples": samples,
        "logs": {"worker": str(log)},
    }


def _baseline_hops(tap: EventTap, samples: list[dict[str, Any]]) -> dict[str, Any]:
    from bench.tasks import NOOP

    by_key = tap.by_first_arg(NOOP)
    hops: dict[str, list[float]] = {
        "client: apply_async -> task-sent (publish)": [],
        "broker: task-sent -> task-received (worker main)": [],
        "pool: task-received -> task-started (child took it)": [],
        "task: task-started -> task body (< 0: stamped late)": [],
    }
    names = list(hops)
    matched = 0
    for s in samples:
        found = [
            t
            for t in by_key.get(s["key"], [])
            if all(k in t for k in ("task-sent", "task-received", "task-started"))
        ]
        if not found:
            continue
        t = found[0]
        matched += 1
        points = [s["sent"], t["task-sent"], t["task-received"], t["task-started"], s["started"]]
        for name, a, z in zip(names, points, points[1:], strict=False):
            hops[name].append((z - a) * 1000)
    out: dict[str, Any] = {name: summary(v) for name, v in hops.items() if v}
    out["celery_events_matched"] = f"{matched}/{len(samples)}"
    return out


# ----------------------------------------------------------------------- report


def machine_info(backends: Sequence[str]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg_at_start": list(os.getloadavg()),
        "packages": {},
    }
    for name in PACKAGES:
        with suppress(metadata.PackageNotFoundError):
            info["packages"][name] = metadata.version(name)
    with suppress(Exception):
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    if "redis" in backends:
        with suppress(Exception):
            import psycopg
            import redis

            with psycopg.connect(PG_BASE.replace("postgresql+psycopg://", "postgresql://")) as c:
                row = c.execute("SHOW server_version").fetchone()
                info["postgres"] = row[0] if row else None
            r = redis.Redis.from_url(REDIS_URL)
            info["redis_server"] = r.info("server").get("redis_version")
            r.close()
    return info


def _cpu_model() -> str | None:
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def render(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Resume latency (ms): webhook arrival -> next step started")
    for column in ("backend", "measure", "n", "p50", "p90", "p99", "max"):
        left = column in ("backend", "measure")
        table.add_column(column, justify="left" if left else "right")
    for name, r in results["backends"].items():
        rows = [
            ("pausepoint server: callback_received -> step start", r["pausepoint"]["server_ms"]),
            ("pausepoint e2e: POST sent -> step start seen", r["pausepoint"]["e2e_ms"]),
            ("celery baseline: apply_async -> task start", r["baseline"]["celery_ms"]),
            ("celery baseline e2e: apply_async -> start seen", r["baseline"]["e2e_ms"]),
        ]
        for i, (label, s) in enumerate(rows):
            table.add_row(
                name if i == 0 else "",
                label,
                str(s["n"]),
                f"{s['p50']:.2f}",
                f"{s['p90']:.2f}",
                f"{s['p99']:.2f}",
                f"{s['max']:.2f}",
            )
        ratio = r["ratio"]
        table.add_row(
            "",
            "ratio pausepoint server / celery baseline",
            "",
            f"{ratio['p50']:.1f}x",
            f"{ratio['p90']:.1f}x",
            f"{ratio['p99']:.1f}x",
            f"{ratio['max']:.1f}x",
            end_section=True,
        )
    console = Console(width=max(Console().width, 110))
    console.print(table)
    for name, r in results["backends"].items():
        parts = [("pausepoint", r["pausepoint"].get("breakdown_ms") or {})]
        parts.append(("baseline", r["baseline"].get("breakdown_ms") or {}))
        hops = Table(title=f"Where the time goes: {name} (ms)")
        for column in ("run", "hop", "n", "p50", "p90", "p99", "max"):
            left = column in ("run", "hop")
            hops.add_column(column, justify="left" if left else "right")
        for who, breakdown in parts:
            for label, st in breakdown.items():
                if not isinstance(st, dict):
                    continue
                hops.add_row(
                    who,
                    label,
                    str(st["n"]),
                    f"{st['p50']:.2f}",
                    f"{st['p90']:.2f}",
                    f"{st['p99']:.2f}",
                    f"{st['max']:.2f}",
                )
        console.print(hops)
    for name, r in results["backends"].items():
        target = r.get("target")
        if target:
            ok = "[green]met[/green]" if target["met"] else "[red]MISSED[/red]"
            console.print(
                f"{name}: target p50 < {target['p50']} ms and p99 < {target['p99']} ms: {ok} "
                f"(p50 {r['pausepoint']['server_ms']['p50']:.2f}, "
                f"p99 {r['pausepoint']['server_ms']['p99']:.2f})"
            )
        if name == "embedded":
            console.print(
                f"embedded: the SQLite broker is polled every {r['broker_poll_interval']} s "
                "(PAUSEPOINT_BROKER_POLL_INTERVAL), which bounds both figures."
            )


def run(
    resumes: int,
    backends: Sequence[str],
    warmup: int,
    poll_ms: float,
    gap_ms: float,
    out: Path,
) -> int:
    from rich.console import Console

    console = Console(stderr=True)

    def say(msg: str) -> None:
        console.log(msg)

    command = "python -m bench " + " ".join(sys.argv[1:]) if sys.argv[1:] else "python -m bench"
    results: dict[str, Any] = {
        "benchmark": "resume_latency",
        "command": command,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": {
            "resumes": resumes,
            "warmup": warmup,
            "poll_ms": poll_ms,
            "gap_ms": f"uniform random 0..{gap_ms} ms idle before each resume / task",
            "workflow": "payment (tests.workflows): request -> Wait.callback -> settle",
            "worker": "pausepoint worker --concurrency 2 --beat (prefork)",
            "baseline": "celery -A bench.celery_app worker --concurrency 2 --task-events",
        },
        "machine": machine_info(backends),
        "backends": {},
    }
    procs: list[Proc] = []
    started = time.monotonic()
    try:
        for name in backends:
            with backend(name) as b:
                args = (b, resumes, warmup, poll_ms / 1000, gap_ms / 1000, procs, say)
                pp = measure_pausepoint(*args)
                base = measure_baseline(*args)
            server, celery = pp["server_ms"], base["celery_ms"]
            entry: dict[str, Any] = {
                "store": "postgres (fresh schema)" if name == "redis" else "sqlite file",
                "broker": "redis db 13" if name == "redis" else "kombu sqlalchemy on a sqlite file",
                "broker_poll_interval": b.poll_interval if name == "embedded" else None,
                "pausepoint": {k: v for k, v in pp.items() if k != "samples"},
                "baseline": {k: v for k, v in base.items() if k != "samples"},
                "ratio": {
                    q: round(server[q] / celery[q], 2) if celery[q] else None
                    for q in ("p50", "p90", "p99", "max")
                },
            }
            if name in TARGETS:
                t = TARGETS[name]
                entry["target"] = {
                    **t,
                    "met": server["p50"] < t["p50"] and server["p99"] < t["p99"],
                }
            results["backends"][name] = entry
            results.setdefault("samples", {})[name] = {
                "pausepoint": pp["samples"],
                "baseline": base["samples"],
            }
    finally:
        for p in procs:
            p.stop()
        left = [p for p in procs if p.pid is not None and group_alive(p.pid)]
        if left:
            console.print(f"[red]process groups still alive: {[p.pid for p in left]}[/red]")
    results["machine"]["loadavg_at_end"] = list(os.getloadavg())
    results["duration_s"] = round(time.monotonic() - started, 1)
    samples = results.pop("samples", {})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    samples_path = out.with_name(out.stem + "_samples.json")
    samples_path.write_text(json.dumps(samples) + "\n")
    render(results)
    console.print(f"wrote {out} and {samples_path} in {results['duration_s']}s")
    return 0


# ------------------------------------------------------------ the suite's form


def suite(repeats: int = 3, *, quick: bool = False, out_dir: Path = RESULTS) -> Any:
    """Resume latency for ``python -m bench all``: ``repeats`` repetitions per backend.

    Each repetition parks and resumes ``per_rep`` runs on fresh processes; a row's
    samples are the repetitions' p50 (or p99). The targets are checked on every
    resume of every repetition pooled (at least 500 on each backend).
    """
    from bench.report import Result, Row, Target

    per_rep = 40 if quick else 170
    gap_ms = 40.0
    result = Result(
        name="resume_latency",
        title="Resume latency: webhook arrival -> next step started (ms)",
        baseline="a no-op Celery task's round trip on the same broker, same run",
    )
    procs: list[Proc] = []
    started = time.monotonic()
    pooled: dict[str, list[float]] = {}

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        for name in ("redis", "embedded"):
            label = "postgres + redis" if name == "redis" else "embedded (sqlite + sqlite broker)"
            p50s: list[float] = []
            p99s: list[float] = []
            b50s: list[float] = []
            b99s: list[float] = []
            pooled[name] = []
            for _ in range(repeats):
                with backend(name) as b:
                    args = (b, per_rep, 5, 0.002, gap_ms / 1000, procs, say)
                    pp = measure_pausepoint(*args)
                    base = measure_baseline(*args)
                for p in procs:
                    p.stop()
                procs.clear()
                server = [float(s["server_ms"]) for s in pp["samples"]]
                pooled[name] += server
                p50s.append(percentile(server, 50))
                p99s.append(percentile(server, 99))
                celery = [float(s["celery_ms"]) for s in base["samples"]]
                b50s.append(percentile(celery, 50))
                b99s.append(percentile(celery, 99))
            base50, base99 = f"celery round trip p50, {label}", f"celery round trip p99, {label}"
            result.rows += [
                Row(base50, "ms", b50s, higher_is_better=False),
                Row(base99, "ms", b99s, higher_is_better=False),
                Row(f"pausepoint p50, {label}", "ms", p50s, base50, higher_is_better=False),
                Row(f"pausepoint p99, {label}", "ms", p99s, base99, higher_is_better=False),
            ]
        redis = pooled["redis"]
        note = f"pooled over {len(redis)} resumes"
        result.targets += [
            Target("p50 on redis (ms)", percentile(redis, 50), 10.0, "max", note),
            Target("p99 on redis (ms)", percentile(redis, 99), 50.0, "max", note),
        ]
        result.notes += [
            f"{repeats} repetitions x {per_rep} resumes per backend (+5 warm-up each), one at "
            f"a time with a random 0-{gap_ms:.0f} ms pause before each; each repetition on "
            "fresh processes and a fresh store.",
            "pausepoint = the step's start (its step_completed event's time less its "
            "duration_ms: after the claim committed) - callback_received.created_at (both "
            "written by the system: the webhook's transaction, the worker's step); baseline "
            "= a no-op task's start - its apply_async, on a bare Celery worker configured "
            "alike (bench/celery_app.py).",
            "embedded: the SQLite broker is polled every "
            f"{broker_poll_interval() * 1000:.0f} ms (PAUSEPOINT_BROKER_POLL_INTERVAL), which "
            "bounds Pausepoint and Celery alike.",
        ]
    finally:
        for p in procs:
            p.stop()
    result.seconds = time.monotonic() - started
    return result
