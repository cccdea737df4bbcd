"""LLM backends: the OpenAI-compatible client against a real loopback server (never a
mock of the openai package), the scripted backend the demo runs on, and the ``chat``
helper between them and the runtime."""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys
import time
import types
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest

from pausepoint.persistence.errors import ConfigurationError, ContextTooLong, LLMError
from pausepoint.tasks.llm import (
    Completion,
    LLMBackend,
    Message,
    OpenAIBackend,
    ScriptedBackend,
    ToolCall,
    build_backend,
    chat,
)
from pausepoint.tasks.scripted import tool_call
from tests.openai_server import OpenAIServer

SECRET = "sk-test-very-secret-0123456789"
# The openai client waits what a server's Retry-After says (when above 0 and at most two
# minutes), else 0.5 s doubling: a short Retry-After keeps these tests fast.
SOON = {"Retry-After": "0.01"}
LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup_customer",
        "description": "Find a customer by id.",
        "parameters": {
            "type": "object",
            "properties": {"id": {"type": "integer"}},
            "required": ["id"],
        },
    },
}


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv


@pytest.fixture
def backend(server: OpenAIServer) -> Iterator[OpenAIBackend]:
    with OpenAIBackend(server.base_url, model="echo-1", timeout=2.0, max_retries=3) as b:
        yield b


def user(text: str) -> list[Message]:
    return [{"role": "user", "content": text}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- OpenAIBackend: happy path ------------------------------------------------


def test_returns_first_choice_content_and_sends_model_and_messages(
    server: OpenAIServer, backend: OpenAIBackend
) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hello there"},
    ]
    assert backend.complete(messages) == "echo: hello there"

    (request,) = server.requests
    assert request.method == "POST"
    assert request.path == "/v1/chat/completions"
    assert request.body == {"model": "echo-1", "messages": messages}
    assert request.headers["content-type"] == "application/json"
    assert "authorization" not in request.headers
    assert "idempotency-key" not in request.headers


def test_chat_reports_usage_and_finish_reason(server: OpenAIServer, backend: OpenAIBackend) -> None:
    reply = backend.chat(user("count me"), max_tokens=20)
    assert reply == Completion(
        "echo: count me", reply.prompt_tokens, reply.completion_tokens, (), "stop"
    )
    assert reply.prompt_tokens == server.prompt_tokens(server.requests[0].body)
    assert reply.completion_tokens == server.counter.count("echo: count me")
    assert server.requests[0].body["max_tokens"] == 20


def test_model_override_and_temperature_are_sent(
    server: OpenAIServer, backend: OpenAIBackend
) -> None:
    backend.complete(user("hi"), model="other-model", temperature=0.0)
    body = server.requests[0].body
    assert body["model"] == "other-model"
    assert body["temperature"] == 0.0


def test_planned_content_is_returned(server: OpenAIServer, backend: OpenAIBackend) -> None:
    server.plan(content="RECOMMENDATION: APPROVE")
    assert backend.complete(user("x")) == "RECOMMENDATION: APPROVE"
    assert backend.complete(user("y")) == "echo: y"


@pytest.mark.parametrize("suffix", ["", "/"])
def test_base_url_with_or_without_trailing_slash(server: OpenAIServer, suffix: str) -> None:
    with OpenAIBackend(server.base_url + suffix, model="m", timeout=2.0) as b:
        assert b.complete(user("slash")) == "echo: slash"
    assert server.requests[0].path == "/v1/chat/completions"


def test_auth_and_idempotency_headers_are_sent() -> None:
    with (
        OpenAIServer(api_key=SECRET) as srv,
        OpenAIBackend(srv.base_url, model="m", api_key=SECRET, timeout=2.0) as b,
    ):
        assert b.complete(user("auth me"), idempotency_key="run-1:step-2") == "echo: auth me"
        headers = srv.requests[0].headers
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert headers["idempotency-key"] == "run-1:step-2"


def test_nothing_is_taken_from_openai_environment_variables(
    server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Left alone, the openai package would send this key to whatever server is configured.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-env")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-env")
    with OpenAIBackend(server.base_url, model="m", timeout=2.0) as b:
        b.complete(user("who am i"))
    headers = server.requests[0].headers
    assert "authorization" not in headers
    assert "openai-organization" not in headers and "openai-project" not in headers


