"""The audit trail against whoever can write the database: every attack, both backends.

The store is keyed (an audit key the attacker does not hold). The attacker writes
rows with raw SQL after dropping the append-only triggers (as a schema owner could),
and recomputes hashes wherever the attack needs them, without the key.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.exc import DBAPIError

from pausepoint.persistence.anchors import check_anchors, read_anchors, write_anchor
from pausepoint.persistence.audit import event_hash
from pausepoint.persistence.audit_keys import AuditKeys, key_id
from pausepoint.persistence.records import COMPLETED, WAITING
from pausepoint.persistence.store import Store
from pausepoint.persistence.tables import (
    checkpoints,
    events,
    ledger,
    ledger_head,
    messages,
    runs,
    waits,
)
from pausepoint.tasks.context import StepContext
from pausepoint.tasks.llm import ScriptedBackend
from pausepoint.tasks.runtime import Runtime
from pausepoint.tasks.workflow import End, Next, Outcome, Registry, Workflow
from tests.chain import Driver
from tests.tamper import drop_guards

KEY = "the-audit-key-of-this-store-0001"
OLD_KEY = "an-older-audit-key-now-rotated-1"


@pytest.fixture
def d(store_url: str) -> Iterator[Driver]:
    store = Store.from_url(store_url, audit_keys=AuditKeys.of(KEY))
    store.save_agent("agent", persona="tester")
    try:
        yield Driver(store)
    finally:
        store.close()


def finished(d: Driver) -> str:
    run_id = d.start()
    d.approve(run_id)
    assert d.store.get_run(run_id).status == COMPLETED
    return run_id


def findings(store: Store, run_id: str) -> list[tuple[int, str]]:
    return [(f.n, f.problem) for f in store.audit(run_id).findings]


def attack(store: Store, *statements: Any) -> None:
    with store.write() as conn:
        drop_guards(conn)
        for statement in statements:
            conn.execute(statement)


def rehash(store: Store, run_id: str, start: int, data: dict[str, Any] | None = None) -> None:
    """Recompute the chain from event ``start`` on without the key (``data``: new data of
    event ``start``), and move the run row's head to match."""
    trail = store.events(run_id)
    prev = trail[start - 2].hash if start > 1 else ""
    statements: list[Any] = []
    for e in trail[start - 1 :]:
        body = data if (data is not None and e.n == start) else e.data
        h = event_hash(AuditKeys(), prev, run_id, e.n, e.kind, e.actor, body, e.created_at)
        statements.append(
            update(events)
            .where(events.c.run_id == run_id, events.c.n == e.n)
            .values(data=body, hash=bytes.fromhex(h))
        )
        prev = h
    statements.append(update(runs).where(runs.c.id == run_id).values(event_hash=prev))
    attack(store, *statements)


def event_of(store: Store, run_id: str, kind: str) -> int:
    return next(e.n for e in store.events(run_id) if e.kind == kind)


# ------------------------------------------------------- untouched, and the key


def test_untouched_runs_and_the_ledger_verify_under_the_key(d: Driver) -> None:
    done, parked = finished(d), d.start()
    assert d.store.verify(done) is None and d.store.verify(parked) is None
    audit = d.store.audit(done)
    assert audit.verdict.keyed == audit.events and audit.verdict.unkeyed == 0
    assert audit.verdict.key_ids == {key_id(KEY.encode())} and audit.binds_state
    report = d.store.audit_store()
    assert report.ok, (report.ledger.problems, [a.findings for a in report.failed])
    assert report.ledger.sealed == 3 and report.ledger.keyed == 3  # 2 created, 1 ended


def test_without_the_key_a_keyed_trail_says_it_cannot_be_checked(d: Driver) -> None:
    run_id = finished(d)
    keyless = Store(d.store.engine, audit_keys=AuditKeys())
    (n, problem), *_ = findings(keyless, run_id)
    assert n == 1 and "PAUSEPOINT_AUDIT_KEY" in problem


