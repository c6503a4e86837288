"""Alembic migrations: they build exactly the schema the SQLModel tables describe."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Engine, Integer, MetaData, inspect, text

import feedback
from feedback.db import MIGRATIONS_DIR, alembic_config, make_engine, migrate
from feedback.models import metadata


def schema_diff(engine: Engine, target: MetaData) -> list:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, target)


def test_migrated_schema_matches_models(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    assert schema_diff(engine, metadata) == []


def test_model_drift_without_migration_is_caught(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    drifted = MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["ratings"].append_column(Column("weight", Integer, nullable=True))
    diff = schema_diff(engine, drifted)
    assert [(d[0], d[3].name) for d in diff] == [("add_column", "weight")]


def test_fresh_database_is_at_head_and_reopening_is_a_no_op(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    engine = make_engine(url)
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head == "0006_best_of_source"
    with engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == head
    tables = set(inspect(engine).get_table_names())
    assert tables == set(metadata.tables) | {"alembic_version"}
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (name, role, password_hash, created_at) "
                "VALUES ('ann', 'expert', 'x', '2025-01-01 00:00:00')"
            )
        )
    engine.dispose()
    again = make_engine(url)  # migrating an up-to-date database changes nothing
    with again.connect() as connection:
        assert connection.execute(text("SELECT name FROM users")).scalars().all() == ["ann"]


def test_downgrade_and_upgrade_again(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    migrate(engine)
    assert schema_diff(engine, metadata) == []


def test_migrations_ship_inside_the_package() -> None:
    package_dir = Path(feedback.__file__).resolve().parent
    assert MIGRATIONS_DIR == package_dir / "migrations"
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "versions" / "__init__.py").is_file()
    assert (MIGRATIONS_DIR / "__init__.py").is_file()


def test_engine_without_migrations_is_empty(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'bare.db'}", apply_migrations=False)
    assert inspect(engine).get_table_names() == []


def test_the_best_of_source_arrives_and_stored_pairs_stay(tmp_path: Path) -> None:
    from sqlalchemy.exc import IntegrityError

    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}", apply_migrations=False)
    migrate(engine, "0005_frontends")
    pair = (
        "INSERT INTO preferences (prompt_json, chosen, rejected, tie, source, dedup_key, "
        "created_at) VALUES ('[]', 'a', 'b', 0, :source, :key, '2026-01-01 00:00:00')"
    )
    with engine.begin() as connection:
        connection.execute(text(pair), {"source": "edit", "key": "k1"})
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(text(pair), {"source": "best-of", "key": "k2"})
    migrate(engine)
    with engine.begin() as connection:
        connection.execute(text(pair), {"source": "best-of", "key": "k2"})
        stored = connection.execute(text("SELECT source FROM preferences ORDER BY id"))
        assert stored.scalars().all() == ["edit", "best-of"]
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(text(pair), {"source": "bogus", "key": "k3"})
    assert schema_diff(engine, metadata) == []
