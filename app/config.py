"""One settings object for tuneloop, read from `TUNELOOP_*` environment variables.

Built once at the edge (the CLI, a test fixture) and passed down; nothing below `app/`
reads the environment itself, so `feedback/` and `training/` stay importable anywhere.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The repository's own data/ folder: the demo domain's system prompt, seed examples, rubric.
REPO_DATA_DIR = Path(__file__).resolve().parent.parent / "data"


class Settings(BaseSettings):
    """Everything an operator can set; every field is `TUNELOOP_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="TUNELOOP_", extra="ignore")

    home: Path = Field(
        default=Path("data/run"),
        description="Data directory: database, converted models, adapters. Git-ignored.",
    )
    model: str | None = Field(
        default=None,
        description="A local Hugging Face model directory; unset means the embedded SmolLM2.",
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; unset means SQLite at HOME/tuneloop.db."
    )
    load_in_4bit: bool = Field(default=False, description="Load the base model 4-bit (NF4).")
    data_dir: Path = Field(default=REPO_DATA_DIR, description="System prompt and demo domain.")

    # Generation defaults for the chat.
    max_new_tokens: int = Field(default=256, ge=1, le=8192)
    temperature: float = Field(default=0.7, ge=0.0, le=5.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    # The "compare" candidate is sampled differently from the main reply.
    compare_temperature: float = Field(default=1.0, ge=0.0, le=5.0)
    # Longest prompt (system + history + new message) in tokens; older turns are trimmed.
    context_tokens: int = Field(default=2048, ge=64)
    max_message_chars: int = Field(default=4000, ge=1)

    # How often a running server checks the registry's CURRENT pointer, in seconds.
    adapter_poll_seconds: float = Field(default=1.0, gt=0.0)

    # --- Argilla: pairs out for ranking, rankings back (issue 3) ---

    # --- Training rounds: SFT, DPO, evaluation gate, schedule (issue 4) ---

    # --- Batch generation and evaluation sets (issue 5) ---

    @field_validator("model")
    @classmethod
    def _empty_model_is_default(cls, value: str | None) -> str | None:
        return value or None

    @property
    def database(self) -> str:
        """The database URL in force."""
        return self.database_url or f"sqlite:///{(self.home / 'tuneloop.db').resolve()}"

    @property
    def adapters_dir(self) -> Path:
        """Where the registry keeps adapter versions and the CURRENT pointer."""
        return self.home / "adapters"

    @property
    def models_dir(self) -> Path:
        """Where converted base models are cached (the embedded GGUF becomes safetensors)."""
        return self.home / "models"

    @property
    def system_prompt_file(self) -> Path:
        return self.data_dir / "system_prompt.md"

    def system_prompt(self) -> str:
        """The deployment's system prompt; empty when data/ has none."""
        path = self.system_prompt_file
        return path.read_text(encoding="utf-8").strip() if path.is_file() else ""
