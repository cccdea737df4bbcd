"""Alembic, driven from code: ``pausepoint db upgrade`` and schema-on-first-use.

Schema changes are Alembic revisions under ``persistence/migrations/versions``.
The upgrade runs inside one transaction that first takes a lock (SQLite's
``BEGIN IMMEDIATE``; a Postgres advisory lock), so several processes starting at
once on a new database migrate it exactly once.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

MIGRATIONS = Path(__file__).parent / "migrations"
# An arbitrary, fixed key for pg_advisory_xact_lock.
_PG_LOCK_KEY = 0x5061757365


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@cache  # the revisions ship with the package: read their folder once a process
def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no Alembic revisions found"
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Bring the schema to ``revision``; a no-op (one cheap query) when already there."""
    start = current_revision(engine)
    if revision == "head" and start == head_revision():
        return start
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
        fresh = MigrationContext.configure(conn).get_current_revision() is None
        command.upgrade(alembic_config(conn), revision)
    if fresh and engine.dialect.name == "sqlite":
        # The revisions rebuild tables (0005), which leaves a new file with free pages;
        # a new store starts compact. Nothing else can be using a store this new.
        raw = engine.raw_connection()
        try:
            raw.cursor().execute("VACUUM")
        finally:
            raw.close()
    return current_revision(engine)
