"""Preference pairs ranked by the operator's checks (best-of N) as a source of their own.

Revision ID: 0006_best_of_source
Revises: 0005_frontends
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0006_best_of_source"
down_revision = "0005_frontends"
branch_labels = None
depends_on = None

BEFORE = "source IN ('chat-compare', 'edit', 'import', 'argilla')"
AFTER = "source IN ('chat-compare', 'edit', 'import', 'argilla', 'best-of')"


def _check(sqltext: str) -> None:
    # SQLite rebuilds the table (batch mode, which carries the named constraint over);
    # PostgreSQL drops and adds the constraint in place.
    with op.batch_alter_table("preferences") as batch:
        batch.drop_constraint(op.f("ck_preferences_source"), type_="check")
        batch.create_check_constraint("source", sqltext)


def upgrade() -> None:
    _check(AFTER)


def downgrade() -> None:
    op.execute("DELETE FROM preferences WHERE source = 'best-of'")
    _check(BEFORE)
