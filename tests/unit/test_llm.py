"""LLM backends: the OpenAI-compatible client against a real loopback server, and the
scripted backend the demo runs on."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from pausepoint.persistence.errors import ConfigurationError, LLMError
from pausepoint.tasks.llm import (
    LLMBackend,
    Message,
    OpenAIBackend,
    ScriptedBackend,
    build_backend,
)
from tests.openai_server import OpenAIServer

SECRET = "sk-test-very-secret-0123456789"


class FakeSleep:
    """Records requested delays instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv


@pytest.fixture
def sleep() -> FakeSleep:
    return FakeSleep()


@pytest.fixture
def backend(server: OpenAIServer, sleep: FakeSleep) -> Iterator[OpenAIBackend]:
    with OpenAIBackend(
        server.base_url, model="echo-1", timeout=2.0, max_retries=3, sleep=sleep
    ) as b:
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


def test_auth_and_idempotency_headers_are_sent(sleep: FakeSleep) -> None:
    with (
        OpenAIServer(api_key=SECRET) as srv,
        OpenAIBackend(srv.base_url, model="m", api_key=SECRET, timeout=2.0, sleep=sleep) as b,
    ):
        assert b.complete(user("auth me"), idempotency_key="run-1:step-2") == "echo: auth me"
        headers = srv.requests[0].headers
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert headers["idempotency-key"] == "run-1:step-2"


def test_idempotency_key_is_reused_on_every_retry(
    server: OpenAIServer, backend: OpenAIBackend
) -> None:
    server.plan(status=503, headers={"Retry-After": "0"}, times=2)
    assert backend.complete(user("once"), idempotency_key="k-42") == "echo: once"
    keys = [r.headers.get("idempotency-key") for r in server.requests]
    assert keys == ["k-42", "k-42", "k-42"]


# -- OpenAIBackend: retries ------------------------------------------------------


def test_retries_429_honouring_retry_after(
    server: OpenAIServer, backend: OpenAIBackend, sleep: FakeSleep
) -> None:
    server.plan(status=429, headers={"Retry-After": "3"}, times=2)
    assert backend.complete(user("busy")) == "echo: busy"
    assert len(server.requests) == 3
    assert sleep.delays == [3.0, 3.0]


def test_retry_after_is_capped_at_max_backoff(server: OpenAIServer, sleep: FakeSleep) -> None:
    server.plan(status=429, headers={"Retry-After": "120"})
    with OpenAIBackend(server.base_url, model="m", max_backoff=5.0, sleep=sleep) as b:
        assert b.complete(user("later")) == "echo: later"
    assert sleep.delays == [5.0]


def test_retries_5xx_with_growing_jittered_backoff(
    server: OpenAIServer, backend: OpenAIBackend, sleep: FakeSleep
) -> None:
    server.plan(status=500)
    server.plan(status=503)
    server.plan(status=502)
    assert backend.complete(user("flaky")) == "echo: flaky"
    assert len(server.requests) == 4
    d1, d2, d3 = sleep.delays
    # backoff=0.5 doubling, plus up to 25% jitter
    assert 0.5 <= d1 <= 0.625
    assert 1.0 <= d2 <= 1.25
    assert 2.0 <= d3 <= 2.5
    assert d1 < d2 < d3


def test_backoff_is_capped_at_max_backoff(server: OpenAIServer, sleep: FakeSleep) -> None:
    server.plan(status=500, times=5)
    with OpenAIBackend(
        server.base_url, model="m", max_retries=5, backoff=1.0, max_backoff=3.0, sleep=sleep
    ) as b:
        b.complete(user("cap"))
    assert len(sleep.delays) == 5
    assert max(sleep.delays) == 3.0
    assert sleep.delays[2:] == [3.0, 3.0, 3.0]


def test_gives_up_after_max_retries(
    server: OpenAIServer, backend: OpenAIBackend, sleep: FakeSleep
) -> None:
    server.plan(status=503, raw=b"<html>upstream overloaded</html>", times=10)
    with pytest.raises(LLMError) as info:
        backend.complete(user("never"))
    message = str(info.value)
    assert "503" in message
    assert "4 attempts" in message
    assert "upstream overloaded" in message
    assert len(server.requests) == 4  # 1 try + max_retries=3
    assert len(sleep.delays) == 3


def test_zero_retries_fails_on_first_transient_error(
    server: OpenAIServer, sleep: FakeSleep
) -> None:
    server.plan(status=500)
    with (
        OpenAIBackend(server.base_url, model="m", max_retries=0, sleep=sleep) as b,
        pytest.raises(LLMError, match="1 attempt;"),
    ):
        b.complete(user("x"))
    assert sleep.delays == []


