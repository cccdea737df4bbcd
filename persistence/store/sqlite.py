"""SQLite: reads in a plain ``BEGIN`` transaction, so they never take the write lock.

Writers begin with ``BEGIN IMMEDIATE`` (the engine's begin hook, see
:mod:`persistence.engine`): two processes can never both read a version and then
deadlock upgrading to a write lock. A read asks for the plain ``BEGIN`` instead, so
readers run beside the one writer (WAL) and see one snapshot across their queries.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine

from pausepoint.persistence.engine import READ_ONLY
from pausepoint.persistence.store.dialect import Dialect


class SQLiteDialect(Dialect):
    name = "sqlite"

    @contextmanager
    def reading(self, engine: Engine) -> Iterator[Connection]:
        with engine.connect() as conn:
            conn = conn.execution_options(**{READ_ONLY: True})
            with conn.begin():
                yield conn
