"""MkDocs hook: the settings reference, generated from `app.config.Settings` at build time.

A page that holds the line `<!-- settings-reference -->` gets, in its place, one table row per
Settings field: its environment variable, its default and its `description`. Nothing is
copied by hand, so the reference cannot drift from the code; a field without a description
fails the build (and tests/test_docs.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- settings-reference -->"


def _settings_class() -> Any:
    if str(ROOT) not in sys.path:  # `mkdocs build` from the checkout without an install
        sys.path.insert(0, str(ROOT))
    from app.config import Settings

    return Settings


def shown_default(value: Any) -> str:
    """A default as an operator would write it: paths relative to the checkout, `unset`."""
    from pydantic import SecretStr

    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "unset" if not value.get_secret_value() else "(secret)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path):
        try:
            value = "./" + str(value.resolve().relative_to(ROOT))
        except ValueError:
            value = str(value)
    if value == "":
        return "empty"
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def rows() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every Settings field, in declaration order."""
    settings = _settings_class()
    prefix = settings.model_config.get("env_prefix", "")
    out = []
    for name, field in settings.model_fields.items():
        if not (field.description or "").strip():
            raise ValueError(f"Settings.{name} has no description: give its Field one")
        out.append((f"{prefix}{name}".upper(), shown_default(field.default), field.description))
    return out


def render() -> str:
    """The reference as a Markdown table."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{var}` | {_cell(default)} | {_cell(desc)} |" for var, default, desc in rows()]
    return "\n".join(lines)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace the marker with the generated table."""
    return markdown.replace(MARKER, render()) if MARKER in markdown else markdown
