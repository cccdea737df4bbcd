"""The CLI's audit and time-travel commands: audit verify/export, history, show --at,
rollback, fork, hold and gc.

Most commands run in this process through typer's CliRunner (a subprocess costs a
second each); the last tests run the real console script, with no stdin and CI=true,
as scripts and CI jobs do. No worker runs: steps are driven here, through a Runtime
whose ``publish`` only records what it was asked to send.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

import pausepoint.tasks.examples  # noqa: F401  (registers the loan workflow)
import pausepoint.worker.cli as cli_module
from pausepoint.persistence.audit import EXPORT_FIELDS, ExportedEvent, verify_chain
from pausepoint.persistence.records import COMPLETED, QUEUED, RUNNING, WAITING
from pausepoint.persistence.store import Store
from pausepoint.tasks import jobs
from pausepoint.tasks.llm import ScriptedBackend
from pausepoint.tasks.runtime import Runtime
from pausepoint.worker.pages import checkpoint_view
from tests.tamper import SQLITE_GUARDS
from tests.unit.test_cli import LOAN_TASK, UNKNOWN_RUN, Cli, Result, assert_refused

RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")
# rich's table and panel borders (U+2500 to U+257F).
BOX = re.compile("[\u2500-\u257f]")
ALL_TABLES = (
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
    "cleanups",
)


def flat(output: str) -> str:
    return " ".join(BOX.sub(" ", output).split())


@dataclass(frozen=True)
class Out:
    code: int
    out: str
    err: str

    @property
    def both(self) -> str:
        return self.out + self.err

    @property
    def text(self) -> str:
        """stdout and stderr as words: rich's borders and line wrapping undone."""
        return flat(self.both)

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


