"""Parked runs: what 100,000 runs waiting for an approval cost the store, the sweeper and a worker.

The issue's target: *a parked run costs under 2 KB of store beyond its history,
and nothing on a worker*. Measured on the SQLite store and on Postgres (a fresh
schema ``bench_<hex>``, dropped at the end), each in three parts.

**Store bytes per parked run.** A few real ``loan`` runs (tasks/examples.py) are
parked through the real path, in-process: ``Runtime.start`` then
``Runtime.run_step`` (the ``assess`` step asks the scripted LLM, then returns
``Wait.approval``), so each has exactly the rows of a parked run: its ``runs``
row, 2 checkpoints, 2 messages (its history), 4 audit events and 1 pending
wait. Creating 100,000 runs that way (2-5 ms each) does not fit the time budget,
so those rows are then *cloned* under new run ids by the database itself
(``INSERT ... SELECT`` from temporary copies of the templates' rows, 5,000 runs
per transaction): every stored value is a real parked run's, only the run id
(uuid hex), the wait's id (its sequence) and the timestamps are new (the k-th
clone's are its template's plus k seconds: same size, and distinct in the
indexes, as real runs' are); idempotency key and token hash stay NULL, as a
loan's are. Every index is maintained as the product's own
inserts would; on Postgres the cloning session turns foreign-key triggers off
(``session_replication_role=replica``: a constraint stores nothing). The clones
keep their template's event hashes, so their audit chains would not verify;
every stored value has the same size. Size is ``page_count * page_size`` after
``wal_checkpoint(TRUNCATE)`` on SQLite, the sum of ``pg_total_relation_size``
(heap, TOAST and indexes) of the schema's tables on Postgres, measured before
and after each slice of the clones (thirds, or ``repeats`` slices): each gives
one sample of bytes per run. *Beyond its history* subtracts the growth of the
``messages`` table (with its index), which is reported alone as the history;
a further row also leaves out the audit trail (``events``). The baseline, measured the
same way in the same database: a bare parked-job row, ``(id varchar(32) primary
key, status, deadline)`` with an index on ``(status, deadline)``, the least a
store must keep to find a parked job's deadline by index.

**The sweeper's pass.** ``Store.sweep(redeliver_after=30, max_attempts=5)``,
in-process and timed, with N parked runs and none due (median of 5 passes per
repetition), then right after cloning 100 more runs (``quick``: 25) whose
approval deadline has passed (``on_timeout="fail"``: the pass must fail exactly
those). The baseline is the same pass on a separate store holding 1,000 parked runs; the
two stores take turns. The sweeper's four reads are also timed one by one,
and their query plans recorded (``EXPLAIN QUERY PLAN`` on SQLite, ``EXPLAIN``
on Postgres after ``ANALYZE``, as autovacuum would have run); the deadline query
must use ``ix_waits_status_deadline``.

**Worker memory.** A real ``pausepoint worker --concurrency 2 --beat`` (the
sweeper every second) starts on the empty store, with the embedded SQLite
broker for the SQLite store and Redis db 13 (``BENCH_REDIS_URL``, flushed
before and after) for Postgres. Its memory is the sum of ``VmRSS`` over its
process group (leader, 2 prefork children, beat), read from ``/proc`` once it
has done 3 sweeps, then again after the N runs are parked and it has done 5
more sweeps over them (``quick``: 2 and 3). The broker must then hold no
``run_step`` message. The sweeps are timed after the worker has stopped.

The N-run store is built once per store kind (the cloning is the expensive
part); the sweeper's passes and the memory readings are repeated ``repeats``
times on it. ``quick`` parks 5,000 runs instead of 100,000.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Table

from bench.procs import ROOT, Proc, celery_ready, group_alive, pausepoint_cmd
from bench.report import Result, Row, Target
from bench.services import REDIS_URL, pg_dsn, pg_schema, schema_url
from bench.services import flush_redis as _flush_redis

AGENT = "bench_parked"
TEMPLATES = 8  # real parked runs whose rows are cloned
SMALL = 1_000  # parked runs of the sweeper's baseline store
DUE = 100  # runs whose deadline has passed, per timed pass (quick: QUICK_DUE)
QUICK_DUE = 25
IDLE_PASSES = 5  # passes with none due per repetition (the sample is their median)
BATCH = 5_000  # cloned runs per transaction
TARGET_BYTES = 2048.0
RSS_TARGET_RATIO = 1.05  # "nothing on a worker", within the noise of a Python process
SWEEP_RATIO_LIMIT = 2.0  # the pass at N over the pass at 1,000: flat if found by index
DEADLINE_INDEX = "ix_waits_status_deadline"
CLONED = ("runs", "checkpoints", "messages", "events", "waits")
HISTORY = "messages"
AUDIT = "events"
SWEEP_DONE = re.compile(rb"Task pausepoint\.sweep\[[^\]]+\] succeeded in ([0-9.eE+-]+)s")

Say = Callable[[str], None]


class BenchError(RuntimeError):
    pass


_T0 = time.monotonic()


def _say(msg: str) -> None:
    print(f"[parked {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ the stores


@dataclass
class Kind:
    """One store kind: SQLite (file + SQLite broker) or Postgres (schema + Redis)."""

    name: str  # "sqlite" | "postgres"
    url: str
    tmp: Path
    schema: str | None = None  # postgres
    path: Path | None = None  # sqlite

    def broker_url(self) -> str:
        return f"sqla+sqlite:///{self.tmp / 'broker.db'}" if self.name == "sqlite" else REDIS_URL


@contextmanager
def fresh_store(name: str, tmp: Path, tag: str) -> Iterator[Kind]:
    """An empty store of kind ``name``: a SQLite file in ``tmp``, or a new Postgres schema."""
    if name == "sqlite":
        path = tmp / f"{tag}.db"
        yield Kind(name, f"sqlite:///{path}", tmp, path=path)
        return
    with pg_schema("bench") as schema:
        yield Kind(name, schema_url(schema), tmp, schema=schema)


class Raw:
    """A driver-level connection to the store (sqlite3 or psycopg), for bulk work and sizes."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        if kind.name == "sqlite":
            assert kind.path is not None
            self.lite = sqlite3.connect(kind.path, isolation_level=None, timeout=60)
            self.lite.execute("PRAGMA busy_timeout=60000")
        else:
            import psycopg

            self.pg = psycopg.connect(pg_dsn(), options=f"-csearch_path={kind.schema}")

    @property
    def sqlite(self) -> bool:
        return self.kind.name == "sqlite"

    def close(self) -> None:
        if self.sqlite:
            self.lite.close()
        else:
            self.pg.close()

    # --- sizes

    def sizes(self) -> dict[str, int]:
        """Bytes per table (its indexes and TOAST included), and the total under "*"."""
        if self.sqlite:
            for _ in range(50):
                busy = self.lite.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                if not busy:
                    break
                time.sleep(0.1)
            pages = self.lite.execute("PRAGMA page_count").fetchone()[0]
            page = self.lite.execute("PRAGMA page_size").fetchone()[0]
            owner = dict(self.lite.execute("SELECT name, tbl_name FROM sqlite_schema").fetchall())
            out: dict[str, int] = {}
            for name, size in self.lite.execute(
                "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"
            ).fetchall():
                table = owner.get(name, name)
                out[table] = out.get(table, 0) + int(size)
            out["*"] = int(pages) * int(page)
            return out
        rows = self.pg.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p')",
            (self.kind.schema,),
        ).fetchall()
        self.pg.commit()
        out = {str(name): int(size) for name, size in rows}
        out["*"] = sum(out.values())
        return out

    # --- plans

    def plan(self, sql: str, params: Any) -> str:
        """``sql`` as the store's dialect compiles it: ``?`` and a list on SQLite,
        ``%(name)s`` and a dict on Postgres."""
        if self.sqlite:
            rows = self.lite.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
            return "; ".join(str(r[-1]) for r in rows)
        rows = self.pg.execute("EXPLAIN " + sql, params).fetchall()
        self.pg.commit()
        return " | ".join(str(r[0]).strip() for r in rows)

    def analyze(self) -> None:
        if not self.sqlite:
            self.pg.execute(f"ANALYZE {', '.join(CLONED)}")
            self.pg.commit()


