"""Settings are stated once: a round's configuration has no defaults of its own, and the
evaluation and gate objects it carries agree with the settings they are built from."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from app.config import Settings
from training.eval.evaluate import EvalSettings
from training.gate import GateConfig
from training.round_config import RoundConfig

# Fields that name a place or a thing of this deployment, not a default to agree on.
WHERE = {"rubric_file", "general_file", "system_prompt", "cache_dir", "evals_dir", "judge"}


@pytest.fixture(autouse=True)
def _defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings at their defaults (the fast tier's conftest sets answering to fp32)."""
    monkeypatch.delenv("TUNELOOP_INFER_BF16", raising=False)


def test_round_config_has_no_defaults_of_its_own() -> None:
    with_default = [
        f.name
        for f in dataclasses.fields(RoundConfig)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    ]
    assert with_default == [], "RoundConfig fields with a default: take it from Settings"


def test_every_round_field_comes_from_a_setting_of_its_name_or_a_named_derivation() -> None:
    derived = {"batch_size", "serve_in_4bit", "system_prompt", "seed_file", "replay_file",
               "replay_cache_dir", "eval", "gate"}  # fmt: skip
    settings = set(Settings.model_fields)
    unmatched = [
        f.name
        for f in dataclasses.fields(RoundConfig)
        if f.name not in derived and not {f.name, f"train_{f.name}"} & settings
    ]
    assert unmatched == []
    config = RoundConfig.from_settings(Settings())
    assert config.round_mode == Settings().round_mode == "continue"
    assert config.tracker == Settings().tracker
    assert config.heldout_min_items == Settings().heldout_min_items > 0


def test_eval_and_gate_defaults_agree_with_the_settings() -> None:
    built = RoundConfig.from_settings(Settings())
    for own, from_settings in ((EvalSettings(), built.eval), (GateConfig(), built.gate)):
        differ = {
            f.name: (getattr(own, f.name), getattr(from_settings, f.name))
            for f in dataclasses.fields(own)
            if f.name not in WHERE and getattr(own, f.name) != getattr(from_settings, f.name)
        }
        assert differ == {}, f"{type(own).__name__}'s defaults differ from Settings': {differ}"


def test_default_paths_point_into_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo domain and the local Argilla's venv default to this checkout's own folders
    (a default computed from the wrong folder made the Argilla tests skip as 'not built')."""

    for name in ("TUNELOOP_DATA_DIR", "TUNELOOP_ARGILLA_VENV"):
        monkeypatch.delenv(name, raising=False)
    root = Path(__file__).resolve().parent.parent
    settings = Settings()
    assert settings.data_dir == root / "data" and (root / "data" / "system_prompt.md").is_file()
    assert settings.argilla_venv == root / ".venv-argilla"