def test_long_error_bodies_are_excerpted(server: OpenAIServer, sleep: FakeSleep) -> None:
    server.plan(status=500, raw=b"x" * 5000)
    with (
        OpenAIBackend(server.base_url, model="m", max_retries=0, sleep=sleep) as b,
        pytest.raises(LLMError) as info,
    ):
        b.complete(user("x"))
    assert len(str(info.value)) < 400


def test_read_timeout_is_retried_then_succeeds(server: OpenAIServer, sleep: FakeSleep) -> None:
    server.plan(delay=2.0)
    with OpenAIBackend(server.base_url, model="m", timeout=0.2, sleep=sleep) as b:
        assert b.complete(user("slow")) == "echo: slow"
    assert len(server.requests) == 2
    assert len(sleep.delays) == 1


def test_read_timeouts_exhaust_retries(server: OpenAIServer, sleep: FakeSleep) -> None:
    server.plan(delay=2.0, times=2)
    with (
        OpenAIBackend(server.base_url, model="m", timeout=0.1, max_retries=1, sleep=sleep) as b,
        pytest.raises(LLMError, match=r"after 2 attempts.*ReadTimeout"),
    ):
        b.complete(user("slow"))


def test_connection_refused_is_retried_then_raises(sleep: FakeSleep) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with (
        OpenAIBackend(url, model="m", timeout=1.0, max_retries=2, sleep=sleep) as b,
        pytest.raises(LLMError, match=r"after 3 attempts.*ConnectError"),
    ):
        b.complete(user("anyone?"))
    assert len(sleep.delays) == 2


# -- OpenAIBackend: immediate failures -------------------------------------------


def test_401_raises_at_once_with_server_message(sleep: FakeSleep) -> None:
    with (
        OpenAIServer(api_key=SECRET) as srv,
        OpenAIBackend(srv.base_url, model="m", api_key="sk-wrong-key", sleep=sleep) as b,
    ):
        with pytest.raises(LLMError) as info:
            b.complete(user("let me in"))
        assert len(srv.requests) == 1
    assert "401" in str(info.value)
    assert "Incorrect API key provided" in str(info.value)
    assert sleep.delays == []


@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_other_client_errors_raise_at_once(
    server: OpenAIServer, backend: OpenAIBackend, sleep: FakeSleep, status: int
) -> None:
    server.plan(status=status, body={"error": {"message": "messages must not be empty"}})
    with pytest.raises(LLMError, match=rf"HTTP {status}: messages must not be empty"):
        backend.complete(user("bad"))
    assert len(server.requests) == 1
    assert sleep.delays == []


def test_api_key_never_appears_in_errors_or_logs(
    server: OpenAIServer, sleep: FakeSleep, caplog: pytest.LogCaptureFixture
) -> None:
    # A server that echoes the presented key back, on a retryable and a fatal error.
    echoed = {"error": {"message": f"key {SECRET} is rate limited"}}
    server.plan(status=429, headers={"Retry-After": "0"}, body=echoed)
    server.plan(status=401, body={"error": {"message": f"bad key {SECRET}"}})
    caplog.set_level(logging.DEBUG)
    with (
        OpenAIBackend(server.base_url, model="m", api_key=SECRET, sleep=sleep) as b,
        pytest.raises(LLMError) as info,
    ):
        b.complete(user("x"))
    assert "bad key ***" in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(b)
    assert "rate limited" in caplog.text
    assert SECRET not in caplog.text


def test_api_key_not_in_error_after_retries_exhausted(
    server: OpenAIServer, sleep: FakeSleep
) -> None:
    server.plan(status=500, body={"error": {"message": f"boom {SECRET}"}}, times=3)
    with (
        OpenAIBackend(server.base_url, model="m", api_key=SECRET, max_retries=2, sleep=sleep) as b,
        pytest.raises(LLMError) as info,
    ):
        b.complete(user("x"))
    assert "boom" in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    "planned",
    [
        {"raw": b"not json"},
        {"body": {"id": "x", "object": "chat.completion", "choices": []}},
        {"body": {"choices": [{"message": {"role": "assistant", "content": None}}]}},
        {"body": ["a", "list"]},
    ],
    ids=["not-json", "no-choices", "null-content", "not-an-object"],
)
def test_malformed_success_body_raises(
    server: OpenAIServer, backend: OpenAIBackend, sleep: FakeSleep, planned: dict[str, object]
) -> None:
    server.plan(status=200, **planned)  # type: ignore[arg-type]
    with pytest.raises(LLMError, match="LLM response"):
        backend.complete(user("x"))
    assert len(server.requests) == 1
    assert sleep.delays == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_url": "localhost:8080/v1"},
        {"model": ""},
        {"timeout": 0.0},
        {"max_retries": -1},
    ],
)
def test_constructor_rejects_bad_settings(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"base_url": "http://127.0.0.1:1/v1", "model": "m"}
    args.update(kwargs)
    with pytest.raises(ConfigurationError):
        OpenAIBackend(**args)  # type: ignore[arg-type]


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
