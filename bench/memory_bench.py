"""``python -m bench memory``: what an agent's memory and context budget are worth.

1. **recall** (:mod:`bench.memory_data`, LongMemEval's shape): past runs go through the
   real runtime (each step remembers what the customer said); each question is then
   assembled by the context builder for a new run at a 2,000 and an 8,000 token budget.
   A question is answered when every memory it needs is inside the context (and, for a
   knowledge update, the superseded value is not). Baselines built in the same run:
   the last turns of the agent's past conversations that fit the budget, and the whole
   history (a miss when over budget).
2. **latency**: ``Store.recall`` p50/p99 at 1,000 and 100,000 memories of one agent, on
   SQLite and Postgres, against a primary-key read of one memory in the same run.
3. **growth**: a run growing to 20,000 messages with ``ctx.ask`` every 100th step: no
   prompt over budget, and the steps that do not ask cost the same at the end as at
   the start.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from bench.memory_data import SMALL_TALK, AgentData, Question, generate
from bench.procs import ROOT
from bench.services import pg_schema, schema_url
from pausepoint.persistence.records import COMPLETED
from pausepoint.persistence.store import Store
from pausepoint.persistence.tables import memories
from pausepoint.tasks.context import StepContext
from pausepoint.tasks.context_builder import ContextBuilder, ContextSettings, ListTurns
from pausepoint.tasks.counting import default_counter, prompt_tokens
from pausepoint.tasks.llm import Message, ScriptedBackend
from pausepoint.tasks.runtime import Runtime
from pausepoint.tasks.workflow import End, Next, Outcome, Registry, Workflow

BUDGETS = (2000, 8000)
REPLY = 512
PERSONA = "I am a service desk assistant. I help customers with their accounts."


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -------------------------------------------------------------- 1. recall


def desk_workflows() -> Registry:
    reg = Registry()
    wf = Workflow("desk", registry=reg)

    @wf.step
    def converse(ctx: StepContext) -> Outcome:
        for role, content in ctx.input["turns"]:
            ctx.say(role, content)
        for fact in ctx.input["facts"]:
            ctx.remember(fact["memory"], subject=fact["subject"], key=fact["attribute"])
        return End({"facts": len(ctx.input["facts"])})

    return reg


def load(store: Store, agents: list[AgentData]) -> dict[str, list[Message]]:
    """Every past run through the runtime; each agent's past conversation, in order."""
    published: list[tuple[str, int]] = []
    rt = Runtime(
        store,
        llm=ScriptedBackend(default="ok"),
        publish=lambda r, v: published.append((r, v)),
        workflows=desk_workflows(),
    )
    past: dict[str, list[Message]] = {}
    for a in agents:
        store.save_agent(a.name, persona=PERSONA)
        past[a.name] = []
        for r in a.runs:
            facts = [
                {"memory": f.memory, "subject": f.subject, "attribute": f.attribute}
                for f in r.facts
            ]
            run = rt.start(
                "desk",
                agent=a.name,
                input={"subject": r.subject, "turns": r.turns, "facts": facts},
            )
            while published:
                rt.run_step(*published.pop(0), owner="bench")
            assert store.get_run(run.id).status == COMPLETED
            past[a.name].extend({"role": role, "content": c} for role, c in r.turns)
    return past


class Persona:
    persona = PERSONA
    instruction = ""
    strategy = ""


def judge(messages: list[Message], q: Question, *, turns: bool = False) -> bool:
    """Answered: every needed fact is in, and no stale one (a superseded value; for a
    question with no answer, what other customers said about the same thing). The
    baselines hold turns, so their facts are looked for as the customer said them."""
    text = "\n".join(m["content"] for m in messages)
    needed, stale = (q.needed_said, q.stale_said) if turns else (q.needed, q.stale)
    return all(n in text for n in needed) and not any(s in text for s in stale)


