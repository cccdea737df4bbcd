"""The model client for any OpenAI-compatible ``/chat/completions`` server, on the official
``openai`` package.

It replaced a hand-written httpx client that kept its own retry loop (backoff with
jitter, ``Retry-After`` parsing), timeout handling and request building. The ``openai``
package does all of that, is maintained against the API it speaks (tool calls, new
headers, new retry rules) and is what users already know, so this module only maps its
outcome onto Pausepoint's error tree:

* a 400/413 that says the context is too long -> :class:`ContextTooLong`;
* any other status the client does not retry (401, 403, 404, 422, ...) -> a
  non-retryable :class:`LLMError` with the status;
* a failure still there after the client's retries (429, 408, 409, 5xx, timeouts,
  refused connections) -> a retryable :class:`LLMError` naming the attempts and the
  last error;
* a reply that is not JSON, or has neither text nor tool calls -> :class:`LLMError`
  with a short excerpt.

The reply body is read as plain JSON (not through the package's response models), so a
server that is only roughly OpenAI-compatible still works and a broken one is named.
Error messages show the endpoint with :func:`mask_url` and never the API key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, cast

import httpx
import openai

from pausepoint.persistence.errors import ConfigurationError, ContextTooLong, LLMError
from pausepoint.persistence.urls import mask_url
from pausepoint.tasks.llm import Completion, Message, ToolCall

__all__ = ["OpenAIBackend"]

# "This model's maximum context length is 8192 tokens" (OpenAI), "context window",
# "too many tokens", "prompt is too long" (other OpenAI-compatible servers).
_TOO_LONG = re.compile(
    r"context[_ ]length|maximum context|context window|too many tokens|prompt is too long",
    re.IGNORECASE,
)
_EXCERPT_CHARS = 200

# The openai client insists on a key even for servers that take none; without one it
# would read OPENAI_API_KEY from the environment and send it to whatever base URL is
# configured. So it always gets one, and without a real key every request omits the
# Authorization header (the package's own way to say "no auth").
_NO_KEY = "unused"
# Headers the package fills from OPENAI_ORG_ID / OPENAI_PROJECT_ID: this module reads
# no environment, and another provider's server has no use for them.
_NO_AMBIENT_HEADERS: Mapping[str, str | openai.Omit] = {
    "OpenAI-Organization": openai.Omit(),
    "OpenAI-Project": openai.Omit(),
}


class OpenAIBackend:
    """A synchronous client for any OpenAI-compatible ``/chat/completions`` endpoint.

    Transient failures (HTTP 408/409/429/5xx, timeouts, dropped connections) are
    retried up to ``max_retries`` times by the ``openai`` client: it honours the
    server's ``Retry-After`` (up to two minutes) and otherwise waits 0.5 s doubling to
    8 s, with jitter. ``backoff``, ``max_backoff`` and ``sleep`` are accepted for
    compatibility with the earlier client and not used. Everything else fails at once
    with :class:`~persistence.errors.LLMError`.

    ``timeout`` bounds each attempt (connect, read, write); ``transport`` swaps the
    HTTP transport (an ``httpx.BaseTransport``), e.g. for a proxy or a test double.
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
        sleep: Callable[[float], None] | None = None,
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
        # Errors name the endpoint, but never credentials embedded in the URL.
        self._display_url = mask_url(base_url.rstrip("/") + "/chat/completions")
        # The package takes an httpx (or, from openai 3, httpx2) client; its own
        # timeout and retries still apply to every request sent through it.
        http_client = httpx.Client(transport=transport) if transport is not None else None
        self._client = openai.OpenAI(
            base_url=base_url.rstrip("/"),
            api_key=self._api_key or _NO_KEY,
            timeout=timeout,
            max_retries=max_retries,
            http_client=cast(Any, http_client),
        )

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
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
    ) -> Completion:
        """POST the chat; the reply's text, tool calls, ``usage`` and finish reason.

        ``tools`` are in OpenAI's format: ``{"type": "function", "function": {"name",
        "description", "parameters"}}``. ``idempotency_key`` goes as the
        ``Idempotency-Key`` header, the same on every retry, so a server can drop the
        duplicate of a request whose answer was lost.
        """
        request: dict[str, Any] = {
            "model": model or self.model,
            "messages": [dict(m) for m in messages],
        }
        if temperature is not None:
            request["temperature"] = temperature
        if max_tokens is not None:
            request["max_tokens"] = max_tokens
        if tools is not None:
            request["tools"] = [dict(t) for t in tools]
        if tool_choice is not None:
            request["tool_choice"] = (
                tool_choice if isinstance(tool_choice, str) else dict(tool_choice)
            )
        headers: dict[str, str | openai.Omit] = dict(_NO_AMBIENT_HEADERS)
        if not self._api_key:
            headers["Authorization"] = openai.Omit()
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key

        try:
            # The body goes as it is, in extra_body (which the SDK merges over its own
            # fields): it is already plain JSON in OpenAI's shape, and the SDK's walk of
            # its typed parameters over every message cost more CPU (about 3 ms a call for
            # a few messages) than the rest of a step; on a threads pool that CPU, under
            # one GIL, is what bounds a worker's steps per second.
            model_name = request.pop("model")
            raw = self._client.chat.completions.with_raw_response.create(
                model=model_name, messages=[], extra_headers=headers, extra_body=request
            )
        except openai.APIConnectionError as e:  # timeouts are a kind of these
            cause = e.__cause__ or e
            problem = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
            raise self._exhausted(e.request, problem) from e
        except openai.APIStatusError as e:
            raise self._refused(e) from e
        except openai.OpenAIError as e:
            raise LLMError(
                self._scrub(f"LLM request to {self._display_url} failed: {e}"), retryable=False
            ) from e
        response = raw.http_response
        return self._parse(response.status_code, response.text)

    def _refused(self, error: openai.APIStatusError) -> LLMError:
        status = error.status_code
        text = error.response.text
        problem = f"HTTP {status}: {_error_detail(text)}"
        if _transient(status):
            return self._exhausted(error.request, problem)
        message = self._scrub(f"LLM request to {self._display_url} was refused with {problem}")
        if status in (400, 413) and _too_long(text):
            return ContextTooLong(message, status=status)
        return LLMError(message, status=status, retryable=False)

    def _exhausted(self, request: Any, problem: str) -> LLMError:
        # The client numbers each attempt in a header; the last one tells how many it made
        # (fewer than allowed when the server said not to retry).
        try:
            attempts = int(request.headers["x-stainless-retry-count"]) + 1
        except (AttributeError, KeyError, TypeError, ValueError):
            attempts = self.max_retries + 1
        return LLMError(
            self._scrub(
                f"LLM request to {self._display_url} failed after {attempts} "
                f"attempt{'s' if attempts != 1 else ''}; last error: {problem}"
            )
        )

    def _parse(self, status: int, text: str) -> Completion:
        try:
            data = json.loads(text)
        except ValueError:
            raise LLMError(
                self._scrub(
                    f"LLM response from {self._display_url} is not JSON "
                    f"(HTTP {status}): {_excerpt(text)!r}"
                )
            ) from None
        choice: Mapping[str, Any] = {}
        choices = data.get("choices") if isinstance(data, dict) else None
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = choices[0]
        message = choice.get("message")
        message = message if isinstance(message, dict) else {}
        content = message.get("content")
        calls = message.get("tool_calls")
        tool_calls = tuple(
            ToolCall.from_openai(c)
            for c in (calls if isinstance(calls, list) else [])
            if isinstance(c, dict)
        )
        if not isinstance(content, str) and not tool_calls:
            raise LLMError(
                self._scrub(
                    f"LLM response from {self._display_url} has neither choices[0].message "
                    f"content text nor tool calls: {_excerpt(text)!r}"
                )
            )
        usage = data.get("usage")
        prompt = completion = None
        if isinstance(usage, dict):
            prompt = _count(usage.get("prompt_tokens"))
            completion = _count(usage.get("completion_tokens"))
        finish = choice.get("finish_reason")
        return Completion(
            content if isinstance(content, str) else "",
            prompt,
            completion,
            tool_calls,
            finish if isinstance(finish, str) else None,
        )

    def _scrub(self, text: str) -> str:
        # Some servers echo the presented key back in their error message.
        if self._api_key and self._api_key in text:
            text = text.replace(self._api_key, "***")
        return text


def _transient(status: int) -> bool:
    """The statuses the openai client retries: a retry later may still succeed."""
    return status in (408, 409, 429) or status >= 500


def _too_long(text: str) -> bool:
    error = _json(text).get("error")
    if isinstance(error, dict) and error.get("code") == "context_length_exceeded":
        return True
    return bool(_TOO_LONG.search(_error_detail(text)))


def _error_detail(text: str) -> str:
    # OpenAI-style servers put the useful part in {"error": {"message": ...}};
    # anything else (HTML from a proxy, plain text) is shown as a short excerpt.
    data = _json(text)
    error = data.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return _excerpt(error["message"])
    if isinstance(error, str):
        return _excerpt(error)
    if isinstance(data.get("detail"), str):
        return _excerpt(data["detail"])
    return _excerpt(text) or "(empty body)"


def _json(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _excerpt(text: str, limit: int = _EXCERPT_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
