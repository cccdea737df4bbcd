"""waits for callbacks, events and resources

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_meta")),
    )
    op.create_table(
        "resources",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("in_use", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_resources")),
    )
    op.create_table(
        "deliveries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=True),
        sa.Column("run_id", sa.String(length=32), nullable=True),
        sa.Column("event_name", sa.String(length=200), nullable=True),
        sa.Column("match_key", sa.String(length=200), nullable=True),
        sa.Column("source", sa.String(length=100), nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("consumed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_deliveries_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deliveries")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_deliveries_token_hash")),
    )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_deliveries_event_name_match_key_received_at",
            ["event_name", "match_key", "received_at"],
            unique=False,
        )

    op.create_table(
        "resource_holders",
        sa.Column("resource", sa.String(length=200), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["resource"],
            ["resources.name"],
            name=op.f("fk_resource_holders_resource_resources"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
            name=op.f("fk_resource_holders_run_id_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("resource", "run_id", name=op.f("pk_resource_holders")),
    )
    with op.batch_alter_table("resource_holders", schema=None) as batch_op:
        batch_op.create_index("ix_resource_holders_run_id", ["run_id"], unique=False)

    with op.batch_alter_table("waits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("escalate_to", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("escalate_after", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("source", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("event_name", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("match_key", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("resource", sa.String(length=200), nullable=True))
        batch_op.create_index(
            "ix_waits_event_name_match_key_status",
            ["event_name", "match_key", "status"],
            unique=False,
        )
        batch_op.create_index(
            "ix_waits_resource_status_id", ["resource", "status", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("waits", schema=None) as batch_op:
        batch_op.drop_index("ix_waits_resource_status_id")
        batch_op.drop_index("ix_waits_event_name_match_key_status")
        batch_op.drop_column("resource")
        batch_op.drop_column("match_key")
        batch_op.drop_column("event_name")
        batch_op.drop_column("source")
        batch_op.drop_column("escalate_after")
        batch_op.drop_column("escalate_to")

    with op.batch_alter_table("resource_holders", schema=None) as batch_op:
        batch_op.drop_index("ix_resource_holders_run_id")

    op.drop_table("resource_holders")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_event_name_match_key_received_at")

    op.drop_table("deliveries")
    op.drop_table("resources")
    op.drop_table("meta")
