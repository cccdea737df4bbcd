"""Prometheus metrics, in process: what steps, resumes, sweeps and model calls record,
and the API's ``/metrics`` with what the store holds.

Metrics live in the process's registry, so each test reads the change it makes (a
sample after minus before), never an absolute figure another test may have moved.
The worker's endpoint and its prefork sum are exercised by real workers in
tests/integration/test_threads_load.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from pausepoint.persistence.records import WAITING
from pausepoint.tasks import examples  # noqa: F401  (registers loan and turns)
from tests.unit.test_api_audit import ROOT, VIEWER, Env, open_env


@pytest.fixture
def env(sqlite_url: str) -> Iterator[Env]:
    with open_env(sqlite_url) as e:
        yield e


def total(name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    found = 0.0
    for family in REGISTRY.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                found += s.value
    return found


class Delta:
    """Samples read now, to compare with the same samples later."""

    def __init__(self, *wanted: tuple[str, dict[str, str]]) -> None:
        self.wanted = wanted
        self.before = [total(n, **lb) for n, lb in wanted]

    def moved(self) -> list[float]:
        return [total(n, **lb) - b for (n, lb), b in zip(self.wanted, self.before, strict=True)]


def start_turns(env: Env, steps: int) -> str:
    run = env.rt.start("turns", agent="loan_processor", task="chat", input={"steps": steps})
    while env.drain():
        pass
    return run.id


def test_steps_model_calls_and_durations_move_with_a_run(env: Env) -> None:
    delta = Delta(
        ("pausepoint_steps_total", {"workflow": "turns", "step": "turn", "outcome": "next"}),
        ("pausepoint_steps_total", {"workflow": "turns", "step": "turn", "outcome": "completed"}),
        ("pausepoint_step_duration_seconds_count", {"workflow": "turns", "step": "turn"}),
        ("pausepoint_model_calls_total", {"outcome": "ok"}),
        ("pausepoint_model_call_duration_seconds_count", {}),
        ("pausepoint_model_tokens_total", {"direction": "prompt"}),
        ("pausepoint_model_tokens_total", {"direction": "completion"}),
    )
    run_id = start_turns(env, 3)
    assert env.store.get_run(run_id).status == "completed"
    nexts, completed, durations, calls, call_durations, prompt, completion = delta.moved()
    assert (nexts, completed, durations) == (2, 1, 3)
    assert (calls, call_durations) == (3, 3)
    assert prompt > 0 and completion > 0


def test_a_decision_records_the_resume_latency_and_a_sweep_its_pass(env: Env) -> None:
    run_id = env.parked_loan()
    delta = Delta(
        ("pausepoint_resume_latency_seconds_count", {"kind": "approval"}),
        ("pausepoint_steps_total", {"workflow": "loan", "outcome": "completed"}),
        ("pausepoint_sweeps_total", {}),
        ("pausepoint_sweep_duration_seconds_count", {}),
    )
    env.rt.decide(run_id, approved=True, actor="api:alice", comment="fine")
    env.drain()
    started = time.time()
    env.rt.sweep()
    resumes, completed, sweeps, sweep_durations = delta.moved()
    assert (resumes, completed) == (1, 1)
    assert (sweeps, sweep_durations) == (1, 1)
    assert total("pausepoint_sweep_last_timestamp_seconds") >= started


def test_no_metric_is_labelled_by_run_or_agent(env: Env) -> None:
    start_turns(env, 1)
    for family in REGISTRY.collect():
        if family.name.startswith("pausepoint_"):
            for s in family.samples:
                assert not {"run", "run_id", "agent"} & set(s.labels), (s.name, s.labels)


def scrape(env: Env, key: str = VIEWER) -> dict[str, list[Any]]:
    r = env.get("/metrics", key=key)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(r.text):
        out.setdefault(family.name, []).extend(family.samples)
    return out


def gauge(found: dict[str, list[Any]], name: str, **labels: str) -> float | None:
    for s in found.get(name, []):
        if s.labels == labels:
            return float(s.value)
    return None


def test_the_api_serves_runs_by_status_and_pending_waits(env: Env) -> None:
    assert env.http.get("/metrics").status_code == 401
    assert gauge(scrape(env), "pausepoint_runs", status="waiting", workflow="loan") is None
    run_id = env.parked_loan()
    assert env.store.get_run(run_id).status == WAITING
    found = scrape(env)
    assert gauge(found, "pausepoint_runs", status="waiting", workflow="loan") == 1
    assert gauge(found, "pausepoint_waits_pending", kind="approval") == 1
    age = gauge(found, "pausepoint_wait_oldest_age_seconds", kind="approval")
    assert age is not None and age >= 0
    assert "process_cpu_seconds" in found or "process_cpu_seconds_total" in found

    env.rt.decide(run_id, approved=True, actor="api:alice", comment="fine")
    env.drain()
    found = scrape(env, key=ROOT)
    assert gauge(found, "pausepoint_runs", status="completed", workflow="loan") == 1
    assert gauge(found, "pausepoint_runs", status="waiting", workflow="loan") is None
    assert gauge(found, "pausepoint_waits_pending", kind="approval") is None
