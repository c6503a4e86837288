"""When to run a training round, and running it: the logic behind `tuneloop watch`.

A round is due when at least `min_new` preferences arrived since the last round, or when
`interval_minutes` (if set) passed since the last round and anything at all is new. All the
state is on disk (the rounds directory the round writes, the store), so a restarted watcher
carries on where it stopped; nothing is kept in memory between checks.

Each round runs as a `tuneloop train --json` subprocess, not in the watcher's process:
the memory of a round (a model, optimizer state) is returned to the system when it ends, a
crash or an out-of-memory kill in a round cannot take the watcher down, and the schedule,
the operator tab's button and an operator at the shell all start rounds the same way. The
round's own lock (`rounds_dir/.lock`, a `filelock` lock: flock, released by the OS when
a process dies) keeps
it to one round at a time; the watcher only peeks at it to avoid starting a doomed process.
A round left "running" whose lock is free crashed, and one marked failed with the reason
"interrupted" was stopped (Ctrl-C on the watcher, a shutdown): the watcher resumes either
(`tuneloop train --resume`). Any other failure waits FAILED_BACKOFF_MINUTES first.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from training.rounds_dir import list_rounds, lock_held, new_feedback_since_last_round

# After a failed round the watcher waits this long before trying again on its own, so a
# round that fails for a lasting reason (a full disk, a bad setting) is not retried in a loop.
FAILED_BACKOFF_MINUTES = 30.0


class LauncherError(Exception):
    """The training launcher setting names nothing that can be run."""


@dataclass
class Decision:
    """What one check of the schedule concluded, and why (for the log and `--json`)."""

    run: bool
    reason: str
    resume: bool = False
    new: dict[str, int] = field(default_factory=dict)
    last_round: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _when(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def round_due(
    *,
    rounds: list[dict[str, Any]],
    new: dict[str, int],
    busy: bool,
    min_new: int,
    interval_minutes: float,
    now: datetime | None = None,
) -> Decision:
    """Pure rule: given the rounds so far (oldest first), what is new, and the lock, decide."""
    now = now or datetime.now(UTC)
    last = rounds[-1] if rounds else None
    last_id = str(last.get("id")) if last else None
    new_prefs = int(new.get("preferences", 0))
    anything_new = sum(int(v) for v in new.values()) > 0
    if busy:
        return Decision(False, "a round is running", new=new, last_round=last_id)
    if last and last.get("status") == "running":
        return Decision(True, f"round {last_id} stopped mid-way: resuming it", True, new, last_id)
    if last and last.get("status") == "failed" and last.get("reason") == "interrupted":
        return Decision(True, f"round {last_id} was interrupted: resuming it", True, new, last_id)
    if last and last.get("status") == "failed":
        ended = _when(last.get("finished_at")) or _when(last.get("started_at"))
        if ended and now - ended < timedelta(minutes=FAILED_BACKOFF_MINUTES):
            return Decision(
                False,
                f"round {last_id} failed ({last.get('reason') or 'no reason'}); "
                f"waiting {FAILED_BACKOFF_MINUTES:g} minutes before another try",
                new=new,
                last_round=last_id,
            )
    if new_prefs >= min_new:
        return Decision(
            True, f"{new_prefs} new preferences (threshold {min_new})", new=new, last_round=last_id
        )
    if interval_minutes > 0 and anything_new:
        since = (_when(last.get("started_at")) if last else None) or None
        if since is None or now - since >= timedelta(minutes=interval_minutes):
            return Decision(
                True,
                f"interval of {interval_minutes:g} minutes passed with new feedback",
                new=new,
                last_round=last_id,
            )
    return Decision(
        False,
        f"{new_prefs} new preferences, fewer than {min_new}"
        + ("" if anything_new or interval_minutes <= 0 else "; nothing new for the interval"),
        new=new,
        last_round=last_id,
    )


def check(store: Any, rounds_dir: Path, *, min_new: int, interval_minutes: float) -> Decision:
    """Read the rounds directory and the store, and decide whether a round is due now."""
    rounds_dir = Path(rounds_dir)
    return round_due(
        rounds=list_rounds(rounds_dir) if rounds_dir.is_dir() else [],
        new=new_feedback_since_last_round(store, rounds_dir),
        busy=lock_held(rounds_dir),
        min_new=min_new,
        interval_minutes=interval_minutes,
    )


def train_command(*, resume: bool = False, launcher: str | None = None) -> list[str]:
    """The command a scheduled round runs: this interpreter's `tuneloop train --json`, or,
    with a `launcher` such as "torchrun --nproc_per_node 4", that launcher starting
    `-m app.cli train --json` in one process per device."""
    args = ["-m", "app.cli", "train", "--json", *(["--resume"] if resume else [])]
    if not launcher:
        return [sys.executable, *args]
    words = shlex.split(launcher)
    if not words:
        raise LauncherError("TUNELOOP_TRAIN_LAUNCHER is blank; unset it for one process")
    # the launcher installed beside this interpreter (a virtualenv's torchrun) comes first
    found = shutil.which(words[0], path=str(Path(sys.executable).parent)) or shutil.which(words[0])
    if found is None:
        raise LauncherError(f"TUNELOOP_TRAIN_LAUNCHER: {words[0]!r} is not installed or on PATH")
    return [found, *words[1:], *args]


def run_train(
    *,
    resume: bool = False,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    launcher: str | None = None,
) -> dict[str, Any]:
    """Run one round as a subprocess and wait; returns its JSON result or the failure.

    The round's own output goes to `log` (appended) when given; the last stdout line is
    the `--json` result.
    """
    full_env = {**os.environ, **(env or {})}
    started = time.monotonic()
    proc = subprocess.run(
        train_command(resume=resume, launcher=launcher),
        env=full_env,
        capture_output=True,
        text=True,
        check=False,
    )
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as f:
            f.write(proc.stderr)
            f.write(proc.stdout)
    result: dict[str, Any] = {"returncode": proc.returncode}
    for line in reversed(proc.stdout.splitlines()):  # the last JSON object printed
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            result["round"] = parsed
            break
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        result["error"] = errors[-1] if errors else (proc.stderr.strip().splitlines() or ["?"])[-1]
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def watch(
    *,
    checker: Callable[[], Decision],
    runner: Callable[[bool], dict[str, Any]],
    poll_seconds: float,
    once: bool = False,
    say: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> list[dict[str, Any]]:
    """Check, run a round when one is due, wait `poll_seconds`, repeat (once: a single check).

    Returns, for `--once`, the one event (`{"decision": ..., "result": ...}`).
    """
    events: list[dict[str, Any]] = []
    while True:
        decision = checker()
        event: dict[str, Any] = {"at": datetime.now(UTC).isoformat(), **decision.as_dict()}
        if decision.run:
            say(f"starting a round: {decision.reason}")
            event["result"] = runner(decision.resume)
            outcome = event["result"].get("round") or {}
            say(
                "round finished: "
                + (
                    f"{outcome.get('status', '?')} {outcome.get('version') or ''}".strip()
                    if event["result"]["returncode"] == 0
                    else event["result"].get("error", "failed")
                )
            )
        else:
            say(f"no round: {decision.reason}")
        if once:
            events.append(event)
            return events
        sleep(poll_seconds)
