"""Retention on a store with thousands of runs in every status, while a worker and the
API keep running, and a `pausepoint gc` killed half-way: on the embedded default and on
Postgres + Redis.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from pausepoint.persistence.audit import ExportedEvent, verify_chain
from pausepoint.persistence.errors import Gone
from pausepoint.persistence.records import (
    APPROVAL,
    COMPLETED,
    FAILED,
    QUEUED,
    RUNNING,
    WAITING,
    NewMessage,
    Transition,
    WaitSpec,
)
from pausepoint.persistence.retention import PURGED, read_archive
from pausepoint.persistence.store import Store
from pausepoint.persistence.tables import checkpoints, deliveries, events, messages, runs, waits
from tests.integration.conftest import ROOT, Cluster

pytestmark = pytest.mark.integration

PAD = "x" * 1500  # a fat message, so the space given back is plain to see
AGENT = "loan_processor"


class Seeder:
    """Writes runs through the Store API with a clock set in the past."""

    def __init__(self, url: str) -> None:
        self.now = datetime.now(timezone.utc)
        self.store = Store.from_url(url, lease_seconds=10**7)
        self.at = self.now
        self.store.clock = lambda: self.at

    def _start(self, days: float) -> tuple[str, int]:
        self.at = self.now - timedelta(days=days)
        run, _ = self.store.create_run(
            agent_name=AGENT, workflow="noop", first_step="tick", actor="seed", input={"steps": 9}
        )
        return run.id, run.version

    def _step(self, run_id: str, version: int, t: Transition) -> tuple[str, int]:
        claim = self.store.claim(run_id, version, "seed")
        assert claim is not None
        new = self.store.commit_step(claim, "seed", t)
        return new.id, new.version

    def finished(self, days: float, *, failed: bool = False) -> str:
        """A run that finished ``days`` ago in one step: checkpoints 0 and 1, 3 messages."""
        rid, v = self._start(days)
        end = Transition(
            status=FAILED if failed else COMPLETED,
            state={"done": 1},
            messages=(
                NewMessage("assistant", PAD),
                NewMessage("assistant", PAD),
                NewMessage("assistant", "bye"),
            ),
            result=None if failed else {"steps": 1},
            error="seeded failure" if failed else None,
        )
        self._step(rid, v, end)
        return rid

    def waiting(self, days: float) -> str:
        rid, v = self._start(days)
        wait = WaitSpec(kind=APPROVAL, resume_step="tick", approver_group="underwriters")
        self._step(rid, v, Transition(status=WAITING, state={"done": 1}, wait=wait))
        return rid

    def queued(self, days: float) -> str:
        rid, v = self._start(days)
        # A retry due ten days from now: queued, and no worker may take it before then.
        delay = (self.now - self.at).total_seconds() + 10 * 86400
        retry = Transition(status=QUEUED, state={}, step="tick", retry=True, delay=delay)
        self._step(rid, v, retry)
        return rid

    def running(self, days: float) -> str:
        rid, v = self._start(days)
        assert self.store.claim(rid, v, "busy-worker@elsewhere") is not None
        return rid


def snapshot(store: Store, run_ids: list[str]) -> dict[str, Any]:
    return {r: (store.get_run(r), store.checkpoints(r), store.history(r)) for r in run_ids}


def orphans(store: Store) -> int:
    total = 0
    with store.read() as conn:
        for t in (checkpoints, messages, events, waits, deliveries):
            total += conn.execute(
                select(func.count())
                .select_from(t)
                .where(t.c.run_id.is_not(None), t.c.run_id.not_in(select(runs.c.id)))
            ).scalar_one()
        done = select(runs.c.id).where(runs.c.purge_state == PURGED)
        for t in (checkpoints, messages, waits):
            total += conn.execute(
                select(func.count()).select_from(t).where(t.c.run_id.in_(done))
            ).scalar_one()
    return int(total)


def gc_command(cluster: Cluster, archive: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pausepoint.worker", "gc", *args]


def gc_env(cluster: Cluster, archive: Path) -> dict[str, str]:
    return {
        **cluster.env,
        "CI": "true",
        "PAUSEPOINT_RETENTION_DAYS": "30",
        "PAUSEPOINT_RETENTION_EVENTS_DAYS": "30",
        "PAUSEPOINT_RETENTION_KEEP_CHECKPOINTS": "1",
        "PAUSEPOINT_ARCHIVE_DIR": str(archive),
    }


class Producer(threading.Thread):
    """Starts no-op runs through the API for as long as the test runs."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.ids: list[str] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        headers = {"Authorization": "Bearer key-producer"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=30) as client:
            while not self.stop.is_set():
                r = client.post(
                    "/runs",
                    json={
                        "workflow": "noop",
                        "agent": AGENT,
                        "input": {"steps": 3, "message": "live"},
                    },
                )
                if r.status_code != 201:
                    self.errors.append(f"{r.status_code} {r.text}")
                else:
                    self.ids.append(r.json()["id"])
                if len(self.ids) >= 150:
                    return
                time.sleep(0.25)


