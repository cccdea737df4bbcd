"""Benchmark 2: what a checkpoint costs as the conversation grows, Pausepoint vs LangGraph.

    .venv/bin/python -m bench all --only checkpoint [--quick]
    .venv/bin/python -m bench.checkpoint_cost [--quick] [--repeats 3] [--only pausepoint]
    .venv/bin/python -m bench.checkpoint_cost --profile sqlite --at 10000

One run whose conversation grows by one 200-character message per step, on a
fresh SQLite file and in a fresh Postgres schema (``bench_<hex>``, dropped at
the end; ``BENCH_PG_URL`` names the server, default ``postgres@127.0.0.1/test``).
The messages are pseudo-text that compresses like English prose (see
:func:`message`; ``BENCH_MESSAGE_TEXT=random`` makes them incompressible), which
matters for PostgresSaver, whose blobs Postgres compresses.

Pausepoint: the workflow ``grow`` below, one step ``talk`` that reads the last
five messages (``ctx.history.tail(5)``, as an agent building a prompt would),
says one message and returns ``Next("talk")``. It runs in this process through
the product's own path, with no broker, as a worker with the default settings
runs sequential steps: ``Runtime.run_step`` claims the run and runs a chain of
up to ``PAUSEPOINT_INLINE_STEPS`` (20) steps, each committed in its own
transaction (its message, checkpoint and event, and the lease on the next step),
plus one read of the tail per step; at the end of a chain its ``publish``
appends to a list that the benchmark pops. So the figures are the store's cost
of a step, not a broker's.

LangGraph (:mod:`bench.checkpoint_langgraph`): a one-node graph whose node
returns one ``AIMessage`` with the same text, one ``invoke`` per step, with
``SqliteSaver`` and ``PostgresSaver``, once with an ``add_messages`` state and
once with ``DeltaChannel(_messages_delta_reducer)``.

Measured at 10, 100, 1,000 and 10,000 messages (LangGraph: up to 1,000; its
cost per step grows with the history, so its total grows quadratically): a
*window* of 100 steps starting when the conversation holds that many messages
(from 10: the 90 steps up to 100). 100 steps is one full cycle of
DeltaChannel's snapshots, so its windows carry one snapshot each, as its
average step does. Time per step = the window's wall time / its steps
(everything a step costs, including the WAL checkpoints and GC that fall in
it). Bytes per step = the store's growth over the window / its steps, where
the store's size is, on SQLite, the file plus its WAL after
``PRAGMA wal_checkpoint(TRUNCATE)`` and, on Postgres, the sum of
``pg_total_relation_size`` (heap, indexes, TOAST, free-space and visibility
maps) over the schema's tables. Sizes are read between windows, outside the
timing. Both stores grow by whole pages (4 and 8 KiB), which is why a window
is 100 steps and not 10.

Repetitions (the budget: about 5 minutes on 2 idle cores): each series grows
a run ``repeats`` times. The first run goes to the top level (Pausepoint 10,000
messages, LangGraph 1,000), the others stop at 100. At 10 and 100 messages a
sample is one window in each run; at the levels only the first run reaches,
Pausepoint takes ``repeats`` consecutive windows and LangGraph one (a LangGraph
window at 1,000 messages costs ~5 s, a 1,000-step run about a minute). So the
store sizes after 1,000 steps are one sample each: on SQLite they come out the
same from run to run, on Postgres within a few percent. Steps outside the
windows, which only build up the history, skip the Pausepoint step's read of
the tail: it writes nothing, and the 10,000-step runs go ~20% faster.
``quick`` goes to 200 messages (LangGraph 100) in about 45 s.

Baselines: a series' figure at 10 messages for its figures at more; for the
store size, LangGraph's DeltaChannel on the same database.

Targets (the issue's): ms/step at 10,000 messages within 1.2 x ms/step at 10;
bytes/step independent of the history (here: at 10,000 within 1.2 x at 10);
after 1,000 steps a store at least 5 x smaller than LangGraph's DeltaChannel
and 100 x smaller than its ``add_messages`` state, on the same database.
"""

