"""One settings object for tuneloop, read from `TUNELOOP_*` environment variables.

Built once at the edge (the CLI, a test fixture) and passed down; nothing below `app/`
reads the environment itself, so `feedback/` and `training/` stay importable anywhere. The
fields live in `app/settings/`, one module per part of tuneloop; this class joins them, checks
what spans several, and derives the paths everything else uses.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import field_validator
from pydantic_settings import SettingsConfigDict

from app.settings.core import CoreSettings
from app.settings.integrations import IntegrationSettings
from app.settings.paths import REPO_DATA_DIR
from app.settings.rounds import RoundSettings
from app.settings.serving import ServingSettings
from app.settings.training import TrainingSettings
from training.gate import GateConfigError, parse_margins

__all__ = ["REPO_DATA_DIR", "Settings"]


# The order of the bases is the order of the settings reference: the core first.
class Settings(RoundSettings, TrainingSettings, IntegrationSettings, ServingSettings, CoreSettings):
    """Everything an operator can set; every field is `TUNELOOP_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="TUNELOOP_", extra="ignore")

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
