"""Logins that resist guessing: account status (disabled, removed) and the failure throttle.

Revision ID: 0003_login_guard
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_login_guard"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("status", sa.String(), nullable=False, server_default="active"))
        batch.create_check_constraint("status", "status IN ('active', 'disabled', 'removed')")
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ux_login_failures_key", "login_failures", ["key"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_login_failures_key", table_name="login_failures")
    op.drop_table("login_failures")
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint("status", type_="check")
        batch.drop_column("status")