class Home(Cli):
    """One installation in a temporary directory, its commands run in this process."""

    runner = CliRunner()

    def run(self, *args: str, **env: str) -> Out:
        settings = {k: v for k, v in self.env(**env).items() if k.startswith("PAUSEPOINT_")}
        try:
            result = self.runner.invoke(cli_module.cli, list(args), env=settings)
        finally:
            # Each command builds its own app and runtime; never reuse one across commands.
            jobs.forget_runtimes()
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # a traceback the user would have seen
        return Out(result.exit_code, result.stdout, result.stderr)

    def ok(self, *args: str, **env: str) -> Out:
        result = self.run(*args, **env)
        assert result.code == 0, str(result)
        return result

    def refused(self, *args: str, words: tuple[str, ...] = (), **env: str) -> Out:
        """Exit 1 and a one-line ``error:`` on stderr naming the problem; nothing on stdout."""
        result = self.run(*args, **env)
        assert result.code == 1, str(result)
        assert result.out == "", str(result)
        message = " ".join(result.err.split())
        assert message.startswith("error: "), str(result)
        assert len(result.err.strip().splitlines()) == 1, str(result)
        for word in words:
            assert word in message, f"{word!r} not in the message\n{result}"
        return result

    def rows(self) -> dict[str, list[tuple[Any, ...]]]:
        conn = sqlite3.connect(self.db)
        try:
            out = {}
            for table in ALL_TABLES:
                ncols = len(conn.execute(f"PRAGMA table_info({table})").fetchall())
                order = ", ".join(str(i) for i in range(1, ncols + 1))
                out[table] = conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
            return out
        finally:
            conn.close()

    def sql(self, statement: str, *params: Any) -> None:
        conn = sqlite3.connect(self.db)
        try:
            with conn:
                # A writer who can change the schema drops the append-only triggers first.
                for trigger in SQLITE_GUARDS:
                    conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
                conn.execute(statement, params)
        finally:
            conn.close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Home]:
    for name in list(os.environ):
        if name.startswith("PAUSEPOINT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env; the archive dir lands here
    # Wide enough that ids and words are never folded; no colour codes.
    monkeypatch.setattr(cli_module, "console", Console(width=250, color_system=None))
    monkeypatch.setattr(cli_module, "err", Console(stderr=True, width=250, color_system=None))
    h = Home(tmp_path)
    with h.store() as store:
        store.save_agent("A", persona="I am a loan processing assistant.")
    yield h
    jobs.forget_runtimes()


def drive(store: Store, run_id: str) -> None:
    """Run the run's steps until it waits or ends, as a worker would."""
    rt = Runtime(store, llm=ScriptedBackend(), publish=lambda r, v: None)
    run = store.get_run(run_id)
    while run.status == QUEUED:
        rt.run_step(run.id, run.version, owner="test-worker")
        run = store.get_run(run_id)


def loan(home: Home, *, decision: bool | None = True, by: str = "alice") -> str:
    """A loan run: waiting for its approval (``decision=None``) or decided and completed."""
    with home.store() as store:
        rt = Runtime(store, llm=ScriptedBackend(), publish=lambda r, v: None)
        run = rt.start("loan", agent="A", task=LOAN_TASK)
        drive(store, run.id)
        assert store.get_run(run.id).status == WAITING
        if decision is not None:
            rt.decide(run.id, approved=decision, actor=by, comment="" if decision else "no")
            drive(store, run.id)
            assert store.get_run(run.id).status == COMPLETED
    return run.id


def kinds(home: Home, run_id: str) -> list[str]:
    with home.store() as store:
        return [e.kind for e in store.events(run_id)]


# ------------------------------------------------------------------ audit verify


def test_audit_verify_passes_on_untouched_runs(home: Home) -> None:
    done, waiting = loan(home), loan(home, decision=None)
    every = home.ok("audit", "verify")
    assert "ok: 2 runs verified" in every.text, str(every)
    assert "FAILED" not in every.both
    one = home.ok("audit", "verify", done[:10])
    assert f"ok: run {done} verified (6 events, unkeyed" in one.text, str(one)
    assert home.ok("audit", "verify", waiting).out.startswith("ok:")


def test_audit_verify_names_an_edited_event(home: Home) -> None:
    run_id = loan(home)
    home.sql(
        "UPDATE events SET data = ? WHERE run_id = ? AND n = 2",
        json.dumps({"step": "assess", "messages": 0}),
        run_id,
    )
    bad = home.run("audit", "verify", run_id)
    assert bad.code == 1, str(bad)
    assert f"run {run_id}: event 2: (step_completed) does not match its hash" in bad.text
    assert "event 3" not in bad.text


def test_audit_verify_names_a_deleted_event(home: Home) -> None:
    run_id = loan(home)
    home.sql("DELETE FROM events WHERE run_id = ? AND n = 5", run_id)
    bad = home.run("audit", "verify", run_id)
    assert bad.code == 1, str(bad)
    assert f"run {run_id}: event 5: is missing: it was deleted" in bad.text, str(bad)


def test_audit_verify_names_swapped_events(home: Home) -> None:
    run_id = loan(home)
    for frm, to in ((2, -1), (3, 2), (-1, 3)):
        home.sql("UPDATE events SET n = ? WHERE run_id = ? AND n = ?", to, run_id, frm)
    with home.store() as store:
        assert [e.kind for e in store.events(run_id)][1:3] == ["decided", "step_completed"]
    bad = home.run("audit", "verify", run_id)
    assert bad.code == 1, str(bad)
    assert f"run {run_id}: event 2: (decided) does not match its hash" in bad.text, str(bad)


def test_audit_verify_of_every_run_names_only_the_bad_one(home: Home) -> None:
    good1, bad_run, good2 = loan(home), loan(home, decision=False), loan(home, decision=None)
    home.sql("UPDATE events SET actor = 'mallory' WHERE run_id = ? AND kind = 'decided'", bad_run)
    result = home.run("audit", "verify")
    assert result.code == 1, str(result)
    assert f"FAILED run {bad_run}: event 3: (decided) does not match its hash" in result.text
    assert good1 not in result.both and good2 not in result.both
    assert "FAILED: 2 runs verified; 1 failed" in result.text, str(result)


def test_audit_verify_of_an_unknown_run_is_refused(home: Home) -> None:
    home.refused("audit", "verify", UNKNOWN_RUN, words=("no run with id", UNKNOWN_RUN))


# ------------------------------------------------------------------ audit export


def test_audit_export_jsonl_is_the_whole_chained_trail(home: Home) -> None:
    run_id = loan(home)
    exported = home.ok("audit", "export", run_id[:8])
    lines = exported.out.splitlines()
    records = [json.loads(line) for line in lines]
    with home.store() as store:
        trail = store.events(run_id)
        run = store.get_run(run_id)
    assert len(records) == len(trail) == run.event_count == 6
    assert [r["n"] for r in records] == list(range(1, 7))
    assert records[0]["prev_hash"] == ""
    for before, after in pairwise(records):
        assert after["prev_hash"] == before["hash"]
    assert records[-1]["hash"] == run.event_hash
    events = [ExportedEvent.from_record(r) for r in records]
    assert verify_chain(run_id, events, run.event_count, run.event_hash) is None
    assert [r["kind"] for r in records] == [e.kind for e in trail]


def test_audit_export_csv_has_a_header_and_a_row_per_event(home: Home) -> None:
    run_id = loan(home, decision=False)
    exported = home.ok("audit", "export", run_id, "--format", "csv")
    rows = list(csv.reader(io.StringIO(exported.out)))
    assert tuple(rows[0]) == EXPORT_FIELDS
    body = rows[1:]
    assert len(body) == 6
    assert [int(r[1]) for r in body] == list(range(1, 7))
    decided = next(r for r in body if r[3] == "decided")
    assert json.loads(decided[5])["decision"] == "rejected"
    assert all(r[0] == run_id for r in body)


def test_audit_export_to_a_file(home: Home) -> None:
    run_id = loan(home)
    target = home.dir / "trail.jsonl"
    written = home.ok("audit", "export", run_id, "--output", str(target))
    assert f"wrote 6 events of run {run_id}" in written.text
    assert target.read_text(encoding="utf-8") == home.ok("audit", "export", run_id).out
    csv_file = home.dir / "trail.csv"
    home.ok("audit", "export", run_id, "--format", "csv", "-o", str(csv_file))
    assert len(csv_file.read_text(encoding="utf-8").splitlines()) == 7


def test_audit_export_with_an_unknown_format_is_refused(home: Home) -> None:
    run_id = loan(home)
    bad = home.run("audit", "export", run_id, "--format", "xml")
    assert bad.code != 0
    assert bad.out == ""
    assert "'xml' is not one of 'jsonl', 'csv'" in bad.text, str(bad)
    assert "Traceback" not in bad.both
    home.refused("audit", "export", UNKNOWN_RUN, words=("no run with id",))


# --------------------------------------------------------------- rollback, show --at


def test_rollback_then_approve_takes_the_other_path(home: Home) -> None:
    run_id = loan(home, decision=False, by="alice")
    rolled = home.ok("rollback", run_id[:8], "--to", "1", "--reason", "income verified after all")
    assert f"run {run_id} rolled back from #2 to #1: now at checkpoint #3, waiting" in rolled.text
    with home.store() as store:
        run = store.get_run(run_id)
        assert (run.status, run.seq, run.step, run.result) == (WAITING, 3, "finalize", None)
        assert [w.status for w in store.waits(run_id)] == ["fulfilled", "pending"]
    home.ok("approve", run_id, "--by", "bob", "--comment", "second look")
    with home.store() as store:
        drive(store, run_id)
        run = store.get_run(run_id)
        trail = store.events(run_id)
    assert run.status == COMPLETED and run.seq == 4
    assert run.result["outcome"] == "approved" and run.result["by"] == "bob"
    decided = [(e.actor, e.data["decision"]) for e in trail if e.kind == "decided"]
    assert decided == [("alice", "rejected"), ("bob", "approved")]
    (back,) = [e for e in trail if e.kind == "rolled_back"]
    assert back.data["to_seq"] == 1 and back.data["from_seq"] == 2
    assert back.data["reason"] == "income verified after all"
    assert back.actor.startswith("cli")
    assert [e.kind for e in trail].count("completed") == 2
    assert home.ok("audit", "verify", run_id).out.startswith("ok:")


def test_rollback_to_a_step_is_published_to_the_broker(home: Home) -> None:
    run_id = loan(home)
    assert home.broker_messages() == 0
    rolled = home.ok("rollback", run_id, "--to", "0")
    assert "now at checkpoint #3, queued at step assess" in rolled.text, str(rolled)
    assert home.broker_messages() == 1
    with home.store() as store:
        run = store.get_run(run_id)
        assert (run.status, run.step) == (QUEUED, "assess")
        assert store.history(run_id) == []
        drive(store, run_id)
        assert store.get_run(run_id).status == WAITING


def test_show_at_gives_the_old_state_conversation_and_changes(home: Home) -> None:
    run_id = loan(home)
    first = home.ok("show", run_id, "--at", "1")
    for words in (
        "Checkpoint #1",
        "next step finalize",
        '"recommendation": "APPROVE"',
        "Conversation as of checkpoint #1",
        "RECOMMENDATION: APPROVE",
        "Changes from #0 to #1",
        "state added recommendation APPROVE",
        "message added 0 user: Perform initial loan assessment",
    ):
        assert words in first.text, f"{words!r} missing\n{first}"
    assert '"decision"' not in first.out
    assert "Continue processing" not in first.out

    home.ok("rollback", run_id, "--to", "1")
    after = home.ok("show", run_id, "--at", "3")
    assert "Changes from #2 to #3" in after.text
    assert "state removed decision" in after.text
    assert "messages dropped 2" in after.text, str(after)
    assert "Continue processing" not in after.out  # dropped from the conversation
    as_json = json.loads(home.ok("show", run_id, "--at", "3", "--json").out)
    with home.store() as store:
        assert as_json == json.loads(json.dumps(checkpoint_view(store, run_id, 3)))
    assert as_json["changes"]["messages_dropped"] == 2
    assert as_json["changes"]["state"]["removed"] == ["decision"]
    assert [m["role"] for m in as_json["history"]] == ["user", "assistant"]
    zero = json.loads(home.ok("show", run_id, "--at", "0", "--json").out)
    assert zero["changes"] is None and zero["state"] == {} and zero["step"] == "assess"
    # Without --at, show is what it was: the run as it is now.
    now = home.ok("show", run_id)
    assert "State at checkpoint #3" in now.text and "Audit trail" in now.text


def test_show_at_a_missing_checkpoint_is_refused(home: Home) -> None:
    run_id = loan(home)
    home.refused("show", run_id, "--at", "7", words=(f"run {run_id} has no checkpoint 7",))


def test_history_lists_checkpoints_rollbacks_and_forks(home: Home) -> None:
    run_id = loan(home)
    home.ok("rollback", run_id, "--to", "1")
    forked = home.ok("fork", run_id, "--at", "1")
    child = RUN_ID.findall(forked.out)[0]
    shown = home.ok("history", run_id[:8])
    lines = shown.out.splitlines()
    row = {
        seq: next(line for line in lines if re.match(rf"\s*(▶ )?{seq}\s", line)) for seq in range(4)
    }
    assert "assess" in row[0] and "created" in row[0]
    assert "finalize" in row[1] and "step_completed" in row[1] and "recommendation" in row[1]
    assert "(end)" in row[2] and "decided" in row[2] and "completed" in row[2]
    assert "▶ 3" in row[3] and "rolled_back" in row[3] and "#1" in row[3]
    assert "▶" not in "".join(row[s] for s in range(3))
    assert f"forks (1): {child} at checkpoint #1, waiting" in shown.text, str(shown)

    data = json.loads(home.ok("history", run_id, "--json").out)
    assert [c["seq"] for c in data["checkpoints"]] == [0, 1, 2, 3]
    assert [c["rolled_back_to"] for c in data["checkpoints"]] == [None, None, None, 1]
    assert [c["current"] for c in data["checkpoints"]] == [False, False, False, True]
    assert data["forks"] == [{"run_id": child, "at_seq": 1, "status": WAITING}]

    lineage = home.ok("history", child)
    assert f"forked from run {run_id} at checkpoint #1" in lineage.text
    assert json.loads(home.ok("history", child, "--json").out)["parent_run_id"] == run_id


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--to", "99"), ("can roll back to a checkpoint from 0 to 0, not 99",)),
        (("--to", "-1"), ("not -1",)),
        (("--to", "1"), ("not 1",)),
    ],
    ids=["past-the-end", "negative", "the-current-one"],
)
def test_rollback_to_a_bad_checkpoint_is_refused(
    home: Home, args: tuple[str, ...], words: tuple[str, ...]
) -> None:
    run_id = loan(home, decision=None)
    before, sent = home.rows(), home.broker_messages()
    home.refused("rollback", run_id, *args, words=(run_id, *words))
    assert home.rows() == before
    assert home.broker_messages() == sent


