"""Language model backends: a real OpenAI-compatible HTTP client and a scripted offline one.

Nothing here reads settings or environment variables; callers pass everything in
(see :func:`build_backend`). Both backends speak OpenAI's chat format: a list of
``{"role": ..., "content": ...}`` messages in, the assistant's text out.
"""

from __future__ import annotations

import logging
import random
import re
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import httpx

from pausepoint.persistence.errors import ConfigurationError, ContextTooLong, LLMError
from pausepoint.persistence.urls import mask_url
from pausepoint.tasks.counting import default_counter, prompt_tokens

__all__ = [
    "Completion",
    "LLMBackend",
    "Message",
    "OpenAIBackend",
    "Reply",
    "ScriptedBackend",
    "build_backend",
]

log = logging.getLogger(__name__)

Message = dict[str, str]
"""One chat message in OpenAI format: ``{"role": "user", "content": "..."}``."""

# The first words of every compaction request (tasks/compaction.py); the scripted
# backend answers such a request with an extractive summary.
SUMMARY_REQUEST = "You keep the running summary of a conversation."

Reply = str | Callable[[Sequence[Message]], str]
"""What a :class:`ScriptedBackend` rule answers: a template string or a callable."""


@dataclass(frozen=True)
class Completion:
    """A model's reply, with what the model says it spent (``usage``), when it says."""

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def chat(
    llm: LLMBackend,
    messages: Sequence[Message],
    *,
    model: str | None = None,
    temperature: float | None = None,
    idempotency_key: str | None = None,
    max_tokens: int | None = None,
) -> Completion:
    """Ask ``llm``, with its usage where the backend reports one (``chat``), else only
    the text (any backend with ``complete``)."""
    method = getattr(llm, "chat", None)
    if callable(method):
        result = method(
            messages,
            model=model,
            temperature=temperature,
            idempotency_key=idempotency_key,
            max_tokens=max_tokens,
        )
        if isinstance(result, Completion):
            return result
    text = llm.complete(
        messages, model=model, temperature=temperature, idempotency_key=idempotency_key
    )
    return Completion(text)


# "This model's maximum context length is 8192 tokens" (OpenAI), "context window",
# "too many tokens", "prompt is too long" (other OpenAI-compatible servers).
_TOO_LONG = re.compile(
    r"context[_ ]length|maximum context|context window|too many tokens|prompt is too long",
    re.IGNORECASE,
)


@runtime_checkable
class LLMBackend(Protocol):
    """Anything that turns a chat transcript into the assistant's next message."""

    def complete(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        temperature: float | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Return the assistant's reply to ``messages``; raise ``LLMError`` on failure."""
        ...


# ---------------------------------------------------------------------------
# OpenAI-compatible HTTP backend
# ---------------------------------------------------------------------------

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})

# Jitter is a fraction of the base delay added on top, kept below 1 so that each
# delay is still strictly longer than the previous one (base doubles each time).
_JITTER = 0.25
_EXCERPT_CHARS = 200