from __future__ import annotations

import argparse
import gc
import json
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from bench.meters import (
    MESSAGE_CHARS,
    MESSAGE_TEXT,
    TAIL,
    Meter,
    SqliteMeter,
    message,
    pg_metered_schema,
)
from bench.report import Result, Row, Target
from bench.services import PG_BASE, RESULTS
from pausepoint.persistence.store import Store
from pausepoint.tasks.context import StepContext
from pausepoint.tasks.llm import ScriptedBackend
from pausepoint.tasks.runtime import Runtime
from pausepoint.tasks.workflow import Next, Outcome, Registry, Workflow
from pausepoint.worker.settings import Settings

# Steps a worker runs in one chain by default (PAUSEPOINT_INLINE_STEPS).
INLINE = int(Settings.model_fields["inline_steps"].default)
MiB = 1024 * 1024

# The targets.
TIME_RATIO_MAX = 1.2  # ms/step at 10,000 messages over ms/step at 10
GROWTH_RATIO_MAX = 1.2  # bytes/step at 10,000 over bytes/step at 10: "independent"
SMALLER_THAN_DELTA = 5.0
SMALLER_THAN_ADD_MESSAGES = 100.0


def postgres_reachable() -> bool:
    from sqlalchemy.engine import make_url

    url = make_url(PG_BASE)
    try:
        with socket.create_connection((url.host or "127.0.0.1", url.port or 5432), timeout=1):
            return True
    except OSError:
        return False


# ------------------------------------------------------- the Pausepoint side


def grow_workflow(reads: Callable[[], bool]) -> Registry:
    """The workflow ``grow``: one step, ``talk``, that reads the last ``TAIL`` messages
    when ``reads()`` says so, says one message and goes on to itself, forever.

    The benchmark turns the read off between its windows: it writes nothing, so the
    store grows the same, and the steps that only build up the history go faster.
    """
    registry = Registry()
    grow = Workflow(
        "grow", description="Say one message per step, forever (benchmarks).", registry=registry
    )

    @grow.step(start=True)
    def talk(ctx: StepContext) -> Outcome:
        length = len(ctx.history)
        if reads():
            recent = ctx.history.tail(TAIL)
            if len(recent) != min(TAIL, length):
                raise AssertionError("the tail of the conversation is short")
        ctx.state["steps"] = int(ctx.state.get("steps", 0)) + 1
        ctx.say("assistant", message(length))
        return Next("talk")

    return registry


class Subject(Protocol):
    """One conversation in one store: ``step`` adds one message."""

    meter: Meter
    # True inside a measured window.
    timed: bool

    def steps(self, n: int) -> None: ...

    def messages(self) -> int: ...


class PausepointSubject:
    """One ``grow`` run, advanced by the product's ``Runtime.run_step`` in this process.

    ``read=False``: the step never reads the history (profiling the difference).
    """

    def __init__(self, store: Store, meter: Meter, *, read: bool = True) -> None:
        self.store = store
        self.meter = meter
        self.timed = False
        self.queue: list[tuple[str, int]] = []
        store.save_agent("bench", persona="A benchmark agent.")
        self.rt = Runtime(
            store,
            llm=ScriptedBackend(),
            publish=lambda run_id, version: self.queue.append((run_id, version)),
            workflows=grow_workflow(lambda: read and self.timed),
            # A chain stops at INLINE steps, never on time, so steps(n) does exactly n.
            inline_seconds=3600.0,
        )
        self.run_id = self.rt.start("grow", agent="bench", actor="bench").id

    def steps(self, n: int) -> None:
        """``n`` steps, as a worker with the default settings runs them: chains of up to
        ``INLINE`` steps, each chain one claim and then one commit per step."""
        while n > 0:
            chain = min(INLINE, n)
            self.rt.inline_steps = chain
            run_id, version = self.queue.pop()
            report = self.rt.run_step(run_id, version, owner="bench")
            if report.outcome != "committed" or len(self.queue) != 1:
                raise RuntimeError(f"step of run {run_id} v{version} did not go on: {report}")
            n -= chain

    def messages(self) -> int:
        """The conversation read back from the store (checked against what was said)."""
        run = self.store.get_run(self.run_id)
        history = self.store.history(self.run_id)
        if len(history) != run.history_len or any(
            m.content != message(i) for i, m in enumerate(history)
        ):
            raise AssertionError("the stored conversation is not the one the steps said")
        return run.history_len


