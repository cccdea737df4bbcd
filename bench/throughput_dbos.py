"""DBOS Transact side of the step-throughput benchmark, in a process of its own.

    .venv/bin/python -m bench.throughput_dbos --workflows 40 --steps 25 --repeats 3 \
        --db postgres=postgresql://postgres@127.0.0.1:5432/test --schema bench_dbos_1234 \
        --db sqlite=sqlite:////tmp/dbos.db

DBOS keeps a process-wide singleton, so :mod:`bench.throughput` runs this file
as a subprocess. For each ``--db`` in turn it launches DBOS on that system
database, runs ``--warmup`` unmeasured workflows, then ``--repeats``
repetitions, and destroys the instance. A repetition runs ``--workflows``
workflows of ``--steps`` no-op ``@DBOS.step`` steps, one workflow after the
other on one thread: sequential steps, each checkpointed to the system database
before the next starts (DBOS's durable step). Every workflow must return
``{"steps": steps}``. The last line printed is JSON: per database, the steps/s
of each repetition. The databases are left in place; the caller drops them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from dbos import DBOS, DBOSConfig


@DBOS.step()
def noop_step(i: int) -> int:
    return i


@DBOS.workflow()
def noop_workflow(steps: int) -> dict[str, int]:
    done = 0
    for i in range(steps):
        done = noop_step(i) + 1
    return {"steps": done}


def repetition(workflows: int, steps: int) -> dict[str, Any]:
    """``workflows`` x ``steps`` sequential steps: wall time, CPU time of this process, steps/s."""
    cpu, started = time.process_time(), time.perf_counter()
    results = [noop_workflow(steps) for _ in range(workflows)]
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    bad = [r for r in results if r != {"steps": steps}]
    if bad:
        raise SystemExit(f"dbos: {len(bad)} workflows returned something else, e.g. {bad[0]!r}")
    total = workflows * steps
    return {
        "rate": total / elapsed,
        "steps": total,
        "seconds": round(elapsed, 3),
        "cpu_ms_per_step": round(cpu * 1000 / total, 3),
    }


def measure(url: str, schema: str | None, args: argparse.Namespace) -> dict[str, Any]:
    config: DBOSConfig = {
        "name": "pausepoint-bench",
        "system_database_url": url,
        "log_level": "WARNING",
    }
    if schema and not url.startswith("sqlite"):
        config["dbos_system_schema"] = schema
    launched = time.perf_counter()
    DBOS(config=config)
    DBOS.launch()
    launch = time.perf_counter() - launched
    try:
        for _ in range(args.warmup):
            noop_workflow(args.steps)
        reps = [repetition(args.workflows, args.steps) for _ in range(args.repeats)]
    finally:
        DBOS.destroy()
    return {"launch_seconds": round(launch, 3), "repetitions": reps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput_dbos", description=__doc__)
    parser.add_argument(
        "--db",
        action="append",
        required=True,
        metavar="NAME=URL",
        help="a system database (postgresql://... or sqlite:///...); repeatable",
    )
    parser.add_argument("--schema", help="system schema on Postgres (default: DBOS's 'dbos')")
    parser.add_argument("--workflows", type=int, default=40)
    parser.add_argument("--steps", type=int, default=25, help="steps per workflow")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured workflows first")
    args = parser.parse_args(argv)
    dbs = [tuple(d.split("=", 1)) for d in args.db]
    if any(len(d) != 2 for d in dbs):
        parser.error("--db takes NAME=URL")
    out = {name: measure(url, args.schema, args) for name, url in dbs}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