class OpenAIBackend:
    """A synchronous client for any OpenAI-compatible ``/chat/completions`` endpoint.

    Transient failures (HTTP 429/500/502/503/504, timeouts, dropped connections)
    are retried up to ``max_retries`` times with exponential backoff plus jitter,
    honouring ``Retry-After`` (capped at ``max_backoff``). Everything else fails
    at once with :class:`~persistence.errors.LLMError`.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 20.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"LLM base URL must start with http:// or https://, got {base_url!r} "
                "(e.g. https://api.openai.com/v1)"
            )
        if not model:
            raise ConfigurationError("an LLM model name is required (e.g. gpt-4o-mini)")
        if timeout <= 0:
            raise ConfigurationError(f"LLM timeout must be positive, got {timeout}")
        if max_retries < 0:
            raise ConfigurationError(f"LLM max_retries must be 0 or more, got {max_retries}")
        if backoff < 0 or max_backoff < 0:
            raise ConfigurationError("LLM backoff and max_backoff must be 0 or more")
        self.base_url = base_url
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._api_key = api_key or None
        self._sleep = sleep
        self._url = base_url.rstrip("/") + "/chat/completions"
        # Errors name the endpoint, but never credentials embedded in the URL.
        self._display_url = mask_url(self._url)
        self._client = httpx.Client(timeout=timeout, transport=transport)

    def __repr__(self) -> str:
        return f"OpenAIBackend(base_url={self._display_url!r}, model={self.model!r})"

    def close(self) -> None:
        """Close the underlying HTTP connection pool."""
        self._client.close()

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def complete(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        temperature: float | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """POST the chat to ``{base_url}/chat/completions`` and return the reply text."""
        return self.chat(
            messages, model=model, temperature=temperature, idempotency_key=idempotency_key
        ).text

    def chat(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        temperature: float | None = None,
        idempotency_key: str | None = None,
        max_tokens: int | None = None,
    ) -> Completion:
        """POST the chat; the reply with the server's ``usage`` (when it sends one)."""
        payload: dict[str, Any] = {
            "model": model or self.model,
            "messages": [dict(m) for m in messages],
        }
        if temperature is not None:
            payload["temperature"] = temperature
        if max_tokens is not None:
            payload["max_tokens"] = max_tokens
        headers = {"Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        if idempotency_key:
            # The same key on every retry lets the server drop duplicates of a
            # request whose response we lost.
            headers["Idempotency-Key"] = idempotency_key

        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                response = self._client.post(self._url, json=payload, headers=headers)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as e:
                problem = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                retry_after = None
            except httpx.HTTPError as e:
                raise LLMError(
                    self._scrub(f"LLM request to {self._display_url} failed: {e}"),
                    retryable=False,
                ) from e
            else:
                if response.is_success:
                    return self._parse(response)
                status = response.status_code
                problem = f"HTTP {status}: {self._error_detail(response)}"
                if status not in RETRYABLE_STATUSES:
                    message = self._scrub(
                        f"LLM request to {self._display_url} was refused with {problem}"
                    )
                    if status in (400, 413) and self._too_long(response):
                        raise ContextTooLong(message, status=status)
                    raise LLMError(message, status=status, retryable=False)
                retry_after = _retry_after(response.headers.get("Retry-After"))

            if attempt == attempts:
                raise LLMError(
                    self._scrub(
                        f"LLM request to {self._display_url} failed after {attempts} "
                        f"attempt{'s' if attempts != 1 else ''}; last error: {problem}"
                    )
                )
            delay = self._delay(attempt, retry_after)
            log.warning(
                "LLM request failed (%s); retry %d of %d in %.2fs",
                self._scrub(problem),
                attempt,
                self.max_retries,
                delay,
            )
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        base = self.backoff * 2.0 ** (attempt - 1)
        return min(self.max_backoff, base * (1 + _JITTER * random.random()))

    def _too_long(self, response: httpx.Response) -> bool:
        try:
            data = response.json()
        except ValueError:
            data = None
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and error.get("code") == "context_length_exceeded":
            return True
        return bool(_TOO_LONG.search(self._error_detail(response)))

    def _parse(self, response: httpx.Response) -> Completion:
        try:
            data = response.json()
        except ValueError:
            raise LLMError(
                self._scrub(
                    f"LLM response from {self._display_url} is not JSON "
                    f"(HTTP {response.status_code}): {_excerpt(response.text)!r}"
                )
            ) from None
        content: object = None
        choices = data.get("choices") if isinstance(data, dict) else None
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            message = choices[0].get("message")
            if isinstance(message, dict):
                content = message.get("content")
        if not isinstance(content, str):
            raise LLMError(
                self._scrub(
                    f"LLM response from {self._display_url} has no choices[0].message.content "
                    f"text: {_excerpt(response.text)!r}"
                )
            )
        usage = data.get("usage") if isinstance(data, dict) else None
        prompt = completion = None
        if isinstance(usage, dict):
            prompt = _count(usage.get("prompt_tokens"))
            completion = _count(usage.get("completion_tokens"))
        return Completion(content, prompt, completion)

    def _error_detail(self, response: httpx.Response) -> str:
        # OpenAI-style servers put the useful part in {"error": {"message": ...}};
        # anything else (HTML from a proxy, plain text) is shown as a short excerpt.
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, dict):
            error = data.get("error")
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                return _excerpt(error["message"])
            if isinstance(error, str):
                return _excerpt(error)
            if isinstance(data.get("detail"), str):
                return _excerpt(data["detail"])
        return _excerpt(response.text) or "(empty body)"

    def _scrub(self, text: str) -> str:
        # Some servers echo the presented key back in their error message.
        if self._api_key and self._api_key in text:
            text = text.replace(self._api_key, "***")
        return text


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds or seconds == float("inf"):  # NaN or inf from a broken server
        return None
    return max(0.0, seconds)


