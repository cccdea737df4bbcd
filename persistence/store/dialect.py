"""The seam between the store's portable logic and what one database does differently.

The rooms of the store are written once, against SQLAlchemy Core. What differs goes
through a :class:`Dialect`, chosen from the engine's URL by :func:`dialect_for`:

- how reads are wrapped (a transaction on SQLite, autocommit on Postgres), and a read
  of one snapshot (verification: a REPEATABLE READ transaction on Postgres);
- whether a step's claim and its commit can each be ONE statement (Postgres:
  data-modifying CTEs; see :mod:`persistence.store.postgres`), and those statements;
- bounding a statement's time (Postgres' ``SET LOCAL statement_timeout``);
- full-text search of an agent's memories (FTS5 with BM25 on SQLite, a tsvector with
  GIN and ``ts_rank_cd`` on Postgres), and what an erasure must do to its index.

How connections are made (SQLite's pragmas and ``BEGIN IMMEDIATE`` for writers,
Postgres' pool) belongs to the engine, in :mod:`persistence.engine`, because the
migrations and retention share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine

from pausepoint.persistence.records import Claim, NewMessage, RunRecord


class Dialect:
    """What every database does the same way; subclasses override what differs."""

    name = "portable"
    # Postgres only: the claim and the common commit are each one statement.
    claims_in_one_statement = False
    commits_in_one_statement = False

    def reading(self, engine: Engine) -> AbstractContextManager[Connection]:
        """A connection for reads."""
        raise NotImplementedError

    def snapshot(self, engine: Engine) -> AbstractContextManager[Connection]:
        """A connection whose reads all see one snapshot (a read-only transaction)."""
        return self.reading(engine)

    def bound_statement_time(self, conn: Connection, milliseconds: int) -> None:
        """Make the rest of this transaction's statements give up after ``milliseconds``."""

    def claim(
        self,
        engine: Engine,
        *,
        run_id: str,
        version: int,
        owner: str,
        now: datetime,
        lease_until: datetime,
    ) -> Claim | None:
        """The claim as one statement (only where ``claims_in_one_statement``)."""
        raise NotImplementedError(f"{self.name} claims in a transaction")

    def commit_in_one_statement(
        self,
        engine: Engine,
        run: RunRecord,
        values: dict[str, Any],
        *,
        expect_status: Sequence[str] | None,
        expect_owner: str | None,
        new_messages: Sequence[tuple[int, NewMessage]],
        seq: int,
        checkpoint: dict[str, Any] | None,
        event_rows: Sequence[dict[str, Any]],
        ledger_rows: Sequence[dict[str, Any]],
        now: datetime,
    ) -> bool:
        """Apply a transition as one statement; False when its CAS matched no row."""
        raise NotImplementedError(f"{self.name} commits in a transaction")

    def search_memories(
        self,
        conn: Connection,
        agent: str,
        terms: Sequence[str],
        where: ColumnElement[bool],
        limit: int,
        *,
        every: bool = False,
        matches: int | None = None,
    ) -> list[tuple[int, float]]:
        """``(memory id, relevance)`` of the ``limit`` memories matching any of ``terms``
        (all of them, with ``every``) and ``where`` best, best first; relevance is larger
        for a better match. ``matches``: the terms are known to match at most that many
        memories of every agent (so all of them may be ranked)."""
        raise NotImplementedError

    def term_counts(self, conn: Connection, terms: Sequence[str], cap: int) -> dict[str, int]:
        """About how many memories (of every agent) hold each of ``terms``, up to ``cap``:
        0 for a word that finds nothing."""
        raise NotImplementedError

    def after_erase(self, conn: Connection) -> None:
        """After memories were deleted on request: leave nothing of them in the index."""


def dialect_for(engine: Engine) -> Dialect:
    """The dialect of ``engine``'s database."""
    if engine.dialect.name == "postgresql":
        from pausepoint.persistence.store.postgres import PostgresDialect

        return PostgresDialect(engine)
    from pausepoint.persistence.store.sqlite import SQLiteDialect

    return SQLiteDialect()
