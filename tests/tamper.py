"""Playing the attacker who can write the database, for the audit tests.

Such a writer who also owns the schema can drop the append-only triggers first, so
the tests do too (:func:`unguarded`) before editing rows behind the store's back.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from pausepoint.persistence.store import Store

SQLITE_GUARDS = ("trail_no_update", "trail_no_delete", "ledger_no_delete", "ledger_seal_only")
POSTGRES_GUARDS = (
    ("trail_append_only", "events"),
    ("trail_no_truncate", "events"),
    ("ledger_append_only", "ledger"),
    ("ledger_no_truncate", "ledger"),
)


def drop_guards(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        for name, table in POSTGRES_GUARDS:
            conn.execute(text(f"DROP TRIGGER IF EXISTS {name} ON {table}"))
    else:
        for name in SQLITE_GUARDS:
            conn.execute(text(f"DROP TRIGGER IF EXISTS {name}"))


def tamper(store: Store, sql: str, **params: Any) -> int:
    """Run raw SQL as a writer who dropped the guards; the rows it changed."""
    with store.write() as conn:
        drop_guards(conn)
        return int(conn.execute(text(sql), params).rowcount)