def test_a_rotated_key_keeps_old_trails_verifiable(d: Driver, store_url: str) -> None:
    old = Store(d.store.engine, audit_keys=AuditKeys.of(OLD_KEY))
    Driver(old).start()  # written under the old key
    (run_id,) = [r.id for r in old.list_runs()]
    rotated = Store(d.store.engine, audit_keys=AuditKeys.of(KEY, OLD_KEY))
    Driver(rotated).approve(run_id)  # finished under the new one
    audit = rotated.audit(run_id)
    assert audit.ok and audit.verdict.key_ids == {key_id(KEY.encode()), key_id(OLD_KEY.encode())}
    assert rotated.audit_store().ok
    # Given only the new key, the events the old key made cannot be checked.
    (n, problem), *_ = findings(d.store, run_id)
    assert n == 1 and "under any key given" in problem


# -------------------------------------------------------------- the trail itself


def test_an_event_rehashed_without_the_key_is_named(d: Driver) -> None:
    run_id = finished(d)
    n = event_of(d.store, run_id, "decided")
    forged = {**d.store.events(run_id)[n - 1].data, "decision": "rejected"}
    rehash(d.store, run_id, n, forged)
    (at, problem), *_ = findings(d.store, run_id)
    assert at == n and "without the audit key" in problem


def test_an_event_appended_with_a_recomputed_chain_is_found(d: Driver) -> None:
    run_id = finished(d)
    run = d.store.get_run(run_id)
    last = d.store.events(run_id)[-1]
    n = run.event_count + 1
    data = {"note": "approved by the board"}
    h = event_hash(
        AuditKeys(), run.event_hash, run_id, n, "decided", "mallory", data, last.created_at
    )
    attack(
        d.store,
        insert(events).values(
            run_id=run_id,
            n=n,
            kind="decided",
            actor="mallory",
            data=data,
            created_at=last.created_at,
            hash=bytes.fromhex(h),
        ),
        update(runs).where(runs.c.id == run_id).values(event_count=n, event_hash=h),
    )
    (at, problem), *_ = findings(d.store, run_id)
    assert at == n and "without the audit key" in problem


def test_a_cut_trail_with_its_head_moved_back_is_found(d: Driver) -> None:
    run_id = finished(d)
    trail = d.store.events(run_id)
    keep = 3
    attack(
        d.store,
        delete(events).where(events.c.run_id == run_id, events.c.n > keep),
        update(runs)
        .where(runs.c.id == run_id)
        .values(event_count=keep, event_hash=trail[keep - 1].hash),
    )
    problems = findings(d.store, run_id)
    assert any("as the ledger recorded" in p and "cut" in p for _, p in problems), problems
    # ...and what the cut events had written is no longer in the trail.
    assert any("is not in the trail" in p for _, p in problems), problems


def test_a_wiped_trail_with_a_zeroed_run_row_is_found(d: Driver) -> None:
    run_id = d.start()  # a live run: no "ended" entry to compare with
    attack(
        d.store,
        delete(events).where(events.c.run_id == run_id),
        update(runs).where(runs.c.id == run_id).values(event_count=0, event_hash=""),
    )
    problems = findings(d.store, run_id)
    assert any("has no trail" in p and "wiped" in p for _, p in problems), problems
    assert any("checkpoint 0 is not in the trail" in p for _, p in problems), problems


# ------------------------------------------------------------ what the trail binds


def test_an_edited_checkpoint_is_named_with_the_event_that_wrote_it(d: Driver) -> None:
    run_id = finished(d)
    attack(
        d.store,
        update(checkpoints)
        .where(checkpoints.c.run_id == run_id, checkpoints.c.seq == 2)
        .values(state={"path": ["one", "two:forged"]}),
    )
    ((n, problem),) = findings(d.store, run_id)
    wrote = next(
        e
        for e in d.store.events(run_id)
        if e.data.get("digests", {}).get("checkpoint", [None])[0] == 2
    )
    assert n == wrote.n and "checkpoint 2 is not what this event recorded" in problem
    # time travel would have shown the edited state as history: now it is caught
    assert d.store.checkpoint(run_id, 2).state["path"][-1] == "two:forged"


def test_an_edited_message_is_named(d: Driver) -> None:
    run_id = finished(d)
    attack(
        d.store,
        update(messages)
        .where(messages.c.run_id == run_id, messages.c.idx == 1)
        .values(content="two: the applicant is trustworthy"),
    )
    ((_, problem),) = findings(d.store, run_id)
    assert "message 1 is not what this event recorded" in problem


