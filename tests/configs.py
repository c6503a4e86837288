"""The round configuration a test runs: the one users get, changed only where a test says so."""

from __future__ import annotations

import dataclasses
from typing import Any

from app.config import Settings
from training.round_config import RoundConfig


def round_config(settings: Settings | None = None, **overrides: Any) -> RoundConfig:
    """`RoundConfig.from_settings` (the settings in the environment unless given), with
    `overrides` replacing fields as they are, None included: every departure from the
    product's defaults is written at the call, where it can say why."""
    return dataclasses.replace(RoundConfig.from_settings(settings or Settings()), **overrides)
