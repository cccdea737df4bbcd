"""Rollback, fork, time travel and tamper detection: the same cases on SQLite and Postgres.

Runs are driven by a Runtime whose publish appends to a list and a loop that
plays the worker, so every step goes through the real claim/commit path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from pausepoint.persistence.errors import Conflict, Gone, InvalidInput, NotFound, NotWaiting
from pausepoint.persistence.records import (
    CANCELLED_WAIT,
    COMPLETED,
    PENDING,
    QUEUED,
    RUNNING,
    WAITING,
)
from pausepoint.persistence.store import Store
from pausepoint.persistence.tables import events, messages, waits
from pausepoint.worker.pages import checkpoint_view, timeline
from tests.chain import Driver
from tests.tamper import drop_guards


@pytest.fixture
def d(store: Store) -> Iterator[Driver]:
    store.save_agent("agent", persona="tester")
    yield Driver(store)


def step_keys(store: Store, run_id: str) -> list[str]:
    """The idempotency key of every step the trail records, in order."""
    return [f"{run_id}:{e.data['seq']}" for e in store.events(run_id) if e.kind == "step_completed"]


def contents(store: Store, run_id: str, at: int | None = None) -> list[str]:
    return [m.content for m in store.history(run_id, at=at)]


def kinds(store: Store, run_id: str) -> list[str]:
    return [e.kind for e in store.events(run_id)]


# ------------------------------------------------------------------ rollback


def test_rollback_of_a_finished_run_reopens_its_approval_and_continues(d: Driver) -> None:
    run_id = d.start()
    d.approve(run_id, approved=True)
    done = d.store.get_run(run_id)
    assert done.status == COMPLETED and done.seq == 3
    assert done.result["path"] == ["one", "two:plain", "three:yes"]
    stored_before = d.store.count_runs()

    # Checkpoint 2 is where the run parked on the approval: roll back to redo the decision.
    back = d.rt.rollback(run_id, 2, actor="auditor", reason="approved by mistake")
    assert (back.status, back.seq, back.step, back.history_len) == (WAITING, 4, "three", 2)
    assert back.result is None and back.finished_at is None
    assert d.store.checkpoint(run_id).state == d.store.checkpoint(run_id, 2).state
    assert contents(d.store, run_id) == contents(d.store, run_id, at=2)

    d.approve(run_id, approved=False, who="bob")
    final = d.store.get_run(run_id)
    # The old checkpoint plus the new step, and nothing of the abandoned one.
    assert final.status == COMPLETED
    assert final.result == {"path": ["one", "two:plain", "three:no"], "history": 2}
    assert contents(d.store, run_id) == [
        "one after 0 messages",
        "two:plain after 1 messages",
        "three:no after 2 messages",
    ]
    # The abandoned message is still stored, and still what checkpoint 3 shows.
    assert contents(d.store, run_id, at=3)[-1] == "three:yes after 2 messages"
    with d.store.read() as conn:
        assert conn.execute(select(func.count()).select_from(messages)).scalar_one() == 4
    # The trail shows both paths, in order, and still verifies.
    trail = kinds(d.store, run_id)
    assert trail.count("decided") == 2 and trail.count("completed") == 2
    assert trail.index("rolled_back") > trail.index("completed")
    rolled = next(e for e in d.store.events(run_id) if e.kind == "rolled_back")
    assert rolled.actor == "auditor"
    assert rolled.data == {
        "from_seq": 3,
        "to_seq": 2,
        "new_seq": 4,
        "status_before": COMPLETED,
        "reason": "approved by mistake",
        "by": "auditor",
    }
    assert d.store.verify(run_id) is None
    assert d.store.count_runs() == stored_before


def test_rollback_of_a_waiting_run_cancels_its_wait_and_reruns_the_step(d: Driver) -> None:
    run_id = d.start(flavour="first")
    parked = d.store.get_run(run_id)
    assert parked.status == WAITING and parked.seq == 2
    old_wait = d.store.waits(run_id, status=PENDING)[0]

    back = d.rt.rollback(run_id, 1, actor="ops", reason="redo step two")
    assert (back.status, back.step, back.seq) == (QUEUED, "two", 3)
    assert [w.status for w in d.store.waits(run_id) if w.id == old_wait.id] == [CANCELLED_WAIT]
    with pytest.raises(NotWaiting):
        d.rt.decide(run_id, approved=True, actor="alice")  # the old approval is gone

    d.drain()  # step two runs again, from checkpoint 1's state, and parks again
    again = d.store.get_run(run_id)
    assert again.status == WAITING and again.seq == 4
    d.approve(run_id)
    final = d.store.get_run(run_id)
    assert final.result["path"] == ["one", "two:first", "three:yes"]
    assert contents(d.store, run_id) == [
        "one after 0 messages",
        "two:first after 1 messages",
        "three:yes after 2 messages",
    ]
    trail = d.store.events(run_id)
    parks = [e for e in trail if e.kind == "step_completed" and "wait" in e.data]
    assert len(parks) == 2 and "wait_cancelled" in [e.kind for e in trail]
    assert d.store.verify(run_id) is None


def test_a_step_after_a_rollback_sees_the_old_conversation_and_a_new_key(d: Driver) -> None:
    run_id = d.start()
    d.approve(run_id)
    keys_before = set(step_keys(d.store, run_id))
    d.rt.rollback(run_id, 1, actor="ops")
    d.drain()
    d.approve(run_id)
    started = step_keys(d.store, run_id)
    # Idempotency keys of the new attempts are new: side effects are not deduplicated
    # against the abandoned path.
    assert len(started) == 5 and not set(started[3:]) & keys_before
    assert len(set(started)) == 5


def test_rollback_is_refused_for_a_running_run_and_bad_checkpoints(d: Driver) -> None:
    run_id = d.start()
    d.approve(run_id)
    with pytest.raises(InvalidInput):
        d.rt.rollback(run_id, 3, actor="ops")  # the current checkpoint
    with pytest.raises(InvalidInput):
        d.rt.rollback(run_id, -1, actor="ops")
    version = d.store.get_run(run_id).version

    running = d.rt.start("chain", agent="agent", actor="t")
    d.store.claim(running.id, running.version, "someone")
    assert d.store.get_run(running.id).status == RUNNING
    d.published.clear()
    with pytest.raises(Conflict, match="running"):
        d.rt.rollback(running.id, 0, actor="ops")
    assert d.store.get_run(run_id).version == version  # nothing changed


def test_rollback_reopens_a_callback_wait_with_a_new_token(d: Driver) -> None:
    run_id = d.start("paying")
    first_url = d.store.checkpoint(run_id).state["url"]
    first_token = first_url.rsplit("/", 1)[1]
    d.rt.deliver_callback(first_token, {"amount": 1})
    d.drain()
    assert d.store.get_run(run_id).result == {"payload": {"amount": 1}}

    back = d.rt.rollback(run_id, 1, actor="ops", reason="bank sent the wrong amount")
    assert back.status == WAITING
    reopened = d.store.waits(run_id, status=PENDING)
    assert len(reopened) == 1 and reopened[0].kind == "callback" and reopened[0].seq == back.seq
    # The old token is spent; the reopened wait answers to a token for the new checkpoint.
    with pytest.raises(Conflict):
        d.rt.deliver_callback(first_token, {"amount": 2})
    from pausepoint.tasks.tokens import make_token

    token = make_token(d.rt.secret, run_id, back.seq, "bank").token
    outcome, _ = d.rt.deliver_callback(token, {"amount": 2})
    assert outcome == "resumed"
    d.drain()
    assert d.store.get_run(run_id).result == {"payload": {"amount": 2}}


# ---------------------------------------------------------------------- fork


def test_fork_makes_an_independent_run_sharing_the_history_prefix(d: Driver) -> None:
    parent_id = d.start()
    d.approve(parent_id, approved=True)
    parent_before = d.store.get_run(parent_id)
    parent_events = kinds(d.store, parent_id)

    child = d.rt.fork(parent_id, 2, actor="analyst", reason="what if it was rejected")
    assert child.id != parent_id
    assert (child.parent_run_id, child.parent_seq) == (parent_id, 2)
    assert (child.status, child.seq, child.history_len) == (WAITING, 0, 2)
    assert contents(d.store, child.id) == contents(d.store, parent_id, at=2)
    assert d.store.checkpoint(child.id).state == d.store.checkpoint(parent_id, 2).state
    assert kinds(d.store, child.id) == ["created", "forked", "paused"]
    forked = d.store.events(child.id)[1]
    assert forked.data["from_run"] == parent_id and forked.data["from_seq"] == 2
    assert [r.id for r in d.store.forks(parent_id)] == [child.id]

    d.approve(child.id, approved=False)
    assert d.store.get_run(child.id).result["path"] == ["one", "two:plain", "three:no"]
    # The parent did not move: same version, same result, same trail.
    after = d.store.get_run(parent_id)
    assert after.version == parent_before.version and after.result == parent_before.result
    assert kinds(d.store, parent_id) == parent_events
    # Rolling the parent back does not touch the child's conversation either.
    d.rt.rollback(parent_id, 1, actor="ops")
    d.drain()
    d.approve(parent_id, approved=True)
    assert contents(d.store, child.id)[-1] == "three:no after 2 messages"
    assert d.store.verify(parent_id) is None and d.store.verify(child.id) is None


def test_fork_of_a_queued_checkpoint_runs_from_that_step(d: Driver) -> None:
    parent_id = d.start(flavour="x")
    child = d.rt.fork(parent_id, 1, actor="analyst")
    assert child.status == QUEUED and child.step == "two" and child.history_len == 1
    d.drain()
    assert d.store.get_run(child.id).status == WAITING
    with pytest.raises(InvalidInput):
        d.rt.fork(parent_id, 9, actor="analyst")
    d.approve(parent_id)
    with pytest.raises(InvalidInput, match="ended"):
        d.rt.fork(parent_id, 3, actor="analyst")  # the last checkpoint of a finished run
    # By default a finished run forks at its last checkpoint that leads somewhere: the
    # approval it parked on.
    again = d.rt.fork(parent_id, actor="analyst")
    assert (again.parent_seq, again.status, again.step) == (2, WAITING, "three")


# --------------------------------------------------------------- time travel


def test_checkpoints_show_state_and_conversation_as_they_were(d: Driver) -> None:
    run_id = d.start()
    d.approve(run_id)
    d.rt.rollback(run_id, 1, actor="ops")
    d.drain()
    view = checkpoint_view(d.store, run_id, 2)
    assert view["state"] == {"path": ["one", "two:plain"]}
    assert [m["content"] for m in view["history"]] == [
        "one after 0 messages",
        "two:plain after 1 messages",
    ]
    assert view["changes"]["state"]["changed"] == {
        "path": {"from": ["one"], "to": ["one", "two:plain"]}
    }
    assert [m["content"] for m in view["changes"]["messages_added"]] == [
        "two:plain after 1 messages"
    ]
    # Checkpoint 4 is the rollback to 1: it drops what 2 and 3 added.
    rolled = checkpoint_view(d.store, run_id, 4)
    assert rolled["changes"]["messages_dropped"] == 2
    assert rolled["state"] == d.store.checkpoint(run_id, 1).state
    line = timeline(d.store, run_id)
    assert [c["seq"] for c in line] == [0, 1, 2, 3, 4, 5]
    assert line[4]["rolled_back_to"] == 1 and line[5]["current"]
    with pytest.raises(NotFound):
        checkpoint_view(d.store, run_id, 99)


# ------------------------------------------------------------ tamper checks


def _tamper(store: Store, sql: str, **params: Any) -> None:
    with store.write() as conn:
        drop_guards(conn)
        conn.execute(text(sql), params)


def test_untouched_runs_verify(d: Driver) -> None:
    ids = [d.start() for _ in range(3)]
    for run_id in ids:
        d.approve(run_id)
    assert all(finding is None for _, finding in d.store.verify_all())
    assert {run_id for run_id, _ in d.store.verify_all()} == set(ids)


def test_an_edited_event_is_found_and_named(d: Driver) -> None:
    run_id, other = d.start(), d.start()
    d.approve(run_id)
    decided = next(e for e in d.store.events(run_id) if e.kind == "decided")
    with d.store.write() as conn:
        drop_guards(conn)
        conn.execute(
            update(events)
            .where(events.c.run_id == run_id, events.c.n == decided.n)
            .values(actor="mallory")
        )
    finding = d.store.verify(run_id)
    assert finding is not None and finding.n == decided.n and "edited" in finding.problem
    assert d.store.verify(other) is None
    bad = [(r, f) for r, f in d.store.verify_all() if f is not None]
    assert [r for r, _ in bad] == [run_id]


def test_edited_data_is_found(d: Driver) -> None:
    run_id = d.start()
    with d.store.write() as conn:
        drop_guards(conn)
        conn.execute(
            update(events)
            .where(events.c.run_id == run_id, events.c.n == 3)
            .values(data={"step": "one", "forged": True})
        )
    finding = d.store.verify(run_id)
    assert finding is not None and finding.n == 3


def test_a_deleted_event_is_found_and_named(d: Driver) -> None:
    run_id = d.start()
    d.approve(run_id)
    _tamper(d.store, "DELETE FROM events WHERE run_id = :r AND n = 4", r=run_id)
    finding = d.store.verify(run_id)
    assert finding is not None and finding.n == 4 and "deleted" in finding.problem


def test_deleting_the_last_event_is_found(d: Driver) -> None:
    run_id = d.start()
    last = d.store.get_run(run_id).event_count
    _tamper(d.store, "DELETE FROM events WHERE run_id = :r AND n = :n", r=run_id, n=last)
    finding = d.store.verify(run_id)
    assert finding is not None and finding.n == last


def test_reordered_events_are_found(d: Driver) -> None:
    run_id = d.start()
    # Swap events 2 and 3 (through a free number, as the primary key demands).
    _tamper(d.store, "UPDATE events SET n = 1000 WHERE run_id = :r AND n = 2", r=run_id)
    _tamper(d.store, "UPDATE events SET n = 2 WHERE run_id = :r AND n = 3", r=run_id)
    _tamper(d.store, "UPDATE events SET n = 3 WHERE run_id = :r AND n = 1000", r=run_id)
    finding = d.store.verify(run_id)
    assert finding is not None and finding.n == 2


def test_an_event_rewritten_with_a_recomputed_hash_breaks_the_next_link(d: Driver) -> None:
    from pausepoint.persistence.audit import event_hash

    run_id = d.start()
    e = d.store.events(run_id)[1]
    forged = {"step": "one", "forged": True}
    keys = d.store.audit_keys
    digest = event_hash(keys, e.prev_hash, run_id, e.n, e.kind, e.actor, forged, e.created_at)
    with d.store.write() as conn:
        drop_guards(conn)
        conn.execute(
            update(events)
            .where(events.c.run_id == run_id, events.c.n == e.n)
            .values(data=forged, hash=bytes.fromhex(digest))
        )
    # The next event's hash covers the original hash of this one.
    finding = d.store.verify(run_id)
    assert finding is not None and finding.n == e.n + 1 and "before it" in finding.problem


# ------------------------------------------------------------- legal hold


def test_legal_hold_is_recorded_and_refused_while_running(d: Driver) -> None:
    run_id = d.start()
    held = d.rt.set_legal_hold(run_id, True, actor="legal", reason="case 42")
    assert held.legal_hold and held.status == WAITING
    assert d.store.events(run_id)[-1].data == {"on": True, "reason": "case 42", "by": "legal"}
    assert d.rt.set_legal_hold(run_id, True, actor="legal").version == held.version  # no-op
    d.approve(run_id)  # a held run still runs
    assert d.store.get_run(run_id).status == COMPLETED and d.store.get_run(run_id).legal_hold

    running = d.rt.start("chain", agent="agent", actor="t")
    d.store.claim(running.id, running.version, "someone")
    with pytest.raises(Conflict):
        d.rt.set_legal_hold(running.id, True, actor="legal")


def test_a_purged_run_refuses_rollback_and_fork(d: Driver) -> None:
    run_id = d.start()
    d.approve(run_id)
    with d.store.write() as conn:
        conn.execute(
            text("UPDATE runs SET purge_state = 'done', purged_at = updated_at WHERE id = :r"),
            {"r": run_id},
        )
    with pytest.raises(Gone):
        d.rt.rollback(run_id, 1, actor="ops")
    with pytest.raises(Gone):
        d.rt.fork(run_id, 1, actor="ops")
    with pytest.raises(Gone):
        d.store.history(run_id)
    assert d.store.verify(run_id) is None  # the trail is still there and intact


def test_wait_rows_of_a_rollback_are_consistent(d: Driver) -> None:
    run_id = d.start()
    d.rt.rollback(run_id, 1, actor="ops")
    d.rt.rollback(run_id, 0, actor="ops")
    with d.store.read() as conn:
        pending = conn.execute(
            select(func.count())
            .select_from(waits)
            .where(waits.c.run_id == run_id, waits.c.status == PENDING)
        ).scalar_one()
    assert pending == 0
    d.drain()
    d.approve(run_id)
    assert d.store.get_run(run_id).result["path"] == ["one", "two:plain", "three:yes"]
    assert d.store.verify(run_id) is None


def test_every_transition_is_an_event_with_its_actor(d: Driver) -> None:
    run_id = d.start()
    d.approve(run_id, who="alice")
    d.rt.rollback(run_id, 2, actor="auditor", reason="redo")
    d.rt.set_legal_hold(run_id, True, actor="legal")
    trail = [(e.kind, e.actor) for e in d.store.events(run_id)]
    assert trail == [
        ("created", "test"),
        ("step_completed", "test-worker"),
        ("step_completed", "test-worker"),
        ("decided", "alice"),
        ("resumed", "alice"),
        ("step_completed", "test-worker"),
        ("completed", "test-worker"),
        ("rolled_back", "auditor"),
        ("paused", "auditor"),
        ("legal_hold", "legal"),
    ]
    completed = [e for e in d.store.events(run_id) if e.kind == "step_completed"]
    assert step_keys(d.store, run_id) == [f"{run_id}:{n}" for n in (1, 2, 3)]
    assert all(e.data["duration_ms"] >= 0 for e in completed)
    # The step that parked says what the run waits for; a rollback's re-park is "paused".
    parked = completed[1].data
    assert parked["next"] == "three" and parked["wait"]["kind"] == "approval"
    assert parked["wait"]["group"] == "ops"
    repark = next(e for e in d.store.events(run_id) if e.kind == "paused")
    assert repark.data["kind"] == "approval" and repark.data["group"] == "ops"
