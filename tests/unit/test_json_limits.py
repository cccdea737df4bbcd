"""One producer's JSON never stops the store: limits on the way in, tolerance on the way out.

Before: ``POST /runs`` with an ``input`` nested ~950 levels deep answered 500 *after*
the run was stored and queued; from then on every ``GET /runs`` answered 500, no worker
could claim the run and every sweeper pass failed, on SQLite and on Postgres. Now every
JSON input (run input, decision input, event and callback payloads) deeper than
MAX_DEPTH, or with an integer beyond 64 bits, is refused with 422 before anything is
stored; and a row that holds such JSON anyway (written before the limits, or by hand)
is read as ``{"unreadable": why}``: batch reads and the sweeper go on, and a worker
fails that run with the reason instead of failing forever.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from pausepoint.persistence.errors import InvalidInput
from pausepoint.persistence.jsonvalues import MAX_DEPTH, Unreadable, check_json, parse_json
from pausepoint.persistence.records import COMPLETED, FAILED, QUEUED
from pausepoint.persistence.store import Store
from pausepoint.tasks.context import StepContext
from pausepoint.tasks.llm import ScriptedBackend
from pausepoint.tasks.runtime import Runtime
from pausepoint.tasks.workflow import End, Outcome, Registry, Workflow
from tests.unit.test_api_audit import Env, env  # noqa: F401  (the in-process API fixture)
from tests.workflows import payment


def nested(depth: int, leaf: Any = 1) -> Any:
    """``{"a": {"a": ... leaf}}``, ``depth`` objects deep (built without recursion)."""
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


def deep_text(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


# ------------------------------------------------------------------ the limits


def test_the_limits_refuse_deep_values_and_big_integers_at_any_depth() -> None:
    assert check_json(nested(MAX_DEPTH), "x") == nested(MAX_DEPTH)
    with pytest.raises(InvalidInput, match=f"nested deeper than {MAX_DEPTH}"):
        check_json(nested(MAX_DEPTH + 1), "run input")
    # Far past where Python's json would recurse out of stack: still a clean refusal.
    with pytest.raises(InvalidInput, match="nested deeper"):
        check_json(nested(100_000), "run input")
    with pytest.raises(InvalidInput, match="nested deeper"):
        check_json(json.loads("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)), "x")
    check_json({"n": 2**63 - 1, "m": -(2**63), "f": 1e300, "b": True}, "x")
    for big in (2**63, -(2**63) - 1, 10**5000):
        with pytest.raises(InvalidInput, match="64-bit"):
            check_json({"list": [1, {"n": big}]}, "event payload")
    with pytest.raises(InvalidInput, match="JSON-serializable"):
        check_json({"x": float("nan")}, "x")


def test_text_from_outside_is_parsed_within_the_limits() -> None:
    assert parse_json('{"a": [1, 2]}', "--data") == {"a": [1, 2]}
    for bad, says in (
        (deep_text(950), "nested deeper"),
        (deep_text(200_000), "nested deeper"),
        ('{"n": ' + "9" * 5000 + "}", "not valid JSON"),
        ('{"n": ' + "9" * 30 + "}", "64-bit"),
        ("{oops", "not valid JSON"),
    ):
        with pytest.raises(InvalidInput, match=says):
            parse_json(bad, "--data")


# ------------------------------------------------------------ the HTTP API


def test_post_runs_with_a_deep_input_is_422_and_stores_nothing(env: Env) -> None:  # noqa: F811
    for body_input in (nested(950), nested(MAX_DEPTH + 1), {"n": 2**64}):
        error = env.refused(
            lambda v=body_input: env.post(
                "/runs", {"workflow": "loan", "agent": "loan_processor", "input": v}
            ),
            422,
        )
        assert "nested deeper" in error or "64-bit" in error
    # The largest accepted input round-trips, and GET /runs keeps answering.
    ok = nested(MAX_DEPTH - 1)
    created = env.ok(
        env.post("/runs", {"workflow": "loan", "agent": "loan_processor", "input": ok}), 201
    )
    assert env.store.get_run(created["id"]).input == ok
    assert env.ok(env.get("/runs"))[0]["id"] == created["id"]


def test_a_body_too_deep_to_even_parse_is_a_4xx(env: Env) -> None:  # noqa: F811
    body = '{"workflow": "loan", "agent": "loan_processor", "input": ' + deep_text(5000) + "}"
    before = env.snapshot()
    r = env.http.post(
        "/runs",
        content=body,
        headers={"Authorization": "Bearer key-root", "Content-Type": "application/json"},
    )
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert "error" in r.json()
    assert env.snapshot() == before


def test_decision_event_and_callback_payloads_are_bounded(env: Env) -> None:  # noqa: F811
    run_id = env.parked_loan()
    env.refused(
        lambda: env.post(f"/runs/{run_id}/approve", {"input": nested(500)}), 422, says="deeper"
    )
    env.refused(
        lambda: env.http.post(
            "/events/order.paid",
            content=json.dumps({"key": "1", "data": nested(MAX_DEPTH + 5)}),
            headers={"Authorization": "Bearer key-partner"},
        ),
        422,
        says="deeper",
    )
    env.refused(
        lambda: env.http.post(
            "/events/order.paid",
            content=deep_text(900),
            headers={"Authorization": "Bearer key-partner"},
        ),
        422,
    )
    url = _parked_payment_url(env)
    token = url.rsplit("/", 1)[1]
    for body in (deep_text(900), '{"amount": ' + "1" * 40 + "}"):
        env.refused(lambda b=body: env.http.post(f"/callbacks/{token}", content=b), 422)
    # A good decision still goes through afterwards.
    env.ok(env.post(f"/runs/{run_id}/approve", {"comment": "fine"}))


def _parked_payment_url(e: Env) -> str:
    from pausepoint.tasks.workflow import registry

    if "payment" not in registry.names():
        registry.register(payment)
    run = e.rt.start("payment", agent="loan_processor", input={})
    e.drain()
    state = e.store.checkpoint(run.id, e.store.get_run(run.id).seq).state
    return str(state["callback_url"])


# ------------------------------------- rows stored before the limits (both stores)


def _store_raw(store: Store, run_id: str, column: str, json_text: str) -> None:
    """Write JSON text into a run's column past every check, as an old store holds it."""
    with store.write() as conn:
        if store.engine.dialect.name == "postgresql":
            conn.execute(
                text(f"UPDATE runs SET {column} = CAST(:v AS jsonb) WHERE id = :id"),
                {"v": json_text, "id": run_id},
            )
        else:
            conn.execute(
                text(f"UPDATE runs SET {column} = :v WHERE id = :id"),
                {"v": json_text, "id": run_id},
            )