def test_a_custom_transport_is_used(server: OpenAIServer) -> None:
    seen: list[str] = []

    class Counting(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(str(request.url))
            return super().handle_request(request)

    with OpenAIBackend(server.base_url, model="m", timeout=2.0, transport=Counting()) as b:
        assert b.complete(user("via transport")) == "echo: via transport"
    assert seen == [server.base_url + "/chat/completions"]


# -- OpenAIBackend: tool calls --------------------------------------------------------


def test_tools_are_sent_in_openai_format(server: OpenAIServer, backend: OpenAIBackend) -> None:
    choice = {"type": "function", "function": {"name": "lookup_customer"}}
    backend.chat(user("find 7"), tools=[LOOKUP], tool_choice=choice)
    chat(backend, user("find 8"), tools=[LOOKUP], tool_choice="auto")
    first, second = (r.body for r in server.requests)
    assert first["tools"] == [LOOKUP] and first["tool_choice"] == choice
    assert second["tools"] == [LOOKUP] and second["tool_choice"] == "auto"
    backend.chat(user("no tools"))
    assert "tools" not in server.requests[-1].body
    assert "tool_choice" not in server.requests[-1].body


def test_tool_calls_are_parsed_from_the_reply(server: OpenAIServer, backend: OpenAIBackend) -> None:
    server.plan(
        tool_calls=[
            {"name": "lookup_customer", "arguments": {"id": 7}, "id": "call_a"},
            {"name": "lookup_customer", "arguments": '{"id": 8'},  # malformed, kept raw
        ]
    )
    reply = backend.chat(user("find 7 and 8"), tools=[LOOKUP])
    first, second = reply.tool_calls
    assert first == ToolCall("call_a", "lookup_customer", '{"id": 7}')
    assert second.name == "lookup_customer" and second.arguments == '{"id": 8'
    assert second.id  # the server named it
    assert reply.text == ""  # content null
    assert reply.finish_reason == "tool_calls"
    assert reply.prompt_tokens and reply.completion_tokens
    assert backend.complete(user("then text")) == "echo: then text"


def test_a_reply_callable_can_answer_with_text_and_calls() -> None:
    def answer(body: dict[str, Any]) -> dict[str, Any]:
        return {
            "content": "Looking it up.",
            "tool_calls": [{"name": "lookup_customer", "arguments": {"id": 1}}],
        }

    with OpenAIServer(reply=answer) as srv, OpenAIBackend(srv.base_url, model="m") as b:
        reply = b.chat(user("who is 1?"), tools=[LOOKUP])
    assert reply.text == "Looking it up."
    assert [(c.name, json.loads(c.arguments)) for c in reply.tool_calls] == [
        ("lookup_customer", {"id": 1})
    ]


def test_tool_call_turns_are_sent_back_and_counted(
    server: OpenAIServer, backend: OpenAIBackend
) -> None:
    call = ToolCall("call_1", "lookup_customer", '{"id": 7, "include": "every order ever"}')
    turns: list[Message] = [
        *user("find 7"),
        {"role": "assistant", "content": None, "tool_calls": [call.as_openai()]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"name": "Ada"}'},
    ]
    with_calls = backend.chat(turns, tools=[LOOKUP])
    sent = server.requests[-1].body["messages"]
    assert sent == turns
    assert ToolCall.from_openai(sent[1]["tool_calls"][0]) == call
    without = backend.chat([turns[0], {**turns[1], "tool_calls": []}, turns[2]])
    assert with_calls.prompt_tokens is not None and without.prompt_tokens is not None
    assert with_calls.prompt_tokens > without.prompt_tokens


def test_tool_call_round_trip_through_the_openai_shape() -> None:
    call = tool_call("lookup_customer", {"id": 7}, id="call_x")
    assert call.as_openai() == {
        "id": "call_x",
        "type": "function",
        "function": {"name": "lookup_customer", "arguments": '{"id":7}'},
    }
    assert ToolCall.from_openai(call.as_openai()) == call
    # Some servers send the arguments as an object rather than JSON text.
    loose = {"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}
    assert ToolCall.from_openai(loose).arguments == '{"a": 1}'


# -- OpenAIBackend: retries ------------------------------------------------------


def test_idempotency_key_is_the_same_on_every_retry(
    server: OpenAIServer, backend: OpenAIBackend
) -> None:
    server.plan(status=429, headers=SOON)
    server.plan(status=500, headers=SOON)
    server.plan(status=503, headers=SOON)
    assert backend.complete(user("once"), idempotency_key="k-42") == "echo: once"
    keys = [r.headers.get("idempotency-key") for r in server.requests]
    assert keys == ["k-42"] * 4


def test_retries_429_honouring_retry_after(server: OpenAIServer, backend: OpenAIBackend) -> None:
    server.plan(status=429, headers=SOON, times=2)
    started = time.monotonic()
    assert backend.complete(user("busy")) == "echo: busy"
    assert len(server.requests) == 3
    # Without the header the client would wait 0.375 s and then 0.75 s at least.
    assert time.monotonic() - started < 1.0


def test_a_retry_after_of_minutes_is_not_waited_for(
    server: OpenAIServer, backend: OpenAIBackend
) -> None:
    server.plan(status=429, headers={"Retry-After": "600"})
    started = time.monotonic()
    try:
        text = backend.complete(user("later"))
    except LLMError as e:
        # openai 3 refuses to wait past two minutes: the step's own retry may, later.
        assert e.retryable and re.search(r"after 1 attempt;.*HTTP 429", str(e))
    else:
        assert text == "echo: later"  # older clients retry after their own short backoff
    assert time.monotonic() - started < 5


def test_retries_5xx_then_succeeds(server: OpenAIServer, backend: OpenAIBackend) -> None:
    for status in (500, 503, 502):
        server.plan(status=status, headers=SOON)
    assert backend.complete(user("flaky")) == "echo: flaky"
    assert len(server.requests) == 4


def test_gives_up_after_max_retries(server: OpenAIServer, backend: OpenAIBackend) -> None:
    server.plan(status=503, headers=SOON, raw=b"<html>upstream overloaded</html>", times=10)
    with pytest.raises(LLMError) as info:
        backend.complete(user("never"))
    message = str(info.value)
    assert "503" in message
    assert "4 attempts" in message
    assert "upstream overloaded" in message
    assert server.base_url + "/chat/completions" in message
    assert info.value.retryable and info.value.status is None
    assert len(server.requests) == 4  # 1 try + max_retries=3


def test_zero_retries_fails_on_first_transient_error(server: OpenAIServer) -> None:
    server.plan(status=500)
    with (
        OpenAIBackend(server.base_url, model="m", max_retries=0) as b,
        pytest.raises(LLMError, match="1 attempt;"),
    ):
        b.complete(user("x"))
    assert len(server.requests) == 1


def test_long_error_bodies_are_excerpted(server: OpenAIServer) -> None:
    server.plan(status=500, raw=b"x" * 5000)
    with (
        OpenAIBackend(server.base_url, model="m", max_retries=0) as b,
        pytest.raises(LLMError) as info,
    ):
        b.complete(user("x"))
    assert len(str(info.value)) < 400


def test_read_timeout_is_retried_then_succeeds(server: OpenAIServer) -> None:
    server.plan(delay=2.0)
    with OpenAIBackend(server.base_url, model="m", timeout=0.2) as b:
        assert b.complete(user("slow"), idempotency_key="k-slow") == "echo: slow"
    assert len(server.requests) == 2
    assert {r.headers["idempotency-key"] for r in server.requests} == {"k-slow"}


def test_read_timeouts_exhaust_retries(server: OpenAIServer) -> None:
    server.plan(delay=2.0, times=2)
    with (
        OpenAIBackend(server.base_url, model="m", timeout=0.1, max_retries=1) as b,
        pytest.raises(LLMError, match=r"after 2 attempts.*ReadTimeout") as info,
    ):
        b.complete(user("slow"))
    assert info.value.retryable


def test_connection_refused_is_retried_then_raises() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with (
        OpenAIBackend(url, model="m", timeout=1.0, max_retries=1) as b,
        pytest.raises(LLMError, match=r"after 2 attempts.*ConnectError") as info,
    ):
        b.complete(user("anyone?"))
    assert info.value.retryable


# -- OpenAIBackend: immediate failures -------------------------------------------


def test_401_raises_at_once_with_server_message() -> None:
    with (
        OpenAIServer(api_key=SECRET) as srv,
        OpenAIBackend(srv.base_url, model="m", api_key="sk-wrong-key") as b,
    ):
        with pytest.raises(LLMError) as info:
            b.complete(user("let me in"))
        assert len(srv.requests) == 1
    assert "401" in str(info.value)
    assert "Incorrect API key provided" in str(info.value)
    assert info.value.status == 401 and not info.value.retryable


@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_other_client_errors_raise_at_once(
    server: OpenAIServer, backend: OpenAIBackend, status: int
) -> None:
    server.plan(status=status, body={"error": {"message": "messages must not be empty"}})
    with pytest.raises(LLMError, match=rf"HTTP {status}: messages must not be empty") as info:
        backend.complete(user("bad"))
    assert not isinstance(info.value, ContextTooLong)
    assert info.value.status == status and not info.value.retryable
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, {"message": "Please reduce the length.", "code": "context_length_exceeded"}),
        (400, {"message": "This model's maximum context length is 8192 tokens."}),
        (413, {"message": "prompt is too long: 250000 tokens > 200000 maximum"}),
    ],
)
def test_context_too_long_is_its_own_error(
    server: OpenAIServer, backend: OpenAIBackend, status: int, error: dict[str, str]
) -> None:
    server.plan(status=status, body={"error": error})
    with pytest.raises(ContextTooLong) as info:
        backend.complete(user("a very long prompt"))
    assert info.value.status == status and not info.value.retryable
    assert len(server.requests) == 1