@contextmanager
def pausepoint_subject(store: str, *, read: bool = True) -> Iterator[PausepointSubject]:
    """A new ``grow`` run on a new ``store`` ("sqlite" or "postgres")."""
    with _store_url(store) as (url, meter):
        s = Store.from_url(url)
        try:
            yield PausepointSubject(s, meter, read=read)
        finally:
            s.close()


@contextmanager
def _store_url(store: str) -> Iterator[tuple[str, Meter]]:
    if store == "sqlite":
        with tempfile.TemporaryDirectory(prefix="pausepoint-bench-ckpt-") as tmp:
            path = Path(tmp) / "store.db"
            yield f"sqlite:///{path}", SqliteMeter(path)
        return
    with pg_metered_schema("bench_") as (url, meter):
        yield url, meter


# ------------------------------------------------------------ measurement


@dataclass
class Growth:
    """One run grown from 0 messages: per level, the windows measured there."""

    series: str
    top: int
    window: dict[int, int] = field(default_factory=dict)  # level -> steps per window
    ms: dict[int, list[float]] = field(default_factory=dict)
    bytes: dict[int, list[float]] = field(default_factory=dict)
    size_at: dict[int, int] = field(default_factory=dict)  # messages -> store bytes
    tables_at: dict[int, dict[str, int]] = field(default_factory=dict)  # the same, per table
    steps: int = 0
    seconds: float = 0.0


def grow(
    subject: Subject,
    series: str,
    levels: Sequence[int],
    windows: Callable[[int], tuple[int, int]],
) -> Growth:
    """Step ``subject`` up to each level; there, measure ``count`` windows of ``steps``
    steps, where ``count, steps = windows(level)``."""
    g = Growth(series, levels[-1])
    started = time.perf_counter()
    g.size_at[0] = subject.meter.size()  # the empty store (Pausepoint: with its run created)
    done = 0
    for level in levels:
        if done > level:
            raise ValueError(f"the windows before {level} run past it ({done} steps)")
        subject.steps(level - done)
        done = level
        before = subject.meter.size()
        g.size_at[level] = before
        g.tables_at[level] = subject.meter.tables()
        count, steps = windows(level)
        g.window[level] = steps
        for _ in range(count):
            subject.timed = True
            t0 = time.perf_counter()
            subject.steps(steps)
            elapsed = time.perf_counter() - t0
            subject.timed = False
            done += steps
            after = subject.meter.size()
            g.ms.setdefault(level, []).append(elapsed * 1000 / steps)
            g.bytes.setdefault(level, []).append((after - before) / steps)
            before = after
    got = subject.messages()
    if got != done:
        raise AssertionError(f"{series}: {got} messages after {done} steps")
    g.steps = done
    g.seconds = time.perf_counter() - started
    return g


@dataclass(frozen=True)
class Plan:
    """Levels and run lengths of one size of the benchmark."""

    levels: tuple[int, ...]  # Pausepoint
    top: int  # the first run of each Pausepoint series goes here
    # The other runs stop here. 1,000 would give every figure at 1,000 messages n=3 (one
    # window per run) and costs ~30 s more (2 x 900 steps on each store).
    rest: int
    lg_levels: tuple[int, ...]  # LangGraph
    lg_top: int
    lg_rest: int
    # Windows at LangGraph's top level (None: as many as repetitions). Each costs about
    # 100 x 50 ms there, and only its first run gets there.
    lg_top_windows: int | None
    window: int
    size_after: int  # "store size after N steps", a level of both


