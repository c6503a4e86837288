"""Shared fixtures. Every test gets its own TUNELOOP_HOME; nothing reaches the model hub."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

# CI (CI=true) replays the same generated examples on every run: what a property test finds
# shows up in a developer's exploring run and is kept as an @example, never as a random red CI.
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

# The tiny random model and adapters the fast tier runs on; the real one the slow tier does.
pytest_plugins = ["tests.tiny", "tests.real"]

# Air-gapped by design: anything that tries to download fails fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Path:
    """Point TUNELOOP_HOME at a fresh temp dir and clear any other TUNELOOP_ setting."""
    for key in list(os.environ):
        if key.startswith("TUNELOOP_"):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    monkeypatch.setenv("TUNELOOP_HOME", str(home))
    # Test accounts use short passwords; tests/test_logins.py checks the length rule.
    monkeypatch.setenv("TUNELOOP_MIN_PASSWORD_LENGTH", "1")
    # The tiny random model's next-token scores are near ties, which bf16 rounding flips
    # from one batch shape to another; the fast tier answers in fp32 and checks exact
    # replies, tests/test_precision.py checks bf16 answering, and the slow tests on the
    # real model answer in the machine's default.
    if "slow" not in request.keywords or "tiny_model_dir" in request.fixturenames:
        monkeypatch.setenv("TUNELOOP_INFER_BF16", "false")
    return home


def pytest_collection_finish(session: pytest.Session) -> None:
    """Move what is imported by now (torch, transformers, TRL, Gradio: ~500k objects) out of
    the garbage collector's sight: a full collection, which rounds and generation run to
    free a model, then scans only what the tests make (0.3 s less per collection here).
    A run of many tests imports the training stack anyway, so it is imported first."""
    if len(session.items) > 50:
        import peft  # noqa: F401
        import transformers  # noqa: F401
        import trl  # noqa: F401
    gc.collect()
    gc.freeze()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests, saying why, when CUDA is not there."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing entirely
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
