"""The README's first command: the demo on the embedded default, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def worker_processes(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and "worker worker" in line]


@pytest.mark.integration
def test_demo_finishes_every_run_and_leaves_no_process(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAUSEPOINT_")} | {
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "120",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pausepoint.worker", "demo", "--dir", str(tmp_path / "demo")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "all runs finished with their own outcome" in out
    assert out.count("✓") == 5 and "✗" not in out
    assert "the worker is stopped" in out and "Audit trail" in out
    assert "Traceback" not in out
    assert worker_processes(str(tmp_path)) == []
    # The run shown last was decided while no worker ran, and finished on the new one.
    log = (tmp_path / "demo" / "worker.log").read_text()
    assert log.count(" ready.") == 2
    # Part 2, the tools demo: an approval with edited arguments, a SIGKILL mid-loop.
    assert "the worker is SIGKILLed" in out
    assert "no finished call ran twice; one refund, of the approved amount" in out
    ledger = [
        json.loads(line)
        for line in (tmp_path / "demo" / "tools-ledger.jsonl").read_text().splitlines()
    ]
    refunds = [e for e in ledger if e["tool"] == "refund"]
    assert [e.get("amount") for e in refunds if e.get("applied")] == [30.0]
    emails = [e["key"] for e in ledger if e["tool"] == "email_customer" and e.get("started")]
    assert len(emails) == 2 and len(set(emails)) == 1  # killed mid-call: again, same key
    assert (tmp_path / "demo" / "tools-worker.log").read_text().count(" ready.") == 2