def test_an_inserted_message_is_found(d: Driver) -> None:
    run_id = finished(d)
    attack(
        d.store,
        insert(messages).values(
            run_id=run_id,
            idx=99,
            role="assistant",
            content="forged",
            seq=1,
            created_at=d.store.get_run(run_id).created_at,
        ),
    )
    assert any("message 99 is not in the trail" in p for _, p in findings(d.store, run_id))


def test_an_edited_decision_is_named(d: Driver) -> None:
    run_id = finished(d)
    attack(d.store, update(waits).where(waits.c.run_id == run_id).values(decided_by="mallory"))
    ((n, problem),) = findings(d.store, run_id)
    assert "approval wait at checkpoint 2" in problem and "who made it" in problem
    assert n == event_of(d.store, run_id, "resumed")


def test_a_pending_waits_terms_edited_are_found(d: Driver) -> None:
    run_id = d.start()
    assert d.store.get_run(run_id).status == WAITING
    attack(d.store, update(waits).where(waits.c.run_id == run_id).values(approver_group="interns"))
    ((_, problem),) = findings(d.store, run_id)
    assert "approval wait at checkpoint 2" in problem


@pytest.mark.parametrize(
    "change",
    [{"result": {"path": ["forged"]}}, {"status": "failed", "error": "forged"}],
    ids=["result", "status"],
)
def test_an_edited_result_or_status_is_found(d: Driver, change: dict[str, Any]) -> None:
    run_id = finished(d)
    attack(d.store, update(runs).where(runs.c.id == run_id).values(**change))
    ((n, problem),) = findings(d.store, run_id)
    assert "status or result" in problem and n == event_of(d.store, run_id, "completed")


def test_a_run_marked_finished_behind_the_trail_is_found(d: Driver) -> None:
    run_id = d.start()
    attack(
        d.store,
        update(runs).where(runs.c.id == run_id).values(status="completed", result={"ok": 1}),
    )
    assert any("no event of its trail ended it" in p for _, p in findings(d.store, run_id))


# ---------------------------------------------------------------- whole runs


def test_a_deleted_run_is_found_by_the_store_wide_verify(d: Driver) -> None:
    gone, kept = finished(d), finished(d)
    attack(
        d.store,
        *(delete(t).where(t.c.run_id == gone) for t in (events, checkpoints, messages, waits)),
        delete(runs).where(runs.c.id == gone),
    )
    report = d.store.audit_store()
    assert [f.run_id for f in report.missing] == [gone] and not report.ok
    assert "deleted behind Pausepoint's back" in report.missing[0].problem
    assert [a.run_id for a in report.runs] == [kept] and not report.failed


def test_a_forged_run_is_found(d: Driver) -> None:
    real = finished(d)
    # Pausepoint's own code, run by someone without the key: an unkeyed run and an
    # unkeyed ledger entry, after keyed ones.
    forger = Store(d.store.engine, audit_keys=AuditKeys())
    forged = Driver(forger).start()
    report = d.store.audit_store()
    assert any("not keyed although earlier entries are" in p for p in report.ledger.problems)
    assert not report.ok and d.store.verify(real) is None
    # Rows inserted by hand, with no ledger entry at all:
    attack(d.store, delete(ledger).where(ledger.c.run_id == forged))
    assert any("not in the store's ledger" in p for _, p in findings(d.store, forged))


def test_a_deleted_ledger_entry_breaks_the_sealed_chain(d: Driver) -> None:
    for _ in range(3):
        finished(d)
    d.store.seal_all()
    attack(d.store, delete(ledger).where(ledger.c.n == 2))
    problems = d.store.check_ledger().problems
    assert any("ledger entry 2 is missing" in p for p in problems), problems


# ------------------------------------------------------- the database's own guard


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE events SET actor = 'mallory'",
        "DELETE FROM events",
        "DELETE FROM ledger",
        "UPDATE ledger SET data = '{}'",
        "DELETE FROM runs",
    ],
)
def test_the_database_refuses_to_change_the_trail(d: Driver, sql: str) -> None:
    run_id = finished(d)
    d.store.seal_all()
    before = d.store.events(run_id)
    with pytest.raises(DBAPIError, match="append-only"):
        with d.store.write() as conn:
            conn.execute(text(sql))
    assert d.store.events(run_id) == before and d.store.verify(run_id) is None


