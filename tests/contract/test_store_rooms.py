"""The store's rooms and its dialect seam.

- Each public operation lives in the module named for what it owns, and no module of
  the store is over 500 lines: a reader finds "decide an approval" from file names.
- The dialect is chosen from the URL; Postgres' one-statement claim and commit write
  and read exactly what the portable transaction does, value for value, because they
  convert with the columns' own bind and result processors (a JSON column that is not
  none-as-null gets JSON ``null`` for None, as SQLAlchemy writes it, not SQL NULL).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

import pausepoint.persistence.store as store_package
from pausepoint.persistence.records import (
    COMPLETED,
    QUEUED,
    RUNNING,
    NewEvent,
    NewMessage,
    Transition,
)
from pausepoint.persistence.store import Store
from pausepoint.persistence.store.postgres import PostgresDialect
from pausepoint.persistence.store.sqlite import SQLiteDialect
from pausepoint.persistence.tables import checkpoints, events, messages, runs

WHERE = {
    "save_agent": "agents",
    "create_run": "runs",
    "claim": "steps",
    "commit_step": "steps",
    "renew_lease": "steps",
    "decide": "approvals",
    "deliver_callback": "deliveries",
    "publish_event": "deliveries",
    "set_resource": "resources",
    "wake_resources": "resources",
    "rollback": "lineage",
    "fork": "lineage",
    "set_legal_hold": "lineage",
    "sweep": "sweeper",
    "open_session": "sessions",
    "save_session": "sessions",
    "secret": "secret",
    "get_run": "reads",
    "list_runs": "reads",
    "history": "reads",
    "_apply": "core",
}


def test_each_operation_lives_in_the_room_named_for_it() -> None:
    for name, room in WHERE.items():
        module = inspect.getmodule(getattr(Store, name))
        assert module is not None
        assert module.__name__ == f"pausepoint.persistence.store.{room}", (name, module.__name__)


def test_no_module_of_the_store_is_over_500_lines() -> None:
    folder = Path(store_package.__file__).parent
    sizes = {p.name: len(p.read_text().splitlines()) for p in folder.glob("*.py")}
    assert len(sizes) >= 12
    assert {n: s for n, s in sizes.items() if s > 500} == {}
    # Only the dialect modules name a database.
    for name in sizes:
        if name in ("postgres.py", "sqlite.py", "dialect.py"):
            continue
        body = (folder / name).read_text()
        assert '"postgresql"' not in body and '"sqlite"' not in body, name


def test_the_dialect_is_chosen_from_the_url(store: Store) -> None:
    expected = PostgresDialect if store.engine.dialect.name == "postgresql" else SQLiteDialect
    assert type(store.dialect) is expected
    assert store.dialect.commits_in_one_statement is (expected is PostgresDialect)


# ----------------------------------------------- Postgres: one statement == transaction


def _rows(store: Store, run_id: str) -> dict[str, Any]:
    """What is stored for a run, without what differs between any two runs."""
    drop = {"id", "run_id", "created_at", "updated_at", "finished_at", "due_at", "published_at"}
    out: dict[str, Any] = {}
    with store.read() as conn:
        for table, key in ((runs, runs.c.id), (checkpoints, checkpoints.c.run_id)):
            rows = conn.execute(select(table).where(key == run_id)).mappings().all()
            out[table.name] = [{k: v for k, v in r.items() if k not in drop} for r in rows]
        for table in (messages, events):
            rows = conn.execute(
                select(table).where(table.c.run_id == run_id).order_by(*table.primary_key)
            ).mappings()
            out[table.name] = [
                {k: v for k, v in r.items() if k not in drop | {"hash", "event_hash"}} for r in rows
            ]
        out["json_types"] = (
            conn.execute(
                text(
                    "SELECT jsonb_typeof(input) AS input, result IS NULL AS no_result "
                    "FROM runs WHERE id = :id"
                ),
                {"id": run_id},
            )
            .one()
            ._asdict()
            if store.engine.dialect.name == "postgresql"
            else None
        )
    out["runs"][0].pop("event_hash", None)
    return out


def _two_steps(store: Store, run_id: str) -> None:
    claim = store.claim(run_id, store.get_run(run_id).version, "w")
    assert claim is not None and claim.run.status == RUNNING
    store.commit_step(
        claim,
        "w",
        Transition(
            status=QUEUED,
            state={"n": 1, "none": None, "nested": {"list": [1, None, "x"]}},
            step="second",
            messages=(NewMessage("assistant", "first ✓"),),
            events=(NewEvent("note", {"none": None, "text": "é"}),),
        ),
    )
    claim = store.claim(run_id, store.get_run(run_id).version, "w")
    assert claim is not None
    assert claim.checkpoint.state == {"n": 1, "none": None, "nested": {"list": [1, None, "x"]}}
    store.commit_step(claim, "w", Transition(status=COMPLETED, state={"n": 2}, result=None))


def test_postgres_one_statement_paths_store_what_the_transactions_store(pg_url: str) -> None:
    fast = Store.from_url(pg_url)
    slow = Store.from_url(pg_url, migrate=False)
    # The same database, the portable paths: claims and commits in transactions.
    slow.dialect.claims_in_one_statement = False
    slow.dialect.commits_in_one_statement = False
    try:
        fast.save_agent("a")
        stored = {}
        for name, store in (("fast", fast), ("slow", slow)):
            run, _ = store.create_run(
                agent_name="a", workflow="w", first_step="first", actor="t", input={"k": None}
            )
            _two_steps(store, run.id)
            stored[name] = _rows(store, run.id)
        assert stored["fast"] == stored["slow"]
        assert stored["fast"]["runs"][0]["status"] == COMPLETED
        assert stored["fast"]["json_types"] == {"input": "object", "no_result": True}
    finally:
        fast.close()
        slow.close()


def test_postgres_one_statement_writes_json_null_where_sqlalchemy_does(pg_url: str) -> None:
    """``runs.input`` is NOT NULL JSON (not none-as-null): None is the JSON ``null``.

    Converting by hand sent SQL NULL, which this column refuses; the transaction path
    (SQLAlchemy's own ``update``) writes JSON ``null``. Both must agree.
    """
    store = Store.from_url(pg_url)
    try:
        store.save_agent("a")
        kinds = {}
        for path in ("one statement", "transaction"):
            run, _ = store.create_run(agent_name="a", workflow="w", first_step="s", actor="t")
            now = store.clock()
            if path == "one statement":
                store._apply(None, run, now=now, actor="t", changes={"input": None})
            else:
                with store.write() as conn:
                    store._apply(conn, run, now=now, actor="t", changes={"input": None})
            with store.read() as conn:
                kinds[path] = conn.execute(
                    text("SELECT input IS NULL, jsonb_typeof(input) FROM runs WHERE id = :id"),
                    {"id": run.id},
                ).one()
        assert kinds["one statement"] == kinds["transaction"] == (False, "null")
    finally:
        store.close()


@pytest.mark.parametrize("value", [None, {"a": [1, None]}, "text"])
def test_postgres_binds_values_as_the_column_would(pg_url: str, value: Any) -> None:
    store = Store.from_url(pg_url)
    try:
        dialect = store.dialect
        assert isinstance(dialect, PostgresDialect)
        stmt_params = runs.c.result.type.dialect_impl(store.engine.dialect).bind_processor(
            store.engine.dialect
        )
        assert stmt_params is not None
        assert repr(dialect.bind(runs.c.result, value)) == repr(stmt_params(value))
        # None-as-null columns keep SQL NULL for None; the others get JSON null.
        assert dialect.bind(runs.c.result, None) is None
        assert dialect.bind(runs.c.input, None) is not None
    finally:
        store.close()
