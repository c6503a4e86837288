"""The training stages of a round, each one TRL trainer built from our settings.

SFT: `SFTTrainer` on the snapshot's conversations as prompt/completion rows, a fresh LoRA
adapter, loss on the final assistant reply only (TRL's completion-only loss). DPO:
`DPOTrainer` continuing that adapter on the preference pairs; TRL copies it into a frozen
"ref" adapter, so the reference is base + SFT. KTO: `KTOTrainer` continuing the same SFT
adapter on unpaired 👍/👎 replies, the reference again base + SFT (TRL makes the same "ref"
copy for a PeftModel passed with ref_model=None). Nothing here loops over batches: TRL owns
the loop, we own the configs and one callback that records progress and stops a run whose
loss is not finite.

Speed choices (measured on CPU by bench/train_throughput.py): no gradient checkpointing
unless the base is 4-bit (TRL turns it on by default, ~25% slower on CPU), reference
log-probs computed once before DPO instead of on every step, 2 rows a step on a CPU (TRL's
default is 8), and per-stage step counts from the data size. On CUDA: bf16, QLoRA only
where it saves memory that matters (resolved()); the CUDA choices await a GPU measurement
(bench/gpu_check.sh). Under torchrun / accelerate launch every process trains (ranks.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training import early_stopping
from training.device import ranks
from training.models import load_tokenizer, trainable
from training.round_config import RoundConfig, resolved
from training.trainer_args import dpo_config, kto_config, rows_seen, sft_config, stage_steps

Row = dict[str, Any]
logger = logging.getLogger(__name__)
LogFn = Callable[[str, int, int, dict[str, float]], None]


class NonFiniteLossError(Exception):
    """Training produced a NaN or infinite loss; the round stops and promotes nothing."""


class RowsTooLongError(Exception):
    """No row of a stage leaves room for its reply within the training length."""


def fitting_rows(
    rows: list[Row], tokenizer: Any, max_length: int, stage: str, prompt: Callable[[Row], Any]
) -> list[Row]:
    """The rows whose prompt leaves room for a reply within `max_length` tokens. TRL cuts
    the others down to no reply at all, which trains nothing, and with none left it fails
    without saying why. A stage with no such row raises RowsTooLongError."""

    def tokens(row: Row) -> int:
        text = prompt(row)
        if isinstance(text, str):
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])
        out = tokenizer.apply_chat_template(
            text, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return len(out["input_ids"])

    keep = [row for row in rows if tokens(row) < max_length]
    if rows and not keep:
        raise RowsTooLongError(
            f"{stage}: the prompt of every one of its {len(rows)} rows fills the training "
            f"length ({max_length} tokens), leaving no room for the reply: raise "
            "TUNELOOP_TRAIN_MAX_LENGTH or shorten the system prompt"
        )
    if len(keep) < len(rows):
        logger.warning(
            "%s: %d of %d rows left out: their prompt fills the training length "
            "(TUNELOOP_TRAIN_MAX_LENGTH=%d tokens)",
            stage, len(rows) - len(keep), len(rows), max_length,
        )  # fmt: skip
    return keep


def progress_callback(stage: str, log: LogFn) -> Any:
    """A TRL callback that reports each logged step and stops on a non-finite loss."""
    from transformers import TrainerCallback

    class RoundProgress(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            numbers = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, int | float)}
            for key in ("loss", "grad_norm"):
                if key in numbers and not math.isfinite(numbers[key]):
                    raise NonFiniteLossError(
                        f"{stage} {key} is {numbers[key]} at step {state.global_step}; "
                        "check the learning rate, the data and the base model's weights"
                    )
            log(stage, int(state.global_step), int(state.max_steps), numbers)

    return RoundProgress()


def _dataset(rows: list[Row], stage_dir: Path, name: str = "rows") -> Any:
    """The rows as a `datasets.Dataset`. In a launched round it is saved in the stage folder
    and loaded from there by every process: TRL caches what it computes once (DPO's
    reference log-probs) beside a dataset's files, and an in-memory dataset's cache would
    land in each process's own temporary folder, out of the other processes' sight."""
    import shutil

    from datasets import Dataset, load_from_disk

    data = Dataset.from_list(rows)
    if not ranks.launched():
        return data
    folder = stage_dir / name
    if ranks.is_main():
        shutil.rmtree(folder, ignore_errors=True)
        data.save_to_disk(str(folder))
    ranks.barrier()
    return load_from_disk(str(folder))


def _last_checkpoint(folder: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def train_sft(
    model_dir: Path,
    rows: list[Row],
    stage_dir: Path,
    config: RoundConfig,
    log: LogFn,
    init_adapter: Path | None = None,
) -> Path:
    """Train a LoRA adapter with SFT: a fresh one, or `init_adapter`'s weights trained on
    (a round that continues the promoted version). Returns `stage_dir/adapter`. Resumes
    from the last checkpoint in `stage_dir/checkpoints` when there is one. With enough
    rows a validation split of them stops the stage early (training/early_stopping.py)."""
    from trl import SFTTrainer

    from training.datasets import final_turn_rows

    config = resolved(config, model_dir)
    tokenizer = load_tokenizer(model_dir)
    rows = fitting_rows(rows, tokenizer, config.max_length, "sft", lambda r: r["messages"][:-1])
    split = early_stopping.split_rows(rows, config)
    steps = stage_steps(len(split.train), config, "sft")
    args = sft_config(
        config, stage_dir / "checkpoints", steps, stage_dir.parent, bool(split.validation)
    )
    model, peft_config = trainable(model_dir, config, init_adapter)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=_dataset(final_turn_rows(split.train), stage_dir),
        eval_dataset=_validation(final_turn_rows(split.validation), stage_dir),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[progress_callback("sft", log), *early_stopping.callbacks(config, split)],
    )
    return _fit(trainer, stage_dir, split, len(split.train))


def train_dpo(
    model_dir: Path,
    pairs: list[Row],
    sft_adapter: Path | None,
    stage_dir: Path,
    config: RoundConfig,
    log: LogFn,
) -> Path:
    """Continue the SFT adapter with DPO (reference = the SFT adapter); with no SFT adapter,
    a fresh one against the bare base. Returns `stage_dir/adapter`. The validation split
    is taken before a short stage samples what it trains on (rows_seen)."""
    from trl import DPOTrainer

    config = resolved(config, model_dir)
    tokenizer = load_tokenizer(model_dir)
    pairs = fitting_rows(pairs, tokenizer, config.max_length, "dpo", lambda r: r["prompt"])
    split = early_stopping.split_rows(pairs, config)
    steps = stage_steps(len(split.train), config, "dpo")
    args = dpo_config(
        config, stage_dir / "checkpoints", steps, stage_dir.parent, bool(split.validation)
    )
    train = rows_seen(split.train, steps, config)
    return _continue_and_train(
        DPOTrainer, model_dir, tokenizer, train, split, sft_adapter, stage_dir, config, args,
        "dpo", log,
    )  # fmt: skip


def mixed_labels(rows: list[Row]) -> list[Row]:
    """`rows` with 👍 and 👎 interleaved (each in its own order). TRL's KTO reads rows in
    order and estimates its KL term from the other completions of the same batch; batches
    of one label only would also skew each step's loss towards that label."""
    up = [r for r in rows if r["label"]]
    down = [r for r in rows if not r["label"]]
    out: list[Row] = []
    for i in range(max(len(up), len(down))):
        out += [side[i] for side in (up, down) if i < len(side)]
    return out


