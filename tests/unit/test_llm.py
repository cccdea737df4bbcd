"""LLM backends: the OpenAI-compatible client against a real loopback server (never a
mock of the openai package), the scripted backend the demo runs on, and the ``chat``
helper between them and the runtime."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pausepoint.persistence.errors import ConfigurationError, ContextTooLong, LLMError
from pausepoint.tasks.llm import (
    Completion,
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
