"""Flower, on Redis, sees every step a worker runs (task events are on), behind a login.

Started the way docker-compose starts it (`pausepoint flower`), with the environment an
operator might leave behind (FLOWER_UNAUTHENTICATED_API=true) and a store URL that
carries a password: the API still answers 401 without the login, and nothing Flower
shows about the workers contains the password.
"""

from __future__ import annotations

import sys
import time

import httpx
import pytest

from pausepoint.persistence.records import FINISHED
from pausepoint.worker.procs import Proc, http_ready
from tests.integration.conftest import ROOT, Cluster, free_port

pytestmark = pytest.mark.integration


PASSWORD = "pg-s3cr3t-in-url"
LOGIN = ("ops", "flower-pw")


def with_password(url: str) -> str:
    # The test server trusts loopback, so any password works and none is checked.
    return url.replace("://postgres@", f"://postgres:{PASSWORD}@", 1)


@pytest.mark.parametrize("cluster", ["postgres_redis"], indirect=True)
def test_flower_needs_a_login_and_lists_every_step_of_a_run(cluster: Cluster) -> None:
    store_url = with_password(cluster.env["PAUSEPOINT_STORE_URL"])
    assert PASSWORD in store_url
    cluster.env["PAUSEPOINT_STORE_URL"] = store_url
    cluster.env["PAUSEPOINT_LLM_BASE_URL"] = f"https://user:{PASSWORD}@llm.invalid/v1"
    port = free_port()
    env = cluster.env | {
        "FLOWER_UNAUTHENTICATED_API": "true",
        "FLOWER_BASIC_AUTH": ":".join(LOGIN),
    }
    flower = Proc(
        "flower",
        [sys.executable, "-m", "pausepoint.worker", "flower", f"--port={port}"],
        env,
        cluster.tmp / "flower.log",
        cwd=ROOT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        flower.start(http_ready(f"{base}/healthcheck"), timeout=30)
        # No login: nothing, not even with FLOWER_UNAUTHENTICATED_API=true in the env.
        assert httpx.get(f"{base}/api/workers", timeout=5).status_code == 401
        assert httpx.get(f"{base}/api/tasks", timeout=5).status_code == 401
        assert httpx.post(f"{base}/api/task/revoke/x", timeout=5).status_code == 401
        assert httpx.post(f"{base}/api/worker/pool/shrink/w1", timeout=5).status_code == 401
        assert httpx.get(f"{base}/", timeout=5).status_code == 401
        wrong = httpx.get(f"{base}/api/workers", auth=("ops", "guess"), timeout=5)
        assert wrong.status_code == 401

        # One task per step: without inline steps, each step is its own broker message.
        cluster.env["PAUSEPOINT_INLINE_STEPS"] = "1"
        cluster.worker("w1")
        run = cluster.runtime.start("noop", agent="loan_processor", input={"steps": 3})
        cluster.wait_for([run.id], lambda r: r.status in FINISHED, "the run to finish")
        deadline = time.monotonic() + 20
        while True:
            tasks = httpx.get(f"{base}/api/tasks", auth=LOGIN, timeout=5).json()
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

        # What the Config tab shows: the worker's configuration, credentials masked.
        deadline = time.monotonic() + 20
        while True:
            workers = httpx.get(f"{base}/api/workers?refresh=1", auth=LOGIN, timeout=15)
            assert workers.status_code == 200
            confs = [w.get("conf") for w in workers.json().values() if w.get("conf")]
            if confs:
                break
            assert time.monotonic() < deadline, f"flower saw no worker conf: {workers.text}"
            time.sleep(0.5)
        shown = workers.text
        assert "Settings(" in shown and "***@" in shown
        assert PASSWORD not in shown
        page = httpx.get(f"{base}/worker/{next(iter(workers.json()))}", auth=LOGIN, timeout=15)
        assert page.status_code == 200 and PASSWORD not in page.text
    finally:
        flower.stop(10)
    assert PASSWORD not in (cluster.tmp / "flower.log").read_text(errors="replace")
    for w in cluster.workers:
        assert PASSWORD not in w.log.read_text(errors="replace")
