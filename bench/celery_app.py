"""The baseline: a bare Celery app with one no-op task, configured like Pausepoint's.

    BENCH_BROKER_URL=redis://127.0.0.1:6379/13 BENCH_SINK_URL=redis://127.0.0.1:6379/13 \
        celery -A bench.celery_app worker -c 2

Same serializer, acks_late, prefetch 1, task events and (on the SQLite broker)
the same polling interval as ``worker.app.create_app``, so the difference to a
Pausepoint resume is what Pausepoint adds, not a different Celery setup.
"""

from __future__ import annotations

import os

from celery import Celery

from bench import tasks


def create(broker_url: str, poll_interval: float | None = None, *, current: bool = False) -> Celery:
    app = Celery("bench", broker=broker_url, set_as_current=current)
    transport_options: dict[str, object] = {}
    if broker_url.startswith("sqla+"):
        from kombu.transport import sqlalchemy as sqla

        # As worker.app._tune_sqla_transport: the class attribute is the only knob.
        sqla.Transport.polling_interval = poll_interval if poll_interval is not None else 0.05
        transport_options["connect_args"] = {"timeout": 30}
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options,
        worker_hijack_root_logger=False,
    )
    app.task(name=tasks.NOOP, ignore_result=True)(tasks.noop)
    app.task(name=tasks.ASK, ignore_result=True)(tasks.ask)
    return app


def _poll_interval() -> float | None:
    value = os.environ.get("PAUSEPOINT_BROKER_POLL_INTERVAL")
    return float(value) if value else None


def __getattr__(name: str) -> Celery:
    """``app`` for `celery -A bench.celery_app worker`, built on first use from the
    environment, so importing this module (the benchmark does) configures nothing."""
    if name != "app":
        raise AttributeError(name)
    built = create(
        os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/13"),
        _poll_interval(),
        current=True,
    )
    globals()["app"] = built
    return built
