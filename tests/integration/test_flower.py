"""Flower, on Redis, sees every step a worker runs (task events are on)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from persistence.records import FINISHED
from tests.integration.conftest import ROOT, Cluster

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("cluster", ["postgres_redis"], indirect=True)
def test_flower_lists_every_step_of_a_run(cluster: Cluster) -> None:
    port = free_port()
    env = cluster.env | {"FLOWER_UNAUTHENTICATED_API": "true"}
    log = (cluster.tmp / "flower.log").open("wb")
    flower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "--app",
            "worker.main",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
        ],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthcheck", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "flower did not start"
            time.sleep(0.2)
        # One task per step: without inline steps, each step is its own broker message.
        cluster.env["PAUSEPOINT_INLINE_STEPS"] = "1"
        cluster.worker("w1")
        run = cluster.runtime.start("noop", agent="loan_processor", input={"steps": 3})
        cluster.wait_for([run.id], lambda r: r.status in FINISHED, "the run to finish")
        deadline = time.monotonic() + 20
        while True:
            tasks = httpx.get(f"{base}/api/tasks", timeout=5).json()
            ours = [
                t
                for t in tasks.values()
                if t["name"] == "pausepoint.run_step" and run.id in str(t["args"])
            ]
            if len([t for t in ours if t["state"] == "SUCCESS"]) >= 3:
                break
            assert time.monotonic() < deadline, f"flower saw {ours}"
            time.sleep(0.5)
        assert all(t["worker"].startswith("w1@") for t in ours)
    finally:
        os.killpg(flower.pid, signal.SIGTERM)
        try:
            flower.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(flower.pid, signal.SIGKILL)
            flower.wait()
        log.close()
