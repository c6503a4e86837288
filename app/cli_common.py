"""What every `tuneloop` command module shares: the settings, the store, `--json` output."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from app.config import Settings

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]


def open_settings() -> Settings:
    """Build the one Settings object (from TUNELOOP_* variables) and make sure HOME exists."""
    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    return settings


def open_store(settings: Settings) -> Any:
    """The preference store for these settings, migrated to the newest schema."""
    from feedback.store import Store

    return Store.open(settings.database)


def emit(as_json: bool, payload: dict[str, Any], text: str) -> None:
    """Print one JSON object with --json, else the human-readable text."""
    typer.echo(json.dumps(payload, default=str) if as_json else text)
