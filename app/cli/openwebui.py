"""`tuneloop openwebui sync`, and the Open WebUI glue other commands use: which Open WebUI is
configured (`target`), importing a saved export, and the timer of `serve` and `watch`.

The admin token comes from TUNELOOP_OPENWEBUI_TOKEN or a file named by
TUNELOOP_OPENWEBUI_TOKEN_FILE that only its owner can read; never from an argument, where
every user of the machine could read it in the process list.
"""

from __future__ import annotations

import logging
import stat
import threading
from pathlib import Path
from typing import Any

import typer

from app.cli.common import JsonOpt, emit, open_settings, open_store
from app.config import Settings

openwebui_app = typer.Typer(
    help="Open WebUI as the chat page: bring its users' ratings in.", no_args_is_help=True
)
log = logging.getLogger("tuneloop.openwebui")


class OpenWebUIConfigError(Exception):
    """Open WebUI is not set up the way a command needs; the message says what to do."""


def _token(settings: Settings) -> str:
    if settings.openwebui_token is not None:
        return settings.openwebui_token.get_secret_value().strip()
    path = settings.openwebui_token_file
    if path is None:
        raise OpenWebUIConfigError(
            "no Open WebUI admin token: set TUNELOOP_OPENWEBUI_TOKEN, or put it in a file "
            "(chmod 600) named by TUNELOOP_OPENWEBUI_TOKEN_FILE"
        )
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise OpenWebUIConfigError(
                f"{path} can be read by other users (mode {stat.S_IMODE(mode):o}); "
                f"run `chmod 600 {path}` first"
            )
        token = path.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise OpenWebUIConfigError(f"{path}: cannot read the token ({err.strerror})") from None
    if not token:
        raise OpenWebUIConfigError(f"{path} is empty; put the Open WebUI admin token in it")
    return token


def target(settings: Settings) -> Any | None:
    """The configured Open WebUI (None when TUNELOOP_OPENWEBUI_URL is unset)."""
    from feedback.openwebui_sync import Target

    if not settings.openwebui_url:
        return None
    return Target(
        url=settings.openwebui_url, token=_token(settings), timeout=settings.argilla_timeout_seconds
    )


def sync_once(settings: Settings, store: Any) -> dict[str, Any]:
    """One sync; its report."""
    from feedback.openwebui_sync import sync

    found = target(settings)
    if found is None:
        raise OpenWebUIConfigError(
            "Open WebUI is not set up: set TUNELOOP_OPENWEBUI_URL (its address) and "
            "TUNELOOP_OPENWEBUI_TOKEN or TUNELOOP_OPENWEBUI_TOKEN_FILE (an admin's token)"
        )
    return sync(store, found).as_dict()


def import_export(store: Any, path: Path) -> dict[str, Any]:
    """`tuneloop import --format openwebui FILE`: a saved export, applied like a sync."""
    from feedback.openwebui import parse_text
    from feedback.openwebui_sync import apply

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise OpenWebUIConfigError(f"{path}: {err.strerror}") from None
    return apply(store, parse_text(text, str(path))).as_dict()


def describe(report: dict[str, Any]) -> str:
    """A sync's or an import's report in one line."""
    text = (
        f"{report['entries']} Open WebUI ratings looked at: {report['rated']} on replies "
        f"tuneloop served, {report['brought_in']} brought in from Open WebUI's chats, "
        f"{report['unchanged']} already here, {report['skipped']} skipped; "
        f"{report['picks']} new picks."
    )
    if report["skipped_reasons"]:
        text += " Skipped: " + "; ".join(report["skipped_reasons"][:5])
    return text


def sync_quietly(settings: Settings, store: Any) -> None:
    """A sync for a timer: failures are logged (the next tick tries again), never raised."""
    try:
        report = sync_once(settings, store)
        if report["entries"]:
            log.info("Open WebUI sync: %s", describe(report))
    except Exception as err:  # Open WebUI away: its ratings wait there for the next tick
        log.warning("Open WebUI sync failed: %s", err)


def start_background_sync(settings: Settings, store: Any) -> threading.Event | None:
    """Sync every TUNELOOP_OPENWEBUI_SYNC_SECONDS in a daemon thread (None: not configured)."""
    if not settings.openwebui_url or settings.openwebui_sync_seconds <= 0:
        return None
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(settings.openwebui_sync_seconds):
            sync_quietly(settings, store)

    threading.Thread(target=loop, name="openwebui-sync", daemon=True).start()
    return stop


@openwebui_app.command("sync")
def openwebui_sync(as_json: JsonOpt = False) -> None:
    """Pull new and changed ratings from Open WebUI (incremental; safe to repeat or stop)."""
    settings = open_settings()
    report = sync_once(settings, open_store(settings))
    emit(as_json, report, describe(report))


def register(app: typer.Typer) -> None:
    """Add `tuneloop openwebui` to the main app."""
    app.add_typer(openwebui_app, name="openwebui")
