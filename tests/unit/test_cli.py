"""The ``pausepoint`` command line, run as real subprocesses on a SQLite store and broker.

No worker runs: ``start``, ``approve`` and ``reject`` only commit to the store and
publish to the SQLite broker file. Runs are put into the states a command needs
(queued, waiting, completed) in this process, through the Store API and the runtime.

Every bad input must end with exit code 1, one ``error:`` message on stderr that
names the problem, no traceback, and the store exactly as it was.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import pausepoint.tasks.examples  # noqa: F401  (registers the loan and noop workflows)
from pausepoint.persistence.migrate import head_revision
from pausepoint.persistence.records import (
    APPROVAL,
    COMPLETED,
    FULFILLED,
    QUEUED,
    WAITING,
    NewEvent,
    Transition,
    WaitSpec,
)
from pausepoint.persistence.store import Store
from pausepoint.tasks.llm import ScriptedBackend
from pausepoint.tasks.runtime import Runtime

TABLES = (
    "agents",
    "runs",
    "checkpoints",
    "messages",
    "events",
    "waits",
    "deliveries",
    "resources",
    "resource_holders",
    "meta",
)
LOAN_TASK = "Loan application L-1042: amount $25,000, annual income $90,000, existing debt $5,000"
UNKNOWN_RUN = "0123456789abcdef0123456789abcdef"  # the shape of a real run id
# Environment variables that would change how rich renders, or what the CLI reads.
_DROP = ("COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def both(self) -> str:
        return self.out + self.err

    @property
    def message(self) -> str:
        """stderr with rich's line wrapping undone."""
        return " ".join(self.err.split())

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


class Cli:
    """One installation in a temporary directory: its store, its broker, its commands."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.db = directory / "store.db"
        self.broker = directory / "broker.db"
        self.url = f"sqlite:///{self.db}"

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PAUSEPOINT_") and k not in _DROP
        }
        env["PAUSEPOINT_STORE_URL"] = self.url
        env["PAUSEPOINT_BROKER_URL"] = f"sqla+sqlite:///{self.broker}"
        env.update(overrides)
        return env

    def __call__(self, *args: str, **env: str) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "pausepoint.worker", *args],
            cwd=self.dir,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    @contextmanager
    def store(self) -> Iterator[Store]:
        store = Store.from_url(self.url)
        try:
            yield store
        finally:
            store.close()

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, in a stable order."""
        conn = sqlite3.connect(self.db)
        try:
            out = {}
            for table in TABLES:
                ncols = len(conn.execute(f"PRAGMA table_info({table})").fetchall())
                order = ", ".join(str(i) for i in range(1, ncols + 1))
                out[table] = conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
            return out
        finally:
            conn.close()

    def broker_messages(self) -> int:
        if not self.broker.exists():
            return 0
        conn = sqlite3.connect(self.broker)
        try:
            found = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE name = 'kombu_message'"
            ).fetchone()[0]
            if not found:
                return 0
            return int(conn.execute("SELECT count(*) FROM kombu_message").fetchone()[0])
        finally:
            conn.close()


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@dataclass(frozen=True)
class World:
    """A store with agent ``A`` and one run in each state a command cares about."""

    queued: str
    waiting: str
    completed: str


def _runtime(store: Store) -> tuple[Runtime, list[tuple[str, int]]]:
    published: list[tuple[str, int]] = []

    def publish(run_id: str, version: int) -> None:
        published.append((run_id, version))

    return Runtime(store, llm=ScriptedBackend(), publish=publish), published


def park_for_approval(store: Store, agent: str, task: str = LOAN_TASK) -> str:
    """A loan run parked on an approval, through the Store API alone."""
    run, _ = store.create_run(
        agent_name=agent, workflow="loan", first_step="assess", actor="test", task=task
    )
    claim = store.claim(run.id, run.version, "test-worker")
    assert claim is not None
    store.commit_step(
        claim,
        "test-worker",
        Transition(
            status=WAITING,
            state={"recommendation": "APPROVE"},
            wait=WaitSpec(kind=APPROVAL, resume_step="finalize", prompt="Approve this loan?"),
            events=(NewEvent("paused", {"kind": APPROVAL, "resume_step": "finalize"}),),
        ),
    )
    return run.id


@pytest.fixture
def world(cli: Cli) -> World:
    with cli.store() as store:
        store.save_agent("A", persona="I am a loan processing assistant.")
        rt, published = _runtime(store)
        queued = rt.start("noop", agent="A", task="stay queued").id
        waiting = rt.start("loan", agent="A", task=LOAN_TASK).id
        rt.run_step(*published[-1])
        completed = rt.start("noop", agent="A", task="finish").id
        rt.run_step(*published[-1])
        assert store.get_run(queued).status == QUEUED
        assert store.get_run(waiting).status == WAITING
        assert store.get_run(completed).status == COMPLETED
    return World(queued=queued, waiting=waiting, completed=completed)


