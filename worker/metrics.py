"""Serving the metrics: a worker's endpoint, and the API's ``/metrics`` with the store's
gauges.

A worker (``pausepoint worker --metrics-port 9808``) serves what its steps, sweeps and
model calls recorded (:mod:`tasks.metrics`); on the prefork pool its children record
into a folder of files its parent sums at each scrape. The API's ``/metrics`` (any API
key) serves what the store holds: runs by status and workflow, waits pending by kind
and the age of the oldest, read at the scrape, so one API scraped covers the store
however many workers there are.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from pausepoint.persistence.gauges import store_gauges
from pausepoint.persistence.store import Store
from pausepoint.tasks import metrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def serve_worker_metrics(port: int, host: str, *, multiprocess: bool) -> None:
    """Serve this worker's metrics on ``host:port`` from a thread of this (the parent)
    process; with ``multiprocess``, from the files its pool's children write."""
    from prometheus_client import start_http_server

    if multiprocess:
        folder = tempfile.mkdtemp(prefix="pausepoint-metrics-")
        atexit.register(shutil.rmtree, folder, True)
        metrics.use_multiprocess(folder)
    start_http_server(port, addr=host, registry=metrics.worker_registry())


class StoreCollector:
    """Gauges read from the store at each scrape (prometheus_client's custom collector)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> list[Any]:
        return []  # not described up front: a scrape, not a registration, reads the store

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        started = time.monotonic()
        with self.store.read() as conn:
            found = store_gauges(conn)
        now = self.store.clock()
        by_status = GaugeMetricFamily(
            "pausepoint_runs",
            "Runs in the store, by status and workflow.",
            labels=["status", "workflow"],
        )
        for (status, workflow), count in sorted(found.runs.items()):
            by_status.add_metric([status, workflow], count)
        yield by_status
        pending = GaugeMetricFamily(
            "pausepoint_waits_pending", "Waits not yet fulfilled, by kind.", labels=["kind"]
        )
        oldest = GaugeMetricFamily(
            "pausepoint_wait_oldest_age_seconds",
            "Age of the oldest pending wait, by kind.",
            labels=["kind"],
        )
        for w in found.waits:
            pending.add_metric([w.kind], w.count)
            if w.oldest is not None:
                oldest.add_metric([w.kind], max(0.0, (now - w.oldest).total_seconds()))
        yield pending
        yield oldest
        yield GaugeMetricFamily(
            "pausepoint_store_scrape_duration_seconds",
            "Time this scrape took to read the store's gauges.",
            value=time.monotonic() - started,
        )


def api_registry(store: Store) -> Any:
    """The API's registry: the store's gauges and this process's own metrics."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.gc_collector import GCCollector
    from prometheus_client.platform_collector import PlatformCollector
    from prometheus_client.process_collector import ProcessCollector

    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
