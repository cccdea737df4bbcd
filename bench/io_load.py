"""I/O-bound load: agent steps that each wait on a model, on the threads pool.

    .venv/bin/python -m bench io-load [--runs 500] [--steps 4] [--latency 0.2]
        [--concurrency 16,64,256] [--stores postgres,sqlite] [--quick]

What runs, on real processes (Redis broker, db 13):

* **model**: the loopback OpenAI-compatible server (tests/openai_server.py) in a
  process of its own, answering every chat completion after ``--latency`` seconds.
* **celery**, the baseline: ``celery -A bench.celery_app worker --pool threads -c C``
  whose task makes the same call with the same client (``openai``, no retries) and
  records its end in Redis. A repetition sends ``runs x steps`` tasks at once;
  tasks/s = tasks / (last end - wall clock before the first send).
* **pausepoint**: ``pausepoint worker --pool threads -c C --no-beat`` on the Postgres
  store (a fresh schema) and on a SQLite file, every setting at its default; and
  with ``--processes 2`` (two worker processes of C/2 threads under one supervisor,
  so the worker uses both cores; ``--processes 1,2`` by default). A
  repetition starts ``runs`` runs of the ``turns`` workflow (tasks/examples.py: each
  step one ``ctx.ask``, i.e. one model call, checkpointed with its messages) at once;
  steps/s = steps / (last run's ``finished_at`` - wall clock before the first start).
  Every run is checked: completed, ``steps`` checkpoints plus the first.

Ideal: C / latency steps/s (every slot always waiting on the model). Per case: the
worker's memory (peak RSS of its process group) and the store connections it held
(peak; Postgres: ``pg_stat_activity`` by application name, SQLite: open descriptors of
the store file), sampled every 0.2 s. Each worker serves one unmeasured warm-up batch
first.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import ROOT, celery_ready, http_ready, pausepoint_cmd
from bench.report import Result, Row, Target
from bench.services import PG_BASE, pg_dsn, pg_schema, redis_db, schema_url
from bench.throughput import Bench, CpuMeter, RunWatcher, Sink, _cpu_text, _slug

AGENT = "bench_io"
APP_NAME = "pausepoint-bench-io"
MODEL = "bench-model"
CELERY = "celery threads"
STORES = ("postgres", "sqlite")


@dataclass(frozen=True)
class Plan:
    runs: int
    steps: int
    latency: float
    concurrency: tuple[int, ...]
    stores: tuple[str, ...]
    repeats: int
    warmup_runs: int
    processes: tuple[int, ...] = (1,)

    @property
    def total(self) -> int:
        return self.runs * self.steps


def case_label(what: str, concurrency: int) -> str:
    return f"{what}, c={concurrency}"


# ---------------------------------------------------------------------- meters


class Sampler:
    """Peak RSS of a process group and peak store connections, sampled in a thread."""

    def __init__(self, pgid: int | None, connections: Callable[[], int]) -> None:
        self.pgid, self.connections = pgid, connections
        self.rss = 0
        self.conns = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.rss = max(self.rss, group_rss(self.pgid))
            try:
                self.conns = max(self.conns, self.connections())
            except Exception:  # a sample is not worth a failed benchmark
                pass
            self._stop.wait(0.2)


def group_pids(pgid: int | None) -> list[str]:
    """The /proc entries of the processes in group ``pgid`` (none without /proc)."""
    if pgid is None:
        return []
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[2]) == pgid:
                found.append(entry.path)
        except (OSError, ValueError, IndexError):
            continue
    return found


def group_rss(pgid: int | None) -> int:
    """Bytes resident in the processes of group ``pgid`` (0 without /proc)."""
    total = 0
    for proc in group_pids(pgid):
        try:
            for line in Path(proc, "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return total


def pg_connections() -> int:
    import psycopg

    with psycopg.connect(pg_dsn(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (APP_NAME,)
        ).fetchone()
    return int(row[0]) if row else 0


def sqlite_connections(pgid: int | None, path: Path) -> Callable[[], int]:
    """Descriptors the worker's processes hold open on the store file."""
    target = str(path)

    def count() -> int:
        n = 0
        for proc in group_pids(pgid):
            try:
                n += sum(1 for fd in os.scandir(Path(proc, "fd")) if _link(fd.path) == target)
            except OSError:
                continue
        return n

    return count


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


