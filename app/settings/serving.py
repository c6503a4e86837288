"""The chat and the API: generation defaults, limits on what people send, logins, engines."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings


class ServingSettings(BaseSettings):
    """The chat and the API: generation defaults, limits on what people send, logins, engines.

    Fields only: `app.config.Settings` joins the groups and reads the environment.
    """

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
