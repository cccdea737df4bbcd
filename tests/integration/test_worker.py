"""Runs on real `pausepoint worker` processes: SQLite store + broker, and Postgres + Redis."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from sqlalchemy import func, select

from pausepoint.persistence.records import COMPLETED, FINISHED, RUNNING, WAITING
from pausepoint.persistence.tables import checkpoints, messages
from pausepoint.tasks.jobs import RUN_STEP
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.integration

LOANS = [
    ("Ada", "amount 20000, income 90000, debt 3000", True),
    ("Grace", "amount 35000, income 110000, debt 9000", True),
    ("Edsger", "amount 200000, income 30000, debt 25000", False),
]


def kinds(cluster: Cluster, run_id: str) -> list[str]:
    return [e.kind for e in cluster.store.events(run_id)]


def test_loan_runs_of_one_agent_finish_with_their_own_outcomes(cluster: Cluster) -> None:
    cluster.worker("w1")
    ids = [
        cluster.runtime.start(
            "loan", agent="loan_processor", task=f"Loan application from {who}: {nums}"
        ).id
        for who, nums, _ in LOANS
    ]
    cluster.wait_for(ids, lambda r: r.status == WAITING, "every run to park for approval")
    for run_id, (_, _, approve) in zip(ids, LOANS, strict=True):
        cluster.runtime.decide(run_id, approved=approve, actor="underwriter", comment="checked")
    runs = cluster.wait_for(ids, lambda r: r.status in FINISHED, "every run to finish")
    for run, (who, _, approve) in zip(runs, LOANS, strict=True):
        assert run.status == COMPLETED
        assert run.result["outcome"] == ("approved" if approve else "rejected")
        history = cluster.store.history(run.id)
        assert len(history) == 4
        # Each run kept its own conversation: only its own applicant appears in it.
        text = " ".join(m.content for m in history)
        assert who in text
        assert all(other not in text for other, _, _ in LOANS if other != who)


def test_a_paused_run_survives_a_killed_worker(cluster: Cluster) -> None:
    w1 = cluster.worker("w1")
    run = cluster.runtime.start(
        "loan", agent="loan_processor", task="Loan: amount 10000, income 80000, debt 0"
    )
    cluster.wait_for([run.id], lambda r: r.status == WAITING, "the run to park")
    before = [m.content for m in cluster.store.history(run.id)]
    parked_seq = cluster.store.get_run(run.id).seq
    w1.kill()

    # The approval lands while no worker runs at all.
    cluster.runtime.decide(run.id, approved=True, actor="alice", comment="go")
    time.sleep(1)
    assert cluster.store.get_run(run.id).status != COMPLETED

    cluster.worker("w2")
    (done,) = cluster.wait_for([run.id], lambda r: r.status in FINISHED, "the run to finish")
    assert done.status == COMPLETED and done.result["outcome"] == "approved"
    after = [m.content for m in cluster.store.history(run.id)]
    assert after[: len(before)] == before and len(after) == len(before) + 2
    # It resumed from its last checkpoint: one new checkpoint after the parked one.
    assert cluster.store.checkpoint(run.id).seq == parked_seq + 1
    actors = {e.actor for e in cluster.store.events(run.id) if e.kind == "step_completed"}
    assert len(actors) == 2, f"both steps should name their own worker process: {actors}"


def test_a_worker_killed_mid_step_is_recovered_and_the_step_applies_once(cluster: Cluster) -> None:
    w1 = cluster.worker("w1")
    run = cluster.runtime.start(
        "slow", agent="loan_processor", task="the report", input={"sleep": 30}
    )
    cluster.wait_for([run.id], lambda r: r.status == RUNNING, "the step to start")
    w1.kill()
    # A new worker's sweeper finds the expired lease (4 s) and queues the step again.
    cluster.worker("w2")
    (done,) = cluster.wait_for([run.id], lambda r: r.status in FINISHED, "recovery", timeout=60)
    assert done.status == COMPLETED
    assert done.result == {"attempt": 0, "history": 1}
    assert [m.content for m in cluster.store.history(run.id)] == ["worked on the report"]
    trail = Counter(kinds(cluster, run.id))
    assert trail["lease_expired"] == 1
    assert trail["step_completed"] == 2  # work once, finish once


def test_duplicate_deliveries_to_two_workers_apply_once(cluster: Cluster) -> None:
    cluster.worker("w1", beat=True)
    cluster.worker("w2", beat=False)
    steps = 4
    run = cluster.runtime.start(
        "noop", agent="loan_processor", input={"steps": steps, "message": "tick"}
    )
    task = cluster.app.tasks[RUN_STEP]
    for _ in range(10):  # the first step's message, nine more times, to four processes
        task.apply_async((run.id, run.version))
    (done,) = cluster.wait_for([run.id], lambda r: r.status in FINISHED, "the run to finish")
    assert done.status == COMPLETED and done.result == {"steps": steps}
    assert [m.content for m in cluster.store.history(run.id)] == [
        f"tick #{i}" for i in range(1, steps + 1)
    ]
    with cluster.store.read() as conn:
        n_checkpoints = conn.execute(
            select(func.count()).select_from(checkpoints).where(checkpoints.c.run_id == run.id)
        ).scalar_one()
        n_messages = conn.execute(
            select(func.count()).select_from(messages).where(messages.c.run_id == run.id)
        ).scalar_one()
    assert (n_checkpoints, n_messages) == (steps + 1, steps)
    trail = Counter(kinds(cluster, run.id))
    assert trail["step_completed"] == steps
    assert trail["completed"] == 1


def test_many_runs_of_one_agent_at_once_keep_separate_histories(cluster: Cluster) -> None:
    cluster.worker("w1")
    ids = [
        cluster.runtime.start(
            "noop", agent="loan_processor", input={"steps": 5, "message": f"run{i}"}
        ).id
        for i in range(6)
    ]
    cluster.wait_for(ids, lambda r: r.status in FINISHED, "all runs to finish")
    for i, run_id in enumerate(ids):
        assert [m.content for m in cluster.store.history(run_id)] == [
            f"run{i} #{n}" for n in range(1, 6)
        ]
        assert cluster.store.checkpoint(run_id).state == {"done": 5}


def test_a_message_lost_by_the_broker_is_resent_by_the_sweeper(cluster: Cluster) -> None:
    # Queue the run while no worker runs, then lose its message for real.
    run = cluster.runtime.start("noop", agent="loan_processor", input={"steps": 2})
    with cluster.app.connection_for_write() as conn:
        purged = cluster.app.control.purge(connection=conn)
    assert purged == 1
    cluster.worker("w1")
    (done,) = cluster.wait_for([run.id], lambda r: r.status in FINISHED, "the re-sent run")
    assert done.status == COMPLETED and done.result == {"steps": 2}
    assert Counter(kinds(cluster, run.id))["step_completed"] == 2