FULL = Plan(
    levels=(10, 100, 1_000, 10_000),
    top=10_000,
    rest=100,
    lg_levels=(10, 100, 1_000),
    lg_top=1_000,
    lg_rest=100,
    lg_top_windows=1,
    window=100,
    size_after=1_000,
)
QUICK = Plan(
    levels=(10, 100, 200),
    top=200,
    rest=100,
    lg_levels=(10, 100),
    lg_top=100,
    lg_rest=100,
    lg_top_windows=None,
    window=30,
    size_after=100,
)


@dataclass(frozen=True)
class Series:
    name: str
    store: str  # sqlite | postgres
    system: str  # pausepoint | add_messages | DeltaChannel
    open: Callable[[], AbstractContextManager[Subject]]
    levels: tuple[int, ...]
    top: int
    rest: int
    top_windows: int | None  # windows at levels past `rest` (None: one per repetition)


def _series(plan: Plan, stores: Sequence[str], langgraph: bool) -> list[Series]:
    out: list[Series] = []
    for store in stores:
        out.append(
            Series(
                f"pausepoint {store}",
                store,
                "pausepoint",
                partial(pausepoint_subject, store),
                plan.levels,
                plan.top,
                plan.rest,
                None,
            )
        )
        if not langgraph:
            continue
        from bench.checkpoint_langgraph import SAVERS, STATES, langgraph_subject

        for state in STATES:
            out.append(
                Series(
                    f"langgraph {SAVERS[store]} {state}",
                    store,
                    state,
                    partial(langgraph_subject, store, state),
                    plan.lg_levels,
                    plan.lg_top,
                    plan.lg_rest,
                    plan.lg_top_windows,
                )
            )
    return out


def _langgraph_available() -> str | None:
    import importlib

    try:
        for module in ("langgraph.channels.delta", "langgraph.checkpoint.sqlite"):
            importlib.import_module(module)
        importlib.import_module("langgraph.checkpoint.postgres")
    except ImportError as exc:
        return f"LangGraph left out: {exc} (pip install -e '.[bench]')"
    return None


def measure(
    plan: Plan, repeats: int, series: Sequence[Series], log: Callable[[str], None]
) -> dict[str, list[Growth]]:
    growths: dict[str, list[Growth]] = {s.name: [] for s in series}
    for rep in range(repeats):
        for s in series:
            top = s.top if rep == 0 else s.rest
            levels = tuple(level for level in s.levels if level <= top)

            def windows(level: int, s: Series = s) -> tuple[int, int]:
                # A window is `plan.window` steps, or up to the next level if that is nearer;
                # the top level, that only the first run reaches, gets `repeats` windows
                # (LangGraph: `plan.lg_top_windows`).
                nxt = [lv for lv in s.levels if lv > level]
                steps = min(plan.window, nxt[0] - level) if nxt else plan.window
                return (1 if level <= s.rest else s.top_windows or repeats), steps

            gc.collect()
            with s.open() as subject:
                g = grow(subject, s.name, levels, windows)
            growths[s.name].append(g)
            log(f"  {s.name}: run {rep + 1}/{repeats}, {g.steps:,} steps in {g.seconds:.1f} s")
    return growths


# ----------------------------------------------------------------- the report


def _row(case: str, unit: str, samples: list[float], baseline: str | None, **extra: Any) -> Row:
    return Row(case, unit, samples, baseline=baseline, higher_is_better=False, extra=extra)


