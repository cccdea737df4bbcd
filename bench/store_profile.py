"""Where the store's share of a resume goes: its two transactions, statement by statement.

    .venv/bin/python -m bench store [--resumes N] [--store sqlite|postgres|all]

No broker, no worker, no HTTP: the product's own ``Runtime`` and ``Store`` in this
process, with a ``publish`` that only records. N ``payment`` runs are parked
in-process, then for each one

* ``deliver_callback`` (what ``POST /callbacks/{token}`` runs in the API), and
* ``claim`` (what a worker runs first in ``run_step``: it takes the lease)

are timed, with every SQL statement and the COMMIT timed through SQLAlchemy's
engine events. "COMMIT" runs from the commit to the end of the ``with`` block, so
it includes giving the connection back: on SQLite (NullPool) that is a close,
and closing the last connection to a WAL database checkpoints it. "rest" is
everything else: SQLAlchemy and the store's Python, and the pool checkout with
its pre-ping (a ``SELECT 1`` that the engine events do not see).

A raw probe (``INSERT`` + ``COMMIT`` on a scratch table, same driver, no
SQLAlchemy) gives the floor a commit costs on this machine.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event

from bench.resume_latency import RESULTS, summary
from bench.services import pg_schema, schema_url


@contextmanager
def store_url(kind: str) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="pausepoint-bench-store-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'store.db'}"
        return
    with pg_schema("bench") as schema:
        yield schema_url(schema)


class Timeline:
    """Statement and commit timings of one engine, between mark() and take()."""

    def __init__(self, engine: Any) -> None:
        self.items: list[tuple[str, float]] = []
        self._t0 = 0.0
        self._stmt_start = 0.0
        self._commit_start: float | None = None
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)
        event.listen(engine, "commit", self._commit)

    def _before(self, conn: Any, cursor: Any, statement: str, *a: Any) -> None:
        self._stmt_start = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, *a: Any) -> None:
        words = statement.split()
        label = " ".join(words[:1]).upper()
        if label in ("SELECT", "UPDATE", "INSERT", "DELETE"):
            table = _table(words)
            label = f"{label} {table}"
        self.items.append((label, time.perf_counter() - self._stmt_start))

    def _commit(self, conn: Any) -> None:
        self._commit_start = time.perf_counter()

    def mark(self) -> None:
        self.items = []
        self._commit_start = None
        self._t0 = time.perf_counter()

    def take(self) -> tuple[float, list[tuple[str, float]], float]:
        end = time.perf_counter()
        commit = end - self._commit_start if self._commit_start is not None else 0.0
        return end - self._t0, self.items, commit


def _table(words: list[str]) -> str:
    upper = [w.upper() for w in words]
    for key in ("FROM", "INTO", "UPDATE"):
        if key in upper:
            i = upper.index(key)
            if i + 1 < len(words):
                return words[i + 1].strip('"(')
    return "?"


def commit_probe(url: str, n: int = 200) -> dict[str, Any]:
    """INSERT + COMMIT of one small row, n times, on the raw driver: the durable-commit floor."""
    times: list[float] = []
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # as persistence.engine sets it
        conn.execute("CREATE TABLE IF NOT EXISTS bench_probe (id INTEGER PRIMARY KEY, v TEXT)")
        for i in range(n):
            t = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO bench_probe (v) VALUES (?)", (str(i),))
            conn.execute("COMMIT")
            times.append((time.perf_counter() - t) * 1000)
        conn.close()
    else:
        import psycopg

        dsn, _, query = url.replace("postgresql+psycopg://", "postgresql://").partition("?")
        schema = query.split("%3D", 1)[1]
        with psycopg.connect(dsn, options=f"-csearch_path={schema}") as pg:
            pg.execute("CREATE TABLE bench_probe (id serial PRIMARY KEY, v text)")
            pg.commit()
            for i in range(n):
                t = time.perf_counter()
                pg.execute("INSERT INTO bench_probe (v) VALUES (%s)", (str(i),))
                pg.commit()
                times.append((time.perf_counter() - t) * 1000)
            pg.execute("SET synchronous_commit = off")  # the same without the WAL flush wait
            pg.commit()
            times_async: list[float] = []
            for i in range(n):
                t = time.perf_counter()
                pg.execute("INSERT INTO bench_probe (v) VALUES (%s)", (str(i),))
                pg.commit()
                times_async.append((time.perf_counter() - t) * 1000)
            out: dict[str, Any] = {"insert_commit_ms": summary(times)}
            out["insert_commit_synchronous_commit_off_ms"] = summary(times_async)
            return out
    return {"insert_commit_ms": summary(times)}


def profile(kind: str, n: int) -> dict[str, Any]:
    from pausepoint.persistence.store import Store
    from pausepoint.tasks.llm import ScriptedBackend
    from pausepoint.tasks.runtime import Runtime
    from pausepoint.tasks.workflow import registry

    registry.load(["pausepoint.tasks.examples", "tests.workflows"])
    with store_url(kind) as url:
        store = Store.from_url(url)
        published: list[tuple[str, int]] = []
        rt = Runtime(
            store,
            llm=ScriptedBackend(),
            publish=lambda run_id, version: published.append((run_id, version)),
            workflows=registry,
            public_url="http://127.0.0.1:9",
        )
        store.save_agent("bench_agent")
        ids = [rt.start("payment", agent="bench_agent", input={"i": i}).id for i in range(n)]
        for run_id in ids:
            run = store.get_run(run_id)
            rt.run_step(run_id, run.version, owner="bench")
        tokens = [
            store.checkpoint(run_id).state["callback_url"].rsplit("/", 1)[1] for run_id in ids
        ]
        timeline = Timeline(store.engine)
        series: dict[str, dict[str, list[float]]] = {
            "deliver_callback": defaultdict(list),
            "claim": defaultdict(list),
        }
        for run_id, token in zip(ids, tokens, strict=True):
            timeline.mark()
            outcome, resumed = rt.deliver_callback(token, {"paid": True}, actor="bench")
            _record(series["deliver_callback"], timeline.take())
            assert outcome == "resumed" and resumed is not None
            timeline.mark()
            claim = store.claim(run_id, resumed.version, "bench")
            _record(series["claim"], timeline.take())
            assert claim is not None
        store.close()
        result: dict[str, Any] = {"url": url.split("?")[0]}
        for name, s in series.items():
            result[name] = {label: summary(v) for label, v in s.items()}
        result["commit_probe"] = commit_probe(url)
    return result


def _record(
    into: dict[str, list[float]], taken: tuple[float, list[tuple[str, float]], float]
) -> None:
    total, items, commit = taken
    into["total"].append(total * 1000)
    into["statements (count)"].append(float(len(items)))
    into["sum of statements"].append(sum(t for _, t in items) * 1000)
    into["COMMIT (+ return to pool; NullPool: close)"].append(commit * 1000)
    into["rest: python, pool checkout (+ pre-ping)"].append(
        (total - sum(t for _, t in items) - commit) * 1000
    )
    per: dict[str, float] = defaultdict(float)
    for label, t in items:
        per[label] += t
    for label, t in per.items():
        into[f"  {label}"].append(t * 1000)


def run(n: int, kinds: list[str], out: Path) -> int:
    from rich.console import Console
    from rich.table import Table

    results = {kind: profile(kind, n) for kind in kinds}
    console = Console(width=max(Console().width, 110))
    for kind, r in results.items():
        table = Table(title=f"Store transactions of a resume: {kind} ({r['url']}), ms")
        for column in ("transaction", "part", "p50", "p90", "p99"):
            left = column in ("transaction", "part")
            table.add_column(column, justify="left" if left else "right")
        for txn in ("deliver_callback", "claim"):
            for i, (label, st) in enumerate(r[txn].items()):
                table.add_row(
                    txn if i == 0 else "",
                    label,
                    f"{st['p50']:.2f}",
                    f"{st['p90']:.2f}",
                    f"{st['p99']:.2f}",
                    end_section=i == len(r[txn]) - 1,
                )
        for label, st in r["commit_probe"].items():
            table.add_row(
                "raw probe", label, f"{st['p50']:.2f}", f"{st['p90']:.2f}", f"{st['p99']:.2f}"
            )
        console.print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"resumes": n, "stores": results}, indent=2) + "\n")
    console.print(f"wrote {out}")
    return 0


DEFAULT_OUT = RESULTS / "store_profile.json"
