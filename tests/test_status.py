"""`tuneloop status` says what `serve` would really serve, and `rollback` exits 0 exactly
when it moved the pointer, even past a hand-edited CURRENT."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli import run_cli
from training.registry import Registry


def test_status_names_the_fallback_and_rollback_survives_a_bad_pointer(
    _isolated_home: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from tests.tiny import build_tiny_adapter

    registry = Registry(_isolated_home / "adapters")
    registry.register("v1", build_tiny_adapter(tiny_model_dir, tmp_path / "a1", seed=1))
    registry.register("v2", build_tiny_adapter(tiny_model_dir, tmp_path / "a2", seed=2))
    registry.set_current("v1")
    registry.set_current("v2")

    code, out, _ = run_cli(monkeypatch, capsys, "status", "--json")
    assert code == 0 and json.loads(out)["adapter"] == "v2"

    weights = next(p for p in registry.path("v2").iterdir() if p.suffix == ".safetensors")
    weights.write_bytes(weights.read_bytes()[:-7] + b"garbage")  # corrupted on disk
    code, out, _ = run_cli(monkeypatch, capsys, "status", "--json")
    status = json.loads(out)
    assert code == 0 and status["adapter"] is None and status["adapter_named"] == "v2"
    assert "checksum" in status["adapter_problem"]
    code, out, _ = run_cli(monkeypatch, capsys, "status")
    assert "CURRENT names 'v2', but" in out and "serve falls back" in out

    registry.pointer_file.write_text("../../etc/passwd\n")  # hand-edited
    code, out, _ = run_cli(monkeypatch, capsys, "status", "--json")
    assert code == 0 and json.loads(out)["adapter"] is None
    code, out, err = run_cli(monkeypatch, capsys, "rollback", "--json")
    assert code == 0, err
    assert json.loads(out)["to"] == "v1" and registry.current() == "v1"
