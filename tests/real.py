"""The real embedded SmolLM2 for the `slow` tier, converted from its GGUF once per run.

Converting takes about 15 s on 2 cores. tests/test_serving_slow.py checks the conversion
itself (cached, logits equal to the GGUF's) and tests/test_slow_app.py a first start that
converts; every other slow test starts where a user's second start does, with the
conversion already under HOME/models.

Fixtures: `smollm2_models` (session: the models dir holding the conversion) and
`smollm2_dir` (the model dir, found under this test's HOME/models).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from app.serving.modelfiles import resolve_model_dir

    models = tmp_path_factory.mktemp("smollm2-models")
    start = time.monotonic()
    resolve_model_dir(None, models, progress=True)
    print(f"\nfirst conversion took {time.monotonic() - start:.0f} s")
    return models


@pytest.fixture
def smollm2_dir(smollm2_models: Path, _isolated_home: Path) -> Path:
    """The converted model as `resolve_model_dir` finds it on a second start of this HOME."""
    from app.config import Settings
    from app.serving.modelfiles import resolve_model_dir

    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    settings.models_dir.symlink_to(smollm2_models, target_is_directory=True)
    return resolve_model_dir(None, settings.models_dir, progress=False)