counted = Workflow("counted", description="One step that ends with its input's size.")


@counted.step
def only(ctx: StepContext) -> Outcome:
    return End({"keys": len(ctx.input)})


deep_state = Workflow("deep_state", description="A step whose state cannot be stored.")


@deep_state.step
def first(ctx: StepContext) -> Outcome:
    ctx.state["tree"] = nested(int(ctx.input.get("depth", 500)))
    return End({"never": "stored"})


@pytest.fixture
def rt(store: Store) -> Runtime:
    workflows = Registry()
    workflows.register(counted)
    workflows.register(deep_state)
    store.save_agent("a1")
    published: list[tuple[str, int]] = []
    runtime = Runtime(
        store,
        llm=ScriptedBackend(),
        publish=lambda r, v: published.append((r, v)),
        workflows=workflows,
    )
    runtime.published = published  # type: ignore[attr-defined]
    return runtime


@pytest.mark.parametrize("bad", [deep_text(950), '{"n": ' + "7" * 5000 + "}"])
def test_an_unreadable_row_is_listed_swept_and_failed_not_fatal(
    rt: Runtime, store: Store, bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = rt.start("counted", agent="a1", input={"x": 1})
    broken = rt.start("counted", agent="a1", input={"y": 2})
    _store_raw(store, broken.id, "input", bad)

    caplog.set_level(logging.WARNING, logger="pausepoint")
    listed = {r.id: r for r in store.list_runs()}
    assert set(listed) == {good.id, broken.id}
    assert isinstance(listed[broken.id].input, Unreadable)
    assert listed[good.id].input == {"x": 1}
    assert broken.id in caplog.text
    assert isinstance(store.get_run(broken.id).input, Unreadable)

    # The sweeper treats both rows (both are queued and unpublished for long enough).
    later = store.clock() + timedelta(seconds=60)
    store.clock = lambda: later
    report = store.sweep(redeliver_after=1)
    assert {r for r, _ in report.republished} == {good.id, broken.id}
    assert report.skipped == []

    # A worker finishes the good run and fails the broken one, saying why.
    for run in (good, broken):
        rt.run_step(run.id, store.get_run(run.id).version, owner="w")
    assert store.get_run(good.id).status == COMPLETED
    failed = store.get_run(broken.id)
    assert failed.status == FAILED
    assert "stored input cannot be read" in (failed.error or "")


def test_a_step_whose_state_cannot_be_stored_fails_its_run(rt: Runtime, store: Store) -> None:
    run = rt.start("deep_state", agent="a1", input={"depth": 500})
    report = rt.run_step(run.id, run.version, owner="w")
    assert report.status == FAILED
    failed = store.get_run(run.id)
    assert failed.status == FAILED and "cannot be stored" in (failed.error or "")
    assert "nested deeper" in (failed.error or "")


def test_store_entry_points_refuse_before_writing(rt: Runtime, store: Store) -> None:
    with pytest.raises(InvalidInput):
        rt.start("counted", agent="a1", input=nested(MAX_DEPTH + 1))
    with pytest.raises(InvalidInput):
        store.publish_event("e", "k", nested(700), actor="t")
    with pytest.raises(InvalidInput):
        store.save_agent("a2", model={"n": 2**70})
    assert store.list_runs() == []


def test_the_sweeper_skips_a_row_it_cannot_handle_and_does_the_rest(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # SQLite keeps whatever text a hand-edit writes: a date that cannot be parsed.
    store = Store.from_url(sqlite_url)
    try:
        store.save_agent("a1")
        good, _ = store.create_run(agent_name="a1", workflow="w", first_step="s", actor="t")
        bad, _ = store.create_run(agent_name="a1", workflow="w", first_step="s", actor="t")
        with store.write() as conn:
            conn.execute(
                text("UPDATE runs SET updated_at = '0000-not-a-date' WHERE id = :id"),
                {"id": bad.id},
            )
        later = store.clock() + timedelta(seconds=60)
        store.clock = lambda: later
        caplog.set_level(logging.ERROR, logger="pausepoint")
        report = store.sweep(redeliver_after=1)
        assert [r for r, _ in report.republished] == [good.id]
        assert report.skipped == [f"run {bad.id}"]
        assert bad.id in caplog.text
        assert store.get_run(good.id).status == QUEUED
    finally:
        store.close()
