"""Engines from one URL: SQLite (the embedded default) or Postgres (psycopg 3).

SQLite is hardened on every new connection: WAL so readers never block the one
writer, a busy timeout so concurrent worker processes queue instead of failing,
foreign keys on, and writers start with ``BEGIN IMMEDIATE`` so two processes can
never both read a version and then deadlock upgrading to a write lock.
"""

from __future__ import annotations

import json
import os
import time
import weakref
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError
from sqlalchemy.pool import QueuePool

from pausepoint.persistence.errors import ConfigurationError
from pausepoint.persistence.jsonvalues import loads as json_loads
from pausepoint.persistence.urls import mask_url

SQLITE_BUSY_TIMEOUT_MS = 30_000
# A pooled Postgres connection idle longer than this is pinged before it is used.
IDLE_PING_SECONDS = 5.0
# Connection execution option: begin the transaction as a reader (plain BEGIN).
READ_ONLY = "pausepoint_read_only"


def normalize_url(url: str) -> str:
    """Map the URL forms people type to the drivers we ship with.

    ``postgres://`` and ``postgresql://`` mean psycopg 3 here, not psycopg2.
    """
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Build the engine for ``url`` with the settings this project relies on."""
    url = normalize_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        shown = mask_url(url)
        raise ConfigurationError(
            f"malformed store URL {shown!r}: {str(exc).replace(url, shown)}"
        ) from None
    backend = parsed.get_backend_name()
    # An error never writes a statement's parameters (a run's data) into a log.
    kwargs.setdefault("hide_parameters", True)
    if backend == "sqlite":
        return _sqlite_engine(url, **kwargs)
    if backend == "postgresql":
        try:
            import psycopg  # noqa: F401
        except ImportError:  # pragma: no cover - depends on the install
            raise ConfigurationError(
                "the Postgres store needs psycopg 3: pip install 'pausepoint[postgres]'"
            ) from None
        kwargs.setdefault("pool_size", 5)
        kwargs.setdefault("max_overflow", 5)
        # Last in, first out: a process in steady use keeps reusing its warm connection
        # (no idle ping, psycopg's prepared statements), and the spare ones go idle.
        kwargs.setdefault("pool_use_lifo", True)
        # A stored value json cannot decode is one row's problem, not every reader's.
        kwargs.setdefault("json_deserializer", json_loads)
        engine = create_engine(url, **kwargs)
        if not kwargs.get("pool_pre_ping"):
            _ping_when_idle(engine)
        return engine
    raise ConfigurationError(
        f"unsupported store URL {mask_url(url)!r}: "
        "use sqlite:///path.db or postgresql://user@host/db"
    )


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection before use only if it sat idle for IDLE_PING_SECONDS.

    ``pool_pre_ping`` pings on every checkout: a round trip per transaction, three per
    step (bench/README.md). A connection in steady use was alive a moment ago; one that
    sat idle may have been cut (a server restart, a proxy's idle timeout), so it is
    pinged, and a dead one is replaced before anyone uses it (SQLAlchemy's "custom
    pessimistic ping" recipe). A connection that dies mid-use still fails its statement,
    and the pool then drops all of its connections of that age.
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < IDLE_PING_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            raise DisconnectionError(f"idle connection is gone: {exc}") from exc
        if not alive:
            raise DisconnectionError("idle connection is gone")


# SQLite engines of this process. After a fork (Celery's prefork pool) the child must not
# use the parent's open handles: it forgets them without closing them (the parent still
# uses them), as SQLAlchemy's pooling guide says.
_sqlite_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def _forget_pools_after_fork() -> None:
    for engine in list(_sqlite_engines):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_pools_after_fork)


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _private_file(path: str) -> None:
    """Create the store's file readable by its owner only (0600; SQLite gives its -wal
    and -shm files the same mode): whoever reads the store reads every run. A file that
    exists keeps the mode its owner chose."""
    if path.startswith("file:") or os.path.exists(path):
        return
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    except OSError:
        return  # a folder that does not exist: SQLite says so, better than we would


def _sqlite_engine(url: str, **kwargs: Any) -> Engine:
    parsed = make_url(url)
    if parsed.database in (None, "", ":memory:"):
        raise ConfigurationError(
            "an in-memory SQLite store cannot be shared between processes; give a file path"
        )
    kwargs.setdefault("connect_args", {}).setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
    _private_file(parsed.database)
    # Pooled: when the last connection to a WAL database closes, SQLite checkpoints the
    # WAL into the file and deletes it, so a connection per transaction (NullPool) paid
    # that on every commit: 5 ms instead of 1.6 ms for a step's three transactions
    # (bench/README.md). A forked child drops the pool it inherited (see below).
    # JSON columns are text on SQLite: without json.dumps's spaces after ',' and ':', and
    # with UTF-8 as is instead of \uXXXX escapes. Postgres keeps JSONB (binary) anyway.
    kwargs.setdefault("json_serializer", _compact_json)
    kwargs.setdefault("json_deserializer", json_loads)
    kwargs.setdefault("poolclass", QueuePool)
    kwargs.setdefault("pool_size", 5)
    kwargs.setdefault("max_overflow", 10)
    engine = create_engine(url, **kwargs)
    _sqlite_engines.add(engine)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take BEGIN away from the driver so the "begin" hook below decides its kind.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"
