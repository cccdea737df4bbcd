"""SQLite: reads in a plain ``BEGIN`` transaction, so they never take the write lock.

Writers begin with ``BEGIN IMMEDIATE`` (the engine's begin hook, see
:mod:`persistence.engine`): two processes can never both read a version and then
deadlock upgrading to a write lock. A read asks for the plain ``BEGIN`` instead, so
readers run beside the one writer (WAL) and see one snapshot across their queries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import ColumnElement, Connection, Engine, column, select, table, text

from pausepoint.persistence.engine import READ_ONLY
from pausepoint.persistence.store.dialect import Dialect
from pausepoint.persistence.tables import memories

_fts = table("memories_fts", column("rowid"))


class SQLiteDialect(Dialect):
    name = "sqlite"

    @contextmanager
    def reading(self, engine: Engine) -> Iterator[Connection]:
        with engine.connect() as conn:
            conn = conn.execution_options(**{READ_ONLY: True})
            with conn.begin():
                yield conn

    def search_memories(
        self,
        conn: Connection,
        agent: str,
        terms: Sequence[str],
        where: ColumnElement[bool],
        limit: int,
    ) -> list[tuple[int, float]]:
        # Each term is a quoted FTS5 string (a double quote in it doubled), so nothing in
        # a query is FTS5 syntax; the agent's name narrows the index, the join decides.
        words = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
        match = f"content : ({words})"
        name = " ".join(agent.replace('"', " ").split())
        if any(ch.isalnum() for ch in name):
            match = f'agent_name : "{name}" AND {match}'
        rank = text("bm25(memories_fts, 1.0, 0.0)")
        query = (
            select(memories.c.id, rank)
            .select_from(_fts.join(memories, memories.c.id == _fts.c.rowid))
            .where(text("memories_fts MATCH :match").bindparams(match=match), where)
            .order_by(rank)
            .limit(limit)
        )
        # BM25 in FTS5 is negative, lower for a better match.
        return [(int(i), -float(r)) for i, r in conn.execute(query)]

    def after_erase(self, conn: Connection) -> None:
        # Merge the index's segments, so the erased rows' terms are not left in old ones.
        conn.execute(text("INSERT INTO memories_fts(memories_fts) VALUES ('optimize')"))
