"""The configuration of one round (`RoundConfig`), built from the one Settings object, and
the automatic choices made for the machine it trains on (`resolved`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from training.device import ranks
from training.device.machine import (
    count_parameters,
    default_train_batch_size,
    on_cuda,
    qlora_saves_memory,
)
from training.device.precision import train_in_bf16
from training.eval.evaluate import EvalSettings
from training.gate import GateConfig, parse_margins


@dataclass
class RoundConfig:
    """Hyperparameters and inputs of one round. Built from Settings (`from_settings`) and
    nowhere else: no field has a default of its own, so a default lives in one place, the
    Setting, and what a test or a benchmark runs differs from what users get only where it
    says so (an override)."""

    sft_epochs: float
    dpo_epochs: float
    sft_steps: int  # > 0: exactly this many SFT steps instead of epochs
    # The data-size rule: at least this many SFT steps (0: off), epochs capped at the max.
    sft_min_steps: int
    sft_max_epochs: float
    dpo_steps: int
    max_steps: int  # > 0: cap on each stage's steps
    batch_size: int
    grad_accum: int
    sft_learning_rate: float
    dpo_learning_rate: float  # by measurement (app/config.py)
    dpo_beta: float
    dpo_loss_type: str  # TRL's loss_type: sigmoid, ipo, robust, hinge
    dpo_label_smoothing: float  # robust DPO: the share of picks assumed flipped
    dpo_sft_weight: float  # > 0: plus this times the chosen replies' NLL (RPO)
    # KTO runs only with at least this many train rows, both labels among them: a handful
    # of thumbs of one kind gives the KL estimate and the class weights nothing to stand on.
    kto_min_rows: int
    kto_epochs: float
    kto_learning_rate: float
    kto_beta: float
    lora_r: int
    lora_alpha: int
    lora_dropout: float  # by measurement: app/config.py
    lora_targets: str
    max_length: int
    warmup_steps: int
    save_steps: int
    seed: int
    # Early stopping (training/early_stopping.py): a stage with at least this many train
    # rows holds this share of them out and stops when their loss has not improved for
    # `early_stopping_patience` evaluations; patience 0 turns it off. 160 rows: a 10%
    # share is then 16 rows. By measurement (the triage benchmark), a 4-row split's loss
    # picked an early checkpoint that answered none of the held-out items right where the
    # same stage trained to the end answered 45%.
    validation_share: float
    early_stopping_patience: int
    early_stopping_min_rows: int
    gradient_checkpointing: bool | None  # None: only with a 4-bit base (resolved())
    precompute_ref_log_probs: bool
    qlora: bool | None  # 4-bit base on CUDA; None: where it saves memory (resolved())
    # On a CPU: matmuls in bf16 (autocast); None: where the CPU has bf16 instructions
    # (training/device/precision.py, resolved()). A GPU always trains in bf16.
    bf16: bool | None
    liger_kernel: bool  # TRL's use_liger_kernel (CUDA, the liger-kernel package)
    padding_free: bool  # SFT rows concatenated without padding (TRL padding_free)
    share_prefix: bool  # a batch's common start runs once (training/device/shared_prefix.py)
    serve_in_4bit: bool  # how `serve` loads the base: the gate evaluates the same way
    infer_bf16: bool | None  # and in what dtype it answers (precision.inference_dtype)
    system_prompt: str
    seed_file: Path | None
    # General prompts the bare base answers at snapshot time; its answers join SFT so the
    # round keeps the base model's general behaviour while it learns the domain.
    replay_file: Path | None
    replay_max_new_tokens: int
    replay_cache_dir: Path | None  # None: replay answers are generated every round
    # fresh: a new adapter on every train row; continue: go on from the promoted adapter on
    # the rows new since its round plus this share of the older ones (training/continuation.py).
    round_mode: str
    round_replay_share: float
    dedup_threshold: float
    # At least this many distinct prompts held out (feedback.split.plan_split); 0 = the
    # plain 10% hash split.
    heldout_min_items: int
    pii_region: str
    eval: EvalSettings
    gate: GateConfig
    tracker: str

    @classmethod
    def from_settings(cls, settings: Any, *, judge: Any = None, **overrides: Any) -> RoundConfig:
        """The round's configuration from the one Settings object (`app.config.Settings`),
        read once: every field of the same name (or `train_<name>`), the domain's files,
        the evaluation and the whole gate, eval sets included (`judge`: the pairwise
        scorer's judge, which only `app/` can locate). `overrides` win (the CLI's options;
        None means "not given")."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            for name in (f.name, f"train_{f.name}"):
                if name in type(settings).model_fields:
                    values[f.name] = getattr(settings, name)
                    break
        data = Path(settings.data_dir)
        system_prompt = settings.system_prompt()
        values.update(
            batch_size=settings.train_batch_size or default_train_batch_size(),
            serve_in_4bit=settings.load_in_4bit,
            system_prompt=system_prompt,
            seed_file=data / "seed_sft.jsonl",
            replay_file=data / "replay_prompts.jsonl",
            replay_cache_dir=Path(settings.home) / "replay",
            eval=EvalSettings(
                batch_size=settings.eval_batch_size,
                max_length=settings.train_max_length,
                generate=settings.eval_generate,
                max_prompts=settings.eval_max_prompts,
                max_new_tokens=settings.eval_max_new_tokens,
                rubric_file=settings.rubric_file,
                general_file=data / "general_checks.jsonl",
                system_prompt=system_prompt,
                cache_dir=Path(settings.home) / "eval-cache",
            ),
            gate=GateConfig(
                margins=parse_margins(settings.gate_margins),
                eval_sets=tuple(
                    Path(p.strip()) for p in settings.gate_eval_sets.split(",") if p.strip()
                ),
                eval_scorer=settings.eval_scorer,
                rubric_file=settings.rubric_file,
                eval_max_new_tokens=settings.generate_max_new_tokens,
                eval_temperature=settings.generate_temperature,
                eval_batch_size=settings.generate_batch_size,
                load_in_4bit=settings.load_in_4bit,
                bf16=settings.infer_bf16,
                evals_dir=settings.evals_dir,
                min_items=settings.gate_min_items,
                judge=judge,
            ),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


# Passes without gradients (the validation split, DPO's and KTO's reference log-probs before
# the first step) keep no activations for a backward pass, so they take more rows a batch
# than training does: at least this many, whose shared system prompt then runs once for all.
NO_GRAD_BATCH_SIZE = 8


def no_grad_batch_size(config: RoundConfig) -> int:
    """Rows a batch for a stage's passes without gradients (NO_GRAD_BATCH_SIZE)."""
    return max(config.batch_size, NO_GRAD_BATCH_SIZE)


def resolved(config: RoundConfig, model_dir: Path) -> RoundConfig:
    """`config` with its automatic choices made for this machine: QLoRA only on CUDA (and,
    unless set, where it saves memory that matters), gradient checkpointing (unless set)
    only with a 4-bit base, where memory is what is short, bf16 on a GPU and (unless set)
    on a CPU with bf16 instructions."""

    qlora = False
    if on_cuda():
        if config.qlora is not None:
            qlora = config.qlora
        else:
            import torch

            gpu = torch.cuda.get_device_properties(ranks.local_rank()).total_memory
            shards = ranks.world_size() if ranks.sharded() else 1
            qlora = qlora_saves_memory(count_parameters(model_dir), gpu, shards)
    checkpointing = (
        qlora if config.gradient_checkpointing is None else config.gradient_checkpointing
    )
    bf16 = on_cuda() or train_in_bf16(config.bf16, cuda=False, launched=ranks.launched())
    return dataclasses.replace(config, qlora=qlora, gradient_checkpointing=checkpointing, bf16=bf16)
