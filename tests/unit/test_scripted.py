"""The scripted backend: deterministic replies, built-in loan rules, tool calls; and the
``chat`` helper over backends old and new."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from collections.abc import Sequence
from typing import Any

import pytest

from pausepoint.persistence.errors import ConfigurationError, LLMError
from pausepoint.tasks.llm import (
    Completion,
    LLMBackend,
    Message,
    ScriptedBackend,
    chat,
)
from pausepoint.tasks.scripted import tool_call

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


def user(text: str) -> list[Message]:
    return [{"role": "user", "content": text}]


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
