"""Alembic migrations of the preference store, applied by `feedback.db.migrate`."""
