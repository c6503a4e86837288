"""The initial preference store: users, chats, responses, feedback, preferences, examples.

Revision ID: 0001
Revises:
Create Date: 2025-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _id() -> sa.Column:
    return sa.Column("id", sa.Integer(), primary_key=True)


def _created(name: str = "created_at", nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _fk(name: str, target: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.Integer(), sa.ForeignKey(target), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "users",
        _id(),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("password_hash", sa.String(), nullable=False),
        _created(),
        sa.CheckConstraint("role IN ('expert', 'annotator', 'operator')", name="role"),
    )
    op.create_index("ux_users_name", "users", ["name"], unique=True)

    op.create_table(
        "conversations",
        _id(),
        _fk("user_id", "users.id"),
        sa.Column("title", sa.Text(), nullable=False),
        _created(),
    )
    op.create_index("ix_conversations_user_created", "conversations", ["user_id", "created_at"])

    op.create_table(
        "responses",
        _id(),
        _fk("conversation_id", "conversations.id"),
        sa.Column("prompt_json", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("adapter_version", sa.String(), nullable=True),
        sa.Column("params_json", sa.Text(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("new_tokens", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _created(),
        sa.CheckConstraint("kind IN ('reply', 'candidate')", name="kind"),
    )
    op.create_index("ix_responses_conversation", "responses", ["conversation_id"])

    op.create_table(
        "messages",
        _id(),
        _fk("conversation_id", "conversations.id"),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        _fk("response_id", "responses.id", nullable=True),
        _created(),
        sa.CheckConstraint("role IN ('user', 'assistant')", name="role"),
    )
    op.create_index(
        "ux_messages_conversation_position",
        "messages",
        ["conversation_id", "position"],
        unique=True,
    )

    op.create_table(
        "ratings",
        _id(),
        _fk("response_id", "responses.id"),
        _fk("user_id", "users.id"),
        sa.Column("up", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        _created(),
    )
    op.create_index("ix_ratings_response_user", "ratings", ["response_id", "user_id"])
    op.create_index("ix_ratings_user", "ratings", ["user_id"])

    op.create_table(
        "corrections",
        _id(),
        _fk("response_id", "responses.id"),
        _fk("user_id", "users.id"),
        sa.Column("content", sa.Text(), nullable=False),
        _created(),
    )
    op.create_index("ix_corrections_response", "corrections", ["response_id"])
    op.create_index("ix_corrections_user", "corrections", ["user_id"])

    op.create_table(
        "comparisons",
        _id(),
        _fk("user_id", "users.id"),
        _fk("conversation_id", "conversations.id"),
        _fk("response_a_id", "responses.id"),
        _fk("response_b_id", "responses.id"),
        sa.Column("original_is_a", sa.Boolean(), nullable=False),
        sa.Column("choice", sa.String(), nullable=True),
        _created(),
        _created("decided_at", nullable=True),
        sa.CheckConstraint("choice IN ('A', 'B', 'tie')", name="choice"),
    )
    op.create_index("ix_comparisons_user", "comparisons", ["user_id"])
    op.create_index("ix_comparisons_conversation", "comparisons", ["conversation_id"])

    op.create_table(
        "preferences",
        _id(),
        sa.Column("prompt_json", sa.Text(), nullable=False),
        sa.Column("chosen", sa.Text(), nullable=False),
        sa.Column("rejected", sa.Text(), nullable=False),
        sa.Column("tie", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("annotator", sa.String(), nullable=True),
        _fk("comparison_id", "comparisons.id", nullable=True),
        _fk("correction_id", "corrections.id", nullable=True),
        _fk("chosen_response_id", "responses.id", nullable=True),
        _fk("rejected_response_id", "responses.id", nullable=True),
        sa.Column("dedup_key", sa.String(), nullable=False),
        _created(),
        sa.CheckConstraint(
            "source IN ('chat-compare', 'edit', 'import', 'argilla')", name="source"
        ),
    )
    op.create_index("ux_preferences_dedup_key", "preferences", ["dedup_key"], unique=True)
    op.create_index("ix_preferences_source", "preferences", ["source"])

    op.create_table(
        "examples",
        _id(),
        sa.Column("messages_json", sa.Text(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("dedup_key", sa.String(), nullable=False),
        _created(),
    )
    op.create_index("ux_examples_dedup_key", "examples", ["dedup_key"], unique=True)


def downgrade() -> None:
    for table in (
        "examples",
        "preferences",
        "comparisons",
        "corrections",
        "ratings",
        "messages",
        "responses",
        "conversations",
        "users",
    ):
        op.drop_table(table)
