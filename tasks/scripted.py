"""A deterministic, offline language model for the demo and the tests.

:class:`ScriptedBackend` answers from rules (a regex on the last user message, a
template or a callable reply) or, with none given, from built-in rules that make the
loan demo meaningful. A callable reply may answer with tool calls by returning a
:class:`~pausepoint.tasks.llm.Completion`; :func:`tool_call` makes one.

Everything is a pure function of the transcript: the same messages give the same reply,
the same usage and the same tool call ids in any process.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from pausepoint.persistence.errors import ConfigurationError, ContextTooLong, LLMError
from pausepoint.tasks.counting import (
    MESSAGE_OVERHEAD,
    TokenCounter,
    default_counter,
    message_tokens,
    prompt_tokens,
)
from pausepoint.tasks.llm import SUMMARY_REQUEST, Completion, Message, ToolCall

__all__ = ["Reply", "ScriptedBackend", "tool_call"]

Reply = str | Callable[[Sequence[Message]], str | Completion]
"""What a :class:`ScriptedBackend` rule answers: a template string, or a callable given
the transcript that returns the text or a whole :class:`Completion` (with tool calls)."""


def tool_call(name: str, arguments: Mapping[str, Any] | str, id: str | None = None) -> ToolCall:
    """A tool call for a scripted reply. ``arguments`` is a dict (sent as JSON) or the raw
    text, malformed if a test wants it so. Without ``id`` one is derived from the call;
    :class:`ScriptedBackend` makes it unique by the call's place in the transcript."""
    text = (
        arguments
        if isinstance(arguments, str)
        else json.dumps(dict(arguments), ensure_ascii=False, separators=(",", ":"))
    )
    return ToolCall(id=id if id is not None else _call_id(name, text), name=name, arguments=text)


def _call_id(name: str, arguments: str, position: str = "") -> str:
    # A hash, not a counter or a random id: the same call in the same place of the same
    # transcript has the same id in every process, as a replayed step needs.
    digest = hashlib.sha256(f"{position}\0{name}\0{arguments}".encode()).hexdigest()
    return f"call_{digest[:16]}"


