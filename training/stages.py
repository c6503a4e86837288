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
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from training import early_stopping
from training.device import ranks
from training.device.fused_head import score_only_labels
from training.device.precision import train_in_bf16
from training.device.shared_prefix import share_prefix
from training.eval.evaluate import EvalSettings
from training.gate import GateConfig, parse_margins
from training.lora import lora_config
from training.sampling import seeded_sample

Row = dict[str, Any]
logger = logging.getLogger(__name__)
LogFn = Callable[[str, int, int, dict[str, float]], None]


# Measured with bench/train_throughput.py on a 2-core CPU (SmolLM2-135M, LoRA r=16): DPO ran
# 1.3x faster per token at 2 rows a step than at 4 (SFT the same at 2 and 4; 1 is slower):
# the 49k-wide logits of a larger batch outgrow the caches. A GPU wants larger batches.
CPU_TRAIN_BATCH_SIZE = 2
GPU_TRAIN_BATCH_SIZE = 8


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


@dataclass
class RoundConfig:
    """Hyperparameters and inputs of one round (built by the CLI from Settings)."""

    sft_epochs: float = 2.0
    dpo_epochs: float = 1.0
    sft_steps: int = 0  # > 0: exactly this many SFT steps instead of epochs
    dpo_steps: int = 0
    max_steps: int = 0  # > 0: cap on each stage's steps
    batch_size: int = CPU_TRAIN_BATCH_SIZE
    grad_accum: int = 1
    sft_learning_rate: float = 6e-4
    dpo_learning_rate: float = 1e-4  # by measurement (app/config.py)
    dpo_beta: float = 0.1
    dpo_loss_type: str = "sigmoid"  # TRL's loss_type: sigmoid, ipo, robust, hinge
    dpo_label_smoothing: float = 0.0  # robust DPO: the share of picks assumed flipped
    dpo_sft_weight: float = 1.0  # > 0: plus this times the chosen replies' NLL (RPO)
    # KTO runs only with at least this many train rows, both labels among them: a handful
    # of thumbs of one kind gives the KL estimate and the class weights nothing to stand on.
    kto_min_rows: int = 8
    kto_epochs: float = 1.0
    kto_learning_rate: float = 2e-5
    kto_beta: float = 0.1
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0  # by measurement: app/config.py
    lora_targets: str = "all-linear"
    max_length: int = 512
    warmup_steps: int = 0
    save_steps: int = 20
    seed: int = 42
    # Early stopping (training/early_stopping.py): a stage with at least this many train
    # rows holds this share of them out and stops when their loss has not improved for
    # `early_stopping_patience` evaluations; patience 0 turns it off. 160 rows: a 10%
    # share is then 16 rows. By measurement (the triage benchmark), a 4-row split's loss
    # picked an early checkpoint that answered none of the held-out items right where the
    # same stage trained to the end answered 45%.
    validation_share: float = 0.1
    early_stopping_patience: int = 2
    early_stopping_min_rows: int = 160
    gradient_checkpointing: bool | None = None  # None: only with a 4-bit base (resolved())
    precompute_ref_log_probs: bool = True
    qlora: bool | None = None  # 4-bit base on CUDA; None: where it saves memory (resolved())
    # On a CPU: matmuls in bf16 (autocast); None: where the CPU has bf16 instructions
    # (training/device/precision.py, resolved()). A GPU always trains in bf16.
    bf16: bool | None = None
    liger_kernel: bool = False  # TRL's use_liger_kernel (CUDA, the liger-kernel package)
    padding_free: bool = False  # SFT rows concatenated without padding (TRL padding_free)
    share_prefix: bool = True  # a batch's common start runs once (training/device/shared_prefix.py)
    serve_in_4bit: bool = False  # how `serve` loads the base: the gate evaluates the same way
    infer_bf16: bool | None = None  # and in what dtype it answers (precision.inference_dtype)
    system_prompt: str = ""
    seed_file: Path | None = None
    # General prompts the bare base answers at snapshot time; its answers join SFT so the
    # round keeps the base model's general behaviour while it learns the domain.
    replay_file: Path | None = None
    replay_max_new_tokens: int = 128
    replay_cache_dir: Path | None = None  # None: replay answers are generated every round
    # fresh: a new adapter on every train row; continue: go on from the promoted adapter on
    # the rows new since its round plus this share of the older ones (training/continuation.py).
    # Every entry point takes the mode from the settings (default continue, by measurement);
    # a config built by hand trains fresh unless told.
    round_mode: str = "fresh"
    round_replay_share: float = 0.25
    dedup_threshold: float = 0.85
    # At least this many distinct prompts held out (feedback.split.plan_split); 0 = the
    # plain 10% hash split. `tuneloop train` passes TUNELOOP_HELDOUT_MIN_ITEMS.
    heldout_min_items: int = 0
    pii_region: str = "US"
    eval: EvalSettings = field(default_factory=EvalSettings)
    gate: GateConfig = field(default_factory=GateConfig)
    tracker: str = "none"

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


def default_train_batch_size() -> int:
    """Rows per training step when the settings name none: small on a CPU, larger on a GPU."""
    return GPU_TRAIN_BATCH_SIZE if on_cuda() else CPU_TRAIN_BATCH_SIZE


