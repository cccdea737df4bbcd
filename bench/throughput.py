"""Step throughput: no-op workflow steps per second, against a no-op Celery task.

    .venv/bin/python -m bench.throughput [--quick] [--repeats N] [--only redis,sqlite,dbos]

What runs, on real processes with 2 prefork worker processes each:

* **pausepoint**: ``pausepoint worker --concurrency 2 --no-beat`` on (a) the
  Postgres store + Redis broker, (b) the SQLite store + Redis broker and (c) the
  embedded default (SQLite store + SQLite broker), every setting at its default.
  A repetition starts ``runs`` runs of the ``noop`` workflow (tasks/examples.py:
  ``input.steps`` no-op steps in a row) at once through ``Runtime.start`` from
  this process and waits until every run has finished. A Celery task claims a
  run and runs its next step (or several in a row: PAUSEPOINT_INLINE_STEPS),
  each committed with its checkpoint and events. Figure: ``runs x steps`` /
  (the last run's ``finished_at``, stamped by the worker's commit - the wall
  clock just before the first ``start``). Every run must end ``completed`` with
  result ``{"steps": steps}``.
* **celery noop**, the baseline, in the same run on the same broker: ``celery -A
  bench.celery_app worker -c 2``, configured like Pausepoint's app (json,
  acks_late, prefetch 1, task events; bench/celery_app.py). A repetition sends
  ``celery_tasks`` no-op tasks (bench/tasks.py) as fast as ``apply_async`` goes
  and waits until each has recorded its start in the sink (Redis, or a SQLite
  file on the SQLite broker). Figure: tasks / (the last task's start - the wall
  clock just before the first send). Sending is inside the window, as
  Pausepoint's workers publishing what comes next is inside theirs.
* **dbos**: DBOS Transact (bench/throughput_dbos.py, a process of its own) runs
  the same ``runs`` workflows of ``steps`` ``@DBOS.step`` no-op steps, one after
  the other on one thread (sequential steps, each checkpointed before the next),
  with its system database on the same Postgres (a fresh schema) and on a SQLite
  file beside Pausepoint's.

Each worker starts once per backend and serves an unmeasured warm-up repetition,
then every measured one. A CPU meter (/proc) records where the machine's CPU went
during each repetition (worker, Postgres, Redis, this process, kernel, others), so
a figure taken while something else loaded the machine is flagged, and the cost
of a step can be compared with the cost of a Celery task. Postgres schemas
(``bench_<hex>``, ``bench_dbos_<hex>``) are dropped and Redis db 13
(``BENCH_REDIS_URL``) flushed before and after; every process group is killed at
the end, on success or not.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, select

from bench.procs import ROOT, Proc, celery_ready, group_alive, pausepoint_cmd
from bench.report import Result, Row, Target
from bench.services import PG_BASE, pg_schema, redis_db
from bench.services import flush_redis as _redis_flush
from bench.services import pg_dsn as _pg_dsn

WORKFLOWS = "pausepoint.tasks.examples"
AGENT = "bench_throughput"
CONCURRENCY = 2
# The embedded broker's polling interval (PAUSEPOINT_BROKER_POLL_INTERVAL), both apps.
POLL = float(os.environ.get("PAUSEPOINT_BROKER_POLL_INTERVAL", "0.05"))

CELERY_REDIS = "celery noop, redis"
CELERY_SQLITE = "celery noop, sqlite broker"
PP_PG = "pausepoint, postgres + redis"
PP_SQLITE = "pausepoint, sqlite + redis"
PP_EMBEDDED = "pausepoint, embedded (sqlite + sqlite broker)"
DBOS_PG = "dbos, postgres"
DBOS_SQLITE = "dbos, sqlite"

Say = Callable[[str], None]


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Sizes:
    """How much work one repetition does on one broker."""

    runs: int  # Pausepoint runs started at once; DBOS workflows in a row
    steps: int  # steps per run / workflow
    celery_tasks: int  # baseline tasks per repetition
    warmup_runs: int  # the unmeasured warm-up (Celery: warmup_runs * steps tasks)

    @property
    def total_steps(self) -> int:
        return self.runs * self.steps


# A measured phase of 3-8 s per repetition on an idle 2-core machine (Celery: 200-600
# tasks/s on Redis, ~100 on the polled SQLite broker; Pausepoint: 200-300 steps/s).
FULL = {
    "redis": Sizes(runs=32, steps=25, celery_tasks=1500, warmup_runs=6),
    "sqlite": Sizes(runs=32, steps=25, celery_tasks=300, warmup_runs=6),
}
# A smoke run: no warm-up, a second or less per repetition.
QUICK = {
    "redis": Sizes(runs=10, steps=10, celery_tasks=250, warmup_runs=0),
    "sqlite": Sizes(runs=8, steps=10, celery_tasks=40, warmup_runs=0),
}
# Should a case turn out much slower than that, its batches shrink (to no fewer than
# MIN_RUNS runs), so the whole benchmark keeps to its few minutes.
MAX_BATCH_SECONDS = 12.0
MIN_RUNS = 8
GROUPS = ("redis", "sqlite", "dbos")


@dataclass
class Samples:
    """One case's measured repetitions: steps (or tasks) per second, and how."""

    rates: list[float]
    extra: dict[str, list[Any]]

    @classmethod
    def empty(cls) -> Samples:
        return cls([], {})

    def add(self, rate: float, **extra: Any) -> None:
        self.rates.append(rate)
        for key, value in extra.items():
            self.extra.setdefault(key, []).append(value)


