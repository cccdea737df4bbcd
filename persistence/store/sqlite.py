"""SQLite: reads in a plain ``BEGIN`` transaction, so they never take the write lock.

Writers begin with ``BEGIN IMMEDIATE`` (the engine's begin hook, see
:mod:`persistence.engine`): two processes can never both read a version and then
deadlock upgrading to a write lock. A read asks for the plain ``BEGIN`` instead, so
readers run beside the one writer (WAL) and see one snapshot across their queries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    column,
    literal_column,
    select,
    table,
    text,
)

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

    def _match(self, agent: str | None, terms: Sequence[str], every: bool) -> str:
        # Each term is a quoted FTS5 string (a double quote in it doubled), so nothing in
        # a query is FTS5 syntax; the agent's name narrows the index, the join decides.
        words = (" AND " if every else " OR ").join('"' + t.replace('"', '""') + '"' for t in terms)
        match = f"content : ({words})"
        name = " ".join((agent or "").replace('"', " ").split())
        if any(ch.isalnum() for ch in name):
            match = f'agent_name : "{name}" AND {match}'
        return match

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
        # The index ranks first (BM25 in FTS5's own code, which is fast), then the best
        # are joined with the table to keep this agent's current memories. When the terms
        # match few memories in all (`matches`), every one is ranked and the join picks
        # the agent's; else the agent's name narrows the match (an AND over its doclist)
        # and a margin of candidates covers the superseded ones the join drops.
        ranked = (
            select(_fts.c.rowid, literal_column("bm25(memories_fts, 1.0, 0.0)").label("rank"))
            .where(
                text("memories_fts MATCH :match").bindparams(
                    match=self._match(None if matches else agent, terms, every)
                )
            )
            .order_by(literal_column("rank"))
            .limit(max(limit * 4, 2 * (matches or 0)))
            .subquery()
        )
        query = (
            select(memories.c.id, ranked.c.rank)
            .select_from(ranked.join(memories, memories.c.id == ranked.c.rowid))
            .where(where)
            .order_by(ranked.c.rank)
            .limit(limit)
        )
        # BM25 in FTS5 is negative, lower for a better match.
        return [(int(i), -float(r)) for i, r in conn.execute(query)]

    def term_counts(self, conn: Connection, terms: Sequence[str], cap: int) -> dict[str, int]:
        # Each word's matches in the index, stopping at `cap`: one statement for all.
        parts = ", ".join(
            f"(SELECT count(*) FROM (SELECT 1 FROM memories_fts WHERE memories_fts MATCH "
            f":t{i} LIMIT :cap))"
            for i in range(len(terms))
        )
        values: dict[str, Any] = {"cap": cap}
        for i, t in enumerate(terms):
            values[f"t{i}"] = 'content : "' + t.replace('"', '""') + '"'
        row = conn.execute(text(f"SELECT {parts}"), values).one()
        return {t: int(n) for t, n in zip(terms, row, strict=True)}

    def after_erase(self, conn: Connection) -> None:
        # Merge the index's segments, so the erased rows' terms are not left in old ones.
        conn.execute(text("INSERT INTO memories_fts(memories_fts) VALUES ('optimize')"))