def test_postgres_refuses_truncate_of_the_trail(pg_url: str) -> None:
    store = Store.from_url(pg_url, audit_keys=AuditKeys.of(KEY))
    try:
        store.save_agent("agent", persona="tester")
        finished(Driver(store))
        for table in ("events", "ledger"):
            with pytest.raises(DBAPIError, match="append-only"):
                with store.write() as conn:
                    conn.execute(text(f"TRUNCATE {table} CASCADE"))
    finally:
        store.close()


# ------------------------------------------------------------ a live run


looping = Registry()
loop = Workflow("loop", registry=looping)


@loop.step(start=True)
def tick(ctx: StepContext) -> Outcome:
    ctx.state["n"] = ctx.state.get("n", 0) + 1
    ctx.say("assistant", f"tick {ctx.state['n']}")
    return Next("tick") if ctx.state["n"] < 40 else End({"ticks": ctx.state["n"]})


def test_a_run_verifies_while_its_steps_keep_committing(d: Driver) -> None:
    published: list[tuple[str, int]] = []
    rt = Runtime(
        d.store,
        llm=ScriptedBackend(),
        publish=lambda r, v: published.append((r, v)),
        workflows=looping,
    )
    run_id = rt.start("loop", agent="agent", actor="test").id
    done = threading.Event()

    def worker() -> None:
        while published:
            rid, version = published.pop(0)
            rt.run_step(rid, version, owner="w")
        done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    verdicts = []
    while not done.is_set():
        verdicts.append(d.store.audit(run_id))
    thread.join()
    verdicts.append(d.store.audit(run_id))
    bad = [a.findings for a in verdicts if not a.ok]
    assert not bad, bad[0]
    assert d.store.get_run(run_id).status == COMPLETED and len(verdicts) > 2


# ---------------------------------------------------------------- anchors


def test_anchors_find_what_changed_since(d: Driver, tmp_path: Path) -> None:
    done, parked = finished(d), d.start()
    path = tmp_path / "anchors.jsonl"
    first = write_anchor(d.store, path)
    assert set(first.runs) == {done, parked}
    later = finished(d)
    second = write_anchor(d.store, path)
    assert set(second.runs) == {later}  # only what changed since the first
    anchors, problems = read_anchors(path, d.store.audit_keys)
    assert len(anchors) == 2 and not problems
    assert check_anchors(d.store, anchors) == []

    # A live run cut back to before its park, with everything it wrote after: its own
    # rows are consistent again, and only the anchor can tell.
    trail = d.store.events(parked)
    keep = 2
    attack(
        d.store,
        delete(events).where(events.c.run_id == parked, events.c.n > keep),
        delete(waits).where(waits.c.run_id == parked),
        delete(checkpoints).where(checkpoints.c.run_id == parked, checkpoints.c.seq > 1),
        delete(messages).where(messages.c.run_id == parked, messages.c.seq > 1),
        update(runs)
        .where(runs.c.id == parked)
        .values(event_count=keep, event_hash=trail[keep - 1].hash, status="queued", seq=1),
    )
    # A whole run deleted with its ledger entries, and the ledger's tail cut to match.
    head = d.store.ledger_head()
    attack(
        d.store,
        *(delete(t).where(t.c.run_id == later) for t in (events, checkpoints, messages, waits)),
        delete(runs).where(runs.c.id == later),
        delete(ledger).where(ledger.c.run_id == later),
        update(ledger_head).values(n=head[0] - 2, hash=_link_at(d.store, head[0] - 2)),
    )
    problems = check_anchors(d.store, anchors)
    assert any(f"run {parked}" in p and "cut, wiped or rewritten" in p for p in problems), problems
    assert any(f"run {later}" in p and "deleted since" in p for p in problems), problems
    assert any("entries were cut since" in p for p in problems), problems


def _link_at(store: Store, n: int) -> str:
    with store.read() as conn:
        link = conn.execute(select(ledger.c.link).where(ledger.c.n == n)).scalar_one()
    return bytes(link).hex()


def test_an_edited_anchor_is_refused(d: Driver, tmp_path: Path) -> None:
    finished(d)
    path = tmp_path / "anchors.jsonl"
    write_anchor(d.store, path)
    path.write_text(path.read_text().replace('"ledger":[2', '"ledger":[1'))
    anchors, problems = read_anchors(path, d.store.audit_keys)
    assert anchors == [] and "does not match its MAC" in problems[0]
