"""The OpenAI-compatible API: per-user API keys (hashed) and each reply's completion id.

Revision ID: 0004_openai_api
Revises: 0003_login_guard
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_openai_api"
down_revision = "0003_login_guard"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("key_hash", sa.String(), nullable=False),
        sa.Column("prefix", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ux_api_keys_key_hash", "api_keys", ["key_hash"], unique=True)
    op.create_index("ix_api_keys_user", "api_keys", ["user_id"])
    with op.batch_alter_table("responses") as batch:
        batch.add_column(sa.Column("completion_id", sa.String(), nullable=True))
        batch.create_index("ux_responses_completion_id", ["completion_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("responses") as batch:
        batch.drop_index("ux_responses_completion_id")
        batch.drop_column("completion_id")
    op.drop_table("api_keys")
