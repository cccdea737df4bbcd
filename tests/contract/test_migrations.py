"""Alembic's revisions and the tables in persistence.tables describe the same schema."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from persistence.engine import make_engine
from persistence.migrate import current_revision, head_revision, upgrade
from persistence.tables import metadata


def test_migrations_match_the_models(store_url: str) -> None:
    engine = make_engine(store_url)
    try:
        assert upgrade(engine) == head_revision()
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), metadata
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
