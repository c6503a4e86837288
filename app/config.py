"""One settings object for tuneloop, read from `TUNELOOP_*` environment variables.

Built once at the edge (the CLI, a test fixture) and passed down; nothing below `app/`
reads the environment itself, so `feedback/` and `training/` stay importable anywhere.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from feedback.split import HELDOUT_MIN_ITEMS
from training.comparisons import MIN_ITEMS
from training.gate import DEFAULT_MARGINS, GateConfigError, parse_margins

# The repository's own data/ folder: the demo domain's system prompt, seed examples, rubric.
REPO_DATA_DIR = Path(__file__).resolve().parent.parent / "data"


class Settings(BaseSettings):
    """Everything an operator can set; every field is `TUNELOOP_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="TUNELOOP_", extra="ignore")

    home: Path = Field(
        default=Path("data/run"),
        description=(
            "Data directory: the database, converted models, adapters, rounds and logs "
            "(git-ignored)."
        ),
    )
    model: str | None = Field(
        default=None,
        description=(
            "A local Hugging Face model directory (or a `.gguf` file); unset: the "
            "embedded SmolLM2-135M-Instruct."
        ),
    )
    database_url: SecretStr | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL, e.g. `postgresql+psycopg://user:pw@host/db` for a team; "
            "unset: SQLite at `HOME/tuneloop.db`. Secret: shown with its password as "
            "`***`."
        ),
    )
    load_in_4bit: bool = Field(
        default=False, description="Load the base model 4-bit (NF4, bitsandbytes) for serving."
    )
    data_dir: Path = Field(
        default=REPO_DATA_DIR,
        description=(
            "The domain folder: `system_prompt.md` and the optional files of *Bring your "
            "own domain*."
        ),
    )

    # Generation defaults for the chat.
    max_new_tokens: int = Field(
        default=256,
        ge=1,
        le=8192,
        description="Chat reply token budget (generation default of the page and the API).",
    )
    temperature: float = Field(
        default=0.7, ge=0.0, le=5.0, description="Chat sampling temperature; 0 = greedy."
    )
    top_p: float = Field(default=0.9, gt=0.0, le=1.0, description="Chat nucleus sampling (top-p).")
    # The "compare" candidate is sampled differently from the main reply.
    compare_temperature: float = Field(
        default=1.0,
        ge=0.0,
        le=5.0,
        description="Sampling temperature of the second reply in *Compare*.",
    )
    # Longest prompt (system + history + new message) in tokens; older turns are trimmed.
    context_tokens: int = Field(
        default=2048,
        ge=64,
        description=(
            "Longest prompt in tokens (system prompt, history, new message); the oldest "
            "turns of a long chat are dropped first."
        ),
    )
    max_message_chars: int = Field(
        default=4000, ge=1, description="Longest message an expert may send."
    )
    max_reason_chars: int = Field(
        default=1000, ge=1, description="Longest reason an expert may give with a 👍/👎."
    )

    log_level: str = Field(
        default="INFO",
        pattern="^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$",
        description=(
            "tuneloop's log lines (what `serve` serves, why it fell back, refused logins,"
            " sync and `watch` decisions), to stderr and `HOME/logs/tuneloop.log`."
        ),
    )

    # --- Accounts and logins ---
    min_password_length: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Shortest password `users add` and `users passwd` accept (blank ones never).",
    )
    login_max_failures: int = Field(
        default=5, ge=1, description="Failed logins a user name may have before it is locked."
    )
    login_max_failures_per_address: int = Field(
        default=30,
        ge=1,
        description=(
            "Failed logins a client address may have before it is locked; behind a "
            "reverse proxy every user shares the proxy's address, so raise it there."
        ),
    )
    login_lockout_minutes: float = Field(
        default=15.0,
        gt=0.0,
        description="How long a lockout lasts (and how long failures are remembered).",
    )
    login_delay_seconds: float = Field(
        default=0.5,
        ge=0.0,
        le=60.0,
        description=(
            "Wait before the next try after a failed login, doubling per failure (at most 8 s)."
        ),
    )
    login_max_pending_per_address: int = Field(
        default=4,
        ge=1,
        description="Logins one client address may have in progress; more are refused unread.",
    )
    login_max_waiting: int = Field(
        default=64,
        ge=1,
        description="Logins waiting for a password check; past it the most suspect are refused.",
    )
    trusted_proxies: str = Field(
        default="",
        description="Comma-separated addresses or networks (e.g. 127.0.0.1,10.0.0.0/8) of "
        "reverse proxies whose X-Forwarded-For names the client; empty: trust no one.",
    )

    # --- What clients send: bounds and what the page shows ---
    import_max_line_kb: int = Field(
        default=1024, ge=1, description="Longest line `tuneloop import` reads, in KiB."
    )
    page_remote_content: bool = Field(
        default=False,
        description="Show links and remote images in chat messages; off: shown as text.",
    )

    # How often a running server checks the registry's CURRENT pointer, in seconds.
    adapter_poll_seconds: float = Field(
        default=1.0,
        gt=0.0,
        description="How often `serve` checks the `CURRENT` pointer, in seconds.",
    )
    # What generates the tokens: the built-in engine (transformers + PEFT, CPU or GPU) or
    # vLLM (CUDA only; `pip install 'tuneloop[vllm]'`), which loads LoRA versions at run time.
    backend: str = Field(
        default="builtin",
        pattern="^(builtin|vllm)$",
        description=(
            "What generates the tokens: `builtin` (transformers + PEFT, CPU or GPU) or "
            "`vllm` (a CUDA GPU; refused at start without CUDA)."
        ),
    )
    vllm_gpu_memory_utilization: float = Field(
        default=0.85, gt=0.0, le=1.0, description="vLLM: the share of GPU memory it may take."
    )
    vllm_max_loras: int = Field(
        default=4, ge=1, le=64, description="vLLM: adapter versions on the GPU at once."
    )
    vllm_max_lora_rank: int = Field(
        default=64, ge=1, le=512, description="vLLM: the largest LoRA rank it accepts."
    )
    # Replies decoded together in one forward step (page and API alike); 0: each reply
    # runs its own generate loop, one forward step at a time.
    max_batch: int = Field(
        default=8,
        ge=0,
        le=256,
        description=(
            "Replies (page and API) decoded together in one forward step; 0 = one "
            "generate loop per reply."
        ),
    )
    # Nice steps for the work that runs the model (serve's decoding threads, training
    # rounds) below the rest: when the CPU is short, clicks, saves, imports and syncs go
    # first and replies stream slower; with idle CPU it changes nothing. 0 turns it off.
    model_nice: int = Field(
        default=5,
        ge=0,
        le=19,
        description=(
            "Nice steps below normal for the work that runs the model (`serve`'s decoding"
            " threads, training rounds): when the CPU is short, clicks, saves, imports "
            "and syncs go first; 0 = off."
        ),
    )
    # The OpenAI-compatible API: completions answered at once; more get 429 (retry).
    api_max_active: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="OpenAI-compatible API completions answered at once; more get 429 (retry).",
    )
    api_max_body_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        le=64 * 1_048_576,
        description="Largest request body the OpenAI-compatible API reads (bytes); a larger "
        "one gets 413 before any of it is parsed.",
    )

    # --- Argilla: pairs out for ranking, rankings back (issue 3) ---
    argilla_url: str | None = Field(
        default=None,
        description=(
            "A team's own Argilla (e.g. https://argilla.example.org); unset: the local "
            "stack that `tuneloop argilla up` runs under `HOME/argilla`."
        ),
    )
    argilla_api_key: SecretStr | None = Field(
        default=None,
        description=(
            "Owner API key of `TUNELOOP_ARGILLA_URL` (not for the local stack). Secret: "
            "never shown."
        ),
    )
    argilla_port: int = Field(
        default=6900, ge=1, le=65535, description="The local Argilla stack's port."
    )
    argilla_venv: Path = Field(
        default=Path(__file__).resolve().parent.parent / ".venv-argilla",
        description=(
            "The local Argilla server's own virtualenv (built by `.ci/setup` or `argilla up`)."
        ),
    )
    argilla_workspace: str = Field(
        default="tuneloop", min_length=1, description="Argilla workspace the pairs go to."
    )
    argilla_dataset: str = Field(
        default="tuneloop-pairs",
        min_length=1,
        description="Argilla dataset that receives the pairs.",
    )
    argilla_min_submitted: int = Field(
        default=2,
        ge=1,
        le=50,
        description=(
            "Submissions each pair needs (Argilla's task distribution), from different annotators."
        ),
    )
    argilla_sync_seconds: float = Field(
        default=60.0,
        ge=0.0,
        description="How often `serve` syncs with Argilla in the background; 0 = never.",
    )
    argilla_min_agreement: float = Field(
        default=0.6,
        ge=0.0,
        le=1.0,
        description=(
            "A decided pair whose winning share of votes is below this is flagged and "
            "left out of training."
        ),
    )
    argilla_timeout_seconds: float = Field(
        default=60.0, gt=0.0, description="HTTP timeout towards Argilla, in seconds."
    )

    # --- Chat front ends (Open WebUI): their users, helper calls and feedback ---
    trusted_frontends: str = Field(
        default="",
        description="Comma-separated names of the accounts whose API keys a chat front end "
        "(Open WebUI) uses: for those keys only, the forwarded X-OpenWebUI-User-Id and "
        "X-OpenWebUI-Chat-Id headers are believed (each end user gets an expert account of "
        "their own; one chat is one conversation). Headers never raise a role.",
    )
    helper_max_tokens: int = Field(
        default=128,
        ge=1,
        le=8192,
        description="Most tokens a front end's helper call (title, tags, follow-ups, a "
        "`tuneloop:task` request, `store: false`) may ask for; such calls are answered, not "
        "stored, and wait behind people's turns.",
    )
    api_wait_seconds: float = Field(
        default=5.0,
        ge=0.0,
        le=120.0,
        description="How long an API request waits for a free slot (TUNELOOP_API_MAX_ACTIVE) "
        "before it is refused with 429.",
    )
    openwebui_url: str | None = Field(
        default=None,
        description="Open WebUI's address (e.g. http://127.0.0.1:8080) for `tuneloop "
        "openwebui sync`; unset: no sync.",
    )
    openwebui_token: SecretStr | None = Field(
        default=None,
        description="An Open WebUI admin's API key or token, for the sync (secret; or use "
        "TUNELOOP_OPENWEBUI_TOKEN_FILE).",
    )
    openwebui_token_file: Path | None = Field(
        default=None,
        description="A file (mode 0600) holding the Open WebUI admin token, instead of "
        "TUNELOOP_OPENWEBUI_TOKEN.",
    )
    openwebui_sync_seconds: float = Field(
        default=60.0,
        ge=0.0,
        description="`serve` and `watch` pull Open WebUI's ratings this often when "
        "TUNELOOP_OPENWEBUI_URL is set; 0 = never.",
    )

    # --- Training rounds: SFT, DPO, evaluation gate, schedule (issue 4) ---
    # Core: one round's hyperparameters (defaults work for the embedded SmolLM2 on CPU).
    sft_epochs: float = Field(default=2.0, gt=0.0, le=100.0, description="SFT epochs per round.")
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
    # Operator side: the schedule (`tuneloop watch`) and experiment tracking.
    train_launcher: str | None = Field(
        default=None,
        description=(
            "What starts each `watch` round, e.g. `torchrun --nproc_per_node 4` (one "
            "process per GPU); unset: one process."
        ),
    )
    round_min_new: int = Field(
        default=50,
        ge=1,
        description=(
            "`watch` starts a round once this many preferences arrived since the last round."
        ),
    )
    round_interval_minutes: float = Field(
        default=0.0,
        ge=0.0,
        description=(
            "`watch` also starts a round this often, in minutes, if any feedback is new; "
            "0 = only by count."
        ),
    )
    watch_poll_seconds: float = Field(
        default=60.0, gt=0.0, description="How often `watch` looks for new feedback, in seconds."
    )
    # continue by measurement: on the triage benchmark three continue rounds reached 70%
    # held-out correct in 24.6 min, three fresh ones 64% in 36.5 (README, "Rounds that build
    # on each other").
    round_mode: str = Field(
        default="continue",
        pattern="^(fresh|continue)$",
        description=(
            "`continue`: a round goes on from the promoted adapter, on rows new since "
            "that version's round plus a share of older ones (no promoted version: "
            "fresh); `fresh`: each round trains a new adapter on every train row."
        ),
    )
    round_replay_share: float = Field(
        default=0.25,
        ge=0.0,
        le=1.0,
        description=(
            "`continue` mode: the share of older rows (already in the promoted version's "
            "round) trained again beside the new ones, against forgetting."
        ),
    )
    tracker: str = Field(
        default="trackio",
        pattern="^(trackio|none)$",
        description=(
            "Experiment tracker for training curves: `trackio` (local, offline) or `none`."
        ),
    )

    # --- Batch generation and evaluation sets (issue 5) ---
    generate_batch_size: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Rows per batch for `generate` and `eval`; unset: 24 on a CPU, 32 on a GPU.",
    )
    generate_max_new_tokens: int = Field(
        default=256, ge=1, le=8192, description="Token budget of each `generate`/`eval` reply."
    )
    generate_temperature: float = Field(
        default=0.0,
        ge=0.0,
        le=5.0,
        description=(
            "`generate`/`eval` sampling temperature; 0 = greedy, so a rerun gives the same replies."
        ),
    )
    eval_scorer: str = Field(
        default="auto",
        min_length=1,
        description=(
            "Scorers for `eval` and the gate: comma-separated `exact`, `json`, `rubric`, "
            "`pairwise`, `FILE.py:FUNCTION`, `module:FUNCTION`; `auto` = `exact` when "
            "rows have a `reference`, plus `rubric` when the rubric file exists."
        ),
    )
    eval_rubric: Path | None = Field(
        default=None,
        description="Rubric file of the `rubric` scorer; unset: `DATA_DIR/rubric.json`.",
    )
    judge_model: str | None = Field(
        default=None,
        description=(
            "The `pairwise` scorer's judge: a local Hugging Face chat model directory or "
            "`.gguf` file, best a stronger model than the one trained; `embedded` = "
            "SmolLM2 (plumbing only). Unset: `pairwise` refuses to run."
        ),
    )
    gate_eval_sets: str = Field(
        default="",
        description=(
            "Comma-separated eval set files every round also gates on (each stage against"
            " the serving version); empty: the held-out metrics only."
        ),
    )
    gate_margins: str = Field(
        default=DEFAULT_MARGINS,
        description="METRIC=MARGIN or SET:METRIC=MARGIN, comma-separated: how much each "
        "gated metric must gain (positive: an objective the candidate must be shown to beat), "
        "or may lose (zero or negative); in the metric's better direction. An eval set none "
        "of whose metrics is named gates every metric at 0, its first as the objective; with "
        "no eval set the held-out replies' reply_match is (docs/gate-rule.md).",
    )

    gate_min_items: int = Field(
        default=MIN_ITEMS,
        ge=1,
        description=(
            "Fewest paired items a gated metric needs before the gate calls it better or "
            "worse; below it the metric is inconclusive."
        ),
    )

    @field_validator("qlora", "gradient_checkpointing", "train_bf16", "infer_bf16", mode="before")
    @classmethod
    def _auto(cls, value: object) -> object:
        """`auto` (or empty) leaves the choice to the round."""
        return None if isinstance(value, str) and value.strip().lower() in ("", "auto") else value

    @field_validator("gate_margins")
    @classmethod
    def _margins_parse(cls, value: str) -> str:
        try:
            parse_margins(value)
        except GateConfigError as err:
            raise ValueError(str(err)) from None
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_parse(cls, value: str) -> str:
        import ipaddress

        for item in value.split(","):
            if item.strip():
                try:
                    ipaddress.ip_network(item.strip(), strict=False)
                except ValueError:
                    raise ValueError(f"{item.strip()!r} is no IP address or network") from None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("model", "judge_model")
    @classmethod
    def _empty_model_is_default(cls, value: str | None) -> str | None:
        return value or None

    @property
    def database(self) -> str:
        """The database URL in force."""
        if self.database_url is not None and self.database_url.get_secret_value():
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.home / 'tuneloop.db').resolve()}"

    @property
    def database_shown(self) -> str:
        """The database URL in force with any password replaced by ***, for output."""
        from sqlalchemy.engine import make_url

        try:
            return make_url(self.database).render_as_string(hide_password=True)
        except Exception:  # not a URL SQLAlchemy can parse: show nothing of it
            return "(unparseable URL, not shown)"

    @property
    def trusted_frontend_names(self) -> frozenset[str]:
        """The account names of TUNELOOP_TRUSTED_FRONTENDS."""
        return frozenset(n.strip() for n in self.trusted_frontends.split(",") if n.strip())

    @property
    def argilla_address(self) -> str:
        """Where annotators open Argilla: the team's own, or the local stack's port."""
        return (self.argilla_url or f"http://127.0.0.1:{self.argilla_port}").rstrip("/")

    @property
    def adapters_dir(self) -> Path:
        """Where the registry keeps adapter versions and the CURRENT pointer."""
        return self.home / "adapters"

    @property
    def rounds_dir(self) -> Path:
        """Where training rounds keep their folders, live state and the one-round lock."""
        return self.home / "rounds"

    @property
    def models_dir(self) -> Path:
        """Where converted base models are cached (the embedded GGUF becomes safetensors)."""
        return self.home / "models"

    @property
    def system_prompt_file(self) -> Path:
        return self.data_dir / "system_prompt.md"

    @property
    def evals_dir(self) -> Path:
        """Eval reply cache and the bare base model's eval results (versions keep theirs)."""
        return self.home / "evals"

    @property
    def rubric_file(self) -> Path:
        """The rubric the `rubric` scorer uses."""
        return self.eval_rubric or self.data_dir / "rubric.json"

    def system_prompt(self) -> str:
        """The deployment's system prompt; empty when data/ has none."""
        path = self.system_prompt_file
        return path.read_text(encoding="utf-8").strip() if path.is_file() else ""
