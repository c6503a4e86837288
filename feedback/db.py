"""Engines for the preference store: SQLite tuned for durability, or PostgreSQL.

`make_engine` is the only way in: it sets up SQLite so that an acknowledged write survives
a crash, and it brings the schema up to date with Alembic before anyone uses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

# Inside the package (not next to an alembic.ini), so a non-editable install finds it too.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Execution option that makes a SQLite transaction take the write lock at BEGIN. Without it
# a transaction that reads then writes can fail at once with "database is locked" when
# another thread writes, instead of waiting out busy_timeout.
WRITE_OPTIONS: dict[str, Any] = {"tuneloop_write": True}

# Arbitrary constant key for PostgreSQL's advisory lock around migrations.
_PG_MIGRATION_LOCK = 7_461_206

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",  # readers never block the writer
    "PRAGMA synchronous=FULL",  # fsync on every commit: an ACK survives power loss
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",  # wait for a busy writer instead of failing
)


def make_engine(url: str, *, apply_migrations: bool = True) -> Engine:
    """Create an engine for `url` and migrate its schema to the newest version.

    SQLite: the file's folder is created, WAL and full fsync are on for every connection,
    and connections may be shared across threads (the app writes from several).
    PostgreSQL: use `postgresql+psycopg://user@host:port/db`.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite_engine(url, parsed.database)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    if apply_migrations:
        migrate(engine)
    return engine


def _sqlite_engine(url: str, database: str | None) -> Engine:
    in_memory = not database or database == ":memory:" or database.startswith("file::memory:")
    if not in_memory and database is not None:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    if in_memory:
        kwargs["poolclass"] = StaticPool  # one shared connection, or every checkout is empty
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so BEGIN is ours (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            for pragma in SQLITE_PRAGMAS:
                cursor.execute(pragma)
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get("tuneloop_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def alembic_config() -> Config:
    """An Alembic config pointing at the package's migrations; no alembic.ini needed."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database behind `engine` to `revision` (default: the newest)."""
    config = alembic_config()
    with engine.execution_options(**WRITE_OPTIONS).begin() as connection:
        if connection.dialect.name == "postgresql":
            # Two processes starting at once must not both create the tables.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
