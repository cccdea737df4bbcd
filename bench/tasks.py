"""The baseline's task: a no-op that records when it started, nothing more.

``noop(key)`` writes ``time.time()`` of its first instruction to a sink the
benchmark polls: a Redis key (``redis://...``) or a row of a SQLite file
(``sqlite:///path``), named by ``BENCH_SINK_URL`` in the worker's environment.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Any

NOOP = "bench.tasks.noop"
ASK = "bench.tasks.ask"
KEY_PREFIX = "bench:noop:"

_sinks: dict[int, Any] = {}


def sink_url() -> str:
    return os.environ.get("BENCH_SINK_URL", "redis://127.0.0.1:6379/13")


def _sink() -> Any:
    """This process's sink connection, opened after the prefork fork."""
    pid = os.getpid()
    sink = _sinks.get(pid)
    if sink is None:
        url = sink_url()
        if url.startswith("redis://"):
            import redis

            sink = redis.Redis.from_url(url)
        else:
            sink = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
            sink.execute("PRAGMA busy_timeout=30000")
        _sinks[pid] = sink
    return sink


def noop(key: str) -> None:
    started = time.time()
    sink = _sink()
    if isinstance(sink, sqlite3.Connection):
        sink.execute("INSERT OR REPLACE INTO starts (key, t) VALUES (?, ?)", (key, started))
    else:
        sink.set(KEY_PREFIX + key, repr(started), ex=3600)


_client_lock = threading.Lock()
_clients: dict[int, Any] = {}


def _model() -> Any:
    """This process's OpenAI client of ``BENCH_MODEL_URL`` (shared by its threads, as a
    Pausepoint worker's backend is), built after the prefork fork."""
    pid = os.getpid()
    with _client_lock:
        client = _clients.get(pid)
        if client is None:
            import openai

            client = openai.OpenAI(
                base_url=os.environ["BENCH_MODEL_URL"], api_key="sk-bench", max_retries=0
            )
            _clients[pid] = client
        return client


def ask(key: str) -> None:
    """One chat completion on the benchmark's model (what a Pausepoint ``turns`` step
    asks), then its end time in the sink."""
    _model().chat.completions.create(
        model=os.environ.get("BENCH_MODEL", "bench-model"),
        messages=[{"role": "user", "content": f"Turn of {key}"}],
    )
    _sink().set(KEY_PREFIX + key, repr(time.time()), ex=3600)


def create_sqlite_sink(path: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS starts (key TEXT PRIMARY KEY, t REAL NOT NULL)")


class SinkReader:
    """The benchmark's side: the start time of ``key``, or None while it has not started."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("redis://"):
            import redis

            self._redis: Any = redis.Redis.from_url(url)
            self._sqlite: sqlite3.Connection | None = None
        else:
            self._redis = None
            self._sqlite = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)

    def get(self, key: str) -> float | None:
        if self._sqlite is not None:
            row = self._sqlite.execute("SELECT t FROM starts WHERE key = ?", (key,)).fetchone()
            return float(row[0]) if row else None
        value = self._redis.get(KEY_PREFIX + key)
        return float(value) if value is not None else None

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._redis is not None:
            self._redis.close()