def _ts(kind: Kind, when: datetime) -> str:
    """A UTC timestamp as the store keeps it (naive text on SQLite; timestamptz text on PG)."""
    if kind.name == "sqlite":
        return when.astimezone(timezone.utc).replace(tzinfo=None).isoformat(" ")
    return when.isoformat()


# ---------------------------------------------------------------- the clones


def park_templates(store: Any, count: int) -> list[str]:
    """``count`` real loan runs, parked on their approval through Runtime, in-process."""
    from pausepoint.tasks import examples  # noqa: F401  (registers loan)
    from pausepoint.tasks.llm import ScriptedBackend
    from pausepoint.tasks.runtime import Runtime

    store.save_agent(AGENT, persona="I am a loan processing assistant.")
    queue: list[tuple[str, int]] = []
    rt = Runtime(store, llm=ScriptedBackend(), publish=lambda r, v: queue.append((r, v)))
    purposes = ("a car", "a kitchen", "a small bakery", "tuition", "a roof", "solar panels")
    ids: list[str] = []
    for i in range(count):
        amount = 5_000 + 2_500 * i
        run = rt.start(
            "loan",
            agent=AGENT,
            task=f"Application #{i + 1}: {amount} for {purposes[i % len(purposes)]}",
            input={"amount": amount, "applicant": f"applicant-{i + 1}"},
            actor="bench",
        )
        ids.append(run.id)
        while queue:
            run_id, version = queue.pop(0)
            rt.run_step(run_id, version, owner="bench-parker")
    waiting = [store.get_run(i).status for i in ids]
    if any(s != "waiting" for s in waiting):
        raise BenchError(f"template runs did not park: {waiting}")
    return ids