def test_the_server_context_limit_is_a_context_too_long() -> None:
    with OpenAIServer(context_limit=40) as srv, OpenAIBackend(srv.base_url, model="m") as b:
        with pytest.raises(ContextTooLong, match="maximum context length is 40"):
            b.chat(user("word " * 100), tools=[LOOKUP])


def test_api_key_never_appears_in_errors_or_logs(
    server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A server that echoes the presented key back, on a retryable and a fatal error.
    echoed = {"error": {"message": f"key {SECRET} is rate limited"}}
    server.plan(status=429, headers=SOON, body=echoed)
    server.plan(status=401, body={"error": {"message": f"bad key {SECRET}"}})
    caplog.set_level(logging.DEBUG)
    with (
        OpenAIBackend(server.base_url, model="m", api_key=SECRET) as b,
        pytest.raises(LLMError) as info,
    ):
        b.complete(user("x"))
    assert "bad key ***" in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(b)
    assert "Retrying request" in caplog.text  # the client said it retried
    assert SECRET not in caplog.text


def test_api_key_not_in_error_after_retries_exhausted(server: OpenAIServer) -> None:
    server.plan(status=500, headers=SOON, body={"error": {"message": f"boom {SECRET}"}}, times=3)
    with (
        OpenAIBackend(server.base_url, model="m", api_key=SECRET, max_retries=2) as b,
        pytest.raises(LLMError) as info,
    ):
        b.complete(user("x"))
    assert "boom ***" in str(info.value)
    assert SECRET not in str(info.value)


def test_errors_show_the_url_masked(server: OpenAIServer) -> None:
    server.plan(status=404)
    url = server.base_url.replace("http://", "http://user:url-secret@")
    with OpenAIBackend(url, model="m") as b, pytest.raises(LLMError) as info:
        b.complete(user("x"))
    assert "url-secret" not in str(info.value)
    assert "http://user:***@127.0.0.1" in str(info.value) and "HTTP 404" in str(info.value)


@pytest.mark.parametrize(
    "planned",
    [
        {"raw": b"not json"},
        {"body": {"id": "x", "object": "chat.completion", "choices": []}},
        {"body": {"choices": [{"message": {"role": "assistant", "content": None}}]}},
        {"body": {"choices": [{"message": {"content": None, "tool_calls": []}}]}},
        {"body": ["a", "list"]},
    ],
    ids=["not-json", "no-choices", "null-content", "no-content-no-calls", "not-an-object"],
)
def test_malformed_success_body_raises(
    server: OpenAIServer, backend: OpenAIBackend, planned: dict[str, object]
) -> None:
    server.plan(status=200, **planned)  # type: ignore[arg-type]
    with pytest.raises(LLMError, match="LLM response") as info:
        backend.complete(user("x"))
    assert len(str(info.value)) < 400
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_url": "localhost:8080/v1"},
        {"model": ""},
        {"timeout": 0.0},
        {"max_retries": -1},
        {"backoff": -1.0},
    ],
)
def test_constructor_rejects_bad_settings(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"base_url": "http://127.0.0.1:1/v1", "model": "m"}
    args.update(kwargs)
    with pytest.raises(ConfigurationError):
        OpenAIBackend(**args)  # type: ignore[arg-type]


