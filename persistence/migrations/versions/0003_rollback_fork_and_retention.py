"""rollback, fork and retention: message segments, purge marks, the cleanups log

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("message_count", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("segments", JSON, nullable=True))
        batch_op.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("purge_state", sa.String(length=10), nullable=True))
        batch_op.create_index("ix_runs_finished_at", ["finished_at"], unique=False)
        batch_op.create_index(
            "ix_runs_purge_state_finished_at", ["purge_state", "finished_at"], unique=False
        )
        batch_op.create_index("ix_runs_parent_run_id", ["parent_run_id"], unique=False)
    # Before this revision every stored message was part of its run's conversation.
    op.execute("UPDATE runs SET message_count = history_len")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.alter_column("message_count", server_default=None)
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("segments", JSON, nullable=True))
    op.create_table(
        "cleanups",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("policy", JSON, nullable=False),
        sa.Column("removed", JSON, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cleanups")),
    )


def downgrade() -> None:
    op.drop_table("cleanups")
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.drop_column("segments")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_parent_run_id")
        batch_op.drop_index("ix_runs_purge_state_finished_at")
        batch_op.drop_index("ix_runs_finished_at")
        batch_op.drop_column("purge_state")
        batch_op.drop_column("purged_at")
        batch_op.drop_column("segments")
        batch_op.drop_column("message_count")