# ------------------------------------------------------------------------ cases


def model_server(bench: Bench, latency: float) -> str:
    """The loopback model in a process of its own; its base URL."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    argv = [sys.executable, "-m", "tests.openai_server", "--port", str(port)]
    argv += ["--latency", str(latency)]
    base = f"http://127.0.0.1:{port}/v1"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    bench.start("model", argv, env, http_ready(base + "/models"))
    return base


def worker_env(store_url: str, broker_url: str, model_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAUSEPOINT_", "BENCH_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        PAUSEPOINT_STORE_URL=store_url,
        PAUSEPOINT_BROKER_URL=broker_url,
        PAUSEPOINT_WORKFLOWS="pausepoint.tasks.examples",
        PAUSEPOINT_LLM="openai",
        PAUSEPOINT_LLM_BASE_URL=model_url,
        PAUSEPOINT_LLM_API_KEY="sk-bench",
        PAUSEPOINT_LLM_MODEL=MODEL,
        BENCH_BROKER_URL=broker_url,
        BENCH_SINK_URL=broker_url,
        BENCH_MODEL_URL=model_url,
    )
    return env


def celery_case(bench: Bench, plan: Plan, c: int, broker: str, model_url: str) -> dict[str, Any]:
    from bench import celery_app
    from bench.tasks import ASK

    label = case_label(CELERY, c)
    argv = [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker"]
    argv += ["--pool", "threads", "--concurrency", str(c), "--task-events", "--loglevel", "INFO"]
    argv += ["--hostname", f"bench-{_slug(label)}@%h"]
    worker = bench.start(label, argv, worker_env("", broker, model_url), celery_ready)
    app = celery_app.create(broker)
    task = app.tasks[ASK]
    sink = Sink(broker)
    try:

        def batch(n: int, tag: str) -> dict[str, Any]:
            prefix = f"{tag}-{uuid.uuid4().hex[:8]}-"
            keys = [f"{prefix}{i:06d}" for i in range(n)]
            meter = CpuMeter(worker.pid)
            meter.start()
            with Sampler(worker.pid, lambda: 0) as sampled:
                t0 = time.time()
                for key in keys:
                    task.apply_async((key,))
                deadline = time.monotonic() + 120 + n * plan.latency
                while len(ends := sink.starts(prefix, keys)) < n:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{label}: {len(ends)}/{n} tasks\n{worker.tail()}")
                    time.sleep(0.05)
            seconds = max(ends) - t0
            return {
                "rate": n / seconds,
                "seconds": round(seconds, 3),
                "rss_mb": round(sampled.rss / 2**20, 1),
                "cpu": meter.stop(n),
            }

        return _measure(bench, label, plan, lambda n, tag: batch(n * plan.steps, tag))
    finally:
        sink.close()
        bench.stop_later(worker)
        app.close()


def pausepoint_case(
    bench: Bench, plan: Plan, c: int, store: str, broker: str, model_url: str, processes: int = 1
) -> dict[str, Any]:
    from pausepoint.tasks.jobs import forget_runtimes
    from pausepoint.worker.app import create_app, runtime
    from pausepoint.worker.settings import Settings

    label = case_label(
        f"pausepoint, {store}" if processes == 1 else f"pausepoint x{processes} proc, {store}", c
    )
    if store == "postgres":
        schema_cm: Any = pg_schema("bench_io")
        schema = schema_cm.__enter__()
        store_url = schema_url(schema) + f"&application_name={APP_NAME}"
        sqlite_file = None
    else:
        schema_cm = None
        sqlite_file = bench.tmp / f"io-{c}-{uuid.uuid4().hex[:6]}.db"
        store_url = f"sqlite:///{sqlite_file}"
    argv = pausepoint_cmd("worker", "--pool", "threads", "--concurrency", str(c), "--no-beat")
    argv += ["--processes", str(processes)]
    argv += ["--hostname", f"bench-{_slug(label)}@%h", "--loglevel", "INFO"]
    worker = bench.start(label, argv, worker_env(store_url, broker, model_url), celery_ready)
    conns = (
        pg_connections
        if sqlite_file is None
        else sqlite_connections(worker.pid, sqlite_file.resolve())
    )
    app = create_app(Settings(store_url=store_url, broker_url=broker))
    rt = runtime(app)
    watcher = RunWatcher(store_url)
    try:
        rt.store.save_agent(AGENT, persona="A benchmark agent that asks and waits.")

        def batch(runs: int, tag: str) -> dict[str, Any]:
            meter = CpuMeter(worker.pid)
            meter.start()
            with Sampler(worker.pid, conns) as sampled:
                t0 = time.time()
                ids = [
                    rt.start("turns", agent=AGENT, task=tag, input={"steps": plan.steps}).id
                    for _ in range(runs)
                ]
                deadline = time.monotonic() + 120 + runs * plan.steps * plan.latency
                while watcher.finished(ids) < runs:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{label}: runs not finished\n{worker.tail()}")
                    time.sleep(0.05)
            rows = watcher.outcome(ids)
            wrong = [r for r in rows if r[1] != "completed" or r[2] != {"steps": plan.steps}]
            if wrong or len(rows) != runs:
                raise RuntimeError(f"{label}: {len(wrong)} runs went wrong, e.g. {wrong[:1]}")
            for run_id in ids[:: max(1, runs // 20)]:  # a sample: each step applied once
                seqs = [cp.seq for cp in rt.store.checkpoints(run_id)]
                if seqs != list(range(plan.steps + 1)):
                    raise RuntimeError(f"{label}: run {run_id} has checkpoints {seqs}")
            end = max(r[3] for r in rows if r[3] is not None)
            seconds = end - t0
            return {
                "rate": runs * plan.steps / seconds,
                "seconds": round(seconds, 3),
                "rss_mb": round(sampled.rss / 2**20, 1),
                "store_connections": sampled.conns,
                "cpu": meter.stop(runs * plan.steps),
            }

        return _measure(bench, label, plan, batch)
    finally:
        watcher.close()
        worker.stop(grace=5.0)  # before its schema goes
        forget_runtimes()
        app.close()
        if schema_cm is not None:
            schema_cm.__exit__(None, None, None)


def _measure(
    bench: Bench, label: str, plan: Plan, batch: Callable[[int, str], dict[str, Any]]
) -> dict[str, Any]:
    bench.settle()
    if plan.warmup_runs:
        warm = batch(plan.warmup_runs, "warm")
        bench.say(f"  {label}: warm-up {warm['rate']:.0f}/s")
    reps: list[dict[str, Any]] = []
    for i in range(plan.repeats):
        got = batch(plan.runs, f"r{i}")
        reps.append(got)
        extra = f"RSS {got['rss_mb']} MB"
        if "store_connections" in got:
            extra += f", {got['store_connections']} store connections"
        bench.say(
            f"  {label}: #{i + 1} {got['rate']:.0f}/s ({got['seconds']:.1f} s; {extra}; "
            f"{_cpu_text(got['cpu'])})"
        )
    return {"label": label, "reps": reps}


# -------------------------------------------------------------------------- run


def run(plan: Plan, *, out_dir: Path) -> Result:
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    got: dict[int, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="pausepoint-bench-io-") as tmp_dir:
        bench = Bench(logs, Path(tmp_dir), plan.repeats, say)
        try:
            model_url = model_server(bench, plan.latency)
            with redis_db() as broker:
                for c in plan.concurrency:
                    say(f"io-load: concurrency {c}")
                    cases = [celery_case(bench, plan, c, broker, model_url)]
                    bench.settle()
                    for store in plan.stores:
                        for n in plan.processes:
                            cases.append(
                                pausepoint_case(bench, plan, c, store, broker, model_url, n)
                            )
                    got[c] = cases
        finally:
            left = bench.close()
            if left:
                say(f"io-load: process groups still alive: {left}")
    result = _result(plan, got)
    result.seconds = time.monotonic() - started
    return result


def _result(plan: Plan, got: dict[int, list[dict[str, Any]]]) -> Result:
    result = Result(
        name="io_load",
        title=f"I/O-bound steps/s (each one model call of {plan.latency * 1000:.0f} ms), "
        "threads pool",
        baseline="raw Celery, threads pool of the same size, the same call, same run",
    )
    for c, cases in got.items():
        base = cases[0]["label"]
        for case in cases:
            reps = case["reps"]
            extra = {k: [r[k] for r in reps] for k in reps[0] if k != "rate"}
            extra["ideal"] = c / plan.latency
            result.rows.append(
                Row(
                    case["label"],
                    "tasks/s" if case is cases[0] else "steps/s",
                    [r["rate"] for r in reps],
                    None if case is cases[0] else base,
                    extra=extra,
                )
            )
        celery = result.row(base).median
        for case in cases[1:]:
            row = result.row(case["label"])
            result.targets.append(
                Target(f"{row.case} / {base}", row.median / celery, 0.9, "min", "ratio of medians")
            )
            if c >= 256:
                result.targets.append(Target(row.case, row.median, 250.0, "min", "steps/s"))
    result.notes += [
        f"{plan.runs} runs x {plan.steps} steps per repetition ({plan.total} model calls; "
        f"Celery: {plan.total} tasks), {plan.repeats} repetition(s) after a warm-up of "
        f"{plan.warmup_runs} runs; loopback model answering after {plan.latency} s; Redis "
        f"broker; Postgres at {PG_BASE.split('@')[-1]} (a fresh schema per case).",
        "ideal = concurrency / latency; extra.rss_mb = the worker's peak RSS; "
        "extra.store_connections = the most store connections it held at once.",
    ]
    return result


def main(argv: list[str] | None = None) -> int:
    import argparse

    from bench.report import print_tables, save
    from bench.services import RESULTS

    parser = argparse.ArgumentParser(prog="python -m bench io-load", description=__doc__)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.2, help="model answer, seconds")
    parser.add_argument("--concurrency", default="16,64,256", help="comma-separated")
    parser.add_argument("--stores", default=",".join(STORES), help="postgres,sqlite")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--processes",
        default="1,2",
        help="worker processes of the pausepoint worker (--processes), comma-separated",
    )
    parser.add_argument("--quick", action="store_true", help="60 runs, c=16,64: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS / "io_load.json")
    args = parser.parse_args(argv)
    stores = tuple(s for s in args.stores.split(",") if s)
    bad = [s for s in stores if s not in STORES]
    if bad:
        parser.error(f"unknown store(s) {bad}; choose from {STORES}")
    plan = Plan(
        runs=60 if args.quick else args.runs,
        steps=args.steps,
        latency=args.latency,
        concurrency=(16, 64) if args.quick else tuple(int(x) for x in args.concurrency.split(",")),
        stores=stores,
        repeats=args.repeats,
        warmup_runs=10 if args.quick else 40,
        processes=tuple(int(x) for x in args.processes.split(",")),
    )
    result = run(plan, out_dir=args.out.parent)
    print_tables([result])
    save([result], args.out)
    return 0 if all(t.met for t in result.targets) else 1


if __name__ == "__main__":
    raise SystemExit(main())