class ScriptedBackend:
    """A deterministic, offline backend for the demo and for tests.

    ``rules`` are ``(pattern, reply)`` pairs. Each pattern is searched
    (case-insensitively) in the content of the last user message; the first
    match wins. A string reply is a :class:`string.Template`: ``$message`` is the
    last user message, ``$match`` the matched text and ``$name`` a named group;
    anything else (including a stray ``$``) is left as it is. A callable reply
    gets the whole transcript and returns the text, or a :class:`Completion` whose
    ``tool_calls`` (see :func:`tool_call`) are the model's calls. When nothing
    matches, ``default`` answers, or else an echo-style note.

    With ``rules=None`` built-in rules make the demo meaningful: a loan
    assessment (with ``RECOMMENDATION: APPROVE`` or ``RECOMMENDATION: DECLINE``)
    when the message gives an amount and an income, and a closing note for
    "approved"/"rejected" follow-ups; when tools are offered,
    ``pausepoint.tasks.scripted_tools`` may answer with a call first. Pass
    ``rules=[]`` for none at all.

    Every call's messages are copied into :attr:`calls`, and the tools it offered
    (``[]`` for none) into :attr:`offered`, at the same index.
    """

    def __init__(
        self,
        rules: Sequence[tuple[str, Reply]] | None = None,
        default: Reply | None = None,
        *,
        context_limit: int | None = None,
    ) -> None:
        # Like a real model: a request over ``context_limit`` tokens is refused.
        self.context_limit = context_limit
        self._rules: list[tuple[re.Pattern[str], Reply]] | None = None
        if rules is not None:
            self._rules = []
            for pattern, reply in rules:
                try:
                    compiled = re.compile(pattern, re.IGNORECASE | re.DOTALL)
                except re.error as e:
                    raise ConfigurationError(
                        f"scripted LLM rule pattern {pattern!r} is not a valid regex: {e}"
                    ) from e
                self._rules.append((compiled, reply))
        self.default = default
        self.calls: list[list[Message]] = []
        self.offered: list[list[dict[str, Any]]] = []

    def complete(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        temperature: float | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Return the scripted reply to ``messages`` (model/temperature/key are ignored)."""
        return self.chat(messages).text

    def chat(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        temperature: float | None = None,
        idempotency_key: str | None = None,
        max_tokens: int | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
    ) -> Completion:
        """The scripted reply, with usage as the default token counter counts it (tool
        calls' names and arguments included, in the prompt and in the reply)."""
        counter = default_counter()
        used = prompt_tokens(counter, messages)
        if self.context_limit is not None and used > self.context_limit:
            raise ContextTooLong(
                f"scripted model: this model's maximum context length is "
                f"{self.context_limit} tokens, the request has {used}"
            )
        transcript = [dict(m) for m in messages]
        offered = [dict(t) for t in tools or ()]
        self.calls.append([dict(m) for m in transcript])
        self.offered.append([dict(t) for t in offered])
        usable = offered if tool_choice != "none" else []
        reply = self._reply(transcript, usable)
        if isinstance(reply, str):
            return Completion(reply, used, counter.count(reply), finish_reason="stop")
        calls = tuple(_placed(c, len(transcript), i) for i, c in enumerate(reply.tool_calls))
        return Completion(
            reply.text,
            used,
            _reply_tokens(counter, reply.text, calls),
            calls,
            reply.finish_reason or ("tool_calls" if calls else "stop"),
        )

    def _reply(self, transcript: list[Message], tools: list[dict[str, Any]]) -> str | Completion:
        last = _last_user_content(transcript)
        first = transcript[0].get("content") if transcript else None
        if isinstance(first, str) and first.startswith(SUMMARY_REQUEST):
            return _extractive_summary(last)

        if self._rules is None:
            if tools:
                answer = _tool_reply(transcript, tools)
                if answer is not None:
                    return answer
            builtin = _builtin_reply(last)
            if builtin is not None:
                return builtin
        else:
            for pattern, reply in self._rules:
                found = pattern.search(last)
                if found is not None:
                    return _render(reply, transcript, last, found)
        if self.default is not None:
            return _render(self.default, transcript, last, None)
        return _echo(transcript, last)


_TOOLS_MODULE = "pausepoint.tasks.scripted_tools"


def _tool_reply(transcript: list[Message], tools: list[dict[str, Any]]) -> Completion | None:
    try:
        # Written beside this module; until it exists, the built-in text rules answer.
        from pausepoint.tasks.scripted_tools import reply as tool_reply
    except ModuleNotFoundError as e:
        if e.name != _TOOLS_MODULE:
            raise  # the module is there but broken: say so rather than answer in text
        return None
    answer = tool_reply(transcript, tools)
    return answer if isinstance(answer, Completion) else None


def _placed(call: ToolCall, turn: int, index: int) -> ToolCall:
    """An id derived by :func:`tool_call`, made unique by where the call stands: the same
    call asked again later in the conversation gets another id."""
    if call.id != _call_id(call.name, call.arguments):
        return call
    return replace(call, id=_call_id(call.name, call.arguments, f"{turn}.{index}"))


def _reply_tokens(counter: TokenCounter, text: str, calls: Sequence[ToolCall]) -> int:
    message = {"content": text, "tool_calls": [c.as_openai() for c in calls]}
    return message_tokens(counter, message) - MESSAGE_OVERHEAD


_SUMMARY_PARTS = re.compile(
    r"Summary so far: (?P<old>.*?)\n\nNew turns:\n(?P<turns>.*)\n\nThe new summary, in at most "
    r"(?P<limit>\d+) tokens:",
    re.DOTALL,
)


def _extractive_summary(request: str) -> str:
    """A deterministic stand-in for a model's summary: the summary so far and the first
    words of each new turn, the oldest dropped first when it would not fit."""
    found = _SUMMARY_PARTS.search(request)
    if found is None:
        return "[scripted] summary: " + " ".join(request.split()[:40])
    old = found.group("old").strip()
    parts = [] if old == "(none yet)" else [old]
    for line in found.group("turns").splitlines():
        words = line.split()
        if words:
            parts.append(" ".join(words[:14]))
    # About three characters a token keeps well inside the limit the request names.
    room = int(found.group("limit")) * 3
    text = " | ".join(parts)
    return text if len(text) <= room else "…" + text[len(text) - room + 1 :]


def _render(
    reply: Reply, transcript: list[Message], last: str, found: re.Match[str] | None
) -> str | Completion:
    if callable(reply):
        result = reply(transcript)
        if not isinstance(result, (str, Completion)):
            raise LLMError(
                f"scripted LLM reply callable returned {type(result).__name__}, "
                "not str or Completion"
            )
        return result
    values: dict[str, str] = {"message": last, "match": ""}
    if found is not None:
        values["match"] = found.group(0)
        values.update({k: v for k, v in found.groupdict().items() if v is not None})
    return string.Template(reply).safe_substitute(values)


def _last_user_content(transcript: Sequence[Message]) -> str:
    for message in reversed(transcript):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else ""
    return ""


def _echo(transcript: Sequence[Message], last: str) -> str:
    task = " ".join(last.split())
    task = task if len(task) <= 80 else task[:77] + "..."
    reply = f"[scripted] Noted: {task or '(no user message)'}"
    persona = next((m.get("content") or "" for m in transcript if m.get("role") == "system"), "")
    first = _first_sentence(persona)
    if first:
        reply += f" (persona: {first})"
    return reply


def _first_sentence(text: str) -> str:
    flat = " ".join(text.split())
    found = re.search(r"[.!?](?=\s|$)", flat)
    sentence = flat[: found.end()] if found else flat
    return sentence if len(sentence) <= 120 else sentence[:117] + "..."


# Loan parsing is deliberately forgiving: "amount 25000", "amount=25000",
# "amount: 25,000", "loan of $25,000", "income $60k", "debt: 5,000".
_NUMBER = r"\$?\s*(?P<num>\d[\d,]*(?:\.\d+)?)\s*(?P<unit>k|m|thousand|million)?\b"
# Between a keyword and its number: a few non-digit characters, but never another
# field's keyword, so "a loan, income $60,000" does not read 60,000 as the amount.
_GAP = r"(?:(?!income|salary|earn|revenue|debt|liabilit|owe)[^\d\n.;]){0,25}?"
_AMOUNT_PATTERNS = (
    re.compile(rf"\b(?:amount|principal){_GAP}{_NUMBER}", re.IGNORECASE),
    re.compile(rf"\b(?:loan|borrow\w*|request\w*|mortgage){_GAP}{_NUMBER}", re.IGNORECASE),
    # "a $25,000 loan"
    re.compile(rf"{_NUMBER}\s*(?:[a-z-]+\s+){{0,2}}?(?:loan|mortgage)\b", re.IGNORECASE),
)
_INCOME_PATTERNS = (
    re.compile(rf"\b(?<!to-)(?<!to )(?:income|salary|earn\w*|revenue){_GAP}{_NUMBER}", re.I),
)
_DEBT_PATTERNS = (
    re.compile(
        rf"\b(?:debts?(?!\s*-?\s*to\s*-?\s*income)|liabilit\w*|owes?|obligations){_GAP}{_NUMBER}",
        re.IGNORECASE,
    ),
)
_LOAN_TOPIC = re.compile(r"\b(?:loan|mortgage|credit|borrow\w*|application|applicant)\b", re.I)
_DECLINED = re.compile(
    r"\b(?:rejected|declined|denied|disapproved|not\s+approved)\b|^\s*(?:reject|decline|deny)\W*$",
    re.IGNORECASE,
)
_APPROVED = re.compile(r"\b(?:approved|accepted)\b|^\s*approve\W*$", re.IGNORECASE)
_FOLLOW_UP = re.compile(r"\b(?:continue|proceed|resume|status|decision|final)\b", re.IGNORECASE)
_UNITS = {"k": 1e3, "thousand": 1e3, "m": 1e6, "million": 1e6}

_MAX_PROJECTED_DTI = 0.45
_MAX_LOAN_TO_INCOME = 5.0
# The loan is assumed repaid over five years, so one fifth of it adds to yearly debt.
_REPAYMENT_YEARS = 5.0


def _find_amount(patterns: Sequence[re.Pattern[str]], text: str) -> float | None:
    for pattern in patterns:
        found = pattern.search(text)
        if found is not None:
            value = float(found.group("num").replace(",", ""))
            unit = (found.group("unit") or "").lower()
            return value * _UNITS.get(unit, 1.0)
    return None


def _money(value: float) -> str:
    return f"${value:,.0f}" if value == int(value) else f"${value:,.2f}"


def _builtin_reply(last: str) -> str | None:
    if _DECLINED.search(last):
        decision: str | None = "declined"
    elif _APPROVED.search(last):
        decision = "approved"
    else:
        decision = None
    # "Continue processing with approved status" is a follow-up even if it
    # repeats the application's numbers; a bare past-tense decision is one too
    # unless the message is really a fresh application to assess.
    if decision is not None and _FOLLOW_UP.search(last):
        return _closing_note(decision, last)
    assessment = _assess_loan(last)
    if assessment is not None:
        return assessment
    if decision is not None:
        return _closing_note(decision, last)
    return None


def _closing_note(decision: str, last: str) -> str:
    amount = _find_amount(_AMOUNT_PATTERNS, last)
    if decision == "approved":
        subject = f"Loan approved for {_money(amount)}" if amount else "Loan approved"
        return (
            f"{subject}: preparing the offer letter and scheduling disbursement. "
            "Final status: APPROVED."
        )
    return (
        "Application declined: notifying the applicant with the reasons and closing the file. "
        "Final status: DECLINED."
    )


def _assess_loan(text: str) -> str | None:
    if not _LOAN_TOPIC.search(text):
        return None
    amount = _find_amount(_AMOUNT_PATTERNS, text)
    income = _find_amount(_INCOME_PATTERNS, text)
    if amount is None or income is None or amount <= 0:
        return None
    debt = _find_amount(_DEBT_PATTERNS, text)
    debt_note = "" if debt is not None else " (none stated)"
    debt = debt or 0.0

    reasons: list[str] = []
    if income <= 0:
        dti_text = lti_text = "n/a (no income)"
        risk, approve = "HIGH", False
        reasons.append("no income stated")
    else:
        current_dti = debt / income
        projected_dti = (debt + amount / _REPAYMENT_YEARS) / income
        lti = amount / income
        dti_text = f"{projected_dti:.2f} with the new loan ({current_dti:.2f} before it)"
        lti_text = f"{lti:.2f}"
        if projected_dti > _MAX_PROJECTED_DTI:
            reasons.append(
                f"debt-to-income {projected_dti:.2f} exceeds the {_MAX_PROJECTED_DTI:.2f} limit"
            )
        if amount > _MAX_LOAN_TO_INCOME * income:
            reasons.append(f"loan is {lti:.2f}x income, over the {_MAX_LOAN_TO_INCOME:g}x limit")
        approve = not reasons
        if not approve:
            risk = "HIGH"
        elif projected_dti <= 0.30 and lti <= 2.5:
            risk = "LOW"
        else:
            risk = "MEDIUM"
        if approve:
            reasons.append(
                f"debt-to-income {projected_dti:.2f} is within {_MAX_PROJECTED_DTI:.2f} and "
                f"the loan is {lti:.2f}x income (limit {_MAX_LOAN_TO_INCOME:g}x)"
            )

    return "\n".join(
        [
            "Loan assessment",
            f"Requested amount: {_money(amount)}",
            f"Annual income: {_money(income)}",
            f"Existing debt: {_money(debt)}{debt_note}",
            f"Debt-to-income ratio: {dti_text}",
            f"Loan-to-income ratio: {lti_text}",
            f"Risk level: {risk}",
            f"Reason: {'; '.join(reasons)}",
            f"RECOMMENDATION: {'APPROVE' if approve else 'DECLINE'}",
        ]
    )
