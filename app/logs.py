"""Logging for every `tuneloop` command, configured once at start.

tuneloop's own loggers (`app.*`, `feedback.*`, `training.*`, `tuneloop.*`) write at
`TUNELOOP_LOG_LEVEL` to stderr and to `HOME/logs/tuneloop.log` (rotated at 10 MB, 5 kept),
so an operator can read later what `serve` and `watch` did and why. Other libraries' loggers
stay at WARNING: their INFO lines would bury ours. Tracebacks go to the file only; stderr
gets them too with `TUNELOOP_DEBUG=1` (the CLI's one-line errors promise no traceback).
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

OUR_LOGGERS = ("app", "feedback", "training", "tuneloop")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_configured: list[Path] = []
# Set by the CLI's entry point from TUNELOOP_DEBUG, where it reads that variable.
SHOW_TRACEBACKS = [False]


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes to whatever `sys.stderr` is at the time of the record
    (a `--json` command or a test may swap it after logging was configured)."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


class _Brief(logging.Formatter):
    """The record's line without its traceback (the log file keeps the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        if SHOW_TRACEBACKS[0] or not (record.exc_info or record.stack_info):
            return super().format(record)
        brief = logging.makeLogRecord(record.__dict__)
        brief.exc_info = brief.exc_text = brief.stack_info = None
        return super().format(brief)


def configure(home: Path, level: str) -> None:
    """Send our log records to stderr and HOME/logs/tuneloop.log; once per process."""
    if _configured:
        return
    folder = home / "logs"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    stderr = _Stderr()
    stderr.setFormatter(_Brief(FORMAT))
    file = logging.handlers.RotatingFileHandler(
        folder / "tuneloop.log", maxBytes=10_000_000, backupCount=5, encoding="utf-8"
    )
    file.setFormatter(logging.Formatter(FORMAT))
    handlers: list[logging.Handler] = [stderr, file]
    for name in OUR_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.propagate = False
        for handler in handlers:
            logger.addHandler(handler)
    _configured.append(folder)