def test_rollback_of_an_unknown_or_running_run_is_refused(home: Home) -> None:
    run_id = loan(home, decision=None)
    before = home.rows()
    home.refused("rollback", UNKNOWN_RUN, "--to", "0", words=("no run with id", UNKNOWN_RUN))
    home.refused("fork", UNKNOWN_RUN, words=("no run with id",))
    home.refused("hold", UNKNOWN_RUN, words=("no run with id",))
    assert home.rows() == before
    with home.store() as store:
        store.decide(run_id, approved=True, actor="alice")
        run = store.get_run(run_id)
        assert store.claim(run_id, run.version, "busy-worker") is not None
        assert store.get_run(run_id).status == RUNNING
    home.refused("rollback", run_id, "--to", "1", words=("is running step 'finalize'",))


# ------------------------------------------------------------------------ fork


def test_fork_starts_an_independent_run(home: Home) -> None:
    parent = loan(home, decision=False)
    with home.store() as store:
        parent_before = store.get_run(parent)
    forked = home.ok("fork", parent[:8], "--at", "1", "--reason", "try approving")
    child = RUN_ID.findall(forked.out)[0]
    assert child != parent
    assert f"forked from run {parent} at checkpoint #1: waiting at step finalize" in forked.text
    with home.store() as store:
        run = store.get_run(child)
        assert (run.parent_run_id, run.parent_seq, run.status) == (parent, 1, WAITING)
        assert [m.role for m in store.history(child)] == ["user", "assistant"]
        assert [e.kind for e in store.events(child)][:2] == ["created", "forked"]
        Runtime(store, llm=ScriptedBackend(), publish=lambda r, v: None).decide(
            child, approved=True, actor="bob"
        )
        drive(store, child)
        assert store.get_run(child).status == COMPLETED
        assert store.get_run(child).result["outcome"] == "approved"
        # The parent is as it was: its own rejection, nothing appended.
        assert store.get_run(parent) == parent_before
    # A finished run's latest checkpoint is its end: there is nothing to continue from.
    home.refused("fork", parent, "--at", "2", words=("checkpoint 2", "where it ended"))
    waiting = loan(home, decision=None)
    latest = home.ok("fork", waiting)
    grandchild = RUN_ID.findall(latest.out)[0]
    with home.store() as store:
        run = store.get_run(grandchild)
        assert (run.parent_run_id, run.parent_seq, run.status) == (waiting, 1, WAITING)
        assert store.get_run(waiting).status == WAITING


