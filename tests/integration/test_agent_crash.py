"""A real worker SIGKILLed in the middle of an agent loop, on both backends.

Killed after a tool call started but before its result was recorded, the call runs
again with the same idempotency key; killed after the result was recorded (in the next
model turn), the finished call never runs again.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pausepoint.persistence.records import COMPLETED, FINISHED
from tests.integration.conftest import Cluster

TASK = "Charge order A-1001, then tell the customer."


def _run(cluster: Cluster, tmp_path: Path, slow: str) -> tuple[str, list[str]]:
    ledger = tmp_path / "ledger.txt"
    ledger.touch()
    cluster.env.update(PAUSEPOINT_TEST_LEDGER=str(ledger), PAUSEPOINT_TEST_SLOW=slow)
    cluster.store.save_agent("clerk", persona="You run errands.")
    w1 = cluster.worker("w1")
    run = cluster.runtime.start("tool_loop", agent="clerk", task=TASK)
    marker = "start charge" if slow == "tool" else "think "
    cluster.wait_for(
        [run.id], lambda r: marker in ledger.read_text(), f"the loop to reach {marker!r}"
    )
    w1.kill()
    cluster.worker("w2")
    (done,) = cluster.wait_for([run.id], lambda r: r.status in FINISHED, "recovery", timeout=90)
    assert done.status == COMPLETED, done.error
    return run.id, ledger.read_text().splitlines()


@pytest.mark.timeout(240)
def test_killed_inside_a_tool_call_it_runs_again_with_the_same_key(
    cluster: Cluster, tmp_path: Path
) -> None:
    run_id, lines = _run(cluster, tmp_path, "tool")
    key = f"{run_id}:1:"
    charges = [line for line in lines if line.startswith("start charge")]
    assert len(charges) == 2 and len(set(charges)) == 1 and key in charges[0]
    assert sum(line.startswith("done charge") for line in lines) == 1
    assert sum(line.startswith("start notify") for line in lines) == 1
    kinds = Counter(e.kind for e in cluster.store.events(run_id))
    assert kinds["lease_expired"] == 1
    recorded = [
        e.data["tool_call"]["name"] for e in cluster.store.events(run_id) if "tool_call" in e.data
    ]
    assert recorded == ["charge", "notify"]  # each result recorded once


@pytest.mark.timeout(240)
def test_killed_after_a_result_was_recorded_the_call_never_runs_again(
    cluster: Cluster, tmp_path: Path
) -> None:
    run_id, lines = _run(cluster, tmp_path, "think")
    assert sum(line.startswith("start charge") for line in lines) == 1
    assert sum(line.startswith("start notify") for line in lines) == 1
    assert Counter(e.kind for e in cluster.store.events(run_id))["lease_expired"] == 1
    roles = [m.role for m in cluster.store.history(run_id)]
    assert roles == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
