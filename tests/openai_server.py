"""A small, real OpenAI-compatible HTTP server for tests (standard library only).

    with OpenAIServer() as srv:
        backend = OpenAIBackend(srv.base_url, model="echo-1")
        srv.plan(status=429, headers={"Retry-After": "0"}, times=2)
        ...
        srv.requests  # every request seen: path, headers, parsed JSON body

Replies are "echo: <last user message>" unless a ``reply`` callable or a planned
``content`` says otherwise. Either may answer with tool calls instead:
``srv.plan(tool_calls=[{"name": "lookup", "arguments": {"id": 7}}])`` (arguments as a
dict, sent as JSON, or as raw text, malformed if the test wants it), or a ``reply``
returning ``{"content": None, "tool_calls": [...]}``; such an answer comes back as
OpenAI's does, in ``choices[0].message.tool_calls`` with ``finish_reason: "tool_calls"``.
Usage is counted over the request's messages, their tool calls included.

Planned responses are used one per request, in order; when none is left the server
answers normally. Failures to plan: a status (with ``headers={"Retry-After": "0.01"}``
for a 429), a ``delay`` beyond the client's timeout, a ``raw`` body that is not JSON.

Run ``python tests/openai_server.py --port 8099`` to use it by hand.
"""

from __future__ import annotations

import argparse
import itertools
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from pausepoint.tasks.counting import (
    MESSAGE_OVERHEAD,
    default_counter,
    message_tokens,
    prompt_tokens,
)

__all__ = ["OpenAIServer", "PlannedResponse", "RecordedRequest"]

ReplyFn = Callable[[dict[str, Any]], str | dict[str, Any]]
"""Gets the request body; returns the reply text, or a message ``{"content": ...,
"tool_calls": [{"name": ..., "arguments": ...}, ...]}`` (``finish_reason`` optional)."""


@dataclass(frozen=True)
class PlannedResponse:
    """One scripted answer. ``raw`` wins over ``body``; ``body=None`` means the default."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    raw: bytes | None = None
    delay: float = 0.0
    content: str | None = None
    # [{"name": ..., "arguments": {...} or "raw text", "id": optional}]: the answer is
    # these calls (with ``content`` as its text, None by default).
    tool_calls: Sequence[Mapping[str, Any]] | None = None


@dataclass(frozen=True)
class RecordedRequest:
    """A request as the server saw it. Header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes


