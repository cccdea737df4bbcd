"""Reads of one big run stay bounded (issue 15): time and bytes of every default read.

One run of 20,000 steps (20,000 messages of about 200 characters, as many events and
checkpoints, written in bulk as step commits write them: bench/audit_verify.py) on
SQLite and on Postgres. Each read is what a user gets without asking for more:

- the HTTP API, in process (the real app over httpx's ASGI transport): ``GET
  /runs/{id}``, ``/messages``, ``/events``, ``/checkpoints``, ``/checkpoints/{seq}``
  (the latest and one in the middle);
- the CLI, in process (typer's runner; an interpreter's start is not the read):
  ``pausepoint show``, ``show --json``, ``history``, ``history --json``.

Baseline, in the same run: a plain SQL page select, the latest 100 messages of the
run (``SELECT ... ORDER BY idx DESC LIMIT 100``); and, as a control, each read of a
60-message run in the same store (a read that is bounded costs the same on both).
Figures: median of ``repeats`` after one warm-up. Targets: each read under 100 ms
and 200 KB.

    python -m bench reads [--messages 20000] [--repeats 5] [--stores sqlite,postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import select, text

from bench.audit_verify import build, store_of
from bench.services import RESULTS
from pausepoint.persistence.store import Store
from pausepoint.persistence.tables import messages

MAX_SECONDS = 0.1
MAX_BYTES = 200_000
KEY = "bench-reads-key"
# Messages of the control run: what each read costs whatever the run's size.
SMALL = 60


def plain_page(store: Store, run_id: str) -> int:
    """The baseline: the latest 100 messages, one SELECT."""
    with store.read() as conn:
        rows = conn.execute(
            select(messages)
            .where(messages.c.run_id == run_id)
            .order_by(messages.c.idx.desc())
            .limit(100)
        ).all()
    return sum(len(str(tuple(r))) for r in rows)


@contextmanager
def api_client(store: Store) -> Iterator[Callable[[str], int]]:
    """``get(path) -> bytes`` on the real app over this store, in process."""
    import httpx
    from anyio.from_thread import start_blocking_portal
    from celery import Celery
    from pydantic import SecretStr

    from pausepoint.tasks.jobs import FACTORY_KEY, forget_runtimes
    from pausepoint.tasks.llm import ScriptedBackend
    from pausepoint.tasks.runtime import Runtime
    from pausepoint.worker.api import create_api
    from pausepoint.worker.settings import ApiKey, Settings

    rt = Runtime(store, llm=ScriptedBackend(), publish=lambda r, v: None)
    app = Celery("pausepoint-bench-reads", set_as_current=False)
    app.conf[FACTORY_KEY] = lambda _app: rt
    keys = [ApiKey(name="bench", key=SecretStr(KEY), roles=["viewer"])]
    api = create_api(Settings(store_url=str(store.engine.url), api_keys=keys), celery_app=app)
    headers = {"Authorization": f"Bearer {KEY}"}
    with start_blocking_portal() as portal:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://bench")

        def get(path: str) -> int:
            r = portal.call(partial(client.get, path, headers=headers))
            if r.status_code != 200:
                raise RuntimeError(f"GET {path}: {r.status_code} {r.text[:300]}")
            return len(r.content)

        try:
            yield get
        finally:
            portal.call(client.aclose)
            app.close()
            forget_runtimes()  # disposes the pool's connections; the store stays usable


def cli_runner(url: str) -> Callable[..., int]:
    """``run(*args) -> bytes printed`` of a `pausepoint` command, in process."""
    from rich.console import Console
    from typer.testing import CliRunner

    import pausepoint.worker.cli as cli_module
    from pausepoint.tasks import jobs

    runner = CliRunner()
    env = {"PAUSEPOINT_STORE_URL": url}

    def run(*args: str) -> int:
        cli_module.console = Console(width=160, color_system=None)
        result = runner.invoke(cli_module.cli, list(args), env=env)
        jobs.forget_runtimes()
        if result.exit_code != 0:
            raise RuntimeError(f"pausepoint {' '.join(args)}: {result.output[-500:]}")
        return len(result.stdout.encode())

    return run


def measure(read: Callable[[], int], repeats: int) -> dict[str, float]:
    read()  # warm-up: imports, the first connection, the query plans
    times, size = [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        size = read()
        times.append(time.perf_counter() - t)
    return {"ms": round(statistics.median(times) * 1000, 2), "bytes": size}


def cases_of(
    store: Store, run_id: str, get: Callable[[str], int], cli: Callable[..., int]
) -> dict[str, Callable[[], int]]:
    seq = store.get_run(run_id).seq
    return {
        "plain SQL: latest 100 messages": partial(plain_page, store, run_id),
        "GET /runs/{id}": partial(get, f"/runs/{run_id}"),
        "GET /runs/{id}/messages": partial(get, f"/runs/{run_id}/messages"),
        "GET /runs/{id}/events": partial(get, f"/runs/{run_id}/events"),
        "GET /runs/{id}/checkpoints": partial(get, f"/runs/{run_id}/checkpoints"),
        "GET /runs/{id}/checkpoints/{last}": partial(get, f"/runs/{run_id}/checkpoints/{seq}"),
        "GET /runs/{id}/checkpoints/{middle}": partial(
            get, f"/runs/{run_id}/checkpoints/{seq // 2}"
        ),
        "pausepoint show": partial(cli, "show", run_id),
        "pausepoint show --json": partial(cli, "show", run_id, "--json"),
        "pausepoint history": partial(cli, "history", run_id),
        "pausepoint history --json": partial(cli, "history", run_id, "--json"),
    }


def bench_store(kind: str, tmp: Path, steps: int, repeats: int) -> list[dict[str, Any]]:
    """Each read of the big run, and the same read of a small run (``SMALL`` messages)
    in the same store: what a read costs whatever the run's size (a CLI command's
    parsing and drawing, a request's handling) shows in both."""
    with store_of(kind, tmp) as store:
        run_id = build(store, steps, text_size=200)
        small_id = build(store, SMALL, text_size=200)
        if kind == "postgres":
            # As autovacuum would soon after such a bulk write: plans from real statistics.
            with store.write() as conn:
                conn.execute(text("ANALYZE"))
        url = store.engine.url.render_as_string(hide_password=False)
        cli = cli_runner(url)
        rows = []
        with api_client(store) as get:
            big = cases_of(store, run_id, get, cli)
            small = cases_of(store, small_id, get, cli)
            for case, read in big.items():
                got = measure(read, repeats)
                control = measure(small[case], repeats)
                rows.append({"store": kind, "read": case, **got, "small_ms": control["ms"]})
                print(
                    f"  {kind:9} {case:38} {got['ms']:>9.2f} ms {got['bytes']:>10,} B"
                    f"   ({SMALL}-message run: {control['ms']:.2f} ms)"
                )
        base = rows[0]["ms"]
        for r in rows:
            r["ratio"] = round(r["ms"] / base, 1) if base else None
            r["target_met"] = r["ms"] < MAX_SECONDS * 1000 and r["bytes"] < MAX_BYTES
        return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench reads", description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--out", type=Path, default=RESULTS / "reads.json")
    args = parser.parse_args(argv)
    stores = [s for s in args.stores.split(",") if s]
    rows: list[dict[str, Any]] = []
    os.environ.pop("PAUSEPOINT_STORE_URL", None)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in stores:
            print(f"{kind}: one run of {args.messages:,} messages, median of {args.repeats}")
            rows += bench_store(kind, Path(tmp), args.messages, args.repeats)
    print(f"\ntargets: every read under {MAX_SECONDS * 1000:.0f} ms and {MAX_BYTES:,} B")
    print(f"{'store':9} {'read':38} {'ms':>9} {'x plain':>8} {'bytes':>10} {'small ms':>9}  target")
    for r in rows:
        met = "" if r["read"].startswith("plain") else ("met" if r["target_met"] else "MISSED")
        print(
            f"{r['store']:9} {r['read']:38} {r['ms']:>9.2f} {r['ratio']:>8} "
            f"{r['bytes']:>10,} {r['small_ms']:>9.2f}  {met}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"messages": args.messages, "rows": rows}, indent=2) + "\n")
    reads = [r for r in rows if not r["read"].startswith("plain")]
    return 0 if all(r["target_met"] for r in reads) else 1