def _rows(plan: Plan, series: Sequence[Series], growths: dict[str, list[Growth]]) -> list[Row]:
    rows: list[Row] = []
    for unit, attr in (("ms/step", "ms"), ("bytes/step", "bytes")):
        for s in series:
            first = s.levels[0]
            for level in s.levels:
                runs = [g for g in growths[s.name] if level in getattr(g, attr)]
                samples = [x for g in runs for x in getattr(g, attr)[level]]
                steps = runs[0].window[level] if runs else 0
                what = (
                    f"one window of {steps} steps from {level:,} messages in each of "
                    f"{len(runs)} runs"
                    if len(runs) > 1
                    else f"{len(samples)} consecutive windows of {steps} steps from "
                    f"{level:,} messages in one run"
                )
                rows.append(
                    _row(
                        f"{s.name}: {unit} @{level:,}",
                        unit,
                        samples,
                        None if level == first else f"{s.name}: {unit} @{first:,}",
                        samples_are=what,
                    )
                )
    after = plan.size_after
    for s in series:
        delta = f"langgraph {_saver(s.store)} DeltaChannel: MiB after {after:,} steps"
        samples = [g.size_at[after] / MiB for g in growths[s.name] if after in g.size_at]
        rows.append(
            _row(
                f"{s.name}: MiB after {after:,} steps",
                "MiB",
                samples,
                delta if s.system == "pausepoint" and _has(series, s.store) else None,
                samples_are=f"the store's size after {after:,} steps, {len(samples)} runs",
                empty_store_mib=[g.size_at[0] / MiB for g in growths[s.name]],
                tables_mib=_largest(growths[s.name][0].tables_at.get(after, {})),
            )
        )
    return rows


def _largest(tables: dict[str, int], n: int = 8) -> dict[str, float]:
    """The ``n`` largest tables (MiB), the rest summed as "(others)"."""
    ranked = sorted(tables.items(), key=lambda kv: -kv[1])
    out = {name: round(size / MiB, 4) for name, size in ranked[:n]}
    if rest := sum(size for _, size in ranked[n:]):
        out["(others)"] = round(rest / MiB, 4)
    return out


def _saver(store: str) -> str:
    return {"sqlite": "SqliteSaver", "postgres": "PostgresSaver"}[store]


def _has(series: Sequence[Series], store: str) -> bool:
    return any(s.store == store and s.system == "DeltaChannel" for s in series)


def _targets(plan: Plan, result: Result, series: Sequence[Series]) -> list[Target]:
    targets: list[Target] = []
    first, top, after = plan.levels[0], plan.levels[-1], plan.size_after
    for s in series:
        if s.system != "pausepoint":
            continue
        for unit, limit, what in (
            ("ms/step", TIME_RATIO_MAX, "time per step"),
            ("bytes/step", GROWTH_RATIO_MAX, "store growth per step"),
        ):
            hi = result.row(f"{s.name}: {unit} @{top:,}").median
            lo = result.row(f"{s.name}: {unit} @{first:,}").median
            levels = [result.row(f"{s.name}: {unit} @{lv:,}").median for lv in s.levels]
            targets.append(
                Target(
                    f"{s.name}: {what} at {top:,} messages / at {first:,}",
                    # A store grows by whole pages: a short window (--quick) may add none.
                    hi / lo if lo else (1.0 if not hi else float("inf")),
                    limit,
                    "max",
                    note=f"medians {', '.join(f'{v:.4g}' for v in levels)} {unit} at "
                    f"{', '.join(f'{lv:,}' for lv in s.levels)} messages",
                )
            )
        ours = result.row(f"{s.name}: MiB after {after:,} steps").median
        for system, limit in (
            ("DeltaChannel", SMALLER_THAN_DELTA),
            ("add_messages", SMALLER_THAN_ADD_MESSAGES),
        ):
            case = f"langgraph {_saver(s.store)} {system}: MiB after {after:,} steps"
            try:
                theirs = result.row(case).median
            except KeyError:
                continue
            targets.append(
                Target(
                    f"{s.store}: LangGraph {system} store / pausepoint store after {after:,} steps",
                    theirs / ours,
                    limit,
                    "min",
                    note=f"{theirs:.4g} MiB / {ours:.4g} MiB",
                )
            )
    return targets