def assert_ok(result: Result) -> None:
    assert result.code == 0, str(result)
    assert "Traceback" not in result.both, str(result)


def assert_refused(result: Result, *words: str) -> None:
    """Exit 1, an ``error:`` message naming the problem on stderr, no traceback."""
    assert result.code != 0, str(result)
    assert "Traceback" not in result.both, str(result)
    assert result.out == "", str(result)
    assert result.message.startswith("error: "), str(result)
    for word in words:
        assert word in result.message, f"{word!r} not in the message\n{result}"


# ------------------------------------------------------------------ happy paths


def test_agent_then_agents_lists_it(cli: Cli) -> None:
    made = cli("agent", "underwriter", "--persona", "I review loans.", "--model", '{"model": "m1"}')
    assert_ok(made)
    assert "underwriter" in made.out and "saved" in made.out
    listed = cli("agents")
    assert_ok(listed)
    assert "underwriter" in listed.out
    assert "I review loans." in listed.out
    with cli.store() as store:
        record = store.get_agent("underwriter")
    assert record.persona == "I review loans."
    assert record.model == {"model": "m1"}


def test_start_queues_a_run_that_runs_and_show_display(cli: Cli) -> None:
    with cli.store() as store:
        store.save_agent("A", persona="I am a loan processing assistant.")
    started = cli("start", "loan", "--agent", "A", "--task", "T", "--input", '{"x":1}')
    assert_ok(started)
    run_id = started.out.strip()
    assert len(run_id) == 32 and all(c in "0123456789abcdef" for c in run_id), str(started)
    with cli.store() as store:
        run = store.get_run(run_id)
    assert (run.workflow, run.agent_name, run.task) == ("loan", "A", "T")
    assert run.input == {"x": 1}
    assert run.status == QUEUED and run.step == "assess"
    assert cli.broker_messages() == 1

    table = cli("runs")
    assert_ok(table)
    # Narrow (piped) tables show a 12-character prefix, which every command accepts.
    assert run_id[:12] in table.out
    assert "queued" in table.out and "assess" in table.out
    by_prefix = cli("show", run_id[:12], "--json")
    assert_ok(by_prefix)
    assert json.loads(by_prefix.out)["run"]["id"] == run_id
    wide = cli("runs", COLUMNS="200")
    assert_ok(wide)
    assert run_id in wide.out

    lines = cli("runs", "--json")
    assert_ok(lines)
    rows = [json.loads(line) for line in lines.out.splitlines() if line.strip()]
    assert [r["id"] for r in rows] == [run_id]
    assert rows[0]["status"] == "queued"
    assert rows[0]["input"] == {"x": 1}
    assert rows[0]["workflow"] == "loan"

    filtered = cli("runs", "--status", "waiting", "--json")
    assert_ok(filtered)
    assert filtered.out.strip() == ""


def test_show_prints_state_history_waits_and_events(cli: Cli, world: World) -> None:
    shown = cli("show", world.waiting)
    assert_ok(shown)
    for section in ("Run ", "State at checkpoint #1", "Conversation", "Waits", "Audit trail"):
        assert section in shown.out, f"{section!r} missing\n{shown}"
    for word in ("waiting", "finalize", "approval", "RECOMMENDATION", "created", "step_completed"):
        assert word in shown.out, f"{word!r} missing\n{shown}"

    as_json = cli("show", world.waiting, "--json")
    assert_ok(as_json)
    data = json.loads(as_json.out)
    assert data["run"]["id"] == world.waiting
    assert data["run"]["status"] == "waiting"
    assert data["state"]["recommendation"] == "APPROVE"
    assert [m["role"] for m in data["history"]] == ["user", "assistant"]
    assert [(w["kind"], w["status"]) for w in data["waits"]] == [("approval", "pending")]
    assert [e["kind"] for e in data["events"]] == ["created", "step_completed"]
    assert data["events"][1]["data"]["wait"]["kind"] == "approval"


