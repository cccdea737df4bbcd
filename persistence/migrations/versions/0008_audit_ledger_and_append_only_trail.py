"""the store-wide ledger, and an append-only trail the database enforces

- ``ledger`` (one MAC'd entry per run created, ended, purged, archived; sealed into one
  chain by the sweeper) and ``ledger_head`` (the sealed chain's length and last link);
- every run already in the store gets a ``created`` entry (``{"adopted": true}``) and,
  when finished, an ``ended`` one, under the audit key of the process that migrates
  (none: plain SHA-256);
- triggers that refuse UPDATE and DELETE on ``events`` (DELETE is allowed only for a run
  whose trail the ledger records as archived: retention's one path), and any change
  to ``ledger`` but its seal. On Postgres also TRUNCATE. They stop mistakes and anyone
  who may write rows but not change the schema (see the README's role layout); whoever
  owns the schema can drop them, which the keyed chain and the anchors are for.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REFUSED = "pausepoint: the audit trail is append-only"

SQLITE_TRIGGERS = (
    f"""CREATE TRIGGER trail_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, '{REFUSED} (UPDATE on events refused)'); END""",
    f"""CREATE TRIGGER trail_no_delete BEFORE DELETE ON events
    WHEN NOT EXISTS (SELECT 1 FROM ledger
                     WHERE ledger.run_id = OLD.run_id AND ledger.kind = 'archived')
    BEGIN SELECT RAISE(ABORT, '{REFUSED} (DELETE on events refused: not archived)'); END""",
    f"""CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
    BEGIN SELECT RAISE(ABORT, '{REFUSED} (DELETE on ledger refused)'); END""",
    f"""CREATE TRIGGER ledger_seal_only BEFORE UPDATE ON ledger
    WHEN OLD.n IS NOT NULL OR NEW.n IS NULL OR NEW.id IS NOT OLD.id
      OR NEW.kind IS NOT OLD.kind OR NEW.run_id IS NOT OLD.run_id
      OR NEW.data IS NOT OLD.data OR NEW.created_at IS NOT OLD.created_at
      OR NEW.mac IS NOT OLD.mac
    BEGIN SELECT RAISE(ABORT, '{REFUSED} (UPDATE on ledger refused: only its seal)'); END""",
)

POSTGRES_TRIGGERS = (
    f"""CREATE FUNCTION pausepoint_trail_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP = 'DELETE' AND EXISTS (
          SELECT 1 FROM ledger l WHERE l.run_id = OLD.run_id AND l.kind = 'archived') THEN
        RETURN OLD;
      END IF;
      RAISE EXCEPTION '{REFUSED} (% on events refused)', TG_OP USING ERRCODE = '42501';
    END $$""",
    """CREATE TRIGGER trail_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION pausepoint_trail_guard()""",
    """CREATE TRIGGER trail_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION pausepoint_trail_guard()""",
    f"""CREATE FUNCTION pausepoint_ledger_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP = 'UPDATE' AND OLD.n IS NULL AND NEW.n IS NOT NULL
         AND (NEW.id, NEW.kind, NEW.run_id, NEW.data, NEW.created_at, NEW.mac)
             IS NOT DISTINCT FROM (OLD.id, OLD.kind, OLD.run_id, OLD.data, OLD.created_at,
                                   OLD.mac) THEN
        RETURN NEW;
      END IF;
      RAISE EXCEPTION '{REFUSED} (% on ledger refused)', TG_OP USING ERRCODE = '42501';
    END $$""",
    """CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON ledger
    FOR EACH ROW EXECUTE FUNCTION pausepoint_ledger_guard()""",
    """CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION pausepoint_ledger_guard()""",
)


def upgrade() -> None:
    bind = op.get_bind()
    json_type = sa.JSON().with_variant(JSONB(), "postgresql")
    big = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "ledger",
        sa.Column("id", big, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("data", json_type, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mac", sa.LargeBinary(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=True),
        sa.Column("link", sa.LargeBinary(), nullable=True),
    )
    unsealed = sa.text("n IS NULL")
    op.create_index(
        "ix_ledger_unsealed",
        "ledger",
        ["id"],
        sqlite_where=unsealed,
        postgresql_where=unsealed,
    )
    op.create_index("ix_ledger_run_id", "ledger", ["run_id"])
    op.create_table(
        "ledger_head",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.Column("sealed_at", sa.DateTime(timezone=True), nullable=True),
    )
    bind.execute(sa.text("INSERT INTO ledger_head (id, n, hash) VALUES (1, 0, :h)"), {"h": b""})
    _adopt_runs(bind)
    for statement in POSTGRES_TRIGGERS if bind.dialect.name == "postgresql" else SQLITE_TRIGGERS:
        op.execute(statement)


def _adopt_runs(bind: sa.Connection) -> None:
    """Ledger entries for the runs already here: each is adopted as it stands now."""
    from pausepoint.persistence.audit_keys import AuditKeys
    from pausepoint.persistence.ledger import CREATED, ENDED, entry_row
    from pausepoint.persistence.tables import ledger

    keys = AuditKeys.from_env()
    now = datetime.now(timezone.utc)
    rows = bind.execute(
        sa.text("SELECT id, status, event_count, event_hash FROM runs ORDER BY created_at, id")
    )
    batch: list[dict[str, object]] = []
    for run_id, status, count, head in rows:
        batch.append(entry_row(keys, CREATED, run_id, {"adopted": True}, now))
        if status in ("completed", "failed", "cancelled"):
            data = {"status": status, "count": int(count), "head": bytes(head or b"").hex()}
            batch.append(entry_row(keys, ENDED, run_id, data, now))
        if len(batch) >= 1000:
            bind.execute(sa.insert(ledger), batch)
            batch = []
    if batch:
        bind.execute(sa.insert(ledger), batch)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS trail_append_only ON events")
        op.execute("DROP TRIGGER IF EXISTS trail_no_truncate ON events")
        op.execute("DROP FUNCTION IF EXISTS pausepoint_trail_guard()")
    else:
        op.execute("DROP TRIGGER IF EXISTS trail_no_update")
        op.execute("DROP TRIGGER IF EXISTS trail_no_delete")
    op.drop_table("ledger_head")
    op.drop_table("ledger")
    if bind.dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS pausepoint_ledger_guard()")
