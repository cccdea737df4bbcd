"""The context budget against the loopback OpenAI-compatible server: its usage is
recorded, its 400 context_length_exceeded compacts and retries once, and any other 400
fails the run at once instead of being retried as if it were transient."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pausepoint.persistence.errors import ContextTooLong, LLMError
from pausepoint.persistence.records import COMPLETED, FAILED
from pausepoint.persistence.store import Store
from pausepoint.tasks.context import StepContext
from pausepoint.tasks.llm import OpenAIBackend
from pausepoint.tasks.runtime import Runtime
from pausepoint.tasks.workflow import End, Next, Outcome, Registry, Workflow
from tests.openai_server import OpenAIServer


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv


def chatty(steps: int, ask_at: int, size: int = 30) -> Registry:
    reg = Registry()
    wf = Workflow("chatty", registry=reg)

    @wf.step
    def talk(ctx: StepContext) -> Outcome:
        n = ctx.state.get("n", 0)
        ctx.say("user", f"fact {n}: " + "the client called again about the invoice " * size)
        if n == ask_at:
            ctx.state["answer"] = ctx.ask("What did the client want?")
        ctx.state["n"] = n + 1
        return Next("talk") if n + 1 < steps else End({"answer": ctx.state.get("answer")})

    return reg


def run(store: Store, server: OpenAIServer, reg: Registry, max_retries: int = 0) -> str:
    published: list[tuple[str, int]] = []
    llm = OpenAIBackend(server.base_url, model="echo-1", max_retries=max_retries, backoff=0)
    rt = Runtime(store, llm=llm, publish=lambda r, v: published.append((r, v)), workflows=reg)
    started = rt.start("chatty", agent="a")
    while published:
        rt.run_step(*published.pop(0), owner="w")
    llm.close()
    return started.id


def calls(store: Store, run_id: str) -> list[dict]:
    return [
        c
        for e in store.events(run_id)
        if e.kind == "step_completed"
        for c in e.data.get("model_calls", [])
    ]


def test_usage_comes_back_from_the_server(server: OpenAIServer) -> None:
    with OpenAIBackend(server.base_url, model="m") as llm:
        reply = llm.chat([{"role": "user", "content": "hello there"}], max_tokens=50)
    assert reply.text == "echo: hello there"
    assert reply.prompt_tokens and reply.completion_tokens
    assert server.requests[-1].body["max_tokens"] == 50


def test_the_server_refuses_like_openai_and_the_client_says_so() -> None:
    with OpenAIServer(context_limit=50) as srv, OpenAIBackend(srv.base_url, model="m") as llm:
        with pytest.raises(ContextTooLong, match="maximum context length is 50") as info:
            llm.complete([{"role": "user", "content": "word " * 200}])
        assert info.value.status == 400 and not info.value.retryable
        assert len(srv.requests) == 1  # not retried by the client either


def test_context_length_exceeded_compacts_and_retries_once(sqlite_url: str) -> None:
    store = Store.from_url(sqlite_url)
    # The agent is told 4k; the model behind the URL really holds 2k.
    store.save_agent(
        "a", persona="I track clients.", model={"context_window": 4096, "reply_tokens": 256}
    )
    with OpenAIServer(context_limit=2048) as srv:
        run_id = run(store, srv, chatty(steps=40, ask_at=39))
        requests = len(srv.requests)
    run_record = store.get_run(run_id)
    assert run_record.status == COMPLETED, run_record.error
    made = calls(store, run_id)
    purposes = [c["purpose"] for c in made]
    assert purposes.count("refused") == 1 and purposes[-1] == "ask"
    ask = made[-1]
    assert ask["usage_in"] is not None and ask["usage_in"] <= 2048
    assert ask["tokens_out"] >= 1
    assert store.summaries(run_id), "the retry compacted the conversation"
    assert requests == len(made)  # one request per recorded call, nothing hidden
    assert all(c["prompt_tokens"] <= 2048 for c in made if c["purpose"] != "refused")
    store.close()


def test_a_prompt_the_model_cannot_hold_fails_the_run_at_once(sqlite_url: str) -> None:
    store = Store.from_url(sqlite_url)
    store.save_agent("a", persona="I track clients. " * 40)
    with OpenAIServer(context_limit=300) as srv:
        run_id = run(store, srv, chatty(steps=2, ask_at=0), max_retries=3)
        sent = len(srv.requests)
    failed = store.get_run(run_id)
    assert failed.status == FAILED and "too long" in (failed.error or "")
    assert sent == 2  # the call, and its one smaller retry; no step retries after that
    assert not [e for e in store.events(run_id) if e.kind == "retried"]
    store.close()


def test_any_other_400_fails_at_once_and_is_not_retried(sqlite_url: str) -> None:
    store = Store.from_url(sqlite_url)
    store.save_agent("a", persona="p", model={"model": "no-such-model"})
    with OpenAIServer() as srv:
        srv.plan(
            status=400,
            body={
                "error": {
                    "message": "The model does not exist",
                    "type": "invalid_request_error",
                    "code": "model_not_found",
                }
            },
        )
        run_id = run(store, srv, chatty(steps=1, ask_at=0), max_retries=3)
        sent = len(srv.requests)
    failed = store.get_run(run_id)
    assert failed.status == FAILED and "model does not exist" in (failed.error or "")
    assert sent == 1
    assert not [e for e in store.events(run_id) if e.kind == "retried"]
    store.close()


def test_transient_failures_are_still_retried(sqlite_url: str) -> None:
    store = Store.from_url(sqlite_url)
    store.save_agent("a", persona="p")
    with OpenAIServer() as srv:
        srv.plan(status=503, times=1)
        with OpenAIBackend(srv.base_url, model="m", max_retries=0) as llm:
            with pytest.raises(LLMError) as info:
                llm.complete([{"role": "user", "content": "x"}])
    assert info.value.retryable and info.value.status is None
    store.close()
