"""What the workers do, as Prometheus metrics: steps, resumes, the sweeper, model calls.

The runtime and the model client record here; a worker serves it on
``PAUSEPOINT_METRICS_PORT`` (:mod:`worker.metrics`), and the API adds what the store
holds (runs by status, waits pending) at each scrape. Names follow Prometheus'
conventions (``_total`` counters, ``_seconds`` durations). Labels are bounded: a
workflow, a step, a wait kind, a model, an outcome; never a run id or an agent.

Under Celery's prefork pool every child records into files of
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode), which the
worker's parent process sums when scraped. The mode must be chosen before the first
metric exists, so metrics are built on first use: :func:`use_multiprocess` first.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

# Agent steps take milliseconds (no-op) to minutes (a model's long answer).
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Resumes: a queued step's start after a person or a system fulfilled its wait.
RESUME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
MODEL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)
SWEEP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True)
class Metrics:
    steps: Any
    step_seconds: Any
    resume_seconds: Any
    sweeps: Any
    sweep_seconds: Any
    sweep_last: Any
    sweep_actions: Any
    lease_expiries: Any
    model_calls: Any
    model_seconds: Any
    model_tokens: Any


_lock = threading.Lock()
_metrics: Metrics | None = None


def use_multiprocess(directory: str) -> None:
    """Record into ``directory`` (emptied first) so a prefork worker's parent can sum
    its children. Call before any metric is recorded in this process."""
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.unlink(os.path.join(directory, name))
    os.environ[MULTIPROC_ENV] = directory
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def metrics() -> Metrics:
    """This process's metrics, built on first use."""
    global _metrics
    if _metrics is not None:
        return _metrics
    with _lock:
        if _metrics is None:
            _metrics = _build()
    return _metrics


def _build() -> Metrics:
    from prometheus_client import Counter, Gauge, Histogram

    return Metrics(
        steps=Counter(
            "pausepoint_steps_total",
            "Steps run, by how they ended: next (a next step queued), waiting, "
            "completed, failed (the run failed), retried (to run again), lost (the "
            "lease was taken over; the result was dropped).",
            ["workflow", "step", "outcome"],
        ),
        step_seconds=Histogram(
            "pausepoint_step_duration_seconds",
            "Time a step's code ran, from its claim to its outcome (its commit not included).",
            ["workflow", "step"],
            buckets=STEP_BUCKETS,
        ),
        resume_seconds=Histogram(
            "pausepoint_resume_latency_seconds",
            "From a wait's fulfilment (a decision, a callback, an event, a slot, a "
            "deadline) to the start of the step it resumes.",
            ["kind"],
            buckets=RESUME_BUCKETS,
        ),
        sweeps=Counter("pausepoint_sweeps_total", "Sweeper passes run."),
        sweep_seconds=Histogram(
            "pausepoint_sweep_duration_seconds",
            "Time of one sweeper pass.",
            buckets=SWEEP_BUCKETS,
        ),
        sweep_last=Gauge(
            "pausepoint_sweep_last_timestamp_seconds",
            "Unix time the latest sweeper pass ended (lag: time() minus this).",
            multiprocess_mode="max",
        ),
        sweep_actions=Counter(
            "pausepoint_sweep_actions_total",
            "What sweeper passes did: republished (a lost message), deadline, "
            "escalated, failed (a run out of attempts), resource_wakeup, skipped (a row "
            "it could not handle).",
            ["action"],
        ),
        lease_expiries=Counter(
            "pausepoint_lease_expiries_total",
            "Runs taken back from a worker that stopped renewing its lease.",
        ),
        model_calls=Counter(
            "pausepoint_model_calls_total",
            "Model calls, by model and outcome (ok, or the error's type).",
            ["model", "outcome"],
        ),
        model_seconds=Histogram(
            "pausepoint_model_call_duration_seconds",
            "Time of one model call, the client's retries included.",
            ["model"],
            buckets=MODEL_BUCKETS,
        ),
        model_tokens=Counter(
            "pausepoint_model_tokens_total",
            "Tokens the model reported, by model and direction (prompt, completion).",
            ["model", "direction"],
        ),
    )


# ------------------------------------------------------------------- recording


def step_done(workflow: str, step: str | None, outcome: str, seconds: float | None) -> None:
    m = metrics()
    m.steps.labels(workflow, step or "", outcome).inc()
    if seconds is not None:
        m.step_seconds.labels(workflow, step or "").observe(seconds)


def resumed(kind: str, seconds: float) -> None:
    metrics().resume_seconds.labels(kind).observe(max(0.0, seconds))


def swept(seconds: float, actions: dict[str, int], lease_expired: int) -> None:
    m = metrics()
    m.sweeps.inc()
    m.sweep_seconds.observe(seconds)
    m.sweep_last.set(time.time())
    for action, count in actions.items():
        if count:
            m.sweep_actions.labels(action).inc(count)
    if lease_expired:
        m.lease_expiries.inc(lease_expired)


def model_called(
    model: str | None,
    seconds: float,
    outcome: str,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
) -> None:
    m = metrics()
    name = model or "default"
    m.model_calls.labels(name, outcome).inc()
    m.model_seconds.labels(name).observe(seconds)
    if prompt_tokens:
        m.model_tokens.labels(name, "prompt").inc(prompt_tokens)
    if completion_tokens:
        m.model_tokens.labels(name, "completion").inc(completion_tokens)


def exposition(registry: Any | None = None) -> bytes:
    """The text format of ``registry`` (this process's, or the multiprocess files')."""
    from prometheus_client import generate_latest

    return bytes(generate_latest(registry or worker_registry()))


def worker_registry() -> Any:
    """The registry a worker serves: the multiprocess files' sum when in that mode."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    metrics()  # every family listed from the first scrape, at zero
    return REGISTRY
