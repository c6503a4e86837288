"""One round's stages: SFT, DPO, KTO, LoRA, precision, curation and evaluation budget."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings

from feedback.split import HELDOUT_MIN_ITEMS


class TrainingSettings(BaseSettings):
    """One round's stages: SFT, DPO, KTO, LoRA, precision, curation and evaluation budget.

    Fields only: `app.config.Settings` joins the groups and reads the environment.
    """

    # --- Training rounds: SFT, DPO, evaluation gate, schedule ---
    # Core: one round's hyperparameters (defaults work for the embedded SmolLM2 on CPU).
    sft_epochs: float = Field(default=2.0, gt=0.0, le=100.0, description="SFT epochs per round.")
    # Small data gets more passes: with few rows `sft_epochs` is only a handful of steps.
    # 100 against off, one round on each development domain under three seeds, paired by
    # seed: bench/results/loop_compare-20261207T140557Z.json; 150 was no better and slower:
    # loop_compare-20261208T015606Z.json (docs/training-rounds.md, "SFT steps")
    sft_min_steps: int = Field(
        default=100,
        ge=0,
        description=(
            "> 0: SFT runs at least this many steps where `TUNELOOP_SFT_EPOCHS` would take "
            "fewer (more epochs for fewer rows, at most `TUNELOOP_SFT_MAX_EPOCHS`); 0: off."
        ),
    )
    sft_max_epochs: float = Field(
        default=8.0,
        gt=0.0,
        le=100.0,
        description="The most epochs `TUNELOOP_SFT_MIN_STEPS` may stretch SFT to.",
    )
    dpo_epochs: float = Field(default=1.0, gt=0.0, le=100.0, description="DPO epochs per round.")
    sft_steps: int = Field(
        default=0, ge=0, description="> 0: exactly this many SFT steps instead of epochs."
    )
    dpo_steps: int = Field(
        default=0, ge=0, description="> 0: exactly this many DPO steps instead of epochs."
    )
    train_max_steps: int = Field(
        default=0, ge=0, description="A cap on each stage's steps; 0: none."
    )
    train_batch_size: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Rows per training step per device; unset: 2 on a CPU, 8 on a GPU.",
    )
    train_grad_accum: int = Field(
        default=1, ge=1, le=1024, description="Gradient accumulation steps."
    )
    sft_learning_rate: float = Field(default=6e-4, gt=0.0, le=1.0, description="SFT learning rate.")
    # Sigmoid DPO plus the chosen replies' NLL (weight 1, RPO) at 1e-4, by measurement
    # (bench/preference_sweep.py on three triage rounds, README "Training rounds"): IPO alone took a
    # 91% SFT stage to 84%; with the NLL term the stage stayed at 92% and gained +6 and +8
    # on two others, and under four trainer seeds it averaged 13 points above IPO alone.
    # Without it DPO pushes the chosen replies' likelihood down with the rejected ones'.
    dpo_learning_rate: float = Field(
        default=1e-4,
        gt=0.0,
        le=1.0,
        description="DPO learning rate (1e-4 by measurement: see *Training rounds*).",
    )
    dpo_beta: float = Field(
        default=0.1, gt=0.0, le=10.0, description="DPO strength (for IPO, its regularisation τ)."
    )
    # TRL's DPO losses: sigmoid (the DPO paper), ipo (bounded, for pairs a model already
    # separates), robust (expects a share of flipped picks: dpo_label_smoothing), hinge.
    dpo_loss_type: str = Field(
        default="sigmoid",
        pattern="^(sigmoid|ipo|robust|hinge)$",
        description=(
            "TRL's DPO loss: `sigmoid` (the DPO paper's), `ipo`, `robust` (expects "
            "`TUNELOOP_DPO_LABEL_SMOOTHING` of the picks flipped), `hinge`; chosen by "
            "measurement (see *Training rounds*)."
        ),
    )
    dpo_label_smoothing: float = Field(
        default=0.0,
        ge=0.0,
        lt=0.5,
        description="`robust` DPO: the share of picks assumed flipped (below 0.5).",
    )
    dpo_sft_weight: float = Field(
        default=1.0,
        ge=0.0,
        le=100.0,
        description=(
            "> 0: the chosen replies' negative log-likelihood added to the DPO loss with "
            "this weight (RPO; TRL's `sft` loss); 0: the DPO loss alone."
        ),
    )
    kto_min_rows: int = Field(
        default=8,
        ge=1,
        description=(
            "Unpaired 👍/👎 train rows (both kinds among them) a round needs to run its KTO stage."
        ),
    )
    kto_epochs: float = Field(default=1.0, gt=0.0, le=100.0, description="KTO epochs per round.")
    kto_learning_rate: float = Field(
        default=2e-5,
        gt=0.0,
        le=1.0,
        description="KTO learning rate (measured against 1e-4 and 3e-4: see *Training rounds*).",
    )
    kto_beta: float = Field(default=0.1, gt=0.0, le=10.0, description="KTO KL strength.")
    lora_r: int = Field(default=16, ge=1, le=1024, description="LoRA rank of a fresh adapter.")
    lora_alpha: int = Field(default=32, ge=1, le=4096, description="LoRA alpha of a fresh adapter.")
    # No dropout by default: on a CPU drawing its random masks took a third of a training
    # step (bench/shared_prefix.py), and a round's few epochs give it little to regularise.
    lora_dropout: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description=(
            "LoRA dropout of this round, also for an adapter it continues; off by default"
            " (on a CPU its random masks took a third of a step)."
        ),
    )
    lora_targets: str = Field(
        default="all-linear",
        description="`all-linear` or comma-separated module names the LoRA adapter wraps.",
    )
    train_max_length: int = Field(
        default=512,
        ge=32,
        le=131072,
        description=(
            "Tokens per training row; a row whose prompt alone fills it is left out (with"
            " a warning in the log), and a stage with no other row fails the round and "
            "says so."
        ),
    )
    train_save_steps: int = Field(
        default=20,
        ge=1,
        description=(
            "Checkpoint interval in steps (a stage that validates saves at each "
            "evaluation instead)."
        ),
    )
    train_seed: int = Field(
        default=42, description="The training seed (data order, samples, validation split)."
    )
    train_warmup_steps: int = Field(
        default=0, ge=0, description="Learning-rate warmup steps at the start of each stage."
    )
    train_validation_share: float = Field(
        default=0.1,
        gt=0.0,
        le=0.5,
        description=(
            "Share of a stage's train rows held out as its validation split (4 to 64 rows)."
        ),
    )
    train_early_stopping_patience: int = Field(
        default=2,
        ge=0,
        description=(
            "Stop a stage after this many evaluations without a lower validation loss; 0:"
            " no validation split, every planned step runs."
        ),
    )
    train_early_stopping_min_rows: int = Field(
        default=160,
        ge=8,
        description=(
            "Train rows a stage needs before it holds any out for validation (at 10%, 16 "
            "rows: a smaller split's loss is too noisy to pick a checkpoint by)."
        ),
    )
    # GPU memory and speed; "auto" (unset) decides per machine (training/round_config.py).
    gradient_checkpointing: bool | None = Field(
        default=None,
        description="Trade speed for memory; `auto` (unset): only with a 4-bit (QLoRA) base.",
    )
    train_bf16: bool | None = Field(
        default=None,
        description=(
            "CPU training in bf16 (matmuls under autocast, the base in bf16, LoRA weights"
            " and optimiser in fp32); `auto` (unset): where the CPU has bf16 instructions"
            " (`avx512_bf16` or `amx_bf16`) and the round is one process. A GPU always "
            "trains in bf16."
        ),
    )
    infer_bf16: bool | None = Field(
        default=None,
        description=(
            "Answer in bf16: the chat, `generate`, `eval`, `pairs generate` and a round's"
            " replay and evaluation (adapter weights stay fp32); `auto` (unset): on a CPU"
            " with bf16 instructions, the checkpoint's dtype on a GPU. The chat and the "
            "gate answer alike."
        ),
    )
    precompute_ref_log_probs: bool = Field(
        default=True, description="DPO and KTO: the reference log-probs once, before training."
    )
    qlora: bool | None = Field(
        default=None,
        description=(
            "CUDA only: train on a 4-bit NF4 base; `auto` (unset): when the bf16 base "
            "would take over a quarter of the GPU's memory."
        ),
    )
    liger_kernel: bool = Field(
        default=False, description="CUDA: TRL's Liger kernels (needs `liger-kernel`)."
    )
    padding_free: bool = Field(default=False, description="CUDA: SFT rows packed without padding.")
    share_prefix: bool = Field(
        default=True,
        description=(
            "Training: the start every row of a batch shares (the system prompt; a DPO "
            "pair's prompt) runs once per batch, its attention cache repeated for each "
            "row; same loss and gradients."
        ),
    )
    heldout_min_items: int = Field(
        default=HELDOUT_MIN_ITEMS,
        ge=0,
        description=(
            "Hold out at least this many distinct prompts (never more than a third of "
            "them) when 10% of the prompts is fewer; 0: the plain 10% hash split."
        ),
    )
    dedup_threshold: float = Field(
        default=0.85,
        gt=0.0,
        lt=1.0,
        description="Near-duplicate Jaccard threshold (MinHash) of a round's curation.",
    )
    pii_region: str = Field(
        default="US",
        description="The country whose phone numbers PII scrubbing reads without a country code.",
    )
    eval_generate: bool = Field(
        default=True, description="A round generates greedy replies to score the rubric."
    )
    eval_max_prompts: int = Field(
        default=24, ge=1, description="Held-out prompts a round generates replies for."
    )
    eval_max_new_tokens: int = Field(
        default=96, ge=1, le=4096, description="Token budget of a round's evaluation replies."
    )
    eval_batch_size: int = Field(
        default=8, ge=1, le=1024, description="Rows per batch of a round's evaluation replies."
    )
    replay_max_new_tokens: int = Field(
        default=128,
        ge=1,
        le=4096,
        description="Token budget of the base model's answers to the replay prompts that "
        "join each round's SFT rows.",
    )