def _runs_note(who: str, top: int, rest: int, levels: Sequence[int], windows: int) -> str:
    shared = [f"{lv:,}" for lv in levels if lv <= rest]
    alone = [f"{lv:,}" for lv in levels if lv > rest]
    text = f"{who}: the first run grows to {top:,} messages, the others to {rest:,}"
    if shared:
        text += f"; at {', '.join(shared)}: one window in each run"
    if alone:
        many = "one window" if windows == 1 else f"{windows} consecutive windows"
        text += f"; at {', '.join(alone)}: {many} in the first run"
    return text


def _notes(plan: Plan, repeats: int, quick: bool, skipped: list[str]) -> list[str]:
    lg_windows = plan.lg_top_windows or repeats
    notes = [
        f"One run per repetition whose conversation grows by one {MESSAGE_CHARS}-character "
        "message per step ("
        + (
            "random letters: incompressible, BENCH_MESSAGE_TEXT=random"
            if MESSAGE_TEXT == "random"
            else "pseudo-text that compresses like English prose: zlib ~2.8x, Postgres pglz "
            "~1.9x; PostgresSaver's blobs are TOAST-compressed"
        )
        + "). Pausepoint: "
        "workflow `grow` (bench/checkpoint_cost.py), one step that reads "
        f"`ctx.history.tail({TAIL})`, says one message and returns Next to "
        "itself, driven in-process by Runtime.run_step as a worker runs it by default "
        f"(chains of {INLINE} inline steps: one claim, then one commit per step; no broker). "
        f"LangGraph: one node that reads the last {TAIL} messages and returns one "
        "AIMessage, one `invoke({})` per step (durability 'async', the default), "
        "SqliteSaver / PostgresSaver, the state's `messages` annotated with `add_messages` "
        "or with `DeltaChannel(_messages_delta_reducer)` (a snapshot every 100 updates, "
        "its default).",
        f"A sample is one window of {plan.window} steps (fewer when the next level is "
        "nearer) that starts when the conversation holds N messages: ms/step = the "
        "window's wall time / its steps; bytes/step = the store's growth over the window "
        "/ its steps (SQLite: file + WAL after wal_checkpoint(TRUNCATE); Postgres: sum of "
        "pg_total_relation_size over the tables of the benchmark's own schema). Sizes are "
        "read between windows, untimed. 100 steps hold one DeltaChannel snapshot and "
        "average out the page granularity of both stores.",
        f"{repeats} runs per series. "
        + _runs_note("Pausepoint", plan.top, plan.rest, plan.levels, repeats)
        + ". "
        + _runs_note("LangGraph", plan.lg_top, plan.lg_rest, plan.lg_levels, lg_windows)
        + f" (LangGraph stops at {plan.lg_top:,}: its cost per step grows with the history, "
        "so a run's total grows quadratically). "
        f"'MiB after {plan.size_after:,} steps': read in every run that gets there.",
        "Outside the windows (steps that only build up the history) the Pausepoint step "
        "skips its read of the tail: a read writes nothing, so the store grows the same.",
        "Fresh store per run: a temporary SQLite file, or a new Postgres schema bench_<hex> "
        "(LangGraph: bench_lg_<hex>) dropped afterwards. Checked in every run: each step "
        "commits and adds one message, and the conversation read back from the store at "
        "the end has as many messages as steps.",
    ]
    if plan.lg_top_windows == 1 and plan.lg_top > plan.lg_rest:
        notes.append(
            f"LangGraph's figures at {plan.lg_top:,} messages are one sample each (n=1): "
            f"one more {plan.lg_top:,}-step LangGraph run costs about a minute."
        )
    if plan.size_after > max(plan.rest, plan.lg_rest):
        notes.append(
            f"'MiB after {plan.size_after:,} steps' is one sample per series (only the first "
            "run gets there): the SQLite sizes come out the same in every run, the Postgres "
            "ones within a few percent (autovacuum timing)."
        )
    if quick:
        notes.append(
            f"quick: levels up to {plan.levels[-1]:,} (LangGraph {plan.lg_levels[-1]:,}); "
            f"the targets are checked at those levels and after {plan.size_after:,} steps, "
            "not at 10,000 and 1,000."
        )
    return notes + skipped


