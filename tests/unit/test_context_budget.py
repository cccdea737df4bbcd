"""Every model call within the model's budget: the context builder, compaction, and
what a step records about its calls (scripted backend, no server)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from pausepoint.persistence.errors import ContextTooLong
from pausepoint.persistence.records import COMPLETED, FAILED, NewMemory, Recalled
from pausepoint.persistence.store import Store
from pausepoint.tasks.context import StepContext
from pausepoint.tasks.context_builder import (
    ContextBuilder,
    ContextOverflow,
    ContextSettings,
    ListTurns,
    Summary,
)
from pausepoint.tasks.counting import EstimateCounter, default_counter, prompt_tokens
from pausepoint.tasks.llm import Message, ScriptedBackend
from pausepoint.tasks.runtime import Runtime
from pausepoint.tasks.workflow import End, Next, Outcome, Registry, Workflow

WINDOW = 2048
REPLY = 256
MODEL = {"context_window": WINDOW, "reply_tokens": REPLY}


class Who:
    persona = "I am a patient assistant who keeps notes."
    instruction = "Answer briefly."
    strategy = ""


def turns(n: int, seed: int = 1) -> list[Message]:
    rnd = random.Random(seed)
    words = "loan income amount debt review customer address phone city note".split()
    return [
        {
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"turn {i}: "
            + " ".join(rnd.choice(words) for _ in range(rnd.randint(5, 60))),
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("counter", [EstimateCounter(), default_counter()], ids=lambda c: c.name)
def test_the_builder_never_sends_more_than_the_budget(counter: Any) -> None:
    settings = ContextSettings(window=WINDOW, reply=REPLY)
    builder = ContextBuilder(settings, counter)
    for n in (0, 1, 5, 40, 400):
        history = turns(n, seed=n)
        summary = Summary(n // 2, "s " * 900, 900) if n > 10 else None
        assembled, first = builder.assemble(
            Who(), "What next?", ListTurns(history), summary=summary
        )
        sent = prompt_tokens(counter, assembled.messages)
        assert sent == assembled.total <= settings.budget
        # Sections in priority order: system, then summary, then the newest turns, then the ask.
        assert assembled.messages[0]["content"].startswith(Who.persona)
        assert assembled.messages[-1] == {"role": "user", "content": "What next?"}
        if assembled.recent:
            assert assembled.messages[-1 - assembled.recent : -1] == history[-assembled.recent :]
        start = summary.covers if summary else 0
        assert first >= start and (first == start) == (assembled.recent == n - start)


def test_memories_get_their_share_and_are_dropped_before_the_prompt() -> None:
    from datetime import datetime, timezone

    from pausepoint.persistence.records import MemoryRecord

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    found = [
        Recalled(
            MemoryRecord(
                i,
                "a",
                "fact",
                None,
                None,
                f"memory {i} " + "x " * 60,
                None,
                None,
                None,
                "test",
                now,
                None,
                None,
            ),
            1.0 - i / 100,
            1.0,
            1.0,
        )
        for i in range(40)
    ]
    settings = ContextSettings(window=WINDOW, reply=REPLY, recall=40)
    builder = ContextBuilder(settings)
    assembled, _ = builder.assemble(
        Who(), "Who am I?", ListTurns([]), summary=None, recall=lambda q, n: found[:n]
    )
    share = int(
        (settings.budget - assembled.tokens["system"] - assembled.tokens["task"] - 3) * 0.25
    )
    assert 0 < assembled.tokens["memories"] <= share
    assert assembled.memories == list(range(len(assembled.memories)))  # best first
    assert assembled.total <= settings.budget


def test_a_prompt_that_cannot_fit_is_refused_before_anything_is_sent() -> None:
    builder = ContextBuilder(ContextSettings(window=WINDOW, reply=REPLY))
    with pytest.raises(ContextOverflow, match="more than the 1792"):
        builder.assemble(Who(), "word " * 5000, ListTurns([]), summary=None)


@pytest.mark.parametrize(
    "model",
    [
        {"context_window": 100},
        {"context_window": 4096, "reply_tokens": 3000},
        {"context": {"memories": 0.7, "summary": 0.3}},
        {"context": "big"},
        {"context_window": "lots"},
    ],
)
def test_bad_context_settings_are_refused_clearly(model: dict[str, Any]) -> None:
    from pausepoint.persistence.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        ContextSettings.from_model(model)


# ----------------------------------------------------------------- in a run


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    s = Store.from_url(sqlite_url)
    s.save_agent("chatty", persona=Who.persona, model=MODEL)
    yield s
    s.close()


def growing(reg: Registry, steps: int, ask_every: int) -> Workflow:
    wf = Workflow("growing", registry=reg)

    @wf.step
    def talk(ctx: StepContext) -> Outcome:
        n = ctx.state.get("n", 0)
        ctx.say("user", f"note {n}: the customer at desk {n % 7} asked about loan {n}")
        if n % ask_every == ask_every - 1:
            ctx.state["last"] = ctx.ask(f"What is the state of loan {n}?")
        ctx.state["n"] = n + 1
        return Next("talk") if n + 1 < steps else End({"n": n + 1})

    return wf


def run_all(store: Store, reg: Registry, llm: ScriptedBackend, **start: Any) -> str:
    published: list[tuple[str, int]] = []
    rt = Runtime(store, llm=llm, publish=lambda r, v: published.append((r, v)), workflows=reg)
    run = rt.start(**start)
    while published:
        rt.run_step(*published.pop(0), owner="w")
    return run.id


def test_a_long_run_compacts_and_no_call_exceeds_the_model(store: Store) -> None:
    reg = Registry()
    growing(reg, steps=300, ask_every=25)
    # The scripted model refuses anything over its real window, as a real one would.
    llm = ScriptedBackend(default="ok", context_limit=WINDOW - REPLY)
    run_id = run_all(store, reg, llm, workflow="growing", agent="chatty")
    run = store.get_run(run_id)
    assert run.status == COMPLETED, run.error
    assert all(prompt_tokens(default_counter(), call) <= WINDOW - REPLY for call in llm.calls)
    summaries = store.summaries(run_id)
    assert summaries, "a 300-message run in a 2k window must have compacted"
    assert all(s.tokens <= WINDOW for s in summaries)
    assert [s.covers for s in summaries] == sorted(s.covers for s in summaries)
    # The originals stay: every message is still in the store.
    assert len(store.history(run_id)) == run.history_len == 300 + 2 * 12
    # The latest checkpoint names its summary; the events say what each call spent.
    meta = store.checkpoint(run_id).state["__context__"]
    assert (meta["summary_run"], meta["summary_seq"]) == (run_id, summaries[-1].seq)
    events = store.events(run_id)
    compacted = [e for e in events if e.kind == "compacted"]
    assert len(compacted) == len(summaries) and "content" not in compacted[0].data
    calls = [c for e in events if e.kind == "step_completed" for c in e.data.get("model_calls", [])]
    asks = [c for c in calls if c["purpose"] == "ask"]
    assert len(asks) == 12
    for c in asks:
        assert set(c["tokens_in"]) == {"system", "task", "memories", "summary", "recent"}
        assert c["prompt_tokens"] == sum(c["tokens_in"].values()) + 3 <= WINDOW - REPLY
        assert c["usage_in"] is not None and c["tokens_out"] >= 1
    assert any(c["purpose"] == "compact" for c in calls)
    # The step's own state does not see the store's part of it.
    assert "__context__" not in run.result


def test_rollback_and_fork_see_the_summary_of_their_checkpoint(store: Store) -> None:
    reg = Registry()
    growing(reg, steps=200, ask_every=20)
    llm = ScriptedBackend(default="ok", context_limit=WINDOW - REPLY)
    run_id = run_all(store, reg, llm, workflow="growing", agent="chatty")
    summaries = store.summaries(run_id)
    assert len(summaries) >= 2
    first = summaries[0]
    # Checkpoint first.seq names the first summary; a later one names a later summary.
    assert store.checkpoint(run_id, first.seq).state["__context__"]["summary_seq"] == first.seq
    later = store.checkpoint(run_id).state["__context__"]["summary_seq"]
    assert later != first.seq
    rt = Runtime(store, llm=llm, publish=lambda r, v: None, workflows=reg)
    child = rt.fork(run_id, first.seq, actor="t")
    child_meta = store.checkpoint(child.id, 0).state["__context__"]
    copy = store.summary(child.id, 0)
    assert copy is not None and (copy.covers, copy.content) == (first.covers, first.content)
    assert child_meta["summary_run"] == child.id and child_meta["summary_seq"] == 0


def test_a_context_length_error_compacts_and_retries_once(store: Store) -> None:
    reg = Registry()
    growing(reg, steps=60, ask_every=60)
    # The agent believes in a 2k window; the model really has 1k.
    llm = ScriptedBackend(default="ok", context_limit=900)
    run_id = run_all(store, reg, llm, workflow="growing", agent="chatty")
    run = store.get_run(run_id)
    assert run.status == COMPLETED, run.error
    calls = [
        c
        for e in store.events(run_id)
        if e.kind == "step_completed"
        for c in e.data.get("model_calls", [])
    ]
    assert [c["purpose"] for c in calls if c["purpose"] != "compact"] == ["refused", "ask"]


def test_a_context_the_model_refuses_twice_fails_the_run_at_once(store: Store) -> None:
    reg = Registry()
    growing(reg, steps=3, ask_every=3)
    llm = ScriptedBackend(default="ok", context_limit=60)  # less than the persona needs
    run_id = run_all(store, reg, llm, workflow="growing", agent="chatty")
    run = store.get_run(run_id)
    assert run.status == FAILED
    assert "ContextOverflow" in (run.error or "") and "refused" in (run.error or "")
    assert not [e for e in store.events(run_id) if e.kind == "retried"]


def test_a_step_that_raises_after_asking_keeps_no_summary_and_no_memory(store: Store) -> None:
    reg = Registry()
    wf = Workflow("fragile", registry=reg)
    attempts = {"n": 0}

    @wf.step
    def only(ctx: StepContext) -> Outcome:
        ctx.remember("the vault code is 1234", subject="vault", key="code")
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise RuntimeError("crash after remembering")
        return End({})

    llm = ScriptedBackend(default="ok")
    published: list[tuple[str, int]] = []
    rt = Runtime(store, llm=llm, publish=lambda r, v: published.append((r, v)), workflows=reg)
    run = rt.start("fragile", agent="chatty")
    rt.run_step(*published.pop(0), owner="w")
    assert store.memories("chatty") == []  # the failed attempt wrote nothing
    store.engine.dispose()
    rt.store.clock = lambda: store.get_run(run.id).due_at  # due now
    rt.run_step(run.id, store.get_run(run.id).version, owner="w")
    assert store.get_run(run.id).status == COMPLETED
    (memory,) = store.memories("chatty")
    assert memory.run_id == run.id and memory.content == "the vault code is 1234"
    remembered = [e for e in store.events(run.id) if e.kind == "remembered"]
    assert {k: v for k, v in remembered[0].data.items() if k != "digests"} == {
        "memory": memory.id,
        "kind": "fact",
        "subject": "vault",
        "key": "code",
    }


def test_scripted_context_limit_is_a_context_too_long_error() -> None:
    with pytest.raises(ContextTooLong):
        ScriptedBackend(context_limit=10).complete([{"role": "user", "content": "x " * 50}])
    assert NewMemory("x").kind == "fact"


def test_bad_context_settings_fail_only_the_runs_that_ask(store: Store) -> None:
    store.save_agent("odd", persona="p", model={"context_window": 10})
    reg = Registry()
    quiet = Workflow("quiet", registry=reg)
    talky = Workflow("talky", registry=reg)

    @quiet.step
    def nothing(ctx: StepContext) -> Outcome:
        return End({"ok": True})

    @talky.step
    def speak(ctx: StepContext) -> Outcome:
        return End({"said": ctx.ask("hello")})

    llm = ScriptedBackend(default="ok")
    assert store.get_run(run_all(store, reg, llm, workflow="quiet", agent="odd")).status == (
        COMPLETED
    )
    failed = store.get_run(run_all(store, reg, llm, workflow="talky", agent="odd"))
    assert failed.status == FAILED and "context_window" in (failed.error or "")
    assert llm.calls == []
