"""A real worker whose agent talks to an OpenAI-compatible server over HTTP (on loopback)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pausepoint.persistence.records import FINISHED, WAITING
from pausepoint.tasks.jobs import forget_runtimes
from pausepoint.worker.app import create_app, runtime
from pausepoint.worker.settings import Settings
from tests.integration.conftest import ROOT, Cluster
from tests.openai_server import OpenAIServer

pytestmark = pytest.mark.integration


def underwriter(body: dict[str, Any]) -> str:
    last = body["messages"][-1]["content"]
    if "assessment" in last:
        return "Ratios look healthy. RECOMMENDATION: APPROVE"
    return "Offer letter prepared."


@pytest.fixture
def llm_cluster(tmp_path: Path) -> Iterator[tuple[Cluster, OpenAIServer]]:
    with OpenAIServer(api_key="sk-test", reply=underwriter) as server:
        store_url = f"sqlite:///{tmp_path / 'store.db'}"
        broker_url = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PAUSEPOINT_STORE_URL": store_url,
            "PAUSEPOINT_BROKER_URL": broker_url,
            "PAUSEPOINT_LLM": "openai",
            "PAUSEPOINT_LLM_BASE_URL": server.base_url,
            "PAUSEPOINT_LLM_API_KEY": "sk-test",
            "PAUSEPOINT_LLM_MODEL": "house-model",
        }
        app = create_app(Settings(store_url=store_url, broker_url=broker_url))
        c = Cluster("openai", env, tmp_path, runtime(app), app=app)
        c.store.save_agent("loan_processor", persona="I am a loan processing assistant.")
        try:
            yield c, server
        finally:
            for w in c.workers:
                w.stop()
            forget_runtimes()
            app.close()


def test_loan_steps_call_the_model_over_http(llm_cluster: tuple[Cluster, OpenAIServer]) -> None:
    cluster, server = llm_cluster
    server.plan(status=503, times=1)  # the first call is retried by the client
    cluster.worker("w1")
    run = cluster.runtime.start("loan", agent="loan_processor", task="amount 1000, income 50000")
    cluster.wait_for([run.id], lambda r: r.status == WAITING, "the run to park")
    assert cluster.store.checkpoint(run.id).state["recommendation"] == "APPROVE"
    cluster.runtime.decide(run.id, approved=True, actor="alice")
    (done,) = cluster.wait_for([run.id], lambda r: r.status in FINISHED, "the run to finish")
    assert done.result["note"] == "Offer letter prepared."
    calls = [r for r in server.requests if r.path.endswith("/chat/completions")]
    assert len(calls) == 3  # 503, retried, then the resumed step
    first, retried, resumed = calls
    assert first.headers["authorization"] == "Bearer sk-test"
    assert first.body["model"] == "house-model"
    assert first.body["messages"][0] == {
        "role": "system",
        "content": "I am a loan processing assistant.",
    }
    # The retry carried the same idempotency key; the resumed step saw the first turns.
    assert first.headers["idempotency-key"] == retried.headers["idempotency-key"]
    assert any("RECOMMENDATION" in m["content"] for m in resumed.body["messages"])
