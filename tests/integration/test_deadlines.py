"""Deadlines on real processes: beat's sweeper applies the workflow's chosen outcome, once."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from pausepoint.persistence.records import COMPLETED, FAILED, FINISHED, WAITING
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.integration


def trail(cluster: Cluster, run_id: str) -> Counter[str]:
    return Counter(e.kind for e in cluster.store.events(run_id))


def test_each_deadline_outcome_happens_once(cluster: Cluster) -> None:
    cluster.worker("w1")
    fail = cluster.runtime.start("deadline", agent="loan_processor", input={"seconds": 1})
    default = cluster.runtime.start(
        "deadline", agent="loan_processor", input={"seconds": 1, "on_timeout": "default"}
    )
    escalate = cluster.runtime.start(
        "deadline",
        agent="loan_processor",
        input={"seconds": 1, "escalate_to": "managers", "escalate_after": 600},
    )
    ids = [fail.id, default.id, escalate.id]
    cluster.wait_for([fail.id, default.id], lambda r: r.status in FINISHED, "the deadlines")
    # Several more sweeps pass; nothing happens twice.
    time.sleep(2)
    failed, defaulted, escalated = (cluster.store.get_run(i) for i in ids)
    assert failed.status == FAILED and "deadline" in (failed.error or "")
    assert defaulted.status == COMPLETED
    assert defaulted.result == {"decision": "timed out", "by": "policy"}
    assert escalated.status == WAITING
    (wait,) = cluster.store.waits(escalate.id)
    assert wait.approver_group == "managers" and wait.status == "pending"
    assert trail(cluster, fail.id)["expired"] == 1 and trail(cluster, fail.id)["failed"] == 1
    assert trail(cluster, default.id)["expired"] == 1
    assert trail(cluster, default.id)["step_completed"] == 2
    assert trail(cluster, escalate.id)["escalated"] == 1
    # The escalated approval is now the managers' to make.
    cluster.runtime.decide(escalate.id, approved=True, actor="mia", groups=frozenset({"managers"}))
    (done,) = cluster.wait_for([escalate.id], lambda r: r.status in FINISHED, "the decision")
    assert done.result == {"decision": "approved", "by": "mia"}
