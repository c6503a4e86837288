"""The rounds directory: one folder per round (`r0001-<UTC time>`), the lock that keeps rounds
to one at a time, and every round's state as the other processes read it.

One round at a time: an exclusive lock (`filelock`) on `rounds_dir/.lock`, which the OS releases
when a crashed round's process dies. `Settings.rounds_dir` names the folder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from training.device import ranks

ROUND_RE = re.compile(r"r(\d{4,})-\d{8}T\d{4,6}")
FINISHED = ("done", "rejected", "inconclusive", "promoted", "stale")
LOCK_NAME = ".lock"


class RoundError(Exception):
    """A round that cannot start or continue (nothing to train on, nothing to resume)."""


class RoundBusyError(RoundError):
    """Another round holds the lock."""


def lock_held(rounds_dir: Path) -> bool:
    """Whether a round holds `rounds_dir/.lock` right now (a dead process holds nothing)."""
    from filelock import FileLock, Timeout

    path = Path(rounds_dir) / LOCK_NAME
    if not path.exists():
        return False
    probe = FileLock(path, blocking=False)
    try:
        probe.acquire()
    except Timeout:
        return True
    probe.release()
    return False


@contextmanager
def exclusive_lock(rounds_dir: Path) -> Iterator[None]:
    """The round lock, `rounds_dir/.lock`, held exclusively (RoundBusyError when taken)."""
    from filelock import FileLock, Timeout

    rounds_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(rounds_dir / LOCK_NAME, blocking=False)
    try:
        lock.acquire()
    except Timeout:
        raise RoundBusyError("another training round is running; wait for it") from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def round_lock(rounds_dir: Path) -> Iterator[None]:
    """The round lock, held by the main process alone; the other processes of a launched
    round learn whether it got it (RoundBusyError there, MainProcessError here when not)."""
    with ExitStack() as held:
        ranks.on_main(lambda: held.enter_context(exclusive_lock(rounds_dir)))
        yield


def _lock_is_free(rounds_dir: Path) -> bool:
    try:
        return not lock_held(rounds_dir)
    except OSError:  # an unreadable lock file: not known to be free
        return False


def list_rounds(rounds_dir: Path) -> list[dict[str, Any]]:
    """Every round's state.json, oldest first.

    A round whose state still says "running" while no process holds the round lock was
    killed mid-way; it is reported as "failed" (interrupted) so that nobody waits for it.
    """
    rounds_dir = Path(rounds_dir)
    if not rounds_dir.is_dir():
        return []
    out = []
    for entry in sorted(rounds_dir.iterdir()):
        state = entry / "state.json"
        if entry.is_dir() and ROUND_RE.fullmatch(entry.name) and state.is_file():
            try:
                out.append(json.loads(state.read_text(encoding="utf-8")))
            except ValueError:
                continue
    if out and out[-1].get("status") == "running" and _lock_is_free(rounds_dir):
        out[-1].update(
            status="failed",
            reason="interrupted: its process ended mid-round (tuneloop train --resume)",
        )
    return out


def new_feedback_since_last_round(store: Any, rounds_dir: Path) -> dict[str, int]:
    """Preferences / corrections / ratings added after the last finished round's snapshot."""
    marks = None
    for state in reversed(list_rounds(rounds_dir)):
        snap = Path(rounds_dir) / state["id"] / "snapshot.json"
        if state.get("status") in FINISHED and snap.is_file():
            marks = json.loads(snap.read_text(encoding="utf-8")).get("max_ids")
            break
    return store.new_feedback_since(marks)


def new_round_id(rounds_dir: Path) -> str:
    """The next round's folder name: one above the highest number, with the UTC time."""
    numbers = [int(m.group(1)) for e in rounds_dir.iterdir() if (m := ROUND_RE.fullmatch(e.name))]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"r{max(numbers, default=0) + 1:04d}-{stamp}"


def resumable_round(rounds_dir: Path) -> str:
    """The newest round when it failed or was interrupted (RoundError otherwise)."""
    for state in reversed(list_rounds(rounds_dir)):
        if state.get("status") in ("running", "failed"):
            return str(state["id"])
        break
    raise RoundError("there is no failed or interrupted round to resume; start a new one")