def test_approve_queues_the_waiting_run(cli: Cli, world: World) -> None:
    before = cli.broker_messages()
    approved = cli("approve", world.waiting, "--comment", "ok", "--by", "alice")
    assert_ok(approved)
    assert world.waiting in approved.out and "approved" in approved.out
    assert "finalize" in approved.out
    with cli.store() as store:
        run = store.get_run(world.waiting)
        (wait,) = store.waits(world.waiting)
        events = store.events(world.waiting)
    assert run.status == QUEUED and run.step == "finalize"
    assert wait.status == FULFILLED and wait.decided_by == "alice"
    assert wait.outcome["approved"] is True and wait.outcome["comment"] == "ok"
    assert [e.kind for e in events[-2:]] == ["decided", "resumed"]
    decided = events[-2]
    assert decided.actor == "alice"
    assert decided.data["decision"] == "approved" and decided.data["comment"] == "ok"
    assert cli.broker_messages() == before + 1


def test_reject_queues_the_waiting_run_with_the_rejection(cli: Cli) -> None:
    with cli.store() as store:
        store.save_agent("A")
        run_id = park_for_approval(store, "A")
    rejected = cli("reject", run_id, "--comment", "income unverified", "--by", "bob")
    assert_ok(rejected)
    assert run_id in rejected.out and "rejected" in rejected.out
    with cli.store() as store:
        run = store.get_run(run_id)
        (wait,) = store.waits(run_id)
        events = store.events(run_id)
    assert run.status == QUEUED and run.step == "finalize"
    assert wait.status == FULFILLED and wait.decided_by == "bob"
    assert wait.outcome["approved"] is False and wait.outcome["decision"] == "rejected"
    assert [e.kind for e in events[-2:]] == ["decided", "resumed"]
    decided = events[-2]
    assert decided.actor == "bob"
    assert decided.data["decision"] == "rejected"
    assert decided.data["comment"] == "income unverified"


def test_db_upgrade_then_current_reports_the_head(cli: Cli) -> None:
    head = head_revision()
    empty = cli("db", "current")
    assert_ok(empty)
    assert "current: empty" in empty.out and f"head: {head}" in empty.out
    upgraded = cli("db", "upgrade")
    assert_ok(upgraded)
    assert head in upgraded.out
    current = cli("db", "current")
    assert_ok(current)
    assert f"current: {head}" in current.out and f"head: {head}" in current.out


def test_workflows_lists_loan_and_noop(cli: Cli) -> None:
    listed = cli("workflows")
    assert_ok(listed)
    text = " ".join(listed.out.split())
    assert "loan:" in text and "assess, finalize" in text
    assert "noop:" in text and "tick" in text


def test_start_with_the_same_idempotency_key_gives_the_same_run(cli: Cli) -> None:
    with cli.store() as store:
        store.save_agent("A")
    args = ("start", "noop", "--agent", "A", "--idempotency-key", "order-7")
    first, second = cli(*args), cli(*args)
    assert_ok(first)
    assert_ok(second)
    assert first.out.strip() == second.out.strip() != ""
    with cli.store() as store:
        runs = store.list_runs()
    assert [r.id for r in runs] == [first.out.strip()]
    assert runs[0].idempotency_key == "order-7"
    assert cli.broker_messages() == 1


# -------------------------------------------------------------------- bad input

