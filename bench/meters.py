"""What the checkpoint-cost benchmarks write and how they weigh a store.

Shared by :mod:`bench.checkpoint_cost` (Pausepoint) and :mod:`bench.checkpoint_langgraph`
(LangGraph), so both sides store the same conversation and are measured the same way.
"""

from __future__ import annotations

import itertools
import os
import random
import sqlite3
import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from bench.services import pg_dsn, pg_schema, schema_url

MESSAGE_CHARS = 200
TAIL = 5

# The messages are pseudo-text: words from a fixed vocabulary of 1,000 made-up words
# with a Zipf distribution (s=0.8) and a few numbers, each message its own sequence
# (seeded by its index). That compresses like English prose (checked against this
# repository's docs: zlib ~2.8x, Postgres's pglz ~1.9x). It matters because
# PostgresSaver's blobs are TOASTed, so compressed: one sentence repeated would shrink
# ~40x there, and random characters not at all. ``BENCH_MESSAGE_TEXT=random`` makes
# the messages random letters instead (incompressible: the worst case for LangGraph
# on Postgres).
MESSAGE_TEXT = os.environ.get("BENCH_MESSAGE_TEXT", "prose")
_SYLLABLES = (
    "ba be bi bo bu ca ce ci co da de di do du fa fe fi fo ga ge go ka ke ki ko la le li lo "
    "lu ma me mi mo mu na ne ni no nu pa pe pi po ra re ri ro ru sa se si so su ta te ti to "
    "tu va ve vi vo za ze an en in on er ar or al el il st str tr pr pl gr cr th sh ch"
).split()


def _vocabulary(n: int = 1_000) -> tuple[list[str], list[float]]:
    rng = random.Random(3)
    words: set[str] = set()
    while len(words) < n:
        syllables = rng.choice((1, 1, 2, 2, 2, 3, 3, 4))
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(syllables)))
    weights = list(itertools.accumulate(1 / (rank + 1) ** 0.8 for rank in range(n)))
    return sorted(words), weights


_WORDS, _CUM_WEIGHTS = _vocabulary()


def message(i: int) -> str:
    """The ``i``-th message of the conversation: ``MESSAGE_CHARS`` characters, always
    the same for the same ``i``."""
    rng = random.Random(i)
    text = f"Note {i}:"
    if MESSAGE_TEXT == "random":
        return (text + " " + "".join(rng.choices(string.ascii_letters, k=MESSAGE_CHARS)))[
            :MESSAGE_CHARS
        ]
    while len(text) < MESSAGE_CHARS:
        if rng.random() < 0.95:
            text += " " + rng.choices(_WORDS, cum_weights=_CUM_WEIGHTS)[0]
        else:
            text += f" {rng.randrange(10_000)}"
    return text[:MESSAGE_CHARS]


# ----------------------------------------------------------------- the stores


class Meter(Protocol):
    """How big a store is."""

    def size(self) -> int:
        """Bytes on disk."""
        ...

    def tables(self) -> dict[str, int]:
        """Bytes per table (SQLite: per table and index; Postgres: per table with its
        indexes and TOAST)."""
        ...


class SqliteMeter:
    def __init__(self, path: Path) -> None:
        self.path = path

    def size(self) -> int:
        """The file plus its WAL once the WAL is copied back (``wal_checkpoint(TRUNCATE)``)."""
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.close()
        wal = self.path.with_name(self.path.name + "-wal")
        return self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)

    def tables(self) -> dict[str, int]:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            rows = conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall()
        finally:
            conn.close()
        return {str(name): int(size) for name, size in sorted(rows, key=lambda r: -r[1])}


class PgMeter:
    """Every table of one schema, with ``pg_total_relation_size``: heap, indexes, TOAST,
    free-space and visibility maps."""

    _SQL = """
        SELECT c.relname, pg_total_relation_size(c.oid)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relkind = 'r'
        ORDER BY 2 DESC
    """

    def __init__(self, conn: Any, schema: str) -> None:
        self.conn, self.schema = conn, schema

    def tables(self) -> dict[str, int]:
        return {str(name): int(size) for name, size in self.conn.execute(self._SQL, (self.schema,))}

    def size(self) -> int:
        return sum(self.tables().values())


@contextmanager
def pg_metered_schema(prefix: str) -> Iterator[tuple[str, PgMeter]]:
    """A new schema, dropped afterwards: a ``postgresql://`` URL whose search_path is it,
    and its meter."""
    import psycopg

    with pg_schema(prefix) as schema, psycopg.connect(pg_dsn(), autocommit=True) as admin:
        yield schema_url(schema, pg_dsn()), PgMeter(admin, schema)
