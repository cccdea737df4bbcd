"""The Celery app, built from one Settings object, and the runtime each process uses."""

from __future__ import annotations

import importlib
from functools import partial
from typing import Any

from celery import Celery

from pausepoint.persistence.errors import ConfigurationError
from pausepoint.persistence.store import Store
from pausepoint.persistence.urls import mask_url
from pausepoint.tasks import jobs
from pausepoint.tasks.llm import build_backend
from pausepoint.tasks.runtime import Runtime
from pausepoint.tasks.workflow import registry
from pausepoint.worker.settings import Settings


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app wired to the store and broker that ``settings`` name."""
    settings = settings or Settings()
    check_broker_url(settings.broker_url)
    registry.load(settings.workflows)
    app = Celery("pausepoint", broker=settings.broker_url, set_as_current=True)
    transport_options: dict[str, Any] = {}
    if settings.embedded_broker:
        _tune_sqla_transport(settings.broker_poll_interval)
        # kombu passes these options to create_engine: queue, don't fail, on a busy file.
        transport_options["connect_args"] = {"timeout": 30}
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Task events on, so Flower (on Redis/RabbitMQ) sees every step.
        worker_send_task_events=True,
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options,
        beat_schedule={
            "pausepoint-sweep": {"task": jobs.SWEEP, "schedule": settings.sweep_interval},
            "pausepoint-gc": {"task": jobs.GC, "schedule": settings.retention_interval},
            **(
                {
                    "pausepoint-anchor": {
                        "task": jobs.ANCHOR,
                        "schedule": settings.audit_anchor_interval,
                    }
                }
                if settings.audit_anchor_interval > 0
                else {}
            ),
        },
        # Beat keeps its schedule in memory: the sweep needs no state across restarts.
        beat_scheduler="celery.beat:Scheduler",
        worker_hijack_root_logger=False,
        **{
            jobs.FACTORY_KEY: partial(build_runtime, settings),
            jobs.ANCHORS_KEY: str(settings.anchors_path()),
        },
    )
    # tasks.jobs is imported above, so its shared tasks bind to this app when it finalizes.
    return app


# Broker URL schemes, the extra that installs their transport, and its client library.
_BROKER_EXTRAS = {
    "redis": ("redis", "redis"),
    "rediss": ("redis", "redis"),
    "sentinel": ("redis", "redis"),
    "amqp": ("rabbitmq", "amqp"),
    "amqps": ("rabbitmq", "amqp"),
    "pyamqp": ("rabbitmq", "amqp"),
}


def check_broker_url(url: str) -> None:
    """Fail before anything is written when the broker's transport cannot be loaded.

    A URL kombu cannot name is the URL's fault; a transport whose libraries are not
    installed is the install's, and the message says which extra brings them.
    """
    from kombu.connection import Connection

    shown = mask_url(url)
    scheme = url.partition("://")[0].lower()
    extra, client = _BROKER_EXTRAS.get(scheme, (None, None))
    try:
        if client is not None:
            # First: kombu's transports import their client lazily, or half-fail without it.
            importlib.import_module(client)
        Connection(url).get_transport_cls()  # type: ignore[no-untyped-call]
    except ImportError as exc:
        hint = f"pip install 'pausepoint[{extra}]'" if extra else "check the install"
        raise ConfigurationError(
            f"the broker {shown!r} needs a library that is not installed ({exc}); {hint}"
        ) from None
    except (KeyError, ValueError) as exc:
        raise ConfigurationError(
            f"unusable broker URL {shown!r} ({exc}); use sqla+sqlite:///file.db, "
            "redis://host:6379/0 or amqp://user:pass@host//"
        ) from None


def _tune_sqla_transport(poll_interval: float) -> None:
    # kombu's SQLAlchemy transport hands every transport option to create_engine,
    # so its polling interval (1 s by default: a second per step) can only be set
    # on the class. This is the process entry point, so the process-wide change is ours.
    from kombu.transport import sqlalchemy as sqla

    sqla.Transport.polling_interval = poll_interval


def build_runtime(settings: Settings, app: Celery) -> Runtime:
    """The runtime of one process: its own engine, LLM client and publisher."""
    store = Store.from_url(
        settings.store_url,
        lease_seconds=settings.lease_seconds,
        audit_keys=settings.audit_keys(),
        engine_options=settings.engine_options(),
    )
    llm = build_backend(
        settings.llm,
        base_url=settings.llm_base_url,
        model=settings.llm_model,
        api_key=settings.llm_api_key.get_secret_value() if settings.llm_api_key else None,
        timeout=settings.llm_timeout,
        max_retries=settings.llm_max_retries,
    )
    run_step = app.tasks[jobs.RUN_STEP]

    def publish(run_id: str, version: int) -> None:
        run_step.apply_async((run_id, version))

    for name, slots in settings.resources.items():
        store.set_resource(name, slots)
    return Runtime(
        store,
        llm=llm,
        publish=publish,
        workflows=registry,
        redeliver_after=settings.redeliver_after,
        max_attempts=settings.max_attempts,
        secret=settings.secret_bytes(),
        public_url=settings.public_url,
        retention=settings.retention(),
        inline_steps=settings.inline_steps,
    )


def runtime(app: Celery) -> Runtime:
    return jobs.runtime_for(app)
