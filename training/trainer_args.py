"""The TRL configs of a round's stages (`SFTConfig`, `DPOConfig`, `KTOConfig`) built from the
round's configuration, and how many steps and which rows each stage takes."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training import early_stopping
from training.device import ranks
from training.device.machine import on_cuda
from training.round_config import RoundConfig, no_grad_batch_size
from training.sampling import seeded_sample

Row = dict[str, Any]


def stage_steps(rows: int, config: RoundConfig, stage: str) -> int:
    """How many optimizer steps a stage runs for `rows` training rows. A step takes
    `batch_size` rows in each process of a launched round, so an epoch has fewer steps.
    SFT runs at least `sft_min_steps` (within `sft_max_epochs`) unless its steps are set."""
    explicit = {"sft": config.sft_steps, "dpo": config.dpo_steps}.get(stage, 0)
    epochs = {"sft": config.sft_epochs, "dpo": config.dpo_epochs}.get(stage, config.kto_epochs)
    per_step = config.batch_size * ranks.world_size()
    per_epoch = math.ceil(math.ceil(rows / per_step) / config.grad_accum)
    steps = explicit or max(1, math.ceil(per_epoch * epochs))
    if stage == "sft" and not explicit and config.sft_min_steps:
        # few rows: more epochs, up to the cap; enough rows: `sft_epochs` as set
        stretched = min(config.sft_min_steps, math.ceil(per_epoch * config.sft_max_epochs))
        steps = max(steps, stretched)
    return min(steps, config.max_steps) if config.max_steps else steps


def rows_seen(
    rows: list[Row], steps: int, config: RoundConfig, group: Callable[[Row], Any] | None = None
) -> list[Row]:
    """The rows a stage of `steps` steps will train on: all of them when the steps cover an
    epoch, otherwise a seeded sample of exactly as many as the steps take (kept in their
    order). DPO and KTO compute the reference log-probs of every row they are given before
    the first step; a `--max-steps 2` round on 200 pairs spent ~10 minutes on rows that
    were never trained on. `group` (KTO's label) keeps each group's share in the sample, at
    least one row of each. The same seed picks the same rows when a round resumes."""
    need = steps * config.batch_size * config.grad_accum * ranks.world_size()
    if need >= len(rows):
        return rows
    return [rows[i] for i in seeded_sample(rows, need, config.seed, group)]


def _common(
    config: RoundConfig, out_dir: Path, steps: int, stage: str, run_dir: Path, validate: bool
) -> dict:
    cuda = on_cuda()
    kwargs: dict[str, Any] = {
        "output_dir": str(out_dir),
        "max_steps": steps,
        "per_device_train_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "warmup_steps": config.warmup_steps,
        "logging_steps": 1,
        "logging_nan_inf_filter": False,  # a NaN loss must show (and stop the round)
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": 2,
        "seed": config.seed,
        "gradient_checkpointing": bool(config.gradient_checkpointing),
        "max_length": config.max_length,
        "bf16": cuda or bool(config.bf16),
        "use_cpu": not cuda,
        "disable_tqdm": True,
        "report_to": [],
        # every LoRA weight takes part in every forward pass (DPO's frozen "ref" copy has
        # no gradients), so DDP need not search the graph for unused ones on each step
        "ddp_find_unused_parameters": False,
    }
    if validate:  # evaluate on the stage's validation split, keep its best checkpoint
        kwargs.update(early_stopping.trainer_args(steps, no_grad_batch_size(config)))
    if config.liger_kernel:
        kwargs["use_liger_kernel"] = True
    if config.tracker != "none":
        from training.tracking import PROJECT, report_to, run_name

        kwargs.update(
            report_to=report_to(config.tracker, run_dir),
            project=PROJECT,
            run_name=run_name(run_dir, stage),
        )
    return kwargs


def sft_config(
    config: RoundConfig, out_dir: Path, steps: int, run_dir: Path, validate: bool = False
) -> Any:
    """The `SFTConfig` for a round's SFT stage (`validate`: it has a validation split)."""
    from trl import SFTConfig

    return SFTConfig(
        **_common(config, out_dir, steps, "sft", run_dir, validate),
        learning_rate=config.sft_learning_rate,
        # Rows are prompt/completion: the loss covers the final reply only (what an expert
        # wrote or vetted), never earlier model turns that are there as context.
        completion_only_loss=True,
        padding_free=config.padding_free,
    )


def _precompute_ref(config: RoundConfig) -> bool:
    """Reference log-probs once before training, unless DeepSpeed ZeRO-3 shards the model:
    its parameter prefetcher records the order of the first forward passes, and the
    reference pass (the "ref" adapter, no gradients) leaves a trace the first training step
    does not follow ("IndexError: pop from an empty deque" in DeepSpeed's
    partitioned_param_coordinator). Under ZeRO-3 they are computed with every step."""
    return config.precompute_ref_log_probs and not ranks.deepspeed_zero3()


def dpo_losses(config: RoundConfig) -> dict[str, Any]:
    """TRL's `loss_type` (and `loss_weights`) for the DPO stage: the preference loss alone,
    or with `dpo_sft_weight` > 0 plus the chosen replies' negative log-likelihood (RPO,
    Pang et al. 2024), which keeps the chosen answers likely while the margin grows."""
    if config.dpo_sft_weight <= 0:
        return {"loss_type": [config.dpo_loss_type]}
    return {
        "loss_type": [config.dpo_loss_type, "sft"],
        "loss_weights": [1.0, config.dpo_sft_weight],
    }


def dpo_config(
    config: RoundConfig, out_dir: Path, steps: int, run_dir: Path, validate: bool = False
) -> Any:
    """The `DPOConfig` for a round's DPO stage (`validate`: it has a validation split)."""
    from trl import DPOConfig

    return DPOConfig(
        **_common(config, out_dir, steps, "dpo", run_dir, validate),
        learning_rate=config.dpo_learning_rate,
        beta=config.dpo_beta,
        **dpo_losses(config),
        label_smoothing=config.dpo_label_smoothing,
        precompute_ref_log_probs=_precompute_ref(config),
        precompute_ref_batch_size=no_grad_batch_size(config),
    )


# TRL's KTO docs (after Eq. 8 of the KTO paper): weigh the classes so that
# desirable_weight * n_desirable / (undesirable_weight * n_undesirable) lies in [1, 4/3].
KTO_WEIGHT_RATIO = (1.0, 4 / 3)


def kto_weights(n_desirable: int, n_undesirable: int) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) for these class counts: both 1 when the
    ratio is already in KTO_WEIGHT_RATIO, otherwise the scarcer class is weighed up so
    that the ratio sits in the middle of the range (7/6), the other class keeping 1."""
    if n_desirable <= 0 or n_undesirable <= 0:
        return 1.0, 1.0
    low, high = KTO_WEIGHT_RATIO
    ratio = n_desirable / n_undesirable
    if low <= ratio <= high:
        return 1.0, 1.0
    middle = (low + high) / 2
    if ratio > high:  # more 👍 than 👎: weigh the 👎 up
        return 1.0, ratio / middle
    return middle / ratio, 1.0  # more 👎 (the common case: experts flag what is wrong)


def kto_config(
    config: RoundConfig,
    out_dir: Path,
    steps: int,
    run_dir: Path,
    rows: list[Row],
    validate: bool = False,
) -> Any:
    """The `KTOConfig` for a round's KTO stage, its class weights from `rows`' labels
    (`validate`: it has a validation split)."""
    from trl import KTOConfig

    n_desirable = sum(1 for r in rows if r["label"])
    desirable, undesirable = kto_weights(n_desirable, len(rows) - n_desirable)
    return KTOConfig(
        **_common(config, out_dir, steps, "kto", run_dir, validate),
        learning_rate=config.kto_learning_rate,
        beta=config.kto_beta,
        desirable_weight=desirable,
        undesirable_weight=undesirable,
        precompute_ref_log_probs=_precompute_ref(config),
        precompute_ref_batch_size=no_grad_batch_size(config),
    )