# QLoRA (a 4-bit NF4 base) stores ~0.56 bytes per parameter against bf16's 2, and costs
# speed: every matmul dequantises. The ~1.44 bytes/parameter it saves matter once the bf16
# weights crowd out what a step needs besides them (activations for batch 8 x 512 tokens,
# the evaluation's generation): auto turns it on when the bf16 base would fill more than this
# share of one GPU's memory (with FSDP / ZeRO-3, the share of one shard). A 24 GB card: from
# ~3B parameters (a 7-8B model gets QLoRA, SmolLM2 135M-1.7B trains in bf16); 80 GB: ~10B;
# an H200 (141 GB): ~17.6B. Reasoned from sizes, not yet measured on a GPU.
QLORA_WEIGHT_SHARE = 0.25


def qlora_saves_memory(parameters: int, gpu_bytes: int, shards: int = 1) -> bool:
    """Whether a bf16 base of `parameters` would take more than QLORA_WEIGHT_SHARE of a GPU
    with `gpu_bytes` of memory (its weights split over `shards` processes)."""
    return 2 * parameters / max(shards, 1) > QLORA_WEIGHT_SHARE * gpu_bytes


def count_parameters(model_dir: Path) -> int:
    """Parameters in a model directory's safetensors files, read from their headers only."""
    from safetensors import safe_open

    total = 0
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as weights:
            for name in weights.keys():
                total += math.prod(weights.get_slice(name).get_shape())
    return total


def resolved(config: RoundConfig, model_dir: Path) -> RoundConfig:
    """`config` with its automatic choices made for this machine: QLoRA only on CUDA (and,
    unless set, where it saves memory that matters), gradient checkpointing (unless set)
    only with a 4-bit base, where memory is what is short, bf16 on a GPU and (unless set)
    on a CPU with bf16 instructions."""
    import dataclasses

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


def on_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def deepspeed_on_cpu() -> None:
    """Tell DeepSpeed, where installed, that this process runs on the CPU: accelerate
    imports it to set up or unwrap a model, and left to guess it prints a warning on stdout,
    ahead of `tuneloop train --json`'s result."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")


def stage_steps(rows: int, config: RoundConfig, stage: str) -> int:
    """How many optimizer steps a stage runs for `rows` training rows. A step takes
    `batch_size` rows in each process of a launched round, so an epoch has fewer steps."""
    explicit = {"sft": config.sft_steps, "dpo": config.dpo_steps}.get(stage, 0)
    epochs = {"sft": config.sft_epochs, "dpo": config.dpo_epochs}.get(stage, config.kto_epochs)
    per_step = config.batch_size * ranks.world_size()
    per_epoch = math.ceil(math.ceil(rows / per_step) / config.grad_accum)
    steps = explicit or max(1, math.ceil(per_epoch * epochs))
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


def base_load_kwargs(config: RoundConfig, *, cuda: bool) -> dict[str, Any]:
    """`from_pretrained` arguments for the training base: on CPU fp32, or bf16 where the
    round trains in bf16 (autocast would otherwise cast every frozen weight again on every
    forward pass; the LoRA weights stay fp32); on CUDA bf16, each process on its own GPU,
    4-bit NF4 with QLoRA. Under FSDP / ZeRO-3 the launcher places the weights, and the 4-bit
    ones are stored as bf16 so that they can be sharded."""
    import torch

    if not cuda:
        return {"dtype": torch.bfloat16 if config.bf16 else torch.float32}
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16}
    sharded = ranks.sharded()
    if not sharded:
        kwargs["device_map"] = {"": ranks.local_rank()}
    if config.qlora:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_storage=torch.bfloat16 if sharded else torch.uint8,
        )
    return kwargs


def load_base(model_dir: Path, config: RoundConfig) -> Any:
    """The base model for training (see base_load_kwargs); `config` as resolved()."""
    from transformers import AutoModelForCausalLM

    cuda = on_cuda()
    if not cuda:
        deepspeed_on_cpu()
    model = AutoModelForCausalLM.from_pretrained(model_dir, **base_load_kwargs(config, cuda=cuda))
    if not cuda:
        logger.info(
            "training on the CPU in %s",
            "bf16 (TUNELOOP_TRAIN_BF16; the LoRA weights in fp32)" if config.bf16 else "fp32",
        )
        return model
    if config.qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(config.gradient_checkpointing)
        )
    return model


def load_tokenizer(model_dir: Path) -> Any:
    """The model's tokenizer, with a pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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
    model, peft_config = _trainable(model_dir, config, init_adapter)
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
    model, peft_config = _trainable(model_dir, config, sft_adapter)
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


def _trainable(model_dir: Path, config: RoundConfig, adapter: Path | None) -> tuple[Any, Any]:
    """(model, peft_config) for a trainer: the base with `adapter` loaded trainable (its own
    LoRA shape), or the bare base and a fresh LoRA config from the settings."""
    base = load_base(model_dir, config)
    if config.share_prefix and not ranks.sharded():  # sharded weights: the plain forward
        share_prefix(base)
    score_only_labels()  # a CPU projects only the trained positions, as a GPU does
    if adapter is not None:
        from peft import LoraConfig, PeftModel

        # The adapter keeps its own shape; dropout is a training choice, this round's.
        saved = LoraConfig.from_pretrained(str(adapter))
        saved.lora_dropout = config.lora_dropout
        model = PeftModel.from_pretrained(base, str(adapter), config=saved, is_trainable=True)
        return model, None
    return base, lora_config(
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        target_modules=config.lora_targets,
    )


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
