"""What a running `serve` says about itself, for `tuneloop status` (another process).

`serve` keeps HOME/serving.json up to date (written atomically, only when something in it
changed): its pid, the API requests being answered, and how often the decoding loop had to
be restarted after a fault, with the last one. `status` reads it and ignores a file whose
process is gone.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from feedback.atomic_write import write_atomic

log = logging.getLogger(__name__)

FILE_NAME = "serving.json"


def keep_health_file(
    path: Path, read: Callable[[], dict[str, Any]], *, every: float = 2.0
) -> threading.Event:
    """Write `read()` to `path` now and whenever it changes; set the returned event to stop
    (the file is then removed: no serve, nothing to report)."""
    stop = threading.Event()

    def loop() -> None:
        last: dict[str, Any] | None = None
        while True:
            try:
                now = {"pid": os.getpid(), **read()}
                if now != last:
                    write_atomic(path, json.dumps(now) + "\n")
                    last = now
            except Exception:  # reporting must never take serving down
                log.exception("could not write %s", path)
            if stop.wait(every):
                path.unlink(missing_ok=True)
                return

    threading.Thread(target=loop, name="tuneloop-health", daemon=True).start()
    return stop


def read_health(path: Path) -> dict[str, Any] | None:
    """The running serve's report, or None when no serve is running from this HOME."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        os.kill(int(data["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data if isinstance(data, dict) else None