# -- chat(): the runtime's one way to ask ------------------------------------------


class TextOnly:
    """A user's backend from before tools: ``complete`` only."""

    def complete(self, messages: Sequence[Message], **_: Any) -> str:
        return "plain"


class OldChat(TextOnly):
    """A user's backend whose ``chat`` predates tools (no ``tools`` parameter)."""

    def chat(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        temperature: float | None = None,
        idempotency_key: str | None = None,
        max_tokens: int | None = None,
    ) -> Completion:
        return Completion("old chat", 1, 2)


def test_chat_keeps_backends_without_tools_working() -> None:
    assert chat(TextOnly(), user("x")) == Completion("plain")
    assert chat(OldChat(), user("x"), max_tokens=5) == Completion("old chat", 1, 2)


def test_chat_refuses_tools_for_a_backend_with_only_complete() -> None:
    with pytest.raises(ConfigurationError, match="TextOnly"):
        chat(TextOnly(), user("x"), tools=[LOOKUP])


# -- ScriptedBackend -----------------------------------------------------------------

HEALTHY = "Please assess this loan application: amount 25000, income 60000, debt 5000."
OVER_INDEBTED = "Loan application. Amount: $25,000. Income $60,000. Existing debt: $30,000."


def test_scripted_is_deterministic_across_instances() -> None:
    transcripts: list[Sequence[Message]] = [
        user(HEALTHY),
        user(OVER_INDEBTED),
        user("Continue processing with approved status"),
        [{"role": "system", "content": "You are a loan officer. Be fair."}, *user("hi")],
    ]
    first = [ScriptedBackend().complete(t) for t in transcripts]
    second = [ScriptedBackend().complete(t, temperature=1.5, model="x") for t in transcripts]
    again = ScriptedBackend()
    assert first == second == [again.complete(t) for t in transcripts]
    assert first == [again.complete(t) for t in transcripts]