def train_kto(
    model_dir: Path,
    rows: list[Row],
    sft_adapter: Path | None,
    stage_dir: Path,
    config: RoundConfig,
    log: LogFn,
) -> Path:
    """Continue the SFT adapter with KTO on unpaired 👍/👎 rows (reference = the SFT
    adapter); with no SFT adapter, a fresh one against the bare base. A KTO step needs at
    least 2 rows (the KL term compares a reply with the others of its batch), so the batch
    size is raised to 2 when set lower. The validation split keeps both labels, both
    sides interleaved like the training rows. Returns `stage_dir/adapter`."""
    import dataclasses

    from trl import KTOTrainer

    config = resolved(config, model_dir)
    if config.batch_size < 2:
        config = dataclasses.replace(config, batch_size=2)
    rows = [{k: r[k] for k in ("prompt", "completion", "label")} for r in rows]
    tokenizer = load_tokenizer(model_dir)
    rows = fitting_rows(rows, tokenizer, config.max_length, "kto", lambda r: r["prompt"])
    label = lambda r: bool(r["label"])  # noqa: E731
    split = early_stopping.split_rows(rows, config, group=label)
    split.validation = mixed_labels(split.validation)
    steps = stage_steps(len(split.train), config, "kto")
    train = mixed_labels(rows_seen(split.train, steps, config, group=label))
    args = kto_config(
        config, stage_dir / "checkpoints", steps, stage_dir.parent, train, bool(split.validation)
    )
    return _continue_and_train(
        KTOTrainer, model_dir, tokenizer, train, split, sft_adapter, stage_dir, config, args,
        "kto", log,
    )  # fmt: skip