def recall_benchmark(store: Store, quick: bool) -> dict[str, Any]:
    agents, questions = generate(agents=3 if quick else 12, runs=12 if quick else 30)
    started = time.monotonic()
    past = load(store, agents)
    loaded = time.monotonic() - started
    log(f"recall: {sum(len(a.runs) for a in agents)} past runs loaded in {loaded:.1f}s")
    counter = default_counter()
    # "memory": the run is about its customer (input["subject"]), as a desk's would be;
    # "memory_any": the same recall over all the agent's customers (ranking alone).
    methods = ("memory", "memory_any", "last_turns", "full_history")
    scores: dict[int, dict[str, dict[str, list[bool]]]] = {}
    over: dict[int, dict[str, int]] = {}
    top: dict[str, list[bool]] = {"memory": [], "memory_any": []}
    for budget in BUDGETS:
        settings = ContextSettings(window=budget + REPLY, reply=REPLY)
        builder = ContextBuilder(settings, counter)
        scores[budget] = {m: {} for m in methods}
        over[budget] = dict.fromkeys(methods, 0)
        for q in questions:

            def recall(text: str, n: int, q: Question = q) -> Any:
                return store.recall(q.agent, text, subject=q.subject, limit=n)

            def recall_any(text: str, n: int, q: Question = q) -> Any:
                return store.recall(q.agent, text, limit=n)

            ours, _ = builder.assemble(
                Persona(), q.text, ListTurns([]), summary=None, recall=recall
            )
            anyone, _ = builder.assemble(
                Persona(), q.text, ListTurns([]), summary=None, recall=recall_any
            )
            if q.kind in ("single", "update") and budget == BUDGETS[0]:
                for method, fn in (("memory", recall), ("memory_any", recall_any)):
                    best = fn(q.text, 1)
                    top[method].append(bool(best) and best[0].memory.content == q.needed[0])
            head, ask, _ = builder.fixed(Persona(), q.text)
            history = past[q.agent]
            last, _, _ = builder.recent(
                ListTurns(history), 0, settings.budget - prompt_tokens(counter, [*head, ask])
            )
            window = [*head, *last, ask]
            full = [*head, *history, ask]
            for method, messages in (
                ("memory", ours.messages),
                ("memory_any", anyone.messages),
                ("last_turns", window),
                ("full_history", full),
            ):
                within = prompt_tokens(counter, messages) <= settings.budget
                over[budget][method] += not within
                scores[budget][method].setdefault(q.kind, []).append(
                    within and judge(messages, q, turns=not method.startswith("memory"))
                )
    table: dict[str, Any] = {}
    for budget in BUDGETS:
        for method in methods:
            row = {
                kind: round(sum(v) / len(v), 3)
                for kind, v in sorted(scores[budget][method].items())
            }
            answerable = [x for k, v in scores[budget][method].items() if k != "none" for x in v]
            row["recall_all"] = round(sum(answerable) / len(answerable), 3)
            row["over_budget"] = over[budget][method]
            table[f"{budget}/{method}"] = row
    return {
        "top1_single_and_update": {m: round(sum(v) / len(v), 3) for m, v in top.items()},
        "questions": len(questions),
        "by_kind": {
            k: sum(q.kind == k for q in questions) for k in ("single", "multi", "update", "none")
        },
        "memories": sum(len(r.facts) for a in agents for r in a.runs),
        "past_messages_per_agent": round(statistics.mean(len(v) for v in past.values())),
        "tokenizer": counter.name,
        "results": table,
    }


# ------------------------------------------------------------- 2. latency


# Word frequencies as in prose once stop words are gone: Zipf's law past its head
# (weight 1 / (rank + 50)), so the commonest word is in a few per cent of memories.
_ZIPF_OFFSET = 50


def _words(rnd: random.Random, vocabulary: list[str], n: int) -> str:
    weights = _cumulative(len(vocabulary))
    return " ".join(rnd.choices(vocabulary, cum_weights=weights, k=n))


_CUMULATIVE: dict[int, list[float]] = {}


def _cumulative(size: int) -> list[float]:
    if size not in _CUMULATIVE:
        total, out = 0.0, []
        for rank in range(size):
            total += 1.0 / (rank + 1 + _ZIPF_OFFSET)
            out.append(total)
        _CUMULATIVE[size] = out
    return _CUMULATIVE[size]


def fill(store: Store, agent: str, count: int, seed: int = 5) -> None:
    rnd = random.Random(seed)
    vocabulary = SMALL_TALK + [
        "".join(rnd.choice("bcdfghklmnprstvz") + rnd.choice("aeiou") for _ in range(3))
        for _ in range(20_000)
    ]
    rnd.shuffle(vocabulary)
    store.save_agent(agent, persona="")
    now = store.clock()
    batch = 5000
    for start in range(0, count, batch):
        rows = [
            {
                "agent_name": agent,
                "kind": "fact",
                "subject": f"s{rnd.randrange(500)}",
                "key": None,
                "content": _words(rnd, vocabulary, rnd.randint(8, 20)),
                "importance": None,
                "run_id": None,
                "seq": None,
                "actor": "bench",
                "created_at": now,
            }
            for _ in range(min(batch, count - start))
        ]
        with store.write() as conn:
            conn.execute(insert(memories), rows)
    store.vocabulary = vocabulary  # type: ignore[attr-defined]


def each(items: list[Any], fn: Callable[[Any], Any]) -> list[Callable[[], Any]]:
    return [lambda x=x: fn(x) for x in items]


def timed(calls: list[Callable[[], Any]]) -> list[float]:
    """Milliseconds of each call."""
    out = []
    for call in calls:
        t0 = time.perf_counter()
        call()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3)