# ------------------------------------------------------------------------ hold


def test_hold_and_release_are_recorded_in_the_trail(home: Home) -> None:
    run_id = loan(home)
    held = home.ok("hold", run_id[:8], "--reason", "litigation 2024-17")
    assert "is under legal hold" in held.text
    again = home.ok("hold", run_id)
    assert "already under legal hold; nothing changed" in again.text
    with home.store() as store:
        assert store.get_run(run_id).legal_hold is True
        holds = [e for e in store.events(run_id) if e.kind == "legal_hold"]
    assert len(holds) == 1
    assert holds[0].data["on"] is True and holds[0].data["reason"] == "litigation 2024-17"
    assert holds[0].actor.startswith("cli")
    shown = home.ok("show", run_id)
    assert "legal hold on: retention leaves this run alone" in shown.text
    released = home.ok("hold", run_id, "--release", "--by", "counsel")
    assert "legal hold lifted" in released.text
    with home.store() as store:
        assert store.get_run(run_id).legal_hold is False
        holds = [e for e in store.events(run_id) if e.kind == "legal_hold"]
    assert [(e.data["on"], e.actor) for e in holds] == [(True, holds[0].actor), (False, "counsel")]


# -------------------------------------------------------------------------- gc


def test_gc_dry_run_changes_nothing_then_gc_spares_held_and_live_runs(home: Home) -> None:
    old, held, waiting = loan(home), loan(home), loan(home, decision=None)
    home.ok("hold", held)
    before = home.rows()
    dry = home.ok("gc", "--dry-run", PAUSEPOINT_RETENTION_DAYS="0")
    assert "Retention: dry run, nothing was changed" in dry.text, str(dry)
    assert (
        "run state (purged) 1 run(s): 3 checkpoints, 0 deliveries, 4 messages, 0 summaries, 1 waits"
        in (dry.text)
    ), str(dry)
    assert home.rows() == before

    done = home.ok("gc", PAUSEPOINT_RETENTION_DAYS="0")
    assert "Retention pass" in done.text and "run state (purged) 1" in done.text, str(done)
    assert "SQLite file" in done.text and "recorded as cleanup #1" in done.text
    after = home.rows()
    assert len(after["cleanups"]) == 1
    assert {r[0] for r in after["checkpoints"]} == {held, waiting}
    assert {r[0] for r in after["messages"]} == {held, waiting}
    with home.store() as store:
        assert store.get_run(old).purge_state == "done"
        assert store.get_run(held).purge_state is None
        assert store.checkpoint(held).state["decision"] == "approved"
        assert store.get_run(waiting).status == WAITING
    assert kinds(home, old)[-1] == "purged"
    assert home.ok("audit", "verify").out.startswith("ok: 3 runs verified")

    # The purged run: its row and trail remain; its state answers Gone, never a traceback.
    shown = home.ok("show", old)
    assert "removed by the retention policy" in shown.text and "purged" in shown.text
    assert json.loads(home.ok("show", old, "--json").out)["purged"] is not None
    gone = ("state was removed by the retention policy",)
    home.refused("show", old, "--at", "1", words=gone)
    home.refused("history", old, words=gone)
    home.refused("rollback", old, "--to", "1", words=gone)
    home.refused("fork", old, words=gone)
    assert len(home.ok("audit", "export", old).out.splitlines()) == 7