# ----------------------------------------------------------------- environment


def worker_env(store_url: str, broker_url: str, sink_url: str) -> dict[str, str]:
    """Our environment minus any PAUSEPOINT_* (but the poll interval), plus the backend's."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PAUSEPOINT_") or k == "PAUSEPOINT_BROKER_POLL_INTERVAL"
    }
    env.update(
        PYTHONPATH=str(ROOT),
        PAUSEPOINT_STORE_URL=store_url,
        PAUSEPOINT_BROKER_URL=broker_url,
        PAUSEPOINT_WORKFLOWS=WORKFLOWS,
        PAUSEPOINT_LLM="scripted",
        PAUSEPOINT_CONCURRENCY=str(CONCURRENCY),
        BENCH_BROKER_URL=broker_url,
        BENCH_SINK_URL=sink_url,
    )
    return env


class Bench:
    """The processes of one benchmark run: each logs to a file, all are stopped at the end.

    A case's worker is stopped in the background, so its shutdown overlaps the next
    case's start-up; :meth:`settle` waits for it before anything is measured.
    """

    def __init__(self, logs: Path, tmp: Path, repeats: int, say: Say) -> None:
        self.logs, self.tmp, self.repeats, self.say = logs, tmp, repeats, say
        self.procs: list[Proc] = []
        self._stopping: list[threading.Thread] = []

    def start(
        self, label: str, argv: list[str], env: dict[str, str], ready: Callable[[Proc], bool]
    ) -> Proc:
        log = self.logs / f"throughput-{_slug(label)}.log"
        log.unlink(missing_ok=True)
        proc = Proc(label, argv, env, log, cwd=ROOT)
        self.procs.append(proc)
        proc.start(ready)
        return proc

    def stop_later(self, proc: Proc) -> None:
        # Idle by now: a shutdown that hangs is cut short rather than holding the run.
        thread = threading.Thread(target=proc.stop, kwargs={"grace": 1.0}, daemon=True)
        thread.start()
        self._stopping.append(thread)

    def settle(self) -> None:
        for thread in self._stopping:
            thread.join()
        self._stopping.clear()

    def close(self) -> list[int]:
        """Stop everything; the process groups still alive after that (should be none)."""
        self.settle()
        for p in self.procs:
            p.stop()
        deadline = time.monotonic() + 5  # killed orphans linger until init reaps them
        while True:
            left = [p.pid for p in self.procs if p.pid is not None and group_alive(p.pid)]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.1)


class CpuMeter:
    """Where the machine's CPU went during a batch, in ms per step, from /proc.

    ``worker``: the worker's process group (main process and prefork children);
    ``postgres``, ``redis``: their server processes (all of them: on a shared
    machine, other clients' work too); ``bench``: this process (the producer);
    ``kernel``: kernel threads (e.g. the journal flushing SQLite's fsyncs);
    ``other``: every other process, i.e. load that is not ours. ``busy``: share of
    all CPUs busy. Processes that end inside the batch are not counted. Empty
    where there is no /proc.
    """

    GROUPS = ("worker", "postgres", "redis", "bench", "kernel", "other")

    def __init__(self, worker_pgid: int | None) -> None:
        self.pgid = worker_pgid
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._start: tuple[dict[int, tuple[str, float]], float, float] | None = None

    def _group(self, pid: int, comm: str, ppid: int, pgrp: int) -> str:
        if pgrp == self.pgid:
            return "worker"
        if pid == os.getpid():
            return "bench"
        if comm.startswith("postgres"):
            return "postgres"
        if comm.startswith("redis-server"):
            return "redis"
        return "kernel" if 2 in (pid, ppid) else "other"

    def _processes(self) -> dict[int, tuple[str, float]]:
        """pid -> (group, CPU seconds so far) of every process."""
        out: dict[int, tuple[str, float]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue  # gone since the scan
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            pid, ppid, pgrp = int(entry.name), int(fields[1]), int(fields[2])
            seconds = (int(fields[11]) + int(fields[12])) / self.tick
            out[pid] = (self._group(pid, comm, ppid, pgrp), seconds)
        return out

    @staticmethod
    def _system() -> tuple[float, float]:
        """(busy, total) CPU time of the machine since boot, in ticks, summed over CPUs."""
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
        return (sum(fields) - idle), sum(fields)

    def start(self) -> None:
        try:
            self._start = (self._processes(), *self._system())
        except (OSError, ValueError, IndexError):
            self._start = None

    def stop(self, steps: int) -> dict[str, Any]:
        if self._start is None:
            return {}
        try:
            now, (busy, total) = self._processes(), self._system()
        except (OSError, ValueError, IndexError):
            return {}
        before, busy0, total0 = self._start
        spent = dict.fromkeys(self.GROUPS, 0.0)
        # Per process, so one that started inside the batch counts from zero.
        for pid, (group, seconds) in now.items():
            spent[group] += seconds - before.get(pid, (group, 0.0))[1]
        return {
            "busy": round((busy - busy0) / (total - total0), 3) if total > total0 else None,
            "ms_per_step": {k: round(v * 1000 / steps, 3) for k, v in spent.items()},
        }


# ------------------------------------------------------------------ pausepoint


class RunWatcher:
    """Reads the runs table on one held connection, as a plain reader (no write lock)."""

    def __init__(self, store_url: str) -> None:
        from pausepoint.persistence.engine import normalize_url
        from pausepoint.persistence.tables import runs

        url = normalize_url(store_url)
        kwargs: dict[str, Any] = (
            {"connect_args": {"timeout": 30}}
            if url.startswith("sqlite")
            else {"pool_size": 1, "max_overflow": 0}
        )
        self.engine: Engine = create_engine(url, **kwargs)
        self.conn = self.engine.connect()
        self._runs = runs

    def finished(self, ids: list[str]) -> int:
        from pausepoint.persistence.records import FINISHED

        r = self._runs
        rows = self.conn.execute(
            select(r.c.id).where(r.c.id.in_(ids), r.c.status.in_(sorted(FINISHED)))
        ).all()
        self.conn.rollback()  # end the read: the next poll sees newer commits
        return len(rows)

    def outcome(self, ids: list[str]) -> list[tuple[str, str, Any, float | None]]:
        r = self._runs
        rows = self.conn.execute(
            select(r.c.id, r.c.status, r.c.result, r.c.finished_at).where(r.c.id.in_(ids))
        ).all()
        self.conn.rollback()
        return [
            (str(i), str(s), res, f.timestamp() if f is not None else None) for i, s, res, f in rows
        ]

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()


def pausepoint_case(
    bench: Bench, label: str, store_url: str, broker_url: str, sizes: Sizes
) -> Samples:
    """One worker for this backend; a warm-up batch, then ``repeats`` measured batches."""
    from pausepoint.tasks.jobs import forget_runtimes
    from pausepoint.worker.app import create_app, runtime
    from pausepoint.worker.settings import Settings

    say = bench.say
    argv = pausepoint_cmd("worker", "--concurrency", str(CONCURRENCY), "--no-beat")
    argv += ["--hostname", f"bench-{_slug(label)}@%h", "--loglevel", "INFO"]
    worker = bench.start(label, argv, worker_env(store_url, broker_url, ""), celery_ready)
    say(f"  {label}: worker ready, pid {worker.pid}")
    settings = Settings(
        store_url=store_url,
        broker_url=broker_url,
        workflows=WORKFLOWS.split(","),
        broker_poll_interval=POLL,
    )
    app = create_app(settings)
    rt = runtime(app)
    watcher = RunWatcher(store_url)
    samples = Samples.empty()
    meter = CpuMeter(worker.pid)
    try:
        rt.store.save_agent(AGENT, persona="A benchmark agent that only counts.")

        def batch(runs: int) -> dict[str, Any]:
            meter.start()
            t0 = time.time()
            ids = [
                rt.start("noop", agent=AGENT, input={"steps": sizes.steps}).id for _ in range(runs)
            ]
            produced = time.time() - t0
            deadline = time.monotonic() + 60 + runs * sizes.steps * 0.05
            while watcher.finished(ids) < runs:
                if time.monotonic() > deadline:
                    raise BenchError(f"{label}: runs not finished in time\n{worker.tail()}")
                time.sleep(0.05)
            cpu = meter.stop(runs * sizes.steps)
            rows = watcher.outcome(ids)
            wrong = [r for r in rows if r[1] != "completed" or r[2] != {"steps": sizes.steps}]
            if wrong or len(rows) != runs:
                raise BenchError(f"{label}: {len(wrong)} runs went wrong, e.g. {wrong[:1]}")
            end = max(r[3] for r in rows if r[3] is not None)
            seconds = end - t0
            return {
                "rate": runs * sizes.steps / seconds,
                "steps": runs * sizes.steps,
                "seconds": round(seconds, 3),
                "produce_seconds": round(produced, 3),
                "cpu": cpu,
            }

        bench.settle()
        runs = sizes.runs
        if sizes.warmup_runs:
            warm = batch(sizes.warmup_runs)
            say(f"  {label}: warm-up {warm['rate']:.0f} steps/s")
            expected = sizes.total_steps / warm["rate"]
            if expected > MAX_BATCH_SECONDS:
                runs = max(MIN_RUNS, int(sizes.runs * MAX_BATCH_SECONDS / expected))
                say(f"  {label}: slow; {runs} runs per repetition instead of {sizes.runs}")
        for i in range(bench.repeats):
            got = batch(runs)
            samples.add(got.pop("rate"), **got)
            say(
                f"  {label}: #{i + 1} {samples.rates[-1]:.0f} steps/s "
                f"({got['seconds']:.2f} s; {_cpu_text(got['cpu'])})"
            )
    finally:
        watcher.close()
        bench.stop_later(worker)
        forget_runtimes()
        app.close()
    return samples


# ----------------------------------------------------------------- celery noop


class Sink:
    """The baseline tasks' start times, read in bulk (Redis keys or SQLite rows)."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("redis://"):
            import redis

            self._redis: Any = redis.Redis.from_url(url)
        else:
            import sqlite3

            self._sqlite = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)

    def starts(self, prefix: str, keys: list[str]) -> list[float]:
        from bench.tasks import KEY_PREFIX

        if self.url.startswith("redis://"):
            values = self._redis.mget([KEY_PREFIX + k for k in keys])
            return [float(v) for v in values if v is not None]
        rows = self._sqlite.execute(
            "SELECT t FROM starts WHERE key >= ? AND key < ?", (prefix, prefix + "\uffff")
        ).fetchall()
        return [float(r[0]) for r in rows]

    def close(self) -> None:
        if self.url.startswith("redis://"):
            self._redis.close()
        else:
            self._sqlite.close()


def celery_case(bench: Bench, label: str, broker_url: str, sink_url: str, sizes: Sizes) -> Samples:
    """The baseline worker for this broker; a warm-up batch, then ``repeats`` measured ones."""
    from bench import celery_app
    from bench.tasks import NOOP

    say = bench.say
    argv = [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker"]
    argv += ["--concurrency", str(CONCURRENCY), "--task-events", "--loglevel", "INFO"]
    argv += ["--hostname", f"bench-{_slug(label)}@%h"]
    worker = bench.start(label, argv, worker_env("", broker_url, sink_url), celery_ready)
    say(f"  {label}: worker ready, pid {worker.pid}")
    app = celery_app.create(broker_url, POLL)
    task = app.tasks[NOOP]
    sink = Sink(sink_url)
    samples = Samples.empty()
    meter = CpuMeter(worker.pid)
    try:

        def batch(n: int, tag: str) -> dict[str, Any]:
            prefix = f"{tag}-{uuid.uuid4().hex[:8]}-"
            keys = [f"{prefix}{i:06d}" for i in range(n)]
            meter.start()
            t0 = time.time()
            for key in keys:
                task.apply_async((key,))
            produced = time.time() - t0
            deadline = time.monotonic() + 60 + n * 0.02
            while len(starts := sink.starts(prefix, keys)) < n:
                if time.monotonic() > deadline:
                    raise BenchError(f"{label}: {len(starts)}/{n} tasks ran\n{worker.tail()}")
                time.sleep(0.05)
            cpu = meter.stop(n)
            seconds = max(starts) - t0
            return {
                "rate": n / seconds,
                "steps": n,
                "seconds": round(seconds, 3),
                "produce_seconds": round(produced, 3),
                "cpu": cpu,
            }

        bench.settle()
        if sizes.warmup_runs:
            warm = batch(sizes.warmup_runs * sizes.steps, "warm")
            say(f"  {label}: warm-up {warm['rate']:.0f} tasks/s")
        for i in range(bench.repeats):
            got = batch(sizes.celery_tasks, f"r{i}")
            samples.add(got.pop("rate"), **got)
            say(
                f"  {label}: #{i + 1} {samples.rates[-1]:.0f} tasks/s "
                f"({got['seconds']:.2f} s; {_cpu_text(got['cpu'])})"
            )
    finally:
        sink.close()
        bench.stop_later(worker)
        app.close()
    return samples


# ------------------------------------------------------------------------ dbos


def dbos_cases(bench: Bench, sizes: Sizes) -> dict[str, Samples]:
    """bench/throughput_dbos.py, one process for both databases: launch, measure, exit."""
    bench.say("throughput: dbos")
    dbos_file = f"sqlite:///{bench.tmp / 'dbos.db'}"
    argv = [sys.executable, "-m", "bench.throughput_dbos"]
    argv += ["--db", f"{DBOS_PG}={_pg_dsn()}", "--db", f"{DBOS_SQLITE}={dbos_file}"]
    argv += ["--workflows", str(sizes.runs), "--steps", str(sizes.steps)]
    argv += ["--repeats", str(bench.repeats), "--warmup", str(sizes.warmup_runs)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAUSEPOINT_", "DBOS_"))}
    env["PYTHONPATH"] = str(ROOT)
    timeout = 120 + 2 * bench.repeats * sizes.total_steps * 0.02
    with pg_schema("bench_dbos") as schema:
        bench.settle()  # it measures as soon as it has launched
        proc = bench.start("dbos", [*argv, "--schema", schema], env, lambda _p: True)
        assert proc.proc is not None
        try:
            code = proc.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.stop()  # before its schema goes
            raise BenchError(f"dbos: no result in {timeout:.0f}s\n{proc.tail()}") from None
    lines = proc.log.read_text().splitlines()
    line = next((ln for ln in reversed(lines) if ln.startswith("{")), None)
    if code != 0 or line is None:
        raise BenchError(f"dbos: exit {code}\n{proc.tail()}")
    got: dict[str, Samples] = {}
    for label, doc in json.loads(line).items():
        samples = got[label] = Samples.empty()
        for i, rep in enumerate(doc["repetitions"]):
            rate = rep.pop("rate")
            samples.add(rate, **rep)
            bench.say(
                f"  {label}: #{i + 1} {rate:.0f} steps/s ({rep['seconds']:.2f} s; "
                f"CPU ms/step: dbos {rep['cpu_ms_per_step']:.2f})"
            )
    return got


# ------------------------------------------------------------------------- run


def _cpu_text(cpu: dict[str, Any]) -> str:
    if not cpu:
        return "CPU: no /proc"
    per = ", ".join(f"{k} {v:.2f}" for k, v in cpu["ms_per_step"].items())
    return f"CPU busy {cpu['busy']}; CPU ms/step: {per}"


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def redis_cases(bench: Bench, size: Sizes) -> dict[str, Samples]:
    """The Celery baseline, then Pausepoint on Postgres and on SQLite, on the Redis broker."""
    bench.say("throughput: redis broker")
    got: dict[str, Samples] = {}
    with redis_db() as url:
        got[CELERY_REDIS] = celery_case(bench, CELERY_REDIS, url, url, size)
        bench.settle()
        _redis_flush()
        with pg_schema("bench") as schema:
            store = f"{PG_BASE}?options=-csearch_path%3D{schema}"
            try:
                got[PP_PG] = pausepoint_case(bench, PP_PG, store, url, size)
            finally:
                bench.settle()  # the worker goes before its schema
        _redis_flush()
        store = f"sqlite:///{bench.tmp / 'store-redis.db'}"
        got[PP_SQLITE] = pausepoint_case(bench, PP_SQLITE, store, url, size)
        bench.settle()
    return got


def sqlite_broker_cases(bench: Bench, size: Sizes) -> dict[str, Samples]:
    """The Celery baseline and the embedded default, each on its own SQLite broker file."""
    from bench.tasks import create_sqlite_sink

    bench.say("throughput: sqlite broker")
    sink = bench.tmp / "sink.db"
    create_sqlite_sink(str(sink))
    broker = f"sqla+sqlite:///{bench.tmp / 'celery-broker.db'}"
    got = {CELERY_SQLITE: celery_case(bench, CELERY_SQLITE, broker, f"sqlite:///{sink}", size)}
    store, broker = (
        f"sqlite:///{bench.tmp / 'store.db'}",
        f"sqla+sqlite:///{bench.tmp / 'broker.db'}",
    )
    got[PP_EMBEDDED] = pausepoint_case(bench, PP_EMBEDDED, store, broker, size)
    return got


def run(
    repeats: int = 3,
    *,
    quick: bool = False,
    out_dir: Path,
    groups: tuple[str, ...] = GROUPS,
) -> Result:
    """Every case, ``repeats`` measured repetitions each; ``quick``: small batches.

    ``groups`` (development) limits the run to some of: redis (Celery baseline and
    Pausepoint on the Redis broker), sqlite (the same on the SQLite broker), dbos.
    """
    sizes = QUICK if quick else FULL
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] {msg}", file=sys.stderr, flush=True)

    got: dict[str, Samples] = {}
    with tempfile.TemporaryDirectory(prefix="pausepoint-bench-throughput-") as tmp_dir:
        bench = Bench(logs, Path(tmp_dir), repeats, say)
        try:
            if "redis" in groups:
                got.update(redis_cases(bench, sizes["redis"]))
            if "sqlite" in groups:
                got.update(sqlite_broker_cases(bench, sizes["sqlite"]))
            if "dbos" in groups:
                # The same steps as Pausepoint's Postgres case, one after the other.
                got.update(dbos_cases(bench, sizes["redis"]))
        finally:
            left = bench.close()  # before the temporary directory goes
            if left:
                say(f"throughput: process groups still alive: {left}")

    result = _result(got, sizes, repeats)
    result.seconds = time.monotonic() - started
    return result


BASELINES = {PP_PG: CELERY_REDIS, PP_SQLITE: CELERY_REDIS, PP_EMBEDDED: CELERY_SQLITE}
ORDER = (CELERY_REDIS, PP_PG, PP_SQLITE, CELERY_SQLITE, PP_EMBEDDED, DBOS_PG, DBOS_SQLITE)


def _result(got: dict[str, Samples], sizes: dict[str, Sizes], repeats: int) -> Result:
    result = Result(
        name="throughput",
        title="Step throughput (steps/s, 2 worker processes)",
        baseline="a no-op Celery task on the same broker, 2 prefork processes, same run",
    )
    for case in ORDER:
        if case in got:
            s = got[case]
            unit = "tasks/s" if case.startswith("celery") else "steps/s"
            base = BASELINES.get(case)
            result.rows.append(
                Row(case, unit, s.rates, base if base in got else None, extra=s.extra)
            )
    if PP_PG in got:
        pg = result.row(PP_PG).median
        for other, limit, note in (
            (CELERY_REDIS, 0.6, "ratio of medians, same run"),
            (DBOS_PG, 1.5, "ratio of medians, same Postgres"),
        ):
            if other in got:
                value = pg / result.row(other).median
                result.targets.append(Target(f"{PP_PG} / {other}", value, limit, "min", note))
    redis, sqlite = sizes["redis"], sizes["sqlite"]
    warmup = "after one unmeasured warm-up" if redis.warmup_runs else "(quick: no warm-up)"
    result.notes += [
        f"{repeats} repetitions per case {warmup}; each worker started once per backend. "
        f"Pausepoint: {redis.runs} runs x {redis.steps} no-op steps = {redis.total_steps} "
        f"steps per repetition; DBOS: the same {redis.total_steps} steps; Celery: "
        f"{redis.celery_tasks} no-op tasks on Redis, {sqlite.celery_tasks} on the SQLite "
        "broker. The steps each repetition ran are in the JSON (extra.steps).",
        "pausepoint: the runs are started at once and run side by side on `pausepoint worker "
        f"--concurrency {CONCURRENCY} --no-beat`, every setting at its default"
        + _inline_note()
        + "; steps/s = steps / (last finished_at - wall clock before the first start). "
        "Every run checked: completed, result {'steps': N}.",
        "celery noop: the tasks are sent as fast as apply_async goes (the sending is inside "
        "the window) to a bare worker configured like Pausepoint's (acks_late, prefetch 1, "
        "task events); tasks/s = tasks / (last task start - wall clock before the first send).",
        "dbos: DBOS Transact "
        f"{_version('dbos')}, the same workflows one after the other on one thread "
        "(sequential @DBOS.step steps, each checkpointed before the next) in a process of its "
        "own; system database on the same Postgres (fresh schema) or a SQLite file.",
        f"Log level INFO on every worker (needed for the readiness check); embedded broker "
        f"polled every {POLL * 1000:.0f} ms by both apps. The sweeper (beat) is off: nothing "
        "is lost in a healthy run, and the Celery baseline has no beat either.",
    ]
    busy = [
        f"{row.case} ({share:.0%})" for row in result.rows if (share := _other_share(row)) > 0.1
    ]
    if busy:
        result.notes.append(
            "WARNING: processes not part of the benchmark took a share of the CPU during "
            + ", ".join(busy)
            + ": those figures are low; run again on an idle machine."
        )
    cpu = [f"{row.case}: {text}" for row in result.rows if (text := _cpu_summary(row))]
    if cpu:
        result.notes.append(
            "CPU ms per step (per task for Celery), median of the repetitions, from /proc: "
            + "; ".join(cpu)
            + ". worker = the worker's processes, bench = the producer (this process), kernel = "
            "kernel threads."
        )
    return result


def _cpu_summary(row: Row) -> str:
    per_rep = [c["ms_per_step"] for c in row.extra.get("cpu", []) if c]
    if not per_rep:
        dbos = row.extra.get("cpu_ms_per_step", [])
        return f"dbos {statistics.median(dbos):.1f}" if dbos else ""
    keys = [k for k in per_rep[0] if k != "other"]
    medians = {k: statistics.median(r[k] for r in per_rep) for k in keys}
    return ", ".join(f"{k} {v:.1f}" for k, v in medians.items() if v >= 0.2)


def _other_share(row: Row) -> float:
    """Median share of the CPU the meter saw that went to other processes (not ours)."""
    shares = [
        c["ms_per_step"]["other"] / total
        for c in row.extra.get("cpu", [])
        if c and (total := sum(c["ms_per_step"].values())) > 0
    ]
    return statistics.median(shares) if shares else 0.0


def _inline_note() -> str:
    """How many steps of a run one Celery task may run (PAUSEPOINT_INLINE_STEPS)."""
    from pausepoint.worker.settings import Settings

    inline = Settings.model_fields.get("inline_steps")
    if inline is None:
        return " (each step a Celery task: claim, step, commit, publish the next)"
    return (
        f" (PAUSEPOINT_INLINE_STEPS={inline.default}: one Celery task claims a run and runs up "
        "to that many of its steps in a row, each committed with its checkpoint and claiming "
        "the next in one transaction, then publishes the rest)"
    )


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def main() -> int:
    """``python -m bench.throughput [--quick] [--repeats N]``: run it alone, print the table."""
    import argparse

    from bench import report

    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--only", default=",".join(GROUPS), help=f"comma-separated, of {', '.join(GROUPS)}"
    )
    args = parser.parse_args()
    groups = tuple(g for g in args.only.split(",") if g)
    if not groups or set(groups) - set(GROUPS):
        parser.error(f"--only: choose from {', '.join(GROUPS)}")
    result = run(args.repeats, quick=args.quick, out_dir=args.out, groups=groups)
    report.print_tables([result])
    report.save([result], args.out / "throughput.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
