"""Where tuneloop keeps its data, which model it serves, and the domain folder."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

from app.settings.paths import REPO_DATA_DIR


class CoreSettings(BaseSettings):
    """Where tuneloop keeps its data, which model it serves, and the domain folder.

    Fields only: `app.config.Settings` joins the groups and reads the environment.
    """

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