def test_gc_archives_trails_that_audit_verify_checks(home: Home) -> None:
    run_id = loan(home)
    archive = home.dir / "archive"
    policy = {
        "PAUSEPOINT_RETENTION_DAYS": "0",
        "PAUSEPOINT_RETENTION_EVENTS_DAYS": "0",
        "PAUSEPOINT_ARCHIVE_DIR": str(archive),
    }
    done = home.ok("gc", **policy)
    (path,) = archive.rglob("*.jsonl")
    assert path.name == f"{run_id}.jsonl"
    assert f"archived: {path}" in done.text, str(done)
    assert home.rows()["runs"] == []
    home.refused("audit", "verify", run_id, words=("no run with id",))

    ok = home.ok("audit", "verify", "--archive", str(path))
    assert "ok: 1 archive file verified" in ok.text
    assert (
        "ok: 1 archive file verified" in home.ok("audit", "verify", "--archive", str(archive)).text
    )

    lines = path.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[3])
    record["actor"] = "mallory"
    lines[3] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    bad = home.run("audit", "verify", "--archive", str(path))
    assert bad.code == 1
    assert f"run {run_id}: event 3: (decided) does not match its hash" in bad.text, str(bad)

    path.write_text("\n".join(lines[:1] + lines[2:]) + "\n", encoding="utf-8")
    assert "event 1: is missing" in home.run("audit", "verify", "--archive", str(path)).text
    home.refused(
        "audit", "verify", "--archive", str(home.dir / "nope.jsonl"), words=("no such archive",)
    )
    home.refused("audit", "verify", run_id, "--archive", str(path), words=("not both",))
    path.write_text('{"not": "an archive"}\n', encoding="utf-8")
    home.refused("audit", "verify", "--archive", str(path), words=("not a Pausepoint archive",))


