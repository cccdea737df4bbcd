"""Alembic's revisions and the tables in persistence.tables describe the same schema."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from pausepoint.persistence.engine import make_engine
from pausepoint.persistence.migrate import current_revision, head_revision, upgrade
from pausepoint.persistence.store import Store
from pausepoint.persistence.tables import described, metadata


def test_migrations_match_the_models(store_url: str) -> None:
    engine = make_engine(store_url)
    try:
        assert upgrade(engine) == head_revision()
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(
                    conn, opts={"compare_type": True, "include_name": described}
                ),
                metadata,
            )
        assert diff == [], f"models and migrations disagree: {diff}"
        tables = set(inspect(engine).get_table_names())
        assert {t.name for t in metadata.sorted_tables} <= tables
    finally:
        engine.dispose()


def test_upgrade_is_idempotent(store_url: str) -> None:
    engine = make_engine(store_url)
    try:
        upgrade(engine)
        upgrade(engine)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_0005_keeps_the_audit_trail_across_the_hash_format_change(store_url: str) -> None:
    """Down to 0004 (hex hashes with prev_hash) and up again: same trail, still verifies."""
    from alembic import command
    from sqlalchemy import text

    from pausepoint.persistence.migrate import alembic_config
    from tests.chain import Driver

    store = Store.from_url(store_url)
    try:
        store.save_agent("agent", persona="tester")
        d = Driver(store)
        run_id = d.start()
        d.approve(run_id)
        trail = [(e.n, e.prev_hash, e.hash) for e in store.events(run_id)]
        assert len(trail) > 5 and store.verify(run_id) is None
        with store.engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0004")
        with store.engine.connect() as conn:
            old = conn.execute(
                text("SELECT n, prev_hash, hash FROM events WHERE run_id = :r ORDER BY n"),
                {"r": run_id},
            ).all()
        assert [tuple(r) for r in old] == trail
        with store.engine.connect() as conn:
            head = conn.execute(
                text("SELECT event_hash FROM runs WHERE id = :r"), {"r": run_id}
            ).scalar_one()
        assert head == trail[-1][2]  # hex again, as 0004 kept it
        store.engine.dispose()
        assert upgrade(store.engine) == head_revision()
        assert [(e.n, e.prev_hash, e.hash) for e in store.events(run_id)] == trail
        assert store.verify(run_id) is None
        d.approve(d.start())  # and the store still works
    finally:
        store.close()
