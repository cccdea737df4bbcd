"""Celery's own task events, captured in a thread, to split a latency into hops.

Only on Redis (or RabbitMQ): the SQLite broker has no fanout, so task events go
nowhere there. Pausepoint and the baseline both run with task events on
(``worker_send_task_events``, ``task_send_sent_event``), so listening adds a
consumer, not work on the measured path. Timestamps are ``time.time()`` where
each event is made:

* ``task-sent``: the producer, right after its publish to the broker returned;
* ``task-received``: the worker's main process, as it takes the message;
* ``task-started``: with the prefork pool, the worker's main process when the
  child reports it accepted the job (``Request.on_accepted``): the child may
  already be in the task, so "task-started -> task body" can be slightly < 0.
"""

from __future__ import annotations

import ast
import threading
from functools import partial
from typing import Any

from celery import Celery

KINDS = ("task-sent", "task-received", "task-started", "task-succeeded")


class EventTap:
    def __init__(self, broker_url: str) -> None:
        self.app = Celery("bench-events", broker=broker_url, set_as_current=False)
        self.tasks: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, name="bench-events", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> EventTap:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"event receiver not ready: {self.error}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(5)
        self.app.close()

    def _run(self) -> None:
        try:
            with self.app.connection_for_read() as conn:
                recv = self.app.events.Receiver(conn, handlers={"*": self._on_event})
                # Keep the producer's clock: no local-time adjustment (we compare epochs).
                recv.event_from_message = partial(recv.event_from_message, localize=False)
                recv.on_consume_ready = lambda *a, **k: self._ready.set()
                self._receiver = recv
                recv.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as exc:  # surfaced through __enter__ or .error
            self.error = exc
            self._ready.set()

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind not in KINDS or "uuid" not in event:
            return
        with self._lock:
            task = self.tasks.setdefault(event["uuid"], {})
            task[kind] = float(event["timestamp"])
            if "args" in event and "args" not in task:
                task["args"] = event["args"]
                task["name"] = event.get("name")

    def by_first_arg(self, name: str) -> dict[str, list[dict[str, Any]]]:
        """Tasks called ``name``, grouped by their first argument, oldest first."""
        out: dict[str, list[dict[str, Any]]] = {}
        with self._lock:
            tasks = [dict(t, uuid=u) for u, t in self.tasks.items() if t.get("name") == name]
        for t in tasks:
            try:
                args = ast.literal_eval(t["args"])
            except (ValueError, SyntaxError):
                continue
            if isinstance(args, (list, tuple)) and args:
                out.setdefault(str(args[0]), []).append(t)
        for group in out.values():
            group.sort(key=lambda t: t.get("task-sent", t.get("task-received", 0.0)))
        return out
