"""Alembic environment: runs migrations on the connection `feedback.db.migrate` hands in.

There is no alembic.ini and no URL here: the caller always supplies the connection, so the
same code migrates SQLite files, PostgreSQL and test databases.
"""

from __future__ import annotations

from alembic import context

import feedback.models_external  # noqa: F401  (its tables join the same metadata)
from feedback.models import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "feedback migrations run through feedback.db.migrate(engine), not the alembic CLI"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
