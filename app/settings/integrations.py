"""Argilla for annotators, and front ends such as Open WebUI."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

from app.settings.paths import ARGILLA_VENV


class IntegrationSettings(BaseSettings):
    """Argilla for annotators, and front ends such as Open WebUI.

    Fields only: `app.config.Settings` joins the groups and reads the environment.
    """

    # --- Argilla: pairs out for ranking, rankings back ---
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
        default=ARGILLA_VENV,
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
    helper_answers: Literal["quick", "model"] = Field(
        default="quick",
        description="How a front end's routine helper calls are answered: `quick` answers "
        "Open WebUI's title, tags, follow-up, query and autocomplete tasks at once without "
        "the model (the title is the first words of the chat; tags ['General']; none of "
        "the rest), which the embedded SmolLM2 cannot do (measured: it repeats their "
        "instructions); `model` decodes them (a capped, low-priority call).",
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