class Cloner:
    """Copies every row of the template runs under new run ids, a batch per transaction.

    The copy is made by the database itself: the templates' rows are first copied
    into small temporary tables (``tmpl_<table>``, outside the measured store), then
    each batch is one ``INSERT INTO <table> SELECT`` per table that joins a list of
    (new run id, template run id, shift) triples with them, so every stored value is
    a real parked run's, but for the run id, the wait's id, and the timestamps: the
    k-th clone's are its template's plus k seconds (same format, same size), so
    that indexed timestamps are distinct, as real runs' are (Postgres' B-tree
    deduplication would otherwise shrink those indexes to almost nothing).
    """

    def __init__(self, raw: Raw, template_ids: Sequence[str]) -> None:
        from pausepoint.persistence import tables

        self.raw = raw
        self.template_ids = list(template_ids)
        self.count = 0
        self.cols: dict[str, list[str]] = {}
        self.keys: dict[str, str] = {}
        self.times: dict[str, set[str]] = {}
        self.rows: dict[str, int] = {}
        for name in CLONED:
            table: Table = getattr(tables, name)
            # waits.id comes from the table's own sequence.
            self.cols[name] = [c.name for c in table.columns if (name, c.name) != ("waits", "id")]
            self.keys[name] = "id" if name == "runs" else "run_id"
            self.times[name] = {
                c.name for c in table.columns if isinstance(c.type, tables.UTCDateTime)
            }
        if raw.sqlite:
            con = raw.lite
            marks = ", ".join("?" * len(self.template_ids))
            con.execute("CREATE TEMP TABLE clone_ids (new_id TEXT, tmpl TEXT, shift INTEGER)")
            for name in CLONED:
                con.execute(
                    f"CREATE TEMP TABLE tmpl_{name} AS SELECT * FROM main.{name} "
                    f"WHERE {self.keys[name]} IN ({marks})",
                    self.template_ids,
                )
                self.rows[name] = con.execute(f"SELECT count(*) FROM tmpl_{name}").fetchone()[0]
        else:
            conn = raw.pg
            for name in CLONED:
                conn.execute(
                    f"CREATE TEMP TABLE tmpl_{name} AS SELECT * FROM {name} "
                    f"WHERE {self.keys[name]} = ANY(%s)",
                    (self.template_ids,),
                )
                row = conn.execute(f"SELECT count(*) FROM tmpl_{name}").fetchone()
                self.rows[name] = int(row[0]) if row else 0
            conn.commit()
            # Foreign-key triggers off for this session (superuser): every cloned row
            # refers to its own new run, inserted first; a constraint stores nothing.
            try:
                conn.execute("SET session_replication_role = replica")
                conn.commit()
            except Exception:
                conn.rollback()

    def rows_per_run(self) -> dict[str, float]:
        return {name: self.rows[name] / len(self.template_ids) for name in CLONED}

    def _select(self, name: str, deadline: bool) -> str:
        """The INSERT ... SELECT of one table, reading (new_id, tmpl, shift) from ``ids``."""
        key = self.keys[name]
        lite = self.raw.sqlite
        picks = []
        for col in self.cols[name]:
            if col == key:
                picks.append("ids.new_id")
            elif deadline and name == "waits" and col == "deadline":
                picks.append("?" if lite else "%(deadline)s::timestamptz")
            elif col in self.times[name] and lite:
                # 'YYYY-MM-DD HH:MM:SS' shifted, then the template's '.ffffff' (NULL stays NULL).
                picks.append(
                    f"strftime('%Y-%m-%d %H:%M:%S', t.{col}, ids.shift || ' seconds') "
                    f"|| substr(t.{col}, 20)"
                )
            elif col in self.times[name]:
                picks.append(f"t.{col} + ids.shift * interval '1 second'")
            else:
                picks.append(f"t.{col}")
        source = (
            "temp.clone_ids AS ids CROSS JOIN"
            if lite
            else "unnest(%(new)s::text[], %(tmpl)s::text[], %(shift)s::int[]) "
            "AS ids(new_id, tmpl, shift) JOIN"
        )
        return (
            f"INSERT INTO {name} ({', '.join(self.cols[name])}) SELECT {', '.join(picks)} "
            f"FROM {source} tmpl_{name} AS t ON t.{key} = ids.tmpl"
        )

    def add(self, n: int, *, deadline: datetime | None = None) -> list[str]:
        """Clone ``n`` runs (round robin over the templates); ``deadline`` overrides the wait's."""
        ids: list[str] = []
        for start in range(0, n, BATCH):
            pairs = []
            for _ in range(min(BATCH, n - start)):
                template = self.template_ids[self.count % len(self.template_ids)]
                self.count += 1
                pairs.append((uuid.uuid4().hex, template, self.count))
            self._insert(pairs, None if deadline is None else _ts(self.raw.kind, deadline))
            ids += [p[0] for p in pairs]
        return ids

    def _insert(self, pairs: list[tuple[str, str, int]], deadline: str | None) -> None:
        due = deadline is not None
        if self.raw.sqlite:
            con = self.raw.lite
            con.execute("BEGIN IMMEDIATE")
            try:
                con.execute("DELETE FROM temp.clone_ids")
                con.executemany("INSERT INTO temp.clone_ids VALUES (?, ?, ?)", pairs)
                for name in CLONED:
                    params = [deadline] if due and name == "waits" else []
                    con.execute(self._select(name, due), params)
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
            return
        conn = self.raw.pg
        args: dict[str, Any] = {
            "new": [p[0] for p in pairs],
            "tmpl": [p[1] for p in pairs],
            "shift": [p[2] for p in pairs],
        }
        with conn.transaction():
            for name in CLONED:
                extra = {"deadline": deadline} if due and name == "waits" else {}
                conn.execute(self._select(name, due), {**args, **extra})
        conn.commit()


