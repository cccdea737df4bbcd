"""The CLI's wait commands: waits, callback, event, resource(s). Real subprocesses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pausepoint.persistence.records import QUEUED, WAITING
from pausepoint.tasks.llm import ScriptedBackend
from pausepoint.tasks.runtime import Runtime
from tests import workflows  # noqa: F401  (payment, order)
from tests.unit.test_cli import Cli, assert_ok, assert_refused

ROOT = Path(__file__).resolve().parents[2]


class WaitCli(Cli):
    def env(self, **overrides: str) -> dict[str, str]:
        return super().env(
            PAUSEPOINT_WORKFLOWS="pausepoint.tasks.examples,tests.workflows",
            PYTHONPATH=str(ROOT),
            **overrides,
        )


@pytest.fixture
def cli(tmp_path: Path) -> WaitCli:
    return WaitCli(tmp_path)


@pytest.fixture
def parked(cli: WaitCli) -> Iterator[dict[str, str]]:
    """A payment run parked on a callback and an order run parked on an event."""
    with cli.store() as store:
        store.save_agent("ops")
        sent: list[tuple[str, int]] = []
        rt = Runtime(store, llm=ScriptedBackend(), publish=lambda r, v: sent.append((r, v)))
        pay = rt.start("payment", agent="ops")
        order = rt.start("order", agent="ops", input={"order_id": "A1"})
        while sent:
            rt.run_step(*sent.pop(0), owner="test")
        url = store.checkpoint(pay.id).state["callback_url"]
        assert store.get_run(pay.id).status == WAITING
        yield {"payment": pay.id, "order": order.id, "token": url.rsplit("/", 1)[1]}


def test_waits_lists_pending_waits(cli: WaitCli, parked: dict[str, str]) -> None:
    shown = cli("waits", COLUMNS="200")
    assert_ok(shown)
    assert parked["payment"][:12] in shown.out and "callback" in shown.out
    assert parked["order"][:12] in shown.out and "order.paid=A1" in shown.out


def test_callback_resumes_once(cli: WaitCli, parked: dict[str, str]) -> None:
    done = cli("callback", parked["token"], "--data", '{"paid": 10}')
    assert_ok(done)
    assert "resumed" in done.out
    with cli.store() as store:
        run = store.get_run(parked["payment"])
        assert run.status == QUEUED and run.step == "settle"
    before = cli.snapshot()
    again = cli("callback", parked["token"], "--data", '{"paid": 10}')
    assert_refused(again, "already received")
    assert cli.snapshot() == before


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("callback", "not-a-token"), ("unknown callback token",)),
        (("callback", "TOKEN", "--data", '{"paid": }'), ("--data", "not valid JSON")),
        (("event", "order.paid", "--key", "A1", "--data", "[1]"), ("--data", "JSON object")),
    ],
)
def test_bad_wait_commands_change_nothing(
    cli: WaitCli, parked: dict[str, str], args: tuple[str, ...], words: tuple[str, ...]
) -> None:
    args = tuple(parked["token"] if a == "TOKEN" else a for a in args)
    before = cli.snapshot()
    assert_refused(cli(*args), *words)
    assert cli.snapshot() == before


def test_event_resumes_the_runs_with_its_key(cli: WaitCli, parked: dict[str, str]) -> None:
    other = cli("event", "order.paid", "--key", "B2")
    assert_ok(other)
    assert "0 run(s) resumed" in other.out
    hit = cli("event", "order.paid", "--key", "A1", "--data", '{"amount": 5}')
    assert_ok(hit)
    assert "1 run(s) resumed" in hit.out
    with cli.store() as store:
        assert store.get_run(parked["order"]).status == QUEUED


def test_resources_are_created_listed_and_resized(cli: WaitCli) -> None:
    assert_ok(cli("resource", "gpu", "--slots", "2"))
    listed = cli("resources")
    assert_ok(listed)
    assert "gpu: 0/2 slots in use" in listed.out
    assert_ok(cli("resource", "gpu", "--slots", "3"))
    assert "gpu: 0/3" in cli("resources").out
    bad = cli("resource", "gpu", "--slots", "-1")
    assert bad.code != 0 and "Traceback" not in bad.both
