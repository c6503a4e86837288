"""Early stopping of a training stage on the loss of a validation split of its own rows.

A stage with enough train rows (RoundConfig.early_stopping_min_rows) holds a seeded share
of them out (validation_share; 4 to 64 rows), has TRL evaluate them about six times over
the stage, and stops once the validation loss has not improved for `early_stopping_patience`
evaluations (transformers' EarlyStoppingCallback). The adapter the stage saves is then the
checkpoint with the lowest validation loss, not the last one.

The validation rows come from the stage's TRAIN rows, never from the held-out items the
gate compares versions on: choosing a checkpoint by the gate's items would let the gate
grade a choice made on its own answers, and its verdict would flatter every candidate.

Off under FSDP and DeepSpeed ZeRO-3: loading the best checkpoint at the end of training
goes through the launcher's sharded-checkpoint code, which is fragile with sharded
weights. Each stage writes what happened (rows, steps planned and run, the best step and
its validation loss, or why there was no split) to `<stage>/early_stopping.json`, which the
round's result and report carry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.device import ranks
from training.sampling import seeded_sample

if TYPE_CHECKING:
    from training.round_config import RoundConfig

Row = dict[str, Any]

VALIDATION_MIN_ROWS = 4  # fewer rows give a loss too noisy to stop on
VALIDATION_MAX_ROWS = 64  # more cost evaluation time and buy little precision
EVALS_PER_STAGE = 6
SUMMARY_FILE = "early_stopping.json"


@dataclass
class Split:
    """A stage's rows: those it trains on, those it validates on, and, when it validates on
    none, why not."""

    train: list[Row]
    validation: list[Row]
    off: str | None = None


def why_off(rows: int, config: RoundConfig) -> str | None:
    """Why a stage of `rows` train rows runs without a validation split, or None."""
    if config.early_stopping_patience <= 0:
        return "no validation split: early stopping is off (patience 0)"
    if ranks.deepspeed_zero3():
        return "no validation split: early stopping is off under DeepSpeed ZeRO-3 (sharded weights)"
    if ranks.fsdp():
        return "no validation split: early stopping is off under FSDP (sharded weights)"
    if rows < config.early_stopping_min_rows:
        return f"no validation split: {rows} rows < {config.early_stopping_min_rows}"
    return None


def validation_size(rows: int, share: float) -> int:
    """How many of `rows` train rows validate: `share` of them, 4 to 64, at most half."""
    wanted = max(VALIDATION_MIN_ROWS, min(VALIDATION_MAX_ROWS, round(rows * share)))
    return min(wanted, rows // 2)


def split_rows(
    rows: list[Row], config: RoundConfig, group: Callable[[Row], Any] | None = None
) -> Split:
    """`rows` split into train and validation rows (each in its original order), drawn
    with the round's seed, so a resumed round validates on the same rows. `group` (KTO's
    label) keeps each group's share in the validation rows, at least one of each, and at
    least one of each in the train rows."""
    off = why_off(len(rows), config)
    if off is not None:
        return Split(rows, [], off)
    size = validation_size(len(rows), config.validation_share)
    held = set(seeded_sample(rows, size, config.seed, group, leave=1))
    return Split(
        [r for i, r in enumerate(rows) if i not in held],
        [r for i, r in enumerate(rows) if i in held],
    )


def eval_every(steps: int) -> int:
    """Steps between two evaluations of the validation split: about a sixth of the stage."""
    return max(1, math.ceil(steps / EVALS_PER_STAGE))


def trainer_args(steps: int, batch_size: int) -> dict[str, Any]:
    """TRL config arguments for a stage of `steps` steps that validates: evaluate and save
    together (the best checkpoint can only be one that was saved), keep the lowest
    validation loss, and restore the patience count when the stage resumes."""
    every = eval_every(steps)
    return {
        "eval_strategy": "steps",
        "eval_steps": every,
        "save_steps": every,
        "load_best_model_at_end": True,
        "metric_for_best_model": "eval_loss",
        "greater_is_better": False,
        "per_device_eval_batch_size": batch_size,
        "restore_callback_states_from_checkpoint": True,
    }


def callbacks(config: RoundConfig, split: Split) -> list[Any]:
    """The early-stopping callback for a stage that validates; none for one that does not."""
    if not split.validation:
        return []
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience)]


def record(stage_dir: Path, state: Any, split: Split, train_rows: int) -> dict[str, Any]:
    """What early stopping did in a stage, from the trainer's final `state`; written to
    `stage_dir/early_stopping.json` by the main process. `train_rows`: the rows trained
    on (a short stage takes a sample of the split's train rows)."""
    validates = bool(split.validation)
    summary = {
        "train_rows": train_rows,
        "validation_rows": len(split.validation),
        "planned_steps": int(state.max_steps),
        "steps_run": int(state.global_step),
        "stopped_early": validates and int(state.global_step) < int(state.max_steps),
        "best_step": state.best_global_step if validates else None,
        "best_validation_loss": state.best_metric if validates else None,
        "off": split.off,
    }
    if ranks.is_main():
        (stage_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def read(stage_dir: Path) -> dict[str, Any] | None:
    """A stage's early_stopping.json, or None when it has none (trained before it existed)."""
    path = stage_dir / SUMMARY_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def describe(summary: dict[str, Any]) -> str:
    """One line for a person: whether the stage stopped early, and on what."""
    planned, run = summary["planned_steps"], summary["steps_run"]
    if summary["stopped_early"]:
        steps = f"stopped early at step {run} of {planned}"
    else:
        steps = f"ran {run} of {planned} steps"
    if summary.get("off"):
        return f"{steps}; {summary['off']}"
    loss = summary.get("best_validation_loss")
    shown = "-" if loss is None else f"{loss:.4f}"
    return (
        f"{steps}; best step {summary.get('best_step')}, validation loss {shown} "
        f"({summary['validation_rows']} validation rows)"
    )