def run(
    repeats: int = 3,
    *,
    quick: bool = False,
    out_dir: Path = RESULTS,
    systems: Sequence[str] = ("pausepoint", "langgraph"),
) -> Result:
    """Benchmark 2: ms and bytes per step at 10 .. 10,000 messages, and store size."""
    started = time.monotonic()
    plan = QUICK if quick else FULL
    repeats = max(1, repeats)
    skipped: list[str] = []
    stores = ["sqlite"]
    if postgres_reachable():
        stores.append("postgres")
    else:
        skipped.append(f"Postgres left out: not reachable at {PG_BASE}")
    missing = _langgraph_available() if "langgraph" in systems else "LangGraph left out"
    if missing:
        skipped.append(missing)
    series = _series(plan, stores, langgraph=missing is None)
    if "pausepoint" not in systems:
        series = [s for s in series if s.system != "pausepoint"]
    growths = measure(plan, repeats, series, _log)
    result = Result(
        name="checkpoint_cost",
        title="Checkpoint cost as the conversation grows",
        baseline="ms/step and bytes/step: the same series at 10 messages; store size: "
        "LangGraph's DeltaChannel on the same database",
        rows=_rows(plan, series, growths),
        notes=_notes(plan, repeats, quick, skipped),
    )
    result.targets = _targets(plan, result, series)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "checkpoint_cost_samples.json").write_text(
        json.dumps({name: [asdict(g) for g in gs] for name, gs in growths.items()}, indent=1) + "\n"
    )
    result.seconds = time.monotonic() - started
    return result


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ profiling


def profile(store: str, at: int, window: int, *, read: bool = True) -> None:
    """Grow one Pausepoint run to ``at`` messages; profile a window at 10 and one at ``at``."""
    from pyinstrument import Profiler

    with pausepoint_subject(store, read=read) as subject:
        done = 0
        for level in (10, at):
            subject.steps(level - done)
            done = level
            profiler = Profiler(interval=0.0005)
            subject.timed = True
            t0 = time.perf_counter()
            with profiler:
                subject.steps(window)
            ms = (time.perf_counter() - t0) * 1000 / window
            subject.timed = False
            done += window
            print(
                f"\n=== pausepoint {store}: {window} steps from {level:,} messages: "
                f"{ms:.3f} ms/step"
            )
            print(profiler.output_text(unicode=True, color=False, show_all=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.checkpoint_cost", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--only", choices=("pausepoint", "langgraph"), help="one side only")
    parser.add_argument("--profile", choices=("sqlite", "postgres"), help="profile Pausepoint")
    parser.add_argument("--at", type=int, default=10_000, help="--profile: messages")
    parser.add_argument("--window", type=int, default=200, help="--profile: steps profiled")
    parser.add_argument("--no-read", action="store_true", help="--profile: step reads no history")
    args = parser.parse_args(argv)
    if args.profile:
        profile(args.profile, args.at, args.window, read=not args.no_read)
        return 0
    from bench.report import print_tables, save

    systems = (args.only,) if args.only else ("pausepoint", "langgraph")
    result = run(args.repeats, quick=args.quick, out_dir=args.out_dir, systems=systems)
    save([result], args.out_dir / "checkpoint_cost.json")
    print_tables([result])
    return 0


if __name__ == "__main__":
    sys.exit(main())
