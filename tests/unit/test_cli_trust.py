"""``pausepoint audit`` with a key: keygen, verify (text and --json), anchor, --anchors,
an archive against the ledger, and what a verdict says it proves."""

from __future__ import annotations

import json
from pathlib import Path

from pausepoint.persistence.audit_keys import MIN_KEY_BYTES, key_id
from tests.unit.test_cli_audit import Home, home, loan

__all__ = ["home"]  # the fixture, used by name

KEY = "0123456789abcdef0123456789abcdef"


ENV = {"PAUSEPOINT_AUDIT_KEY": KEY}


def test_keygen_prints_a_fresh_key_long_enough(home: Home) -> None:
    first, second = home.ok("audit", "keygen").out.strip(), home.ok("audit", "keygen").out.strip()
    assert first != second and len(first) >= MIN_KEY_BYTES and int(first, 16) >= 0


def test_a_short_key_is_refused_with_how_to_make_one(home: Home) -> None:
    home.refused(
        "audit", "verify", PAUSEPOINT_AUDIT_KEY="short", words=("at least", "audit keygen")
    )


def test_verify_says_what_it_proves_with_and_without_the_key(home: Home) -> None:
    run_id = loan(home)  # written without a key
    plain = home.ok("audit", "verify")
    assert "ok: 1 run verified" in plain.text
    assert "proven only against whoever cannot write the store" in plain.text
    assert "without --anchors" in plain.text
    one = home.ok("audit", "verify", run_id, "--json")
    verdict = json.loads(one.out)
    assert verdict["ok"] and verdict["keyed"] == 0 and verdict["unkeyed"] == verdict["events"]


def test_a_keyed_store_verifies_with_its_key_and_not_without(home: Home) -> None:
    env = ENV
    run_id = _keyed_loan(home)
    good = home.ok("audit", "verify", "--json", **env)
    report = json.loads(good.out)
    assert report["ok"] and report["runs"] == 1 and report["key_ids"] == [key_id(KEY.encode())]
    assert any("including whoever can write the database" in p for p in report["proves"])
    bad = home.run("audit", "verify", run_id)
    assert bad.code == 1 and "set PAUSEPOINT_AUDIT_KEY" in bad.text, str(bad)


def _keyed_loan(home: Home) -> str:
    import os

    os.environ["PAUSEPOINT_AUDIT_KEY"] = KEY
    try:
        return loan(home)
    finally:
        del os.environ["PAUSEPOINT_AUDIT_KEY"]


def test_anchor_then_verify_against_the_anchors(home: Home) -> None:
    env = ENV
    run_id = _keyed_loan(home)
    anchors = home.dir / "outside" / "anchors.jsonl"
    wrote = home.ok("audit", "anchor", "--to", str(anchors), **env)
    assert "1 runs" in wrote.text and f"key {key_id(KEY.encode())}" in wrote.text
    assert len(anchors.read_text().splitlines()) == 1
    assert home.ok("audit", "verify", "--anchors", str(anchors), **env).code == 0
    # Cut the run back to its first two events, head moved to match.
    with home.store() as store:
        second = store.events(run_id)[1].hash
    home.sql("DELETE FROM events WHERE run_id = ? AND n > 2", run_id)
    home.sql(
        "UPDATE runs SET event_count = 2, event_hash = ? WHERE id = ?",
        bytes.fromhex(second),
        run_id,
    )
    bad = home.run("audit", "verify", "--anchors", str(anchors), **env)
    assert bad.code == 1, str(bad)
    assert f"run {run_id}: its trail had" in bad.text and "cut, wiped or rewritten" in bad.text
    home.refused("audit", "verify", run_id, "--anchors", str(anchors), words=("whole store",))
    home.refused("audit", "verify", "--anchors", str(home.dir / "nope"), words=("no such",))


def test_an_archive_replaced_after_it_was_written_is_found(home: Home) -> None:
    env = ENV
    run_id = _keyed_loan(home)
    archive = home.dir / "archive"
    policy = {
        "PAUSEPOINT_RETENTION_DAYS": "0",
        "PAUSEPOINT_RETENTION_EVENTS_DAYS": "0",
        "PAUSEPOINT_ARCHIVE_DIR": str(archive),
        **env,
    }
    home.ok("gc", **policy)
    (path,) = archive.rglob("*.jsonl")
    assert home.ok("audit", "verify", **env).code == 0  # archived, so not "deleted"
    assert "ok: 1 archive file" in home.ok("audit", "verify", "--archive", str(path), **env).text
    path.write_text(path.read_text() + "\n")  # same trail, not the same file
    bad = home.run("audit", "verify", "--archive", str(path), **env)
    assert bad.code == 1 and "not the one the ledger recorded" in bad.text, str(bad)
    assert run_id in bad.text


def test_beat_anchors_on_its_schedule_and_the_sweep_seals(tmp_path: Path) -> None:
    from pausepoint.tasks import jobs
    from pausepoint.worker.app import create_app
    from pausepoint.worker.settings import Settings

    anchors = tmp_path / "anchors.jsonl"
    settings = Settings(
        store_url=f"sqlite:///{tmp_path / 'store.db'}",
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        audit_key=KEY,
        audit_anchors=str(anchors),
        audit_anchor_interval=600,
    )
    app = create_app(settings)
    try:
        schedule = app.conf.beat_schedule["pausepoint-anchor"]
        assert schedule == {"task": jobs.ANCHOR, "schedule": 600}
        rt = jobs.runtime_for(app)
        rt.store.save_agent("A", persona="")
        rt.start("loan", agent="A", task="a loan")
        assert rt.store.check_ledger().unsealed == 1
        rt.sweep()  # beat's every-2-seconds pass seals what was written since
        assert rt.store.check_ledger().unsealed == 0
        written = app.tasks[jobs.ANCHOR].run()
        assert written == {"ledger": 1, "runs": 1, "file": str(anchors)}
        record = json.loads(anchors.read_text())
        assert record["key"] == key_id(KEY.encode()) and record["anchor"]["ledger"][0] == 1
        off = create_app(settings.model_copy(update={"audit_anchor_interval": 0}))
        assert "pausepoint-anchor" not in off.conf.beat_schedule
    finally:
        jobs.forget_runtimes()
