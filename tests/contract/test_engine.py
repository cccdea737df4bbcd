"""Pooled Postgres connections: no ping while in steady use, a ping after idling."""

from __future__ import annotations

import psycopg
from sqlalchemy import event, text

from pausepoint.persistence import engine as engine_module
from pausepoint.persistence.engine import make_engine
from tests import services


def _backend_pid(engine: object) -> int:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_connection_cut_while_idle_is_replaced_before_use(monkeypatch: object) -> None:
    with services.pg_schema_url() as url:
        engine = make_engine(url, pool_size=1, max_overflow=0)
        statements: list[str] = []
        event.listen(engine, "before_cursor_execute", lambda *a: statements.append(str(a[2])))
        try:
            first = _backend_pid(engine)
            # In steady use: the same connection, and nothing but our own statement.
            assert _backend_pid(engine) == first
            assert statements == ["SELECT pg_backend_pid()"] * 2
            # The server cuts the pooled connection while it sits idle.
            dsn = url.split("?")[0].replace("postgresql+psycopg://", "postgresql://")
            with psycopg.connect(dsn, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (first,))
            monkeypatch.setattr(engine_module, "IDLE_PING_SECONDS", 0.0)  # type: ignore[attr-defined]
            second = _backend_pid(engine)  # would raise if the dead one were handed out
            assert second != first
        finally:
            engine.dispose()