def test_scripted_is_an_llm_backend() -> None:
    assert isinstance(ScriptedBackend(), LLMBackend)


def test_healthy_application_is_approved() -> None:
    reply = ScriptedBackend().complete(user(HEALTHY))
    lines = reply.splitlines()
    assert "RECOMMENDATION: APPROVE" in lines
    assert "Risk level: LOW" in lines
    # (5000 + 25000/5) / 60000 = 0.17; 25000 / 60000 = 0.42
    assert "Debt-to-income ratio: 0.17" in reply
    assert "Loan-to-income ratio: 0.42" in reply


def test_over_indebted_application_is_declined() -> None:
    reply = ScriptedBackend().complete(user(OVER_INDEBTED))
    lines = reply.splitlines()
    assert "RECOMMENDATION: DECLINE" in lines
    assert "Risk level: HIGH" in lines
    # (30000 + 5000) / 60000 = 0.58 > 0.45
    assert "Debt-to-income ratio: 0.58" in reply


def test_loan_larger_than_five_times_income_is_declined() -> None:
    reply = ScriptedBackend().complete(user("loan amount=400000 income=70000 debt=0"))
    assert "RECOMMENDATION: DECLINE" in reply.splitlines()
    assert "Loan-to-income ratio: 5.71" in reply


@pytest.mark.parametrize(
    "text",
    [
        "loan amount=25000 income=60000 debt=5000",
        "Loan request - amount: 25,000; income $60,000; debt 5,000",
        "Applicant wants a $25,000 loan, annual income $60k, existing debt $5,000",
        "Application: borrow 25000 with salary 60000 and debts of 5000",
    ],
)
def test_loan_parsing_is_liberal(text: str) -> None:
    reply = ScriptedBackend().complete(user(text))
    assert "Requested amount: $25,000" in reply
    assert "Annual income: $60,000" in reply
    assert "Existing debt: $5,000" in reply
    assert "RECOMMENDATION: APPROVE" in reply.splitlines()


