"""Retention on a store with runs in every status: the same cases on SQLite and Postgres.

The store's clock is moved back to make runs that finished long ago; the pass
then runs "today". What the policy allows goes, nothing else does.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from pausepoint.persistence.audit import ExportedEvent, verify_chain
from pausepoint.persistence.errors import Gone, InvalidInput
from pausepoint.persistence.records import COMPLETED, FAILED, QUEUED, RUNNING, WAITING
from pausepoint.persistence.retention import (
    PURGED,
    Retention,
    RetentionPolicy,
    _Collector,
    collect,
    read_archive,
)
from pausepoint.persistence.store import Store
from pausepoint.persistence.tables import (
    ALL_TABLES,
    checkpoints,
    cleanups,
    deliveries,
    events,
    messages,
    runs,
    waits,
)
from tests.chain import Driver

TODAY = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = TODAY

    def __call__(self) -> datetime:
        return self.now

    def days_ago(self, days: float) -> None:
        self.now = TODAY - timedelta(days=days)


@pytest.fixture
def clock(store: Store) -> Clock:
    c = Clock()
    store.clock = c
    return c


@pytest.fixture
def d(store: Store, clock: Clock) -> Iterator[Driver]:
    store.save_agent("agent", persona="tester")
    yield Driver(store)


def policy(tmp_path: Path) -> Retention:
    """Keep 2 checkpoints, state 30 days, trails 30 more; workflow "kept" keeps all."""
    return Retention.build(
        RetentionPolicy(keep_checkpoints=2, delete_after_days=30, events_extra_days=30),
        {"kept": {"delete_after_days": None, "keep_checkpoints": None}},
        tmp_path / "archive",
    )


def finished(d: Driver, clock: Clock, days: float, **input: Any) -> str:
    clock.days_ago(days)
    run_id = d.start(**input)
    d.approve(run_id)
    return run_id


def table_counts(store: Store) -> dict[str, int]:
    with store.read() as conn:
        return {
            t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
            for t in ALL_TABLES
        }


def orphans(store: Store) -> dict[str, int]:
    """Rows that point at a run that is not there, or state left on a purged run."""
    found = {}
    with store.read() as conn:
        for t in (checkpoints, messages, events, waits, deliveries):
            found[t.name] = int(
                conn.execute(
                    select(func.count())
                    .select_from(t)
                    .where(t.c.run_id.is_not(None), t.c.run_id.not_in(select(runs.c.id)))
                ).scalar_one()
            )
        purged = select(runs.c.id).where(runs.c.purge_state == PURGED)
        for t in (checkpoints, messages, waits, deliveries):
            found[f"purged {t.name}"] = int(
                conn.execute(
                    select(func.count()).select_from(t).where(t.c.run_id.in_(purged))
                ).scalar_one()
            )
    return found


class Fleet:
    """Runs of every kind, named by what the policy should do to them."""

    def __init__(self, d: Driver, clock: Clock) -> None:
        self.ancient = [finished(d, clock, 100 + i, pad=300) for i in range(3)]
        self.ancient_failed = finished(d, clock, 90, fail=True, pad=300)
        self.old = [finished(d, clock, 45, pad=300) for _ in range(2)]
        self.recent = finished(d, clock, 2)
        self.held = finished(d, clock, 120, pad=300)
        d.rt.set_legal_hold(self.held, True, actor="legal", reason="litigation")
        clock.days_ago(100)
        self.kept = d.start("kept")  # its workflow's override keeps it forever
        self.waiting = d.start()  # parked for 100 days on its approval
        clock.days_ago(100)
        queued = d.rt.start("chain", agent="agent", actor="t")
        d.published.clear()
        self.queued = queued.id
        # Claimed long ago by a worker that keeps renewing: running, old, untouched.
        clock.days_ago(100)
        running = d.rt.start("chain", agent="agent", actor="t")
        d.published.clear()
        claim = d.store.claim(running.id, running.version, "busy-worker")
        assert claim is not None
        self.running = running.id
        clock.now = TODAY
        assert d.store.get_run(self.running).status == RUNNING
        assert d.store.get_run(self.queued).status == QUEUED
        assert d.store.get_run(self.waiting).status == WAITING
        assert d.store.get_run(self.ancient_failed).status == FAILED

    @property
    def untouched(self) -> list[str]:
        return [self.held, self.kept, self.waiting, self.queued, self.running]


def test_each_run_gets_exactly_what_the_policy_allows(
    d: Driver, clock: Clock, tmp_path: Path
) -> None:
    fleet = Fleet(d, clock)
    retention = policy(tmp_path)
    before = {r: d.store.get_run(r) for r in [*fleet.untouched, fleet.recent]}
    trail_before = {r: d.store.events(r) for r in [*fleet.ancient, fleet.ancient_failed]}
    untouched_state = {r: (d.store.checkpoints(r), d.store.history(r)) for r in fleet.untouched}

    report = collect(d.store, retention, batch=2)

    # Finished more than 60 days ago: state gone, trail archived, then deleted with the row.
    gone = [*fleet.ancient, fleet.ancient_failed]
    assert report.runs_deleted == len(gone)
    assert {r.id for r in d.store.list_runs(limit=1000)}.isdisjoint(gone)
    for run_id in gone:
        path = next(Path(p) for p in report.archive_files if run_id in p)
        header, records = read_archive(path)
        trail = [ExportedEvent.from_record(r) for r in records]
        assert [e.hash for e in trail] == [e.hash for e in trail_before[run_id]] + [trail[-1].hash]
        assert trail[-1].kind == "purged"
        assert verify_chain(run_id, trail, header["event_count"], header["event_hash"]) is None
    # Finished 45 days ago: state gone, run row and trail kept, reads say Gone.
    for run_id in fleet.old:
        run = d.store.get_run(run_id)
        assert run.purge_state == PURGED and run.purged_at == TODAY
        with pytest.raises(Gone):
            d.store.history(run_id)
        purged = d.store.events(run_id)[-1]
        assert purged.kind == "purged" and purged.actor == "gc"
        assert purged.data["removed"] == {
            "checkpoints": 4,
            "messages": 6,
            "waits": 1,
            "deliveries": 0,
            "summaries": 0,
        }
        assert d.store.verify(run_id) is None
    # Finished 2 days ago: keeps its last 2 checkpoints and its whole conversation.
    assert [c.seq for c in d.store.checkpoints(fleet.recent)] == [2, 3]
    assert len(d.store.history(fleet.recent)) == 3
    assert d.store.events(fleet.recent)[-1].kind == "checkpoints_pruned"
    # Held, override-kept, waiting, queued, running: not a row changed.
    for run_id in fleet.untouched:
        assert d.store.get_run(run_id) == before[run_id]
        assert (d.store.checkpoints(run_id), d.store.history(run_id)) == untouched_state[run_id]
    assert orphans(d.store) == dict.fromkeys(orphans(d.store), 0)
    # The pass is on record.
    with d.store.read() as conn:
        row = conn.execute(select(cleanups)).mappings().one()
    assert row["status"] == "done" and row["removed"]["runs_deleted"] == len(gone)
    assert row["removed"]["runs_purged"] == len(gone) + len(fleet.old)


def test_the_waiting_run_still_finishes_after_the_pass(
    d: Driver, clock: Clock, tmp_path: Path
) -> None:
    fleet = Fleet(d, clock)
    collect(d.store, policy(tmp_path), batch=3)
    d.approve(fleet.waiting)
    assert d.store.get_run(fleet.waiting).status == COMPLETED
    assert d.store.verify(fleet.waiting) is None


def test_dry_run_changes_nothing_and_predicts_the_pass(
    d: Driver, clock: Clock, tmp_path: Path
) -> None:
    Fleet(d, clock)
    retention = policy(tmp_path)
    counts = table_counts(d.store)
    runs_before = {r.id: r for r in d.store.list_runs(limit=1000)}

    dry = collect(d.store, retention, dry_run=True)

    assert table_counts(d.store) == counts
    assert {r.id: r for r in d.store.list_runs(limit=1000)} == runs_before
    assert not (tmp_path / "archive").exists()
    real = collect(d.store, retention)
    # Purged and deleted in the same pass are counted once each way.
    assert (dry.runs_purged, dry.runs_pruned, dry.checkpoints_pruned) == (
        real.runs_purged,
        real.runs_pruned,
        real.checkpoints_pruned,
    )
    assert dry.rows_purged == real.rows_purged
    assert (dry.runs_deleted, dry.events_archived) == (real.runs_deleted, real.events_archived)
    assert real.runs_deleted == 4


def test_a_second_pass_finds_nothing_more(d: Driver, clock: Clock, tmp_path: Path) -> None:
    Fleet(d, clock)
    retention = policy(tmp_path)
    collect(d.store, retention)
    counts = table_counts(d.store)
    again = collect(d.store, retention)
    assert not again.removed_anything
    counts["cleanups"] += 1
    assert table_counts(d.store) == counts


def test_an_interrupted_pass_is_finished_by_the_next(
    d: Driver, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = Fleet(d, clock)
    retention = policy(tmp_path)
    real_delete = _Collector._delete_state
    calls = {"n": 0}

    def dies_after_one(self: _Collector, run_id: str) -> None:
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt("killed")
        real_delete(self, run_id)

    monkeypatch.setattr(_Collector, "_delete_state", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        collect(d.store, retention, batch=3)
    monkeypatch.setattr(_Collector, "_delete_state", real_delete)

    # Consistent: every marked run refuses to show state, whatever rows are left.
    marked = [r for r in d.store.list_runs(limit=1000) if r.purge_state is not None]
    assert len(marked) == 3 and sum(r.purge_state == "pending" for r in marked) == 2
    for run in marked:
        with pytest.raises(Gone):
            d.store.history(run.id)
        with pytest.raises(Gone):
            d.rt.rollback(run.id, 1, actor="ops")
    with d.store.read() as conn:
        assert set(conn.execute(select(cleanups.c.status)).scalars()) == {"running"}

    report = collect(d.store, retention)
    assert report.purges_finished == 2
    assert orphans(d.store) == dict.fromkeys(orphans(d.store), 0)
    remaining = {r.id for r in d.store.list_runs(limit=1000)}
    assert remaining.isdisjoint([*fleet.ancient, fleet.ancient_failed])
    assert all(d.store.get_run(r).purge_state == PURGED for r in fleet.old)
    assert set(fleet.untouched) <= remaining


def test_held_then_released_goes_on_the_next_pass(d: Driver, clock: Clock, tmp_path: Path) -> None:
    held = finished(d, clock, 100)
    d.rt.set_legal_hold(held, True, actor="legal")
    clock.now = TODAY
    retention = policy(tmp_path)
    assert not collect(d.store, retention).removed_anything
    d.rt.set_legal_hold(held, False, actor="legal", reason="case closed")
    report = collect(d.store, retention)
    assert report.runs_purged == 1 and report.runs_deleted == 1
    _, records = read_archive(Path(report.archive_files[0]))
    assert [r["kind"] for r in records][-3:] == ["legal_hold", "legal_hold", "purged"]


def test_event_deliveries_go_only_when_no_live_run_could_use_them(
    d: Driver, clock: Clock, tmp_path: Path
) -> None:
    clock.days_ago(200)
    d.rt.publish_event("order.paid", "o-1", {"n": 1}, actor="shop")
    clock.days_ago(100)
    waiting = d.start()  # live since 100 days ago
    d.rt.publish_event("order.paid", "o-2", {"n": 2}, actor="shop")
    clock.now = TODAY
    report = collect(d.store, policy(tmp_path))
    assert report.deliveries_removed == 1
    with d.store.read() as conn:
        keys = set(conn.execute(select(deliveries.c.match_key)).scalars())
    assert keys == {"o-2"}
    assert d.store.get_run(waiting).status == WAITING


def test_the_sqlite_file_shrinks(d: Driver, clock: Clock, tmp_path: Path) -> None:
    if d.store.engine.dialect.name != "sqlite":
        pytest.skip("VACUUM gives space back on SQLite; Postgres reuses it in place")
    for i in range(40):
        finished(d, clock, 100 + i, pad=4000)
    clock.now = TODAY
    db = Path(str(d.store.engine.url.database))
    size_before = db.stat().st_size
    report = collect(d.store, policy(tmp_path))
    assert report.runs_deleted == 40
    assert report.bytes_before is not None and report.bytes_after is not None
    assert report.bytes_after < report.bytes_before / 2
    assert db.stat().st_size < size_before / 2


def test_bad_policies_are_refused() -> None:
    with pytest.raises(InvalidInput):
        RetentionPolicy(keep_checkpoints=0)
    with pytest.raises(InvalidInput):
        RetentionPolicy(delete_after_days=-1)
    with pytest.raises(InvalidInput, match="unknown"):
        Retention.build(RetentionPolicy(), {"loan": {"keep_days": 3}}, None)


def test_without_an_archive_dir_trails_are_kept(d: Driver, clock: Clock) -> None:
    run_id = finished(d, clock, 400)
    clock.now = TODAY
    retention = Retention(
        RetentionPolicy(delete_after_days=1, events_extra_days=1), archive_dir=None
    )
    report = collect(d.store, retention)
    assert report.runs_purged == 1 and report.runs_deleted == 0
    assert d.store.verify(run_id) is None


def test_a_step_state_never_mixes_with_a_purged_run(d: Driver, clock: Clock) -> None:
    """A run started after a pass reads only its own rows (ids are never reused)."""
    old = finished(d, clock, 400)
    clock.now = TODAY
    collect(d.store, Retention(RetentionPolicy(delete_after_days=1)))
    new = d.start()
    assert new != old
    assert [m.content for m in d.store.history(new)] == [
        "one after 0 messages",
        "two:plain after 1 messages",
    ]
    with d.store.read() as conn:
        owners = set(conn.execute(select(messages.c.run_id)).scalars())
    assert owners == {new}
