"""The overhead of the agent loop: Pausepoint's react loop vs the OpenAI Agents SDK's.

    .venv/bin/python -m bench agent-loop [--quick] [--repeats 5]
    .venv/bin/python -m bench agent-loop --profile sqlite|postgres|sdk

One react run: 21 model calls (20 that each ask for one tool call, then the answer)
and 20 tool calls, against the loopback OpenAI-compatible server of the tests
(``tests/openai_server.py``, a real HTTP server in a thread of this process), which
answers at once. The tool, ``add(a, b)``, returns a small dict.

* **Pausepoint**: the shipped ``react`` loop (``add_react``, ``wf.tool(add)``), the
  real model client (``OpenAIBackend``, the official sync ``openai`` client), driven
  in-process by ``Runtime.run_step`` as a worker runs steps by default (chains of up
  to ``PAUSEPOINT_INLINE_STEPS`` steps after one claim; no broker). Each model call
  and each tool call is its own step, committed before the next starts. On a SQLite
  file and on Postgres (a fresh schema ``bench_<hex>``, dropped at the end).
* **Agents SDK** (``openai-agents``): ``Runner.run`` in this process with a
  ``SQLiteSession`` on a file, the model ``OpenAIChatCompletionsModel`` over
  ``AsyncOpenAI``, the same tool as a ``function_tool``, tracing off.
* **Raw clients**: the same 21 requests and replies with the plain ``openai`` client,
  sync and async, a canned tool result appended by hand: the server's own time (and
  the client's) with no loop around it.

Diagnosis, on each store: Pausepoint without the recall of memories before each model
call (the SDK has none), and with every step claimed anew (``inline_steps=1``).

The figure: ms per call above the raw client, ``(run - median raw run) / 41`` (21
model + 20 tool calls), each system less the raw client it is built on (sync for
Pausepoint, async for the SDK). Each repetition runs every configuration once, in
turn, so a noisy moment hits all of them, with a full garbage collection before each
run; the figures are medians over repetitions, and the ratio to the SDK, measured in
the same run, is the number to read. The server sets TCP_NODELAY on its sockets.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.checkpoint_cost import postgres_reachable
from bench.report import Result, Row, Target
from bench.services import PG_BASE, RESULTS, pg_schema, schema_url
from pausepoint.persistence.records import COMPLETED
from pausepoint.persistence.store import Store
from pausepoint.tasks.openai_backend import OpenAIBackend
from pausepoint.tasks.runtime import Runtime
from pausepoint.tasks.strategies import add_react
from pausepoint.tasks.workflow import Registry, Workflow
from pausepoint.worker.settings import Settings
from tests.openai_server import OpenAIServer

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionFunctionToolParam

TOOL_TURNS = 20
MODEL_CALLS = TOOL_TURNS + 1
CALLS = MODEL_CALLS + TOOL_TURNS
PERSONA = "You add numbers with the add tool."
TASK = f"Add one to each number from 0 to {TOOL_TURNS - 1}, one call at a time."
ANSWER = "Done: every sum is computed."
MODEL = "m"
# Steps a worker runs in one chain by default (PAUSEPOINT_INLINE_STEPS).
INLINE = int(Settings.model_fields["inline_steps"].default)
TARGET_RATIO = 2.0
PER_CALL = "ms/call above client"

# The tool as the model is offered it (the raw clients' requests; the loops build
# their own from the function's type hints).
ADD_SCHEMA: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


def reply(body: dict[str, Any]) -> str | dict[str, Any]:
    """The model: turn n (assistant messages after the last user message) asks for
    ``add(n, 1)`` while n < TOOL_TURNS, then answers."""
    messages = body["messages"]
    last = max(i for i, m in enumerate(messages) if m.get("role") == "user")
    n = sum(1 for m in messages[last + 1 :] if m.get("role") == "assistant")
    if n < TOOL_TURNS:
        return {"content": None, "tool_calls": [{"name": "add", "arguments": {"a": n, "b": 1}}]}
    return ANSWER


@contextmanager
def loopback_server() -> Iterator[OpenAIServer]:
    """The tests' server answering with :func:`reply` (TCP_NODELAY on its sockets: with
    Nagle on, each reply's body waited ~40 ms for the client's delayed ACK)."""
    with OpenAIServer(reply=reply) as server:
        yield server


class Calls:
    """The tool ``add``, counting its calls."""

    def __init__(self) -> None:
        self.n = 0

    def add(self, a: int, b: int) -> dict[str, int]:
        """Add two integers."""
        self.n += 1
        return {"sum": a + b}


def _check(who: str, requests: int, tool_calls: int, expected_tool_calls: int) -> None:
    """One run made the model calls and tool calls it should have."""
    if (requests, tool_calls) != (MODEL_CALLS, expected_tool_calls):
        raise AssertionError(f"{who}: {requests} model calls and {tool_calls} tool calls in a run")


# ------------------------------------------------------------------ the subjects


class RawSync:
    """The same requests with the plain sync ``openai`` client."""

    name = "raw openai client (sync)"

    def __init__(self, server: OpenAIServer) -> None:
        import openai

        self.server = server
        self.client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)

    def run(self) -> float:
        before = len(self.server.requests)
        t0 = time.perf_counter()
        messages: list[Any] = [
            {"role": "system", "content": PERSONA},
            {"role": "user", "content": TASK},
        ]
        for _ in range(MODEL_CALLS):
            r = self.client.chat.completions.create(
                model=MODEL, messages=messages, tools=[ADD_SCHEMA]
            )
            msg = r.choices[0].message
            if not msg.tool_calls:
                break
            messages.append(msg.model_dump(exclude_none=True))
            for c in msg.tool_calls:
                # A canned result: no tool runs.
                messages.append({"role": "tool", "tool_call_id": c.id, "content": '{"sum": 0}'})
        ms = (time.perf_counter() - t0) * 1000
        _check(self.name, len(self.server.requests) - before, 0, 0)
        return ms

    def close(self) -> None:
        self.client.close()


class RawAsync:
    """The same requests with the plain ``AsyncOpenAI`` client, on one event loop."""

    name = "raw openai client (async)"

    def __init__(self, server: OpenAIServer, loop: asyncio.AbstractEventLoop) -> None:
        import openai

        self.server = server
        self.loop = loop
        self.client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)

    async def _run(self) -> float:
        t0 = time.perf_counter()
        messages: list[Any] = [
            {"role": "system", "content": PERSONA},
            {"role": "user", "content": TASK},
        ]
        for _ in range(MODEL_CALLS):
            r = await self.client.chat.completions.create(
                model=MODEL, messages=messages, tools=[ADD_SCHEMA]
            )
            msg = r.choices[0].message
            if not msg.tool_calls:
                break
            messages.append(msg.model_dump(exclude_none=True))
            for c in msg.tool_calls:
                messages.append({"role": "tool", "tool_call_id": c.id, "content": '{"sum": 0}'})
        return (time.perf_counter() - t0) * 1000

    def run(self) -> float:
        before = len(self.server.requests)
        ms = self.loop.run_until_complete(self._run())
        _check(self.name, len(self.server.requests) - before, 0, 0)
        return ms

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())


class AgentsSDK:
    """``Runner.run`` with a ``SQLiteSession`` on a file, a new session per run."""

    name = "Agents SDK + SQLiteSession"

    def __init__(
        self, server: OpenAIServer, loop: asyncio.AbstractEventLoop, db_path: Path
    ) -> None:
        import agents
        import openai

        agents.set_tracing_disabled(True)
        self.server = server
        self.loop = loop
        self.db_path = db_path
        self.client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        self.tools = Calls()
        self.agent: Any = agents.Agent(
            name="bench",
            instructions=PERSONA,
            model=agents.OpenAIChatCompletionsModel(model=MODEL, openai_client=self.client),
            tools=[agents.function_tool(self.tools.add)],
        )
        self.runs = 0
        self.writes = 0  # session.add_items calls in the last run

    async def _run(self, session: Any) -> tuple[float, Any]:
        import agents

        t0 = time.perf_counter()
        result = await agents.Runner.run(
            self.agent, TASK, session=session, max_turns=MODEL_CALLS + 5
        )
        return (time.perf_counter() - t0) * 1000, result

    def run(self) -> float:
        import agents

        self.runs += 1
        # Made outside the timing (Pausepoint's rt.start, which creates the run, is inside).
        session = agents.SQLiteSession(f"run-{self.runs}", self.db_path)
        writes = [0]
        add_items = session.add_items

        async def counted(items: Any) -> None:
            writes[0] += 1
            await add_items(items)

        session.add_items = counted  # type: ignore[method-assign]
        before, tools_before = len(self.server.requests), self.tools.n
        try:
            ms, result = self.loop.run_until_complete(self._run(session))
        finally:
            session.close()
        if result.final_output != ANSWER:
            raise AssertionError(f"{self.name}: the run ended with {result.final_output!r}")
        requests = len(self.server.requests) - before
        _check(self.name, requests, self.tools.n - tools_before, TOOL_TURNS)
        self.writes = writes[0]
        return ms

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())


class Pausepoint:
    """The shipped react loop, driven in-process by ``Runtime.run_step``."""

    def __init__(
        self,
        store: Store,
        server: OpenAIServer,
        label: str,
        *,
        inline_steps: int = INLINE,
        recall: bool = True,
    ) -> None:
        self.name = f"Pausepoint {label}"
        # The product's defaults (what the targets are checked on).
        self.default = recall and inline_steps == INLINE
        self.agent = f"bench_{len(store.list_agents())}"
        self.store = store
        self.server = server
        self.tools = Calls()
        registry = Registry()
        wf = Workflow("bench_react", "The react loop (benchmark).", registry=registry)
        add_react(wf, start=True)
        wf.tool(self.tools.add, name="add")
        # The product's defaults, but for recall=False: no recall of memories before each call.
        model = {} if recall else {"memory": {"recall": False}}
        store.save_agent(self.agent, persona=PERSONA, model=model)
        self.llm = OpenAIBackend(server.base_url, model=MODEL, max_retries=0)
        self.queue: list[tuple[str, int]] = []
        self.rt = Runtime(
            store,
            llm=self.llm,
            publish=lambda run_id, version: self.queue.append((run_id, version)),
            workflows=registry,
            inline_steps=inline_steps,
        )
        self.chains = 0  # run_step calls in the last run

    def run(self) -> float:
        before, tools_before = len(self.server.requests), self.tools.n
        chains = 0
        t0 = time.perf_counter()
        run_id = self.rt.start("bench_react", agent=self.agent, task=TASK, actor="bench").id
        while self.queue:
            queued, version = self.queue.pop(0)
            self.rt.run_step(queued, version, owner="bench")
            chains += 1
        ms = (time.perf_counter() - t0) * 1000
        run = self.store.get_run(run_id)
        result = run.result or {}
        if run.status != COMPLETED or result.get("answer") != ANSWER:
            raise AssertionError(f"{self.name}: run {run_id} is {run.status}: {run.error}")
        if (result.get("iterations"), result.get("tool_calls")) != (MODEL_CALLS, TOOL_TURNS):
            raise AssertionError(f"{self.name}: {result}")
        requests = len(self.server.requests) - before
        _check(self.name, requests, self.tools.n - tools_before, TOOL_TURNS)
        self.chains = chains
        return ms

    def close(self) -> None:
        self.llm.close()


# ------------------------------------------------------------------ set-up


@contextmanager
def pausepoint_store(kind: str, tmp: Path) -> Iterator[Store]:
    """A new store: a SQLite file in ``tmp``, or a new Postgres schema."""
    if kind == "sqlite":
        store = Store.from_url(f"sqlite:///{tmp / 'pausepoint.db'}")
        try:
            yield store
        finally:
            store.close()
        return
    with pg_schema("bench") as schema:
        store = Store.from_url(schema_url(schema))
        try:
            yield store
        finally:
            store.close()


Subject = RawSync | RawAsync | AgentsSDK | Pausepoint


@contextmanager
def subjects(
    stores: Sequence[str], *, sdk: bool = True, diagnose: bool = False
) -> Iterator[list[Subject]]:
    """Every configuration, against one loopback server, each warmed up by one run.

    ``diagnose``: on each store also the loop without the recall of memories before
    each model call, and with every step through a "broker" (``inline_steps=1``)."""
    with ExitStack() as stack:
        server = stack.enter_context(loopback_server())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pausepoint-loop-")))
        loop = asyncio.new_event_loop()
        stack.callback(loop.close)
        made: list[Subject] = [RawSync(server), RawAsync(server, loop)]
        if sdk:
            made.append(AgentsSDK(server, loop, tmp / "agents_session.db"))
        for kind in stores:
            store = stack.enter_context(pausepoint_store(kind, tmp))
            label = "SQLite" if kind == "sqlite" else "Postgres"
            made.append(Pausepoint(store, server, label))
            if diagnose:
                made.append(Pausepoint(store, server, f"{label}, no recall", recall=False))
                made.append(Pausepoint(store, server, f"{label}, inline 1", inline_steps=1))
        for s in made:
            stack.callback(s.close)
        for s in made:
            s.run()
        yield made


# ------------------------------------------------------------------ measurement


def measure(subjects: Sequence[Subject], repeats: int) -> dict[str, list[float]]:
    """ms per run of every subject, ``repeats`` times, round robin."""
    samples: dict[str, list[float]] = {s.name: [] for s in subjects}
    # A full collection of this process's heap (SQLAlchemy, pydantic, the SDK, tiktoken)
    # takes ~120 ms and would land in whichever run is going: collected between runs,
    # the set-up's objects frozen out of it.
    gc.collect()
    gc.freeze()
    try:
        for i in range(repeats):
            line = []
            for s in subjects:
                gc.collect()
                ms = s.run()
                samples[s.name].append(ms)
                line.append(f"{s.name} {ms:.1f}")
            _log(f"  [{i + 1}/{repeats}] ms/run: " + ", ".join(line))
    finally:
        gc.unfreeze()
    return samples


def _above(run: list[float], raw: list[float]) -> list[float]:
    """ms per call above the raw client: each run less the raw client's median run (a
    raw run that a hiccup slowed would otherwise make that repetition's figure)."""
    base = statistics.median(raw)
    return [(r - base) / CALLS for r in run]