def test_medium_risk_band() -> None:
    # (10000 + 100000/5) / 80000 = 0.375: approved but not low risk
    reply = ScriptedBackend().complete(user("loan amount 100000 income 80000 debt 10000"))
    assert "RECOMMENDATION: APPROVE" in reply.splitlines()
    assert "Risk level: MEDIUM" in reply.splitlines()


def test_only_the_last_user_message_is_assessed() -> None:
    transcript = [
        {"role": "user", "content": OVER_INDEBTED},
        {"role": "assistant", "content": "RECOMMENDATION: DECLINE"},
        {"role": "user", "content": HEALTHY},
    ]
    assert "RECOMMENDATION: APPROVE" in ScriptedBackend().complete(transcript)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Continue processing with approved status", "Loan approved"),
        ("approved", "Loan approved"),
        ("The application was rejected by the reviewer.", "Application declined"),
        ("Continue processing with rejected status", "Application declined"),
        ("Decision: not approved", "Application declined"),
    ],
)
def test_follow_ups_repeat_the_decision(text: str, expected: str) -> None:
    reply = ScriptedBackend().complete(user(text))
    assert reply.startswith(expected)
    assert "RECOMMENDATION" not in reply


def test_follow_up_mentions_amount_when_given() -> None:
    reply = ScriptedBackend().complete(user("Loan amount 25000 approved, continue processing"))
    assert reply.startswith("Loan approved for $25,000")


def test_fallback_echo_mentions_task_and_persona() -> None:
    long_task = "Summarise the quarterly report " + "with many details " * 10
    reply = ScriptedBackend().complete(
        [
            {"role": "system", "content": "You are a meticulous analyst. You cite sources."},
            {"role": "user", "content": long_task},
        ]
    )
    assert reply.startswith("[scripted] Noted: Summarise the quarterly report")
    assert "You are a meticulous analyst." in reply
    assert "You cite sources" not in reply
    assert len(reply) < 200


def test_fallback_without_persona_or_user_message() -> None:
    assert ScriptedBackend().complete(user("ping")) == "[scripted] Noted: ping"
    assert ScriptedBackend().complete([]) == "[scripted] Noted: (no user message)"


def test_calls_are_recorded_as_copies() -> None:
    backend = ScriptedBackend()
    transcript = user("first")
    backend.complete(transcript)
    transcript[0]["content"] = "mutated"
    backend.complete(user("second"))
    assert backend.calls == [user("first"), user("second")]


def test_custom_rules_first_match_wins_with_templates_and_callables() -> None:
    def shout(messages: Sequence[Message]) -> str:
        return messages[-1]["content"].upper()

    backend = ScriptedBackend(
        rules=[
            (r"weather in (?P<city>\w+)", "Sunny in $city ($match); cost $5"),
            (r"^loud", shout),
            (r"weather", "never reached for weather in ..."),
        ],
        default="no rule for: $message",
    )
    assert backend.complete(user("What's the WEATHER in Oslo?")) == (
        "Sunny in Oslo (WEATHER in Oslo); cost $5"
    )
    assert backend.complete(user("loud noises")) == "LOUD NOISES"
    assert backend.complete(user("something else")) == "no rule for: something else"
    # custom rules replace the built-in ones
    assert "RECOMMENDATION" not in backend.complete(user(HEALTHY))


def test_rules_match_only_the_last_user_message() -> None:
    backend = ScriptedBackend(rules=[("secret", "found")], default="missing")
    transcript = [
        {"role": "system", "content": "secret"},
        {"role": "user", "content": "secret"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "plain"},
    ]
    assert backend.complete(transcript) == "missing"


def test_callable_default_and_empty_rules() -> None:
    backend = ScriptedBackend(rules=[], default=lambda messages: f"{len(messages)} messages")
    assert backend.complete(user(HEALTHY)) == "1 messages"
    assert ScriptedBackend(rules=[]).complete(user("hey")) == "[scripted] Noted: hey"