def add_bare_jobs(raw: Raw, n: int) -> None:
    """The baseline: ``n`` bare parked-job rows (id, status, deadline) in batches."""
    deadline = _ts(raw.kind, datetime.now(timezone.utc) + timedelta(hours=72))
    ts_type = "TIMESTAMP" if raw.sqlite else "TIMESTAMPTZ"
    ddl = (
        f"CREATE TABLE IF NOT EXISTS bench_bare_jobs (id VARCHAR(32) PRIMARY KEY, "
        f"status VARCHAR(20) NOT NULL, deadline {ts_type})",
        "CREATE INDEX IF NOT EXISTS ix_bench_bare_jobs_status_deadline "
        "ON bench_bare_jobs (status, deadline)",
    )
    if raw.sqlite:
        for stmt in ddl:
            raw.lite.execute(stmt)
    else:
        for stmt in ddl:
            raw.pg.execute(stmt)
        raw.pg.commit()
    for start in range(0, n, BATCH):
        rows = [(uuid.uuid4().hex, "pending", deadline) for _ in range(min(BATCH, n - start))]
        if raw.sqlite:
            raw.lite.execute("BEGIN IMMEDIATE")
            raw.lite.executemany("INSERT INTO bench_bare_jobs VALUES (?, ?, ?)", rows)
            raw.lite.execute("COMMIT")
        else:
            with raw.pg.transaction(), raw.pg.cursor() as cur:
                with cur.copy("COPY bench_bare_jobs (id, status, deadline) FROM STDIN") as cp:
                    for row in rows:
                        cp.write_row(row)
            raw.pg.commit()


@dataclass
class Growth:
    """Bytes per added run, one sample per slice of the build."""

    beyond: list[float] = field(default_factory=list)  # total - history
    state: list[float] = field(default_factory=list)  # total - history - audit trail
    history: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    per_table: dict[str, list[float]] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)

    def add(self, before: dict[str, int], after: dict[str, int], n: int, seconds: float) -> None:
        total = after["*"] - before["*"]
        history = after.get(HISTORY, 0) - before.get(HISTORY, 0)
        self.total.append(total / n)
        self.history.append(history / n)
        self.beyond.append((total - history) / n)
        audit = after.get(AUDIT, 0) - before.get(AUDIT, 0)
        self.state.append((total - history - audit) / n)
        self.seconds.append(seconds)
        for table in sorted(set(after) | set(before)):
            if table == "*":
                continue
            grew = (after.get(table, 0) - before.get(table, 0)) / n
            self.per_table.setdefault(table, []).append(grew)


def build(cloner: Cloner, raw: Raw, total: int, slices: int, say: Say) -> Growth:
    """Clone runs until ``total`` are parked, measuring the store after each slice."""
    growth = Growth()
    have = cloner.count + len(cloner.template_ids)
    todo = total - have
    bounds = [have + round(todo * (i + 1) / slices) for i in range(slices)]
    before = raw.sizes()
    for upto in bounds:
        n = upto - (cloner.count + len(cloner.template_ids))
        t0 = time.perf_counter()
        cloner.add(n)
        seconds = time.perf_counter() - t0
        after = raw.sizes()
        growth.add(before, after, n, seconds)
        say(
            f"{raw.kind.name}: {upto:,} parked (+{n:,} in {seconds:.1f}s, "
            f"{n / seconds:,.0f} runs/s): {growth.beyond[-1]:,.0f} B/run beyond history, "
            f"{growth.history[-1]:,.0f} B/run history"
        )
        before = after
    return growth


# ------------------------------------------------------------------ the sweeper


def sweeper_reads(store: Any) -> dict[str, Any]:
    """The sweeper's reads, the statements Store.sweep and Store.wake_resources run
    (persistence/queries.py), with the arguments they give them."""
    from pausepoint.persistence import queries

    now = store.clock()
    lost_before = now - timedelta(seconds=30)
    return {
        "due runs": queries.due_runs(now, lost_before, 500),
        "expired leases": queries.expired_leases(now, 500),
        "deadlines": queries.due_deadlines(now, 500),
        "resource waiters": queries.resources_with_waiters(),
    }


# The reads on waits, whose query plans are recorded.
PLANNED = ("deadlines", "resource waiters")


def time_reads(store: Any) -> dict[str, float]:
    """Each of the sweeper's reads alone, in ms (one read transaction each)."""
    out: dict[str, float] = {}
    for name, stmt in sweeper_reads(store).items():
        with store.read() as conn:
            t0 = time.perf_counter()
            conn.execute(stmt).all()
            out[name] = (time.perf_counter() - t0) * 1000
    return out


def plans(store: Any, raw: Raw) -> dict[str, str]:
    """Query plans of the sweeper's reads on waits, as the database would run them now."""
    out: dict[str, str] = {}
    reads = sweeper_reads(store)
    for name in PLANNED:
        compiled = reads[name].compile(dialect=store.engine.dialect)
        params: Any = compiled.params
        if raw.sqlite:  # positional, and the store binds naive UTC text on SQLite
            values = [compiled.params[k] for k in compiled.positiontup or ()]
            params = [_ts(raw.kind, p) if isinstance(p, datetime) else p for p in values]
        out[name] = raw.plan(str(compiled), params)
    return out


@dataclass
class SweepTimes:
    idle_ms: list[float] = field(default_factory=list)
    due_ms: list[float] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    reads_idle: list[dict[str, float]] = field(default_factory=list)
    reads_due: list[dict[str, float]] = field(default_factory=list)