def stores() -> Iterator[tuple[str, Store]]:
    """A new SQLite store, then a new Postgres schema, one after the other."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.from_url(f"sqlite:///{tmp}/memory.db")
        try:
            yield "sqlite", store
        finally:
            store.close()
    with pg_schema("bench_memory") as schema:
        store = Store.from_url(schema_url(schema))
        try:
            yield "postgres", store
        finally:
            store.close()


def latency_benchmark(quick: bool) -> dict[str, Any]:
    sizes = (1000, 10_000) if quick else (1000, 100_000)
    queries = 100 if quick else 300
    out: dict[str, Any] = {}
    for kind, store in stores():
        for size in sizes:
            agent = f"agent-{size}"
            t0 = time.monotonic()
            fill(store, agent, size)
            if kind == "postgres":
                with store.engine.connect() as conn:
                    conn.exec_driver_sql("ANALYZE memories")
                    conn.commit()
            log(f"latency: {kind} {size:,} memories written in {time.monotonic() - t0:.1f}s")
            rnd = random.Random(size)
            vocab = store.vocabulary  # type: ignore[attr-defined]
            ids = [m.id for m in store.memories(agent, limit=500)]
            # A question about something remembered: a few of one memory's words, and a
            # couple of everyday (Zipf) ones.
            texts = []
            for _ in range(queries):
                memory = store.memory(rnd.choice(ids))
                words = (memory.content if memory else "").split()
                picked = rnd.sample(words, min(len(words), rnd.randint(2, 4)))
                texts.append(" ".join(picked) + " " + _words(rnd, vocab, 2))
            for t in texts[:10]:
                store.recall(agent, t, limit=12)  # warm up
            recall = timed(each(texts, lambda t, s=store, a=agent: s.recall(a, t, limit=12)))
            keys = [rnd.choice(ids) for _ in range(queries)]
            lookup = timed(each(keys, store.memory))
            out[f"{kind}/{size}"] = {
                "recall_p50_ms": pct(recall, 0.5),
                "recall_p99_ms": pct(recall, 0.99),
                "pk_read_p50_ms": pct(lookup, 0.5),
                "recall_vs_pk_read": round(pct(recall, 0.5) / max(pct(lookup, 0.5), 1e-6), 1),
            }
            log(f"latency: {kind} {size:,}: {out[f'{kind}/{size}']}")
    return out


# -------------------------------------------------------------- 3. growth


def growth_benchmark(quick: bool) -> dict[str, Any]:
    target = 2000 if quick else 20_000
    reg = Registry()
    wf = Workflow("grow", registry=reg)
    text = " ".join(SMALL_TALK[:30])

    @wf.step
    def grow(ctx: StepContext) -> Outcome:
        n = len(ctx.history)
        ctx.say("user", f"message {n}: {text}")
        if n // 100 != (n + 1) // 100:  # every 100th message
            ctx.ask(f"What has happened since message {n - 100}?")
        ctx.state["n"] = n
        return Next("grow") if len(ctx.history) + len(ctx.new_messages) < target else End({})

    with tempfile.TemporaryDirectory() as tmp:
        store = Store.from_url(f"sqlite:///{tmp}/growth.db")
        store.save_agent("grower", persona=PERSONA)
        llm = ScriptedBackend(default="ok", context_limit=8192 - 1024)
        published: list[tuple[str, int]] = []
        rt = Runtime(store, llm=llm, publish=lambda r, v: published.append((r, v)), workflows=reg)
        run = rt.start("grow", agent="grower")
        quiet: list[float] = []  # whole steps (claim, step, commit) that did not ask
        t0 = time.monotonic()
        while published:
            calls = len(llm.calls)
            s0 = time.perf_counter()
            rt.run_step(*published.pop(0), owner="bench")
            if len(llm.calls) == calls:
                quiet.append(time.perf_counter() - s0)
        elapsed = time.monotonic() - t0
        final = store.get_run(run.id)
        budget = ContextSettings().budget
        sent = [prompt_tokens(default_counter(), c) for c in llm.calls]
        summaries = len(store.summaries(run.id))
        store.close()
    k = max(1, len(quiet) // 10)
    first, last = statistics.median(quiet[:k]) * 1000, statistics.median(quiet[-k:]) * 1000
    return {
        "messages": final.history_len,
        "status": final.status,
        "seconds": round(elapsed, 1),
        "model_calls": len(sent),
        "max_prompt_tokens": max(sent),
        "budget": budget,
        "prompts_over_budget": sum(s > budget for s in sent),
        "summaries": summaries,
        "quiet_step_ms_first_tenth": round(first, 3),
        "quiet_step_ms_last_tenth": round(last, 3),
        "last_vs_first": round(last / first, 2),
    }


def run(quick: bool = False, out: Path | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    out = out or ROOT / "bench" / "results" / "memory.json"
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.from_url(f"sqlite:///{tmp}/recall.db")
        results["recall"] = recall_benchmark(store, quick)
        store.close()
    results["growth"] = growth_benchmark(quick)
    results["latency"] = latency_benchmark(quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    console = Console()
    r = results["recall"]
    table = Table(
        title=f"Memory recall: {r['questions']} questions, tokenizer {r['tokenizer']}; "
        f"best first: {r['top1_single_and_update']}"
    )
    for col in ("budget/method", "single", "multi", "update", "none", "recall_all", "over"):
        table.add_column(col, justify="right")
    for name, row in r["results"].items():
        table.add_row(
            name,
            *(
                str(row.get(k, "-"))
                for k in ("single", "multi", "update", "none", "recall_all", "over_budget")
            ),
        )
    console.print(table)
    console.print_json(json.dumps({"growth": results["growth"], "latency": results["latency"]}))
    console.print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run(quick="--quick" in sys.argv))
