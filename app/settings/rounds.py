"""When rounds run, how they build on each other, `generate`/`eval`, and the gate."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings

from training.comparisons import MIN_ITEMS
from training.gate import DEFAULT_MARGINS


class RoundSettings(BaseSettings):
    """When rounds run, how they build on each other, `generate`/`eval`, and the gate.

    Fields only: `app.config.Settings` joins the groups and reads the environment.
    """

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

    # --- Batch generation and evaluation sets ---
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