def _pass(store: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    report = store.sweep(redeliver_after=30, max_attempts=5)
    return (time.perf_counter() - t0) * 1000, report


def time_sweeps(stores: Sequence[tuple[Any, Cloner]], repeats: int, due: int) -> list[SweepTimes]:
    """Sweeper passes on each store, the stores taking turns (so drift hits all alike).

    Each repetition: IDLE_PASSES passes with none due (the sample is their median),
    then one pass right after cloning ``due`` runs whose deadline has passed.
    """
    outs = [SweepTimes() for _ in stores]
    for store, _ in stores:
        _pass(store)  # warm: connections, statement caches
    for _ in range(repeats):
        for (store, _), out in zip(stores, outs, strict=True):
            passes = []
            for _ in range(IDLE_PASSES):
                ms, report = _pass(store)
                if report.failed or report.republished or report.deadlines:
                    raise BenchError(f"a pass with nothing due did something: {report}")
                passes.append(ms)
            out.idle_ms.append(statistics.median(passes))
            out.reads_idle.append(time_reads(store))
    for _ in range(repeats):
        for (store, cloner), out in zip(stores, outs, strict=True):
            cloner.add(due, deadline=datetime.now(timezone.utc) - timedelta(minutes=1))
            out.reads_due.append(time_reads(store))
            ms, report = _pass(store)
            out.due_ms.append(ms)
            out.failed.append(len(report.failed))
            if len(report.failed) != due:
                raise BenchError(f"the pass failed {len(report.failed)} runs, not {due}: {report}")
    return outs


# --------------------------------------------------------------- the worker


def group_memory(pgid: int) -> dict[str, float]:
    """Summed VmRSS (and Pss, when readable) of the processes in group ``pgid``, in MiB."""
    rss = pss = 0.0
    procs = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
            procs += 1
            try:
                for line in (entry / "smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
            except OSError:
                pass
        except (OSError, ValueError, IndexError):
            continue
    return {"rss_mib": rss / 1024, "pss_mib": pss / 1024, "processes": procs}


def sweeps_done(proc: Proc) -> list[float]:
    """Durations (s) of the sweep tasks the worker has logged as done, in order."""
    if not proc.log.exists():
        return []
    return [float(m) for m in SWEEP_DONE.findall(proc.log.read_bytes())]


def wait_sweeps(proc: Proc, after: int, more: int, timeout: float) -> list[float]:
    deadline = time.monotonic() + timeout
    while True:
        done = sweeps_done(proc)
        if len(done) >= after + more:
            return done[after:]
        if proc.proc is None or proc.proc.poll() is not None:
            raise BenchError(f"worker exited:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise BenchError(
                f"worker did {len(done) - after} of {more} sweeps in {timeout}s:\n{proc.tail()}"
            )
        time.sleep(0.2)


def read_memory(proc: Proc, count: int, gap: float = 0.5) -> list[dict[str, float]]:
    assert proc.pid is not None
    out = []
    for i in range(count):
        if i:
            time.sleep(gap)
        out.append(group_memory(proc.pid))
    return out


def broker_messages(kind: Kind) -> dict[str, int]:
    """Messages waiting in the broker: all of them, and those that would step a run."""
    from pausepoint.tasks.jobs import RUN_STEP

    payloads: list[str | bytes] = []
    if kind.name == "sqlite":
        path = kind.tmp / "broker.db"
        con = sqlite3.connect(path, timeout=30)
        try:
            payloads = [
                r[0] for r in con.execute("SELECT payload FROM kombu_message WHERE visible = 1")
            ]
        except sqlite3.OperationalError:  # no message ever sent
            payloads = []
        finally:
            con.close()
    else:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        try:
            payloads = list(client.lrange("celery", 0, -1))
        finally:
            client.close()
    steps = 0
    for payload in payloads:
        try:
            task = json.loads(payload).get("headers", {}).get("task")
        except (ValueError, AttributeError):
            task = None
        steps += task == RUN_STEP
    return {"messages": len(payloads), "run_step": steps}


def start_worker(kind: Kind, logs: Path) -> Proc:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PAUSEPOINT_") or k == "PAUSEPOINT_BROKER_POLL_INTERVAL"
    }
    env.update(
        PYTHONPATH=str(ROOT),
        PAUSEPOINT_STORE_URL=kind.url,
        PAUSEPOINT_BROKER_URL=kind.broker_url(),
        PAUSEPOINT_WORKFLOWS="pausepoint.tasks.examples",
        PAUSEPOINT_LLM="scripted",
        PAUSEPOINT_CONCURRENCY="2",
        PAUSEPOINT_SWEEP_INTERVAL="1",
    )
    argv = pausepoint_cmd(
        "worker",
        "--concurrency",
        "2",
        "--beat",
        "--hostname",
        f"bench-parked-{kind.name}@%h",
        "--loglevel",
        "INFO",
    )
    log = logs / f"parked-{kind.name}-worker.log"
    log.unlink(missing_ok=True)
    return Proc(f"pausepoint worker ({kind.name})", argv, env, log, cwd=ROOT)


# -------------------------------------------------------------------- a store


@dataclass
class Measured:
    kind: str
    parked: int
    growth: Growth
    bare: Growth
    small: SweepTimes
    big: SweepTimes
    plans: dict[str, str]
    mem_before: list[dict[str, float]]
    mem_after: list[dict[str, float]]
    broker: dict[str, int]
    worker_sweeps_before: list[float]
    worker_sweeps_after: list[float]
    rows_per_run: dict[str, float]
    seconds: float
    due: int


def measure_kind(
    name: str,
    total: int,
    repeats: int,
    quick: bool,
    tmp: Path,
    logs: Path,
    procs: list[Proc],
    say: Say,
) -> Measured:
    """Both stores of one kind, the worker on the big one, then the timed sweeps.

    The worker starts first; while it boots, the small store and the bare-row
    baseline are built (sizes only). The sweeps are timed last, with the worker
    stopped, so no other process competes with them.
    """
    from pausepoint.persistence.store import Store

    t_start = time.monotonic()
    slices = max(3, repeats)
    warm_sweeps, idle_sweeps = (2, 3) if quick else (3, 5)
    due = QUICK_DUE if quick else DUE
    broker_flush = name == "postgres"
    if broker_flush:
        _flush_redis()
    try:
        with ExitStack() as stack:
            small_kind = stack.enter_context(fresh_store(name, tmp, "small"))
            kind = stack.enter_context(fresh_store(name, tmp, "parked"))
            # 1. A real worker (and beat) on the empty store; it boots in the background.
            worker = start_worker(kind, logs)
            procs.append(worker)
            worker.start(lambda _p: True)
            stack.callback(worker.stop)

            # 2. Meanwhile: the sweeper's baseline store (SMALL parked runs) and the
            # bare-row baseline, in the same database, sliced like the parked runs.
            small_store = Store.from_url(small_kind.url)
            stack.callback(small_store.close)
            small_raw = Raw(small_kind)
            stack.callback(small_raw.close)
            small_cloner = Cloner(small_raw, park_templates(small_store, TEMPLATES))
            small_cloner.add(SMALL - TEMPLATES)
            bare = Growth()
            before = small_raw.sizes()
            for i in range(slices):
                n = round(total * (i + 1) / slices) - round(total * i / slices)
                t0 = time.perf_counter()
                add_bare_jobs(small_raw, n)
                seconds = time.perf_counter() - t0
                after = small_raw.sizes()
                bare.add(before, after, n, seconds)
                before = after
            say(f"{name}: bare job row {statistics.median(bare.total):,.0f} B/row")

            # 3. The worker's memory on the empty store, once it has swept a few times.
            _wait_ready(worker, timeout=90)
            warm = wait_sweeps(worker, 0, warm_sweeps, timeout=60)
            mem_before = read_memory(worker, repeats)
            say(f"{name}: worker on the empty store: {_mib(mem_before)}")

            # 4. Park N runs; the worker's memory after it has swept over them.
            warm = sweeps_done(worker)  # with those done during the readings
            store = Store.from_url(kind.url)
            stack.callback(store.close)
            raw = Raw(kind)
            stack.callback(raw.close)
            cloner = Cloner(raw, park_templates(store, TEMPLATES))
            growth = build(cloner, raw, total, slices, say)
            mark = len(sweeps_done(worker))
            after_sweeps = wait_sweeps(worker, mark, idle_sweeps, timeout=120)
            mem_after = read_memory(worker, repeats)
            broker = broker_messages(kind)
            say(
                f"{name}: worker with {total:,} parked: {_mib(mem_after)}; broker {broker}; "
                f"its sweeps took {statistics.median(after_sweeps) * 1000:.1f} ms"
            )
            t0 = time.monotonic()
            _stop_worker(worker)
            say(f"{name}: worker stopped in {time.monotonic() - t0:.1f}s")

            # 5. The sweeper's pass, timed in-process on each store, nothing else running.
            small_raw.analyze()
            raw.analyze()
            query_plans = plans(store, raw)
            pairs = [(small_store, small_cloner), (store, cloner)]
            small, big = time_sweeps(pairs, repeats, due)
            for count, t in ((SMALL, small), (total, big)):
                say(
                    f"{name}: sweep at {count:,} parked: {statistics.median(t.idle_ms):.1f} ms "
                    f"idle, {statistics.median(t.due_ms):.1f} ms with {due} due"
                )
            rows_per_run = cloner.rows_per_run()
    finally:
        if broker_flush:
            _flush_redis()
    return Measured(
        kind=name,
        due=due,
        parked=total,
        growth=growth,
        bare=bare,
        small=small,
        big=big,
        plans=query_plans,
        mem_before=mem_before,
        mem_after=mem_after,
        broker=broker,
        worker_sweeps_before=warm,
        worker_sweeps_after=after_sweeps,
        rows_per_run=rows_per_run,
        seconds=time.monotonic() - t_start,
    )


def _stop_worker(proc: Proc) -> None:
    """SIGTERM to Celery's main process alone: it stops its pool and beat itself.

    (A SIGTERM to the whole group, as Proc.stop sends, kills the pool children under
    the main process, which then waits about 15 s before it exits.) Proc.stop then
    kills whatever of the group is left.
    """
    if proc.proc is not None and proc.proc.poll() is None:
        proc.proc.send_signal(signal.SIGTERM)
        try:
            proc.proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
    proc.stop(grace=5)


def _wait_ready(proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not celery_ready(proc):
        if proc.proc is None or proc.proc.poll() is not None:
            raise BenchError(f"{proc.name} exited at start:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"{proc.name} not ready in {timeout}s:\n{proc.tail()}")
        time.sleep(0.1)


def _mib(readings: list[dict[str, float]]) -> str:
    rss = statistics.median(r["rss_mib"] for r in readings)
    pss = statistics.median(r["pss_mib"] for r in readings)
    procs = readings[0]["processes"]
    return f"RSS {rss:.1f} MiB (PSS {pss:.1f}) over {procs:.0f} processes"


# ------------------------------------------------------------------- result


def _rows(m: Measured, result: Result) -> None:
    label = m.kind
    n = f"{m.parked:,}"
    small = f"{SMALL:,}"

    def med(values: list[float]) -> float:
        return round(statistics.median(values), 1)

    bare = f"{label}: bare job row (id, status, deadline + index)"
    result.rows += [
        Row(bare, "bytes/run", m.bare.total, higher_is_better=False),
        Row(
            f"{label}: parked run beyond its history",
            "bytes/run",
            m.growth.beyond,
            bare,
            higher_is_better=False,
            extra={
                "per_table_bytes_per_run": {t: med(v) for t, v in m.growth.per_table.items()},
                "rows_per_run": m.rows_per_run,
                "clone_seconds_per_slice": [round(s, 2) for s in m.growth.seconds],
                "parked": m.parked,
            },
        ),
        Row(
            f"{label}: parked run beyond its history and audit trail",
            "bytes/run",
            m.growth.state,
            bare,
            higher_is_better=False,
        ),
        Row(
            f"{label}: parked run's history (messages)",
            "bytes/run",
            m.growth.history,
            higher_is_better=False,
        ),
    ]
    idle0 = f"{label}: sweep pass, none due, {small} parked"
    due0 = f"{label}: sweep pass, {m.due} due, {small} parked"
    result.rows += [
        Row(idle0, "ms", m.small.idle_ms, higher_is_better=False, extra=_reads(m.small, False)),
        Row(
            f"{label}: sweep pass, none due, {n} parked",
            "ms",
            m.big.idle_ms,
            idle0,
            higher_is_better=False,
            extra=_reads(m.big, False),
        ),
        Row(
            due0,
            "ms",
            m.small.due_ms,
            higher_is_better=False,
            extra={**_reads(m.small, True), "failed_by_pass": m.small.failed},
        ),
        Row(
            f"{label}: sweep pass, {m.due} due, {n} parked",
            "ms",
            m.big.due_ms,
            due0,
            higher_is_better=False,
            extra={**_reads(m.big, True), "failed_by_pass": m.big.failed},
        ),
    ]
    dl0 = f"{label}: deadline query alone, {small} parked"
    result.rows += [
        Row(dl0, "ms", [r["deadlines"] for r in m.small.reads_due], higher_is_better=False),
        Row(
            f"{label}: deadline query alone, {n} parked",
            "ms",
            [r["deadlines"] for r in m.big.reads_due],
            dl0,
            higher_is_better=False,
            extra={"plan": m.plans.get("deadlines", "")},
        ),
    ]
    empty = f"{label}: worker RSS, empty store"
    result.rows += [
        Row(
            empty,
            "MiB",
            [r["rss_mib"] for r in m.mem_before],
            higher_is_better=False,
            extra={
                "pss_mib": [round(r["pss_mib"], 1) for r in m.mem_before],
                "processes": m.mem_before[0]["processes"],
                "worker_sweep_task_ms": [round(s * 1000, 1) for s in m.worker_sweeps_before],
            },
        ),
        Row(
            f"{label}: worker RSS, {n} parked",
            "MiB",
            [r["rss_mib"] for r in m.mem_after],
            empty,
            higher_is_better=False,
            extra={
                "pss_mib": [round(r["pss_mib"], 1) for r in m.mem_after],
                "processes": m.mem_after[0]["processes"],
                "worker_sweep_task_ms": [round(s * 1000, 1) for s in m.worker_sweeps_after],
                "broker": m.broker,
            },
        ),
    ]


def _reads(t: SweepTimes, due: bool) -> dict[str, Any]:
    reads = t.reads_due if due else t.reads_idle
    if not reads:
        return {}
    return {
        "reads_ms_median": {k: round(statistics.median(r[k] for r in reads), 2) for k in reads[0]}
    }


def _targets(m: Measured, result: Result) -> None:
    label = m.kind
    n = f"{m.parked:,}"
    beyond = statistics.median(m.growth.beyond)
    before = statistics.median(r["rss_mib"] for r in m.mem_before)
    after = statistics.median(r["rss_mib"] for r in m.mem_after)
    idle0, idle1 = statistics.median(m.small.idle_ms), statistics.median(m.big.idle_ms)
    due0, due1 = statistics.median(m.small.due_ms), statistics.median(m.big.due_ms)
    plan = m.plans.get("deadlines", "")
    result.targets += [
        Target(
            f"{label}: store bytes per parked run beyond its history",
            beyond,
            TARGET_BYTES,
            "max",
            f"median of {len(m.growth.beyond)} slices; history adds "
            f"{statistics.median(m.growth.history):,.0f} B/run",
        ),
        Target(
            f"{label}: worker RSS with {n} parked / on the empty store",
            after / before,
            RSS_TARGET_RATIO,
            "max",
            f"{before:.1f} -> {after:.1f} MiB",
        ),
        Target(
            f"{label}: run_step messages in the broker with {n} parked",
            float(m.broker["run_step"]),
            0.0,
            "max",
            f"{m.broker['messages']} message(s) in all",
        ),
        Target(
            f"{label}: deadline query uses {DEADLINE_INDEX}",
            1.0 if DEADLINE_INDEX in plan else 0.0,
            1.0,
            "min",
            "from its query plan (see notes)",
        ),
        Target(
            f"{label}: sweep pass with none due, {n} / {SMALL:,} parked",
            idle1 / idle0,
            SWEEP_RATIO_LIMIT,
            "max",
            f"{idle0:.1f} -> {idle1:.1f} ms",
        ),
        Target(
            f"{label}: sweep pass with {m.due} due, {n} / {SMALL:,} parked",
            due1 / due0,
            SWEEP_RATIO_LIMIT,
            "max",
            f"{due0:.0f} -> {due1:.0f} ms",
        ),
    ]


def _notes(ms: list[Measured], repeats: int, total: int, quick: bool, result: Result) -> None:
    due = QUICK_DUE if quick else DUE
    result.notes += [
        f"Rows are cloned from {TEMPLATES} real loan runs parked through Runtime.start + "
        "run_step (Wait.approval): per run 1 runs row, 2 checkpoints, 2 messages, 4 events, "
        "1 pending wait. Each clone is an exact copy of a template's rows (INSERT ... SELECT "
        "by the database) under a new uuid hex run id; the wait gets a new id; timestamps "
        "are the template's + k seconds for the k-th clone (same size, distinct index "
        "keys); idempotency key and token hash stay NULL, as a loan's are; event hashes "
        "are the template's "
        f"(same size; those chains would not verify). {BATCH:,} runs per transaction; "
        "Postgres clones with foreign-key triggers off (session_replication_role=replica). "
        f"The {total:,}-run store is built once per store kind, in {max(3, repeats)} slices: "
        "one bytes/run sample each.",
        "bytes/run = store growth / runs added (SQLite: page_count*page_size after "
        "wal_checkpoint(TRUNCATE), per table from dbstat; Postgres: sum of "
        "pg_total_relation_size (heap, TOAST, indexes) of the schema's tables). 'Beyond its "
        "history' leaves out the messages table and its index (the history row); 'beyond "
        "its history and audit trail' also leaves out the events table. Baseline: a bare "
        "parked-job row (id varchar(32) pk, status, deadline, index on (status, deadline)) "
        "added the same way to the same database: the least a store keeps to find a "
        "deadline by index.",
        f"Sweep: Store.sweep(redeliver_after=30, max_attempts=5) in-process with the worker "
        f"stopped, after a warm-up pass; per repetition the median of {IDLE_PASSES} passes "
        f"with none due, then one pass right after cloning {due} runs whose deadline passed "
        f"(on_timeout=fail; every such pass failed exactly that many). Baseline: the same "
        f"on a separate store of {SMALL:,} parked runs, the two stores taking turns. "
        "Postgres tables are ANALYZEd first (autovacuum would have). Row extras time the "
        "sweeper's four reads one by one.",
        "Worker: pausepoint worker --concurrency 2 --beat, PAUSEPOINT_SWEEP_INTERVAL=1, "
        "started on the empty store; RSS summed over its process group from "
        f"/proc/<pid>/status, {repeats} readings 0.5 s apart after {'2' if quick else '3'} "
        f"sweeps on the empty store, and after {'3' if quick else '5'} more sweeps over the "
        "parked runs (Pss in the row extras). Broker checked right after: SQLite "
        "kombu_message rows with visible=1; Redis LLEN/LRANGE celery.",
    ]
    for m in ms:
        per_table = ", ".join(
            f"{t} {statistics.median(v):,.0f}"
            for t, v in m.growth.per_table.items()
            if statistics.median(v) > 0
        )
        result.notes.append(f"{m.kind}: bytes/run by table (indexes included): {per_table}.")
        for name, plan in m.plans.items():
            result.notes.append(f"{m.kind} plan, {name} query at {m.parked:,} parked: {plan}")

        def ms_list(values: list[float]) -> str:
            return ", ".join(f"{v * 1000:.1f}" for v in values)

        result.notes.append(
            f"{m.kind}: built and measured in {m.seconds:.0f} s. The worker's own sweep "
            f"tasks (its log) took {ms_list(m.worker_sweeps_before)} ms on the empty store "
            f"and {ms_list(m.worker_sweeps_after)} ms over {m.parked:,} parked runs."
        )


def run(repeats: int = 3, *, quick: bool = False, out_dir: Path) -> Result:
    """Benchmark 4: ``repeats`` >= 1; ``quick`` parks 5,000 runs instead of 100,000."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    total = 5_000 if quick else 100_000
    started = time.monotonic()
    result = Result(
        name="parked",
        title=f"{total:,} parked runs",
        baseline=(
            f"bytes: a bare parked-job row; sweep: the same pass over {SMALL:,} parked runs; "
            "memory: the same worker on the empty store"
        ),
    )
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[Proc] = []
    measured: list[Measured] = []
    try:
        with tempfile.TemporaryDirectory(prefix="pausepoint-bench-parked-") as tmp_dir:
            for name in ("sqlite", "postgres"):
                tmp = Path(tmp_dir) / name
                tmp.mkdir()
                m = measure_kind(name, total, repeats, quick, tmp, logs, procs, _say)
                measured.append(m)
                _rows(m, result)
                _targets(m, result)
    finally:
        for p in procs:
            p.stop()
        left = [p.pid for p in procs if p.pid is not None and group_alive(p.pid)]
        if left:
            _say(f"process groups still alive: {left}")
    _notes(measured, repeats, total, quick, result)
    result.seconds = time.monotonic() - started
    return result


if __name__ == "__main__":  # python -m bench.parked [--quick]
    from bench.report import print_tables

    res = run(quick="--quick" in sys.argv, out_dir=ROOT / "bench" / "results")
    print_tables([res])
    print(f"{res.seconds:.0f} s", file=sys.stderr)
