"""messages carry OpenAI's tool-call fields: messages.data

An assistant message that asks for tool calls keeps them (``tool_calls``), and a tool's
result names the call it answers (``tool_call_id``), in a nullable JSON column: NULL for
every plain message, so old rows and plain conversations cost nothing more.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    kind = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("data", kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("data")