def run(repeats: int = 5, *, quick: bool = False, out_dir: Path = RESULTS) -> Result:
    """The loop's overhead per call, Pausepoint on both stores vs the Agents SDK."""
    started = time.monotonic()
    repeats = min(max(1, repeats), 3) if quick else max(1, repeats)
    skipped: list[str] = []
    stores = ["sqlite"]
    if postgres_reachable():
        stores.append("postgres")
    else:
        skipped.append(f"Postgres left out: not reachable at {PG_BASE}")
    with subjects(stores, diagnose=True) as made:
        samples = measure(made, repeats)
        sdk = next(s for s in made if isinstance(s, AgentsSDK))
        loops = [s for s in made if isinstance(s, Pausepoint)]
    sync_raw, async_raw = samples[RawSync.name], samples[RawAsync.name]
    sdk_run = samples[sdk.name]
    sdk_above = f"{sdk.name} (per call)"
    rows = [
        Row(RawSync.name, "ms/run", sync_raw, higher_is_better=False),
        Row(RawAsync.name, "ms/run", async_raw, higher_is_better=False),
        Row(sdk.name, "ms/run", sdk_run, higher_is_better=False),
        *(Row(s.name, "ms/run", samples[s.name], sdk.name, False) for s in loops),
        Row(
            sdk_above,
            PER_CALL,
            _above(sdk_run, async_raw),
            higher_is_better=False,
            extra={"session_writes_per_run": sdk.writes},
        ),
    ]
    for s in loops:
        rows.append(
            Row(
                f"{s.name} (per call)",
                PER_CALL,
                _above(samples[s.name], sync_raw),
                sdk_above,
                False,
                extra={"run_step_calls_per_run": s.chains},
            )
        )
    result = Result(
        name="agent_loop",
        title=f"Overhead of the loop: {MODEL_CALLS} model + {TOOL_TURNS} tool calls per run",
        baseline=f"{sdk.name}, in-process, same server, same run",
        rows=rows,
    )
    # Both minus the same (sync) client, as a cross-check of the subtraction.
    sdk_sync = statistics.median(_above(sdk_run, sync_raw))
    same_client: list[str] = []
    for s in loops:
        row = result.row(f"{s.name} (per call)")
        if s.default:
            ratio = result.ratio(row)
            result.targets.append(
                Target(
                    f"{s.name}: ms/call above the client / the Agents SDK's",
                    ratio if ratio is not None else float("nan"),
                    TARGET_RATIO,
                    "max",
                    "durable at every call",
                )
            )
        same_client.append(f"{s.name} {row.median / sdk_sync:.2f} x" if sdk_sync else "-")
    result.notes = [
        f"One run: {MODEL_CALLS} model calls ({TOOL_TURNS} asking for one add(a, b) call "
        f"each, then the answer) and {TOOL_TURNS} tool calls, against the loopback "
        "OpenAI-compatible server of the tests (TCP_NODELAY set on its sockets), "
        "which answers at once. 'ms/call above client' = (ms/run - the median "
        f"ms/run of the raw client) / {CALLS}: Pausepoint less the sync openai client it "
        "is built on, the SDK less AsyncOpenAI. With the sync client taken from both: "
        + ", ".join(same_client)
        + " the SDK.",
        "Pausepoint: the shipped react loop driven in-process by Runtime.run_step, with "
        f"the product's defaults (inline_steps={INLINE}, as a worker runs it: "
        f"{loops[0].chains} run_step calls per run; memories recalled before each model "
        "call); each model call and each tool call its own committed step; the timing "
        "includes rt.start (the run's creation). 'no recall': the agent's "
        "model['memory']['recall'] = false (the SDK recalls nothing). 'inline 1': every "
        "step claimed anew, as with PAUSEPOINT_INLINE_STEPS=1 (no broker here).",
        "Agents SDK: Runner.run with OpenAIChatCompletionsModel(AsyncOpenAI), tracing "
        "off, the tool a function_tool, a SQLiteSession on a file (WAL; a new session per "
        f"run, made outside the timing): {sdk.writes} session writes per run, one per "
        "turn. Pausepoint's SQLite store runs WAL with synchronous=NORMAL, the SDK's "
        "session SQLite's default (FULL).",
        f"{repeats} repetitions, each running every configuration once in turn, after one "
        "warm-up run each; medians. A full garbage collection before each run (untimed; "
        "one costs ~120 ms in this process and would land in any run). One SQLite file "
        "per system and one Postgres schema bench_<hex> (dropped at the end), a new run "
        "(session) per repetition.",
        *skipped,
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    result.seconds = time.monotonic() - started
    return result


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ profiling


def profile(which: str, runs: int = 3) -> None:
    """Profile ``runs`` runs of one configuration (after a warm-up) with pyinstrument."""
    from pyinstrument import Profiler

    stores = [which] if which in ("sqlite", "postgres") else []
    with subjects(stores, sdk=which == "sdk") as made:
        subject = made[-1]
        profiler = Profiler(interval=0.001)
        with profiler:
            ms = [subject.run() for _ in range(runs)]
        print(f"\n=== {subject.name}: {runs} runs, ms/run {', '.join(f'{m:.1f}' for m in ms)}")
        print(profiler.output_text(unicode=True, color=False, show_all=False))


def main(repeats: int, quick: bool, out: Path, profile_of: str | None = None) -> int:
    """``python -m bench agent-loop``: run, save ``out``, print the table (or profile)."""
    if profile_of:
        profile(profile_of)
        return 0
    from bench.report import print_tables, save

    result = run(repeats, quick=quick, out_dir=out.parent)
    save([result], out)
    print_tables([result])
    print(f"wrote {out}", file=sys.stderr)
    return 0
