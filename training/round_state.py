"""One round's record on disk: its live state (state.json, replaced atomically so that other
processes read it whole), its training log (metrics.jsonl), and how it ended (RoundResult)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from feedback.atomic_write import write_atomic
from training.device import ranks


@dataclass
class RoundResult:
    """How a round ended."""

    id: str
    # done | failed | rejected | inconclusive | promoted | stale (passed, but CURRENT changed
    # during the round, so it was not promoted over a version it was never compared with)
    status: str
    version: str | None = None
    candidate_stage: str | None = None
    decision: str | None = None  # the gate's: promote | reject | inconclusive
    reasons: list[str] = field(default_factory=list)
    serving_before: str | None = None
    serving_after: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)  # each stage's decision and comparisons
    objectives: list[str] = field(default_factory=list)  # what could promote the candidate
    report: str | None = None
    # fresh or continue (from which version), and the rows new vs replayed older
    continuation: dict[str, Any] = field(default_factory=dict)
    # per stage: steps planned and run, whether it stopped early, its best step and that
    # step's validation loss, or why it had no validation split (training/early_stopping.py)
    training: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def now() -> str:
    """The time now in UTC, to the second, as ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` atomically, so a reader sees the old or the new state, never half."""
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


class RoundState:
    """The state of one round on disk, and the steps that move it on."""

    def __init__(self, folder: Path, on_progress: Callable[[dict], None] | None) -> None:
        self.folder = folder
        self.on_progress = on_progress
        self.state: dict[str, Any] = {}

    def update(self, *, quiet: bool = False, **fields: Any) -> None:
        """Merge `fields` into state.json; tell `on_progress` (errors swallowed if `quiet`).
        Only the main process writes: the others keep their state in memory."""
        self.state.update(fields)
        if not ranks.is_main():
            return
        write_json(self.folder / "state.json", self.state)
        if self.on_progress is not None:
            try:
                self.on_progress(dict(self.state))
            except Exception:
                if not quiet:
                    raise

    def log(self, stage: str, step: int, max_steps: int, numbers: dict[str, float]) -> None:
        if not ranks.is_main():
            return
        line = {"stage": stage, "step": step, "time": now(), **numbers}
        with open(self.folder / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        loss = numbers.get("loss", self.state.get("loss"))
        self.update(stage=stage, step=step, max_steps=max_steps, loss=loss)
