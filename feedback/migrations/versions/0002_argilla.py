"""Argilla in the loop: the pairs outbox (with each pair's verdict) and pulled responses.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _fk(name: str, target: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.Integer(), sa.ForeignKey(target), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "argilla_pairs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("external_id", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("prompt_json", sa.Text(), nullable=False),
        sa.Column("first", sa.Text(), nullable=False),
        sa.Column("second", sa.Text(), nullable=False),
        _fk("first_response_id", "responses.id", nullable=True),
        _fk("second_response_id", "responses.id", nullable=True),
        _fk("comparison_id", "comparisons.id", nullable=True),
        sa.Column("first_is_a", sa.Boolean(), nullable=False),
        sa.Column("metadata_json", sa.Text(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pushed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decision", sa.String(), nullable=True),
        sa.Column("agreement", sa.Float(), nullable=True),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        _fk("preference_id", "preferences.id", nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("source IN ('compare', 'thumbs-down', 'generated')", name="source"),
        sa.CheckConstraint("status IN ('pending', 'pushed')", name="status"),
        sa.CheckConstraint("decision IN ('A', 'B', 'tie', 'split')", name="decision"),
    )
    op.create_index("ux_argilla_pairs_external_id", "argilla_pairs", ["external_id"], unique=True)
    op.create_index("ix_argilla_pairs_status", "argilla_pairs", ["status"])

    op.create_table(
        "argilla_responses",
        sa.Column("id", sa.Integer(), primary_key=True),
        _fk("pair_id", "argilla_pairs.id"),
        sa.Column("argilla_id", sa.String(), nullable=False),
        sa.Column("annotator", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("choice", sa.String(), nullable=True),
        sa.Column("corrected", sa.Text(), nullable=True),
        sa.Column("rating", sa.Integer(), nullable=True),
        sa.Column("argilla_updated_at", sa.String(), nullable=False),
        sa.Column("pulled_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('submitted', 'discarded')", name="status"),
        sa.CheckConstraint("choice IN ('A', 'B', 'tie')", name="choice"),
    )
    op.create_index(
        "ux_argilla_responses_argilla_id", "argilla_responses", ["argilla_id"], unique=True
    )
    op.create_index("ix_argilla_responses_pair", "argilla_responses", ["pair_id"])
    op.create_index("ix_argilla_responses_annotator", "argilla_responses", ["annotator"])


def downgrade() -> None:
    op.drop_table("argilla_responses")
    op.drop_table("argilla_pairs")