# (arguments with <queued>/<waiting>/<completed> placeholders, words the message must name)
BAD_INPUT = {
    "unknown workflow": (["start", "nosuchflow", "--agent", "A"], ["nosuchflow", "loan, noop"]),
    "unknown agent": (["start", "loan", "--agent", "nobody"], ["no agent named 'nobody'"]),
    "malformed input JSON": (
        ["start", "loan", "--agent", "A", "--input", '{"amount": }'],
        ["--input", "not valid JSON"],
    ),
    "input not an object": (
        ["start", "loan", "--agent", "A", "--input", "[1,2]"],
        ["--input", "must be a JSON object"],
    ),
    "input with an infinite number": (
        ["start", "loan", "--agent", "A", "--input", '{"amount": 1e999}'],
        ["input", "JSON"],
    ),
    "show unknown run": (["show", UNKNOWN_RUN], ["no run with id", UNKNOWN_RUN]),
    "approve unknown run": (["approve", UNKNOWN_RUN], ["no run with id", UNKNOWN_RUN]),
    "reject unknown run": (["reject", UNKNOWN_RUN], ["no run with id", UNKNOWN_RUN]),
    "approve queued run": (["approve", "<queued>"], ["<queued>", "is queued", "not waiting"]),
    "reject queued run": (["reject", "<queued>"], ["<queued>", "is queued", "not waiting"]),
    "approve completed run": (
        ["approve", "<completed>"],
        ["<completed>", "is completed", "not waiting"],
    ),
    "approve with --data not an object": (
        ["approve", "<waiting>", "--data", '"yes"'],
        ["--data", "must be a JSON object"],
    ),
    "bad status filter": (["runs", "--status", "bogus"], ["unknown status 'bogus'", "waiting"]),
    "malformed --model": (["agent", "B", "--model", "{bad"], ["--model", "not valid JSON"]),
    "--model not an object": (["agent", "B", "--model", "[1]"], ["--model", "JSON object"]),
    "bad agent name": (["agent", " spaced "], ["bad agent name"]),
    "negative loop budget": (
        ["agent", "B", "--model", '{"budget": {"iterations": -1}}'],
        ["budget", "iterations", "positive"],
    ),
    "unknown budget key": (
        ["agent", "B", "--model", '{"budget": {"turns": 3}}'],
        ["unknown keys", "turns"],
    ),
    "tools not a list of names": (
        ["agent", "B", "--model", '{"tools": "search"}'],
        ["tools", "list of tool names"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT), ids=list(BAD_INPUT))
def test_bad_input_is_refused_and_changes_nothing(cli: Cli, world: World, case: str) -> None:
    raw_args, raw_words = BAD_INPUT[case]
    ids = {"<queued>": world.queued, "<waiting>": world.waiting, "<completed>": world.completed}

    def fill(text: str) -> str:
        for placeholder, run_id in ids.items():
            text = text.replace(placeholder, run_id)
        return text

    args, words = [fill(a) for a in raw_args], [fill(w) for w in raw_words]
    before, sent = cli.snapshot(), cli.broker_messages()
    result = cli(*args)
    assert_refused(result, *words)
    assert cli.snapshot() == before
    assert cli.broker_messages() == sent


def test_approving_twice_fails_the_second_time(cli: Cli, world: World) -> None:
    assert_ok(cli("approve", world.waiting, "--by", "alice"))
    before, sent = cli.snapshot(), cli.broker_messages()
    again = cli("approve", world.waiting, "--by", "mallory")
    assert_refused(again, world.waiting, "is queued", "not waiting")
    assert cli.snapshot() == before
    assert cli.broker_messages() == sent
    with cli.store() as store:
        decided = [e for e in store.events(world.waiting) if e.kind == "decided"]
    assert [e.actor for e in decided] == ["alice"]


@pytest.mark.parametrize(
    "args",
    [["runs"], ["start", "loan", "--agent", "A"], ["db", "upgrade"]],
    ids=["runs", "start", "db-upgrade"],
)
def test_malformed_store_url_is_a_clear_error(cli: Cli, world: World, args: list[str]) -> None:
    before = cli.snapshot()
    files = sorted(p.name for p in cli.dir.iterdir())
    result = cli(*args, PAUSEPOINT_STORE_URL="nosuchdb://x")
    assert_refused(result, "store URL", "nosuchdb://x")
    assert sorted(p.name for p in cli.dir.iterdir()) == files
    assert cli.snapshot() == before


# ------------------------------------------------------------------ known bugs


def test_error_message_is_one_line_when_stderr_is_a_pipe(cli: Cli, world: World) -> None:
    result = cli("approve", world.queued)
    assert_refused(result, world.queued, "not waiting")
    assert len(result.err.strip().splitlines()) == 1, str(result)


@pytest.mark.parametrize("run_id", ["[/x]", "[red]abc"])
def test_error_message_prints_user_text_verbatim(cli: Cli, world: World, run_id: str) -> None:
    result = cli("show", run_id)
    assert_refused(result, "no run with id", run_id)


@pytest.mark.parametrize("command", ["agents", "runs", "show"])
def test_tables_print_stored_text_verbatim(cli: Cli, command: str) -> None:
    with cli.store() as store:
        store.save_agent("A", persona="Answer after the [/INST] tag.")
        run, _ = store.create_run(
            agent_name="A",
            workflow="noop",
            first_step="tick",
            actor="test",
            task="Summarise [/INST] blocks",
        )
    result = cli(command, *([run.id] if command == "show" else []))
    assert_ok(result)
    assert "[/INST]" in result.out


def test_runs_table_names_agent_and_workflow_when_piped(cli: Cli) -> None:
    with cli.store() as store:
        store.save_agent("underwriter")
        store.create_run(
            agent_name="underwriter", workflow="loan", first_step="assess", actor="test"
        )
    result = cli("runs")
    assert_ok(result)
    assert "underwriter" in result.out and "loan" in result.out, str(result)


def test_start_with_a_malformed_broker_url_is_a_clear_error(cli: Cli) -> None:
    with cli.store() as store:
        store.save_agent("A")
    before = cli.snapshot()
    result = cli("start", "noop", "--agent", "A", PAUSEPOINT_BROKER_URL="nosuchbroker://x")
    assert_refused(result, "broker", "nosuchbroker://x")
    assert cli.snapshot() == before