@pytest.mark.timeout(900)
def test_gc_under_load_killed_and_resumed(cluster: Cluster, tmp_path: Path) -> None:
    seeder = Seeder(cluster.env["PAUSEPOINT_STORE_URL"])
    try:
        _gc_under_load(cluster, tmp_path, seeder)
    finally:
        seeder.store.close()


def _gc_under_load(cluster: Cluster, tmp_path: Path, seeder: Seeder) -> None:
    t0 = time.monotonic()
    ancient = [seeder.finished(70 + i % 50, failed=i % 7 == 0) for i in range(1300)]
    old = [seeder.finished(40 + i % 15) for i in range(300)]
    recent = [seeder.finished(1 + i % 20) for i in range(200)]
    held = [seeder.finished(100) for _ in range(60)]
    for rid in held:
        seeder.store.set_legal_hold(rid, True, actor="legal", reason="litigation")
    waiting = [seeder.waiting(100) for _ in range(80)]
    queued = [seeder.queued(100) for _ in range(40)]
    running = [seeder.running(100) for _ in range(40)]
    print(f"seeded {cluster.store.count_runs()} runs in {time.monotonic() - t0:.1f}s")
    untouched = held + waiting + queued + running
    before = snapshot(cluster.store, untouched)
    recent_before = snapshot(cluster.store, recent)
    trails = {r: cluster.store.events(r) for r in ancient[:20]}
    sqlite = cluster.name == "embedded"
    db_file = Path(cluster.env["PAUSEPOINT_STORE_URL"].removeprefix("sqlite:///"))
    size_before = db_file.stat().st_size if sqlite else 0

    cluster.worker("w1")
    api = cluster.api()
    producer = Producer(api.url)
    producer.start()
    archive = tmp_path / "archive"
    env = gc_env(cluster, archive)
    try:
        # --dry-run: says what would go, changes nothing.
        dry = subprocess.run(
            gc_command(cluster, archive, "--dry-run"),
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert dry.returncode == 0, dry.stderr + dry.stdout
        assert "1300" in dry.stdout and "1600" in dry.stdout, dry.stdout
        assert snapshot(cluster.store, untouched) == before
        assert snapshot(cluster.store, recent[:20]) == {r: recent_before[r] for r in recent[:20]}
        assert all(cluster.store.get_run(r).purge_state is None for r in ancient + old)
        assert not archive.exists()

        # A real pass, killed (SIGKILL) once it has purged a hundred runs.
        proc = subprocess.Popen(
            gc_command(cluster, archive, "--batch", "25"),
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 240
        marked = 0
        while time.monotonic() < deadline and proc.poll() is None:
            with cluster.store.read() as conn:
                marked = conn.execute(
                    select(func.count()).select_from(runs).where(runs.c.purge_state.is_not(None))
                ).scalar_one()
            if marked >= 100:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait(30)
        assert proc.returncode == -signal.SIGKILL, "gc finished before it could be killed"

        # Consistent after the kill: no orphans, live runs untouched, marked runs say Gone.
        assert orphans(cluster.store) == 0
        assert snapshot(cluster.store, untouched) == before
        half = [r for r in ancient + old if cluster.store.get_run(r).purge_state is not None]
        assert 100 <= len(half) < len(ancient) + len(old)
        for rid in half[:50]:
            with pytest.raises(Gone):
                cluster.store.history(rid)

        # The next pass finishes the job.
        done = subprocess.run(
            gc_command(cluster, archive, "--batch", "200"),
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr + done.stdout
    finally:
        producer.stop.set()
        producer.join(30)

    store = cluster.store
    left = {r.id for r in store.list_runs(limit=100_000)}
    assert left.isdisjoint(ancient)
    for rid in old:
        run = store.get_run(rid)
        assert run.purge_state == PURGED and store.verify(rid) is None
    for rid in recent:
        assert [c.seq for c in store.checkpoints(rid)] == [1]
        assert len(store.history(rid)) == 3
    assert snapshot(store, untouched) == before
    assert orphans(store) == 0
    # Every deleted trail went to the archive first, whole and verifiable.
    for rid, trail in trails.items():
        files = list(archive.rglob(f"{rid}.jsonl"))
        assert len(files) == 1
        header, records = read_archive(files[0])
        archived = [ExportedEvent.from_record(r) for r in records]
        assert [e.hash for e in archived[: len(trail)]] == [e.hash for e in trail]
        assert verify_chain(rid, archived, header["event_count"], header["event_hash"]) is None
    assert len(list(archive.rglob("*.jsonl"))) == len(ancient)
    if sqlite:
        assert db_file.stat().st_size < size_before / 2

    # The live traffic went on: every run started during the passes finished intact.
    assert producer.errors == []
    assert len(producer.ids) > 20
    finished = cluster.wait_for(
        producer.ids, lambda r: r.status == COMPLETED, "live runs", timeout=180
    )
    for run in finished:
        assert run.result == {"steps": 3}
        assert [m.content for m in store.history(run.id)] == [f"live #{i}" for i in (1, 2, 3)]
        assert store.verify(run.id) is None
    assert all(w.proc is not None and w.proc.poll() is None for w in cluster.workers)
    assert store.get_run(running[0]).status == RUNNING
