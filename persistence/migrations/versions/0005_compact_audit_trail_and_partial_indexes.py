"""compact the audit trail and the indexes a parked run pays for

* events: the hash is stored as 32 raw bytes, and ``prev_hash`` is gone (it is the
  previous row's hash, so verification reads it from there); so is the run row's
  chain head, runs.event_hash;
* SQLite: events becomes a WITHOUT ROWID table, so its (run_id, n) key is stored
  once, in the table's own B-tree, not again in an index (messages and checkpoints
  keep their rowid: their rows can be large, and such a B-tree packs them badly);
* the runs and waits indexes on columns that are NULL for most rows (due_at,
  lease_expires_at, finished_at, purge_state, parent_run_id, deadline, event_name,
  resource) become partial: ``WHERE <column> IS NOT NULL``;
* ix_runs_status_updated_at (unused, and moved by every update) is replaced by
  ix_runs_status_created_at (GET /runs?status=, newest first);
  ix_waits_run_id_status goes: uq_waits_run_id_seq_kind starts with run_id;
* Postgres: runs gets fillfactor 80, so a step that changes no indexed column
  (an inline step) is a HOT update in the same page.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BATCH = 5_000

# (table, index, columns, the column whose rows it covers)
PARTIAL = [
    ("runs", "ix_runs_status_due_at", ["status", "due_at"], "due_at"),
    ("runs", "ix_runs_status_lease_expires_at", ["status", "lease_expires_at"], "lease_expires_at"),
    ("runs", "ix_runs_finished_at", ["finished_at"], "finished_at"),
    ("runs", "ix_runs_purge_state_finished_at", ["purge_state", "finished_at"], "purge_state"),
    ("runs", "ix_runs_parent_run_id", ["parent_run_id"], "parent_run_id"),
    ("waits", "ix_waits_status_deadline", ["status", "deadline"], "deadline"),
    (
        "waits",
        "ix_waits_event_name_match_key_status",
        ["event_name", "match_key", "status"],
        "event_name",
    ),
    ("waits", "ix_waits_resource_status_id", ["resource", "status", "id"], "resource"),
]


def _batches(result: Any) -> Iterator[list[Any]]:
    while rows := result.fetchmany(BATCH):
        yield rows


def _events_columns(hash_type: sa.types.TypeEngine[Any]) -> list[sa.Column[Any]]:
    return [
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("hash", hash_type, nullable=False),
    ]


def _keys(table: str, n: str) -> list[Any]:
    return [
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=f"fk_{table}_run_id_runs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", n, name=f"pk_{table}"),
    ]


def _sqlite_rebuild(table: str, columns: list[sa.Column[Any]], n: str, rowid: bool) -> str:
    """Create ``<table>_new`` with ``columns``; the caller copies the rows in."""
    new = f"{table}_new"
    op.create_table(new, *columns, *_keys(table, n), sqlite_with_rowid=rowid)
    return new


def _sqlite_swap(table: str, new: str) -> None:
    op.drop_table(table)
    op.rename_table(new, table)


def _sqlite_convert_head(kind: sa.types.TypeEngine[Any], empty: str, convert: Any) -> None:
    """runs.event_hash in another type, without rebuilding runs: dropping a table that
    others reference with ON DELETE CASCADE would delete their rows (foreign keys are
    on, and cannot be turned off inside the migration's transaction)."""
    bind = op.get_bind()
    op.add_column(
        "runs", sa.Column("event_head", kind, nullable=False, server_default=sa.text(empty))
    )
    rows = bind.execute(sa.text("SELECT id, event_hash FROM runs"))
    update = sa.text("UPDATE runs SET event_head = :head WHERE id = :id")
    for batch in _batches(rows):
        bind.execute(update, [{"id": r.id, "head": convert(r.event_hash)} for r in batch])
    # SQLite >= 3.35 drops and renames a column in place.
    op.execute("ALTER TABLE runs DROP COLUMN event_hash")
    op.execute("ALTER TABLE runs RENAME COLUMN event_head TO event_hash")


def _set_partial(partial: bool) -> None:
    bind = op.get_bind()
    for table, name, columns, present in PARTIAL:
        where = sa.text(f"{present} IS NOT NULL") if partial else None
        op.drop_index(name, table_name=table)
        kw: dict[str, Any] = {}
        if where is not None:
            kw = {f"{bind.dialect.name}_where": where}
        op.create_index(name, table, columns, unique=False, **kw)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        new = _sqlite_rebuild("events", _events_columns(sa.LargeBinary()), "n", rowid=False)
        rows = bind.execute(
            sa.text("SELECT run_id, n, kind, actor, data, created_at, hash FROM events")
        )
        insert = sa.text(
            f"INSERT INTO {new} (run_id, n, kind, actor, data, created_at, hash) "
            "VALUES (:run_id, :n, :kind, :actor, :data, :created_at, :hash)"
        )
        for batch in _batches(rows):
            bind.execute(
                insert,
                [{**r._asdict(), "hash": bytes.fromhex(r.hash)} for r in batch],
            )
        _sqlite_swap("events", new)
        _sqlite_convert_head(sa.LargeBinary(), "x''", bytes.fromhex)
    else:
        op.drop_column("events", "prev_hash")
        op.execute("ALTER TABLE events ALTER COLUMN hash TYPE bytea USING decode(hash, 'hex')")
        op.execute(
            "ALTER TABLE runs ALTER COLUMN event_hash TYPE bytea USING decode(event_hash, 'hex')"
        )
        op.execute("ALTER TABLE runs SET (fillfactor = 80)")
    _set_partial(True)
    op.drop_index("ix_runs_status_updated_at", table_name="runs")
    op.create_index("ix_runs_status_created_at", "runs", ["status", "created_at"], unique=False)
    op.drop_index("ix_waits_run_id_status", table_name="waits")


def downgrade() -> None:
    bind = op.get_bind()
    op.create_index("ix_waits_run_id_status", "waits", ["run_id", "status"], unique=False)
    op.drop_index("ix_runs_status_created_at", table_name="runs")
    op.create_index("ix_runs_status_updated_at", "runs", ["status", "updated_at"], unique=False)
    _set_partial(False)
    hex_columns = [
        *_events_columns(sa.String(length=64))[:-1],
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
    ]
    if bind.dialect.name == "sqlite":
        new = _sqlite_rebuild("events", hex_columns, "n", rowid=True)
        rows = bind.execute(
            sa.text(
                "SELECT run_id, n, kind, actor, data, created_at, hash FROM events "
                "ORDER BY run_id, n"
            )
        )
        insert = sa.text(
            f"INSERT INTO {new} (run_id, n, kind, actor, data, created_at, prev_hash, hash) "
            "VALUES (:run_id, :n, :kind, :actor, :data, :created_at, :prev_hash, :hash)"
        )
        prev: tuple[str, str] = ("", "")
        for batch in _batches(rows):
            out = []
            for r in batch:
                digest = bytes(r.hash).hex()
                before = prev[1] if prev[0] == r.run_id else ""
                out.append({**r._asdict(), "prev_hash": before, "hash": digest})
                prev = (r.run_id, digest)
            bind.execute(insert, out)
        _sqlite_swap("events", new)
        _sqlite_convert_head(sa.String(length=64), "''", lambda b: bytes(b).hex())
    else:
        op.execute("ALTER TABLE runs RESET (fillfactor)")
        op.execute(
            "ALTER TABLE runs ALTER COLUMN event_hash TYPE varchar(64) "
            "USING encode(event_hash, 'hex')"
        )
        op.execute(
            "ALTER TABLE events ALTER COLUMN hash TYPE varchar(64) USING encode(hash, 'hex')"
        )
        op.add_column("events", sa.Column("prev_hash", sa.String(length=64), nullable=True))
        op.execute(
            "UPDATE events SET prev_hash = p.prev FROM (SELECT run_id, n, "
            "coalesce(lag(hash) OVER (PARTITION BY run_id ORDER BY n), '') AS prev "
            "FROM events) p WHERE events.run_id = p.run_id AND events.n = p.n"
        )
        op.alter_column("events", "prev_hash", nullable=False)
