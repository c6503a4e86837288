"""`tuneloop` commands for the training part of the loop (registered by app/cli.py)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main `tuneloop` app."""
