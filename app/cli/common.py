"""What every `tuneloop` command module shares: the settings, the store, `--json` output."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TextIO

import typer

from app.config import Settings

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]

# Where `--json` objects go: the process's real stdout while `json_stdout` holds everything
# else (library prints, trainer logs) on stderr; None outside a `--json` command.
_json_out: TextIO | None = None


def open_settings() -> Settings:
    """Build the one Settings object (from TUNELOOP_* variables) and make sure HOME exists."""
    settings = Settings()
    settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = settings.home.stat().st_mode & 0o777
    if mode & 0o077:  # a home made before tuneloop kept it private: the store is inside
        settings.home.chmod(0o700)
        typer.echo(f"note: made {settings.home} private (was {mode:o}, now 700)", err=True)
    from app.logs import configure

    configure(settings.home, settings.log_level)
    return settings


def open_store(settings: Settings) -> Any:
    """The preference store for these settings, migrated to the newest schema."""
    from feedback.store import Store

    return Store.open(settings.database)


def chat_sampling(settings: Settings, *, temperature: float | None = None) -> Any:
    """How the chat samples a reply (`SamplingParams`): the settings, one object for the
    page, the API and the pairs sent to Argilla; `temperature` given: that one instead."""
    from app.serving.replies import SamplingParams

    return SamplingParams(
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature if temperature is None else temperature,
        top_p=settings.top_p,
    )


def batch_generation(
    settings: Settings,
    *,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    batch_size: int | None = None,
) -> Any:
    """How `generate` and `eval` answer (`GenParams`): the settings, with a command's own
    options (None: not given) on top."""
    from training.eval.generate import GenParams

    return GenParams(
        max_new_tokens=max_new_tokens or settings.generate_max_new_tokens,
        temperature=settings.generate_temperature if temperature is None else temperature,
        batch_size=batch_size or settings.generate_batch_size,
    )


def emit(as_json: bool, payload: dict[str, Any], text: str) -> None:
    """Print one JSON object with --json, else the human-readable text."""
    if as_json:
        write_json(payload)
    else:
        typer.echo(text)


def write_json(payload: dict[str, Any]) -> None:
    """Write `payload` as one line of JSON to the command's real stdout."""
    out = _json_out or sys.stdout
    out.write(json.dumps(payload, default=str) + "\n")
    out.flush()


@contextmanager
def json_stdout() -> Iterator[None]:
    """Keep stdout for the one JSON object: anything else written meanwhile goes to stderr.

    Training libraries print to stdout (the trainer's metric dicts), and so may C code and
    child processes, so on a real terminal or pipe the file descriptor itself is moved;
    when stdout is already a Python object (captured), the object is swapped.
    """
    global _json_out
    real = sys.stdout
    try:
        fd = real.fileno()
    except (AttributeError, OSError, ValueError):
        fd = -1
    saved = -1
    if fd == 1:
        real.flush()
        saved = os.dup(1)
        os.dup2(2, 1)
        _json_out = os.fdopen(saved, "w", encoding="utf-8", closefd=False)
    else:
        _json_out = real
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stdout = real
        _json_out.flush()
        if saved >= 0:
            os.dup2(saved, 1)
            os.close(saved)
        _json_out = None