def _excerpt(text: str, limit: int = _EXCERPT_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# ---------------------------------------------------------------------------
# Scripted offline backend
# ---------------------------------------------------------------------------


class ScriptedBackend:
    """A deterministic, offline backend for the demo and for tests.

    ``rules`` are ``(pattern, reply)`` pairs. Each pattern is searched
    (case-insensitively) in the content of the last user message; the first
    match wins. A string reply is a :class:`string.Template`: ``$message`` is the
    last user message, ``$match`` the matched text and ``$name`` a named group;
    anything else (including a stray ``$``) is left as it is. A callable reply
    gets the whole transcript. When nothing matches, ``default`` answers, or
    else an echo-style note.

    With ``rules=None`` built-in rules make the demo meaningful: a loan
    assessment (with ``RECOMMENDATION: APPROVE`` or ``RECOMMENDATION: DECLINE``)
    when the message gives an amount and an income, and a closing note for
    "approved"/"rejected" follow-ups. Pass ``rules=[]`` for none at all.

    Every call's messages are copied into :attr:`calls`.
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
    ) -> Completion:
        """The scripted reply, with usage as the default token counter counts it."""
        counter = default_counter()
        used = prompt_tokens(counter, messages)
        if self.context_limit is not None and used > self.context_limit:
            raise ContextTooLong(
                f"scripted model: this model's maximum context length is "
                f"{self.context_limit} tokens, the request has {used}"
            )
        text = self._reply(messages)
        return Completion(text, used, counter.count(text))

    def _reply(self, messages: Sequence[Message]) -> str:
        transcript = [dict(m) for m in messages]
        self.calls.append([dict(m) for m in transcript])
        last = _last_user_content(transcript)
        if transcript and transcript[0].get("content", "").startswith(SUMMARY_REQUEST):
            return _extractive_summary(last)

        if self._rules is None:
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


def _render(reply: Reply, transcript: list[Message], last: str, found: re.Match[str] | None) -> str:
    if callable(reply):
        result = reply(transcript)
        if not isinstance(result, str):
            raise LLMError(f"scripted LLM reply callable returned {type(result).__name__}, not str")
        return result
    values: dict[str, str] = {"message": last, "match": ""}
    if found is not None:
        values["match"] = found.group(0)
        values.update({k: v for k, v in found.groupdict().items() if v is not None})
    return string.Template(reply).safe_substitute(values)


def _last_user_content(transcript: Sequence[Message]) -> str:
    for message in reversed(transcript):
        if message.get("role") == "user":
            return message.get("content") or ""
    return ""


def _echo(transcript: Sequence[Message], last: str) -> str:
    task = " ".join(last.split())
    task = task if len(task) <= 80 else task[:77] + "..."
    reply = f"[scripted] Noted: {task or '(no user message)'}"
    persona = next((m.get("content", "") for m in transcript if m.get("role") == "system"), "")
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


# ---------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------

BACKEND_KINDS = ("scripted", "openai")


def build_backend(
    kind: str,
    *,
    base_url: str | None,
    model: str,
    api_key: str | None,
    timeout: float,
    max_retries: int,
) -> LLMBackend:
    """Build the backend named by ``kind`` (``"scripted"`` or ``"openai"``)."""
    normalized = kind.strip().lower()
    if normalized == "scripted":
        return ScriptedBackend()
    if normalized == "openai":
        if not base_url:
            raise ConfigurationError(
                "the 'openai' LLM backend needs a base URL, e.g. https://api.openai.com/v1 "
                "or http://localhost:11434/v1 for a local OpenAI-compatible server"
            )
        return OpenAIBackend(
            base_url=base_url,
            model=model,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
        )
    raise ConfigurationError(
        f"unknown LLM backend {kind!r}; accepted values: {', '.join(BACKEND_KINDS)}"
    )