def _continue_and_train(
    trainer_class: Any,
    model_dir: Path,
    tokenizer: Any,
    rows: list[Row],
    split: early_stopping.Split,
    sft_adapter: Path | None,
    stage_dir: Path,
    config: RoundConfig,
    args: Any,
    stage: str,
    log: LogFn,
) -> Path:
    """A preference stage (DPO, KTO) on `rows` (validating on `split.validation`): continue
    the SFT adapter, whose frozen copy TRL makes the reference (`ref_model=None`), or train
    a fresh adapter against the bare base."""
    # what the stage trains on, in metrics.jsonl (a short round takes a sample: rows_seen)
    log(
        stage,
        0,
        int(args.max_steps),
        {"train_rows": float(len(rows)), "validation_rows": float(len(split.validation))},
    )
    model, peft_config = trainable(model_dir, config, sft_adapter)
    trainer = trainer_class(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=_dataset(rows, stage_dir),
        eval_dataset=_validation(split.validation, stage_dir),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[progress_callback(stage, log), *early_stopping.callbacks(config, split)],
    )
    return _fit(trainer, stage_dir, split, len(rows))


def _validation(rows: list[Row], stage_dir: Path) -> Any:
    """The validation rows as a dataset, or None when the stage has none."""
    return _dataset(rows, stage_dir, "validation") if rows else None


def _fit(trainer: Any, stage_dir: Path, split: early_stopping.Split, train_rows: int) -> Path:
    """Train (from the stage's last checkpoint, if any), record what early stopping did,
    and save the adapter: with a validation split, the best checkpoint's weights, which
    the trainer loaded back at the end (load_best_model_at_end)."""
    trainer.train(resume_from_checkpoint=_last_checkpoint(stage_dir / "checkpoints"))
    early_stopping.record(stage_dir, trainer.state, split, train_rows)
    return save_adapter(trainer, stage_dir / "adapter")


def save_adapter(trainer: Any, adapter: Path) -> Path:
    """Save the trained adapter with the trainer's own `save_model`, in every process: under
    FSDP / ZeRO-3 it gathers the shards, and only the main process writes. DPO's and KTO's
    frozen reference copy ("ref", saved in a subfolder) is dropped: the adapter that serves is
    "default". Every process waits for the files before it goes on to the next stage."""
    import shutil

    trainer.save_model(str(adapter))
    if trainer.accelerator.is_main_process:
        shutil.rmtree(adapter / "ref", ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return adapter