def test_gc_without_a_policy_says_there_is_nothing_to_do(home: Home) -> None:
    loan(home)
    before = home.rows()
    for args in (("gc",), ("gc", "--dry-run")):
        result = home.ok(*args)
        assert "no retention policy is configured" in result.text
        assert "PAUSEPOINT_RETENTION_DAYS" in result.text
    assert home.rows() == before


# ------------------------------------------------------------ the real console script


def _script(home: Home, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pausepoint.worker", *args],
        cwd=home.dir,
        env=home.env(CI="true", **env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_gc_runs_in_ci_with_no_stdin(home: Home) -> None:
    run_id = loan(home)
    proc = _script(home, "gc", PAUSEPOINT_RETENTION_KEEP_CHECKPOINTS="1")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    text = flat(proc.stdout)
    assert "old checkpoints (pruned)" in text and "from 1 finished run(s)" in text, proc.stdout
    with home.store() as store:
        assert [c.seq for c in store.checkpoints(run_id)] == [2]
    assert kinds(home, run_id)[-1] == "checkpoints_pruned"
    history = _script(home, "history", run_id)
    assert history.returncode == 0 and "▶ 2" in history.stdout, history.stderr


def test_rollback_error_is_one_line_from_the_console_script(home: Home) -> None:
    run_id = loan(home)
    before = home.rows()
    proc = _script(home, "rollback", run_id, "--to", "5")
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    assert_refused(result, run_id, "can roll back to a checkpoint from 0 to 1, not 5")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert home.rows() == before
