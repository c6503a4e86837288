"""Chat front ends: their end users and chats, and Open WebUI's feedback as applied.

Revision ID: 0005_frontends
Revises: 0004_openai_api
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_frontends"
down_revision = "0004_openai_api"
branch_labels = None
depends_on = None


def _created() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "frontend_users",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("external_id", sa.String(), nullable=False),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        _created(),
    )
    op.create_index(
        "ux_frontend_users_source_external_id",
        "frontend_users",
        ["source", "external_id"],
        unique=True,
    )
    op.create_table(
        "frontend_chats",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("external_id", sa.String(), nullable=False),
        sa.Column(
            "conversation_id", sa.Integer(), sa.ForeignKey("conversations.id"), nullable=False
        ),
        _created(),
    )
    op.create_index(
        "ux_frontend_chats_source_external_id",
        "frontend_chats",
        ["source", "external_id"],
        unique=True,
    )
    op.create_table(
        "openwebui_feedback",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("feedback_id", sa.String(), nullable=False),
        sa.Column("updated_at", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("response_id", sa.Integer(), sa.ForeignKey("responses.id"), nullable=False),
        sa.Column("rating_id", sa.Integer(), sa.ForeignKey("ratings.id"), nullable=True),
        sa.Column("user_ref", sa.String(), nullable=False),
        sa.Column("chat_id", sa.String(), nullable=False),
        sa.Column("message_id", sa.String(), nullable=False),
        sa.Column("parent_id", sa.String(), nullable=True),
        sa.Column("up", sa.Boolean(), nullable=False),
        sa.Column("score", sa.Integer(), nullable=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ux_openwebui_feedback_feedback_id", "openwebui_feedback", ["feedback_id"], unique=True
    )


def downgrade() -> None:
    op.drop_table("openwebui_feedback")
    op.drop_table("frontend_chats")
    op.drop_table("frontend_users")