def _error_body(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


_DEFAULT_ERRORS: dict[int, tuple[str, str]] = {
    400: ("Bad request.", "invalid_request_error"),
    401: ("Incorrect API key provided.", "invalid_request_error"),
    403: ("You are not allowed to sample from this model.", "invalid_request_error"),
    404: ("The model does not exist.", "invalid_request_error"),
    422: ("Unprocessable request.", "invalid_request_error"),
    429: ("Rate limit reached. Please try again later.", "rate_limit_error"),
    500: ("The server had an error while processing your request.", "server_error"),
    502: ("Bad gateway.", "server_error"),
    503: ("The engine is currently overloaded, please try again later.", "server_error"),
    504: ("Gateway timeout.", "server_error"),
}


class _HTTPServer(ThreadingHTTPServer):
    # Handler threads are joined on close (delays and open connections are cut first).
    daemon_threads = False
    owner: OpenAIServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up is an expected event in these tests.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    # Never let a forgotten keep-alive connection pin a handler thread for long.
    timeout = 10
    # Headers and body go out as two writes: with Nagle on, the body waits for the
    # client's delayed ACK, about 40 ms a reply (bench/agent_loop_bench.py found it).
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        owner._record(self, b"", None)
        if self.path.rstrip("/") == "/v1/models":
            self._send_json(200, {"object": "list", "data": [{"id": "echo", "object": "model"}]})
        else:
            self._send_json(404, _error_body(f"Unknown path {self.path}", "invalid_request_error"))

    def do_POST(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        owner._record(self, raw, body)

        if owner.api_key is not None:
            if self.headers.get("Authorization") != f"Bearer {owner.api_key}":
                self._send_json(
                    401,
                    _error_body(
                        "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
                    ),
                )
                return
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send_json(404, _error_body(f"Unknown path {self.path}", "invalid_request_error"))
            return

        planned = owner._next_plan()
        delay = planned.delay if planned is not None else owner.latency
        planned = planned or PlannedResponse()
        if delay > 0 and owner._stopping.wait(delay):
            self.close_connection = True
            return
        if planned.raw is not None:
            self._send(planned.status, planned.raw, "text/plain", planned.headers)
            return
        if planned.body is not None:
            self._send_json(planned.status, planned.body, planned.headers)
            return
        if planned.status != 200:
            message, type_ = _DEFAULT_ERRORS.get(
                planned.status, (f"HTTP {planned.status}", "server_error")
            )
            self._send_json(planned.status, _error_body(message, type_), planned.headers)
            return

        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self._send_json(
                400, _error_body("'messages' is a required property", "invalid_request_error")
            )
            return
        limit = owner.context_limit
        if limit is not None:
            used = owner.prompt_tokens(body) + int(body.get("max_tokens") or 0)
            if used > limit:
                # What OpenAI answers, word for word in its shape.
                message = (
                    f"This model's maximum context length is {limit} tokens. However, you "
                    f"requested {used} tokens. Please reduce the length of the messages."
                )
                self._send_json(
                    400,
                    {
                        "error": {
                            "message": message,
                            "type": "invalid_request_error",
                            "param": "messages",
                            "code": "context_length_exceeded",
                        }
                    },
                )
                return
        if planned.tool_calls is not None:
            answer: str | dict[str, Any] = {
                "content": planned.content,
                "tool_calls": list(planned.tool_calls),
            }
        elif planned.content is not None:
            answer = planned.content
        else:
            answer = owner._reply(body)
        self._send_json(200, owner._completion(body, answer), planned.headers)

    def _send_json(
        self, status: int, payload: Any, headers: Mapping[str, str] | None = None
    ) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers or {})

    def _send(
        self, status: int, data: bytes, content_type: str, headers: Mapping[str, str]
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


class OpenAIServer:
    """A loopback OpenAI-compatible server running in a background thread."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        reply: ReplyFn | None = None,
        context_limit: int | None = None,
        latency: float = 0.0,
    ) -> None:
        self.host = host
        # Seconds every answer that is not planned takes, as a model thinks.
        self.latency = latency
        # Like a real model: a request whose messages and max_tokens add up to more than
        # this is refused with 400 context_length_exceeded.
        self.context_limit = context_limit
        self.counter = default_counter()
        self.requested_port = port
        self.api_key = api_key
        self.reply = reply
        self._lock = threading.Lock()
        self._plans: deque[PlannedResponse] = deque()
        self._requests: list[RecordedRequest] = []
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._ids = itertools.count(1)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> OpenAIServer:
        """Bind and start serving; returns self."""
        if self._httpd is not None:
            return self
        httpd = _HTTPServer((self.host, self.requested_port), _Handler)
        httpd.owner = self
        self._stopping.clear()
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"openai-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, end delayed answers and open connections, release the port."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        with self._lock:
            live = list(self._connections)
        for conn in live:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server is not running; call start() or use it as a context")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``"""
        return f"http://{self.host}:{self.port}/v1"

    # -- planning and inspection -------------------------------------------

    def plan(
        self,
        status: int = 200,
        *,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        raw: bytes | None = None,
        delay: float = 0.0,
        content: str | None = None,
        tool_calls: Sequence[Mapping[str, Any]] | None = None,
        times: int = 1,
    ) -> None:
        """Queue ``times`` copies of a response for the next chat requests."""
        planned = PlannedResponse(
            status, dict(headers or {}), body, raw, delay, content, tool_calls
        )
        with self._lock:
            self._plans.extend([planned] * times)

    @property
    def pending_plans(self) -> int:
        with self._lock:
            return len(self._plans)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        """Forget recorded requests and unused plans."""
        with self._lock:
            self._requests.clear()
            self._plans.clear()

    # -- used by the handler ------------------------------------------------

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _record(self, handler: BaseHTTPRequestHandler, raw: bytes, body: Any) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        request = RecordedRequest(handler.command, handler.path, headers, body, raw)
        with self._lock:
            self._requests.append(request)

    def _next_plan(self) -> PlannedResponse | None:
        with self._lock:
            return self._plans.popleft() if self._plans else None

    def _reply(self, body: dict[str, Any]) -> str | dict[str, Any]:
        if self.reply is not None:
            return self.reply(body)
        last = ""
        for message in reversed(body["messages"]):
            if isinstance(message, dict) and message.get("role") == "user":
                last = str(message.get("content") or "")
                break
        return f"echo: {last}"

    def prompt_tokens(self, body: dict[str, Any]) -> int:
        """What the request costs, counted as the client's builder counts it (the
        assistant messages' tool calls included)."""
        chat = [m for m in body["messages"] if isinstance(m, dict)]
        return prompt_tokens(self.counter, chat)

    def _completion(self, body: dict[str, Any], answer: str | dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            n = next(self._ids)
        if isinstance(answer, str):
            message: dict[str, Any] = {"role": "assistant", "content": answer}
            finish = "stop"
        else:
            content = answer.get("content")
            message = {"role": "assistant", "content": content}
            calls = [_tool_call(c, n, i) for i, c in enumerate(answer.get("tool_calls") or [])]
            if calls:
                message["tool_calls"] = calls
            finish = str(answer.get("finish_reason") or ("tool_calls" if calls else "stop"))
        prompt_tokens = self.prompt_tokens(body)
        completion_tokens = message_tokens(self.counter, message) - MESSAGE_OVERHEAD
        return {
            "id": f"chatcmpl-test{n:06d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model") or "echo"),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _tool_call(call: Mapping[str, Any], reply: int, index: int) -> dict[str, Any]:
    """A call in OpenAI's shape, from ``{"name", "arguments", "id"?}`` or already in it."""
    fn = call.get("function")
    if isinstance(fn, Mapping):
        name, arguments = fn.get("name"), fn.get("arguments")
    else:
        name, arguments = call.get("name"), call.get("arguments")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {})
    return {
        "id": str(call.get("id") or f"call_{reply:06d}_{index}"),
        "type": "function",
        "function": {"name": str(name), "arguments": arguments},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a loopback OpenAI-compatible echo server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--api-key", default=None, help="require this bearer key")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per answer")
    args = parser.parse_args(argv)
    with OpenAIServer(
        host=args.host, port=args.port, api_key=args.api_key, latency=args.latency
    ) as srv:
        print(f"OpenAI-compatible test server at {srv.base_url} (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