def test_invalid_rule_pattern_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="not a valid regex"):
        ScriptedBackend(rules=[("(unclosed", "x")])


def test_callable_returning_non_string_is_an_llm_error() -> None:
    def not_text(_messages: Sequence[Message]) -> Any:
        return None

    backend = ScriptedBackend(rules=[(".", not_text)])
    with pytest.raises(LLMError, match="not str"):
        backend.complete(user("x"))


# -- ScriptedBackend: tool calls --------------------------------------------------


def lookup_then_answer(messages: Sequence[Message]) -> str | Completion:
    """Call the tool once, then answer from its result."""
    results = [m for m in messages if m.get("role") == "tool"]
    if results:
        return f"Customer: {json.loads(results[-1]['content'])['name']}"
    return Completion("", tool_calls=(tool_call("lookup_customer", {"id": 7}),))


def test_a_callable_rule_answers_with_a_tool_call() -> None:
    backend = ScriptedBackend(rules=[("customer", lookup_then_answer)])
    asked = backend.chat(user("who is customer 7?"), tools=[LOOKUP])
    (call,) = asked.tool_calls
    assert call.name == "lookup_customer" and json.loads(call.arguments) == {"id": 7}
    assert call.id.startswith("call_")
    assert asked.text == "" and asked.finish_reason == "tool_calls"
    assert asked.completion_tokens and asked.completion_tokens > 0

    turns = [
        *user("who is customer 7?"),
        {"role": "assistant", "content": None, "tool_calls": [call.as_openai()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"name": "Ada"}'},
    ]
    answered = chat(backend, turns, tools=[LOOKUP])
    assert answered.text == "Customer: Ada" and answered.tool_calls == ()
    assert answered.finish_reason == "stop"
    assert backend.offered == [[LOOKUP], [LOOKUP]]
    assert backend.calls[1] == turns


def test_offered_lines_up_with_calls() -> None:
    backend = ScriptedBackend()
    backend.complete(user("hello"))
    backend.chat(user("again"), tools=[LOOKUP])
    assert backend.offered == [[], [LOOKUP]]
    assert len(backend.calls) == 2


def test_tool_call_ids_are_deterministic_and_placed() -> None:
    transcript = user("customer please")
    ids = [
        ScriptedBackend(rules=[("customer", lookup_then_answer)]).chat(transcript).tool_calls[0].id
        for _ in range(2)
    ]
    assert ids[0] == ids[1]
    # The same call asked later in a longer conversation is another call: another id.
    longer = [*transcript, {"role": "assistant", "content": "?"}, *transcript]
    later = ScriptedBackend(rules=[("customer", lookup_then_answer)]).chat(longer)
    assert later.tool_calls[0].id != ids[0]
    # An id given by the script is kept as it is.
    fixed = ScriptedBackend(
        rules=[(".", lambda _m: Completion("", tool_calls=(tool_call("f", "{}", id="mine"),)))]
    )
    assert fixed.chat(transcript).tool_calls[0].id == "mine"
    # And in another process, the same id: nothing random, nothing per process.
    code = (
        "from pausepoint.tasks.scripted import ScriptedBackend, tool_call\n"
        "from pausepoint.tasks.llm import Completion\n"
        "b = ScriptedBackend(rules=[('.', lambda m: Completion('', tool_calls="
        "(tool_call('lookup_customer', {'id': 7}),)))])\n"
        "print(b.chat([{'role': 'user', 'content': 'customer please'}]).tool_calls[0].id)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ids[0]


def test_tool_calls_count_in_the_prompt_usage() -> None:
    call = tool_call("lookup_customer", {"id": 7, "fields": ["name", "orders", "address"]})
    plain = [*user("x"), {"role": "assistant", "content": None}]
    calling = [*user("x"), {"role": "assistant", "content": None, "tool_calls": [call.as_openai()]}]
    a, b = ScriptedBackend().chat(plain), ScriptedBackend().chat(calling)
    assert a.prompt_tokens is not None and b.prompt_tokens is not None
    assert b.prompt_tokens > a.prompt_tokens


def fake_tools_module(monkeypatch: pytest.MonkeyPatch, answer: Completion | None) -> list[Any]:
    seen: list[Any] = []
    module = types.ModuleType("pausepoint.tasks.scripted_tools")

    def reply(transcript: Sequence[Message], tools: Sequence[Any]) -> Completion | None:
        seen.append((list(transcript), list(tools)))
        return answer

    module.reply = reply  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pausepoint.tasks.scripted_tools", module)
    return seen


def test_builtin_rules_ask_the_tools_module_when_tools_are_offered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = fake_tools_module(monkeypatch, Completion("", tool_calls=(tool_call("f", {}),)))
    reply = ScriptedBackend().chat(user(HEALTHY), tools=[LOOKUP])
    assert [c.name for c in reply.tool_calls] == ["f"]
    assert seen == [(user(HEALTHY), [LOOKUP])]
    # No tools offered, or tools forbidden: the module is not asked.
    assert "RECOMMENDATION: APPROVE" in ScriptedBackend().complete(user(HEALTHY))
    forbidden = ScriptedBackend().chat(user(HEALTHY), tools=[LOOKUP], tool_choice="none")
    assert forbidden.tool_calls == () and len(seen) == 1


def test_builtin_text_answers_when_the_tools_module_passes_or_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_tools_module(monkeypatch, None)
    assert "RECOMMENDATION: APPROVE" in ScriptedBackend().chat(user(HEALTHY), tools=[LOOKUP]).text
    monkeypatch.setitem(sys.modules, "pausepoint.tasks.scripted_tools", None)  # ImportError
    reply = ScriptedBackend().chat(user(HEALTHY), tools=[LOOKUP])
    assert "RECOMMENDATION: APPROVE" in reply.text and reply.tool_calls == ()


def test_the_backend_modules_import_in_any_order() -> None:
    for first in ("scripted", "openai_backend", "llm"):
        code = (
            f"import pausepoint.tasks.{first}\n"
            "from pausepoint.tasks.llm import OpenAIBackend, Reply, ScriptedBackend\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


# -- build_backend -------------------------------------------------------------------


def test_build_scripted() -> None:
    backend = build_backend(
        "scripted", base_url=None, model="m", api_key=None, timeout=1.0, max_retries=0
    )
    assert isinstance(backend, ScriptedBackend)


def test_build_openai(server: OpenAIServer) -> None:
    backend = build_backend(
        " OpenAI ",
        base_url=server.base_url,
        model="gpt-test",
        api_key=SECRET,
        timeout=2.0,
        max_retries=1,
    )
    assert isinstance(backend, OpenAIBackend)
    with backend:
        assert backend.max_retries == 1
        assert backend.complete(user("built")) == "echo: built"
    assert server.requests[0].body["model"] == "gpt-test"


def test_build_openai_without_base_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="base URL"):
        build_backend("openai", base_url=None, model="m", api_key=None, timeout=1, max_retries=0)


def test_build_unknown_kind_names_accepted_values() -> None:
    with pytest.raises(ConfigurationError, match=r"'anthropic'.*scripted, openai"):
        build_backend("anthropic", base_url=None, model="m", api_key=None, timeout=1, max_retries=0)


# -- the loopback server itself ------------------------------------------------------


def test_server_speaks_openai_shape_and_checks_auth() -> None:
    import httpx

    with OpenAIServer(api_key=SECRET) as srv, httpx.Client(timeout=2.0) as client:
        url = srv.base_url + "/chat/completions"
        denied = client.post(url, json={"model": "m", "messages": user("x")})
        assert denied.status_code == 401
        assert denied.json()["error"]["code"] == "invalid_api_key"

        ok = client.post(
            url,
            json={"model": "m", "messages": user("two words")},
            headers={"Authorization": f"Bearer {SECRET}"},
        )
        data = ok.json()
        assert data["object"] == "chat.completion"
        assert data["model"] == "m"
        assert data["choices"][0]["message"] == {"role": "assistant", "content": "echo: two words"}
        assert data["choices"][0]["finish_reason"] == "stop"
        assert data["usage"]["total_tokens"] == (
            data["usage"]["prompt_tokens"] + data["usage"]["completion_tokens"]
        )
        assert [r.path for r in srv.requests] == ["/v1/chat/completions"] * 2
