"""training/registry.py: versions with checksums, the CURRENT pointer and its HISTORY."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from training.registry import MANIFEST, Registry, RegistryError


def fake_adapter(where: Path, payload: bytes = b"weights") -> Path:
    """A directory shaped like a PEFT adapter (the registry never parses the weights)."""
    where.mkdir(parents=True)
    (where / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (where / "adapter_model.safetensors").write_bytes(payload)
    (where / "README.md").write_text("notes")
    return where


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "adapters")


def test_register_copies_with_checksums(registry: Registry, tmp_path: Path) -> None:
    src = fake_adapter(tmp_path / "src")
    dest = registry.register("v1", src)
    assert dest == registry.path("v1") == registry.root / "versions" / "v1"
    assert (dest / "adapter_model.safetensors").read_bytes() == b"weights"
    manifest = json.loads((dest / MANIFEST).read_text())
    assert set(manifest["files"]) == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
    }
    assert manifest["files"]["adapter_model.safetensors"]["size"] == len(b"weights")
    assert registry.verify("v1") == dest
    assert registry.versions() == ["v1"]
    assert registry.current() is None  # registering never serves anything


def test_versions_are_listed_in_registration_order(registry: Registry, tmp_path: Path) -> None:
    for name in ["v2", "v10", "a1"]:
        registry.register(name, fake_adapter(tmp_path / name))
    assert registry.versions() == ["v2", "v10", "a1"]


def test_register_refuses_existing_invalid_and_non_adapters(
    registry: Registry, tmp_path: Path
) -> None:
    src = fake_adapter(tmp_path / "src")
    registry.register("v1", src)
    with pytest.raises(RegistryError, match="already exists"):
        registry.register("v1", src)
    for bad in ["", "../x", "a/b", ".hidden", "-x", "x" * 65, "CURRENT", "with space"]:
        with pytest.raises(RegistryError, match="invalid adapter version name"):
            registry.register(bad, src)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RegistryError, match="not a PEFT adapter directory"):
        registry.register("v2", empty)
    (empty / "adapter_config.json").write_text("{}")
    with pytest.raises(RegistryError, match="no adapter weights"):
        registry.register("v2", empty)
    assert registry.versions() == ["v1"]


def test_failed_register_leaves_nothing_behind(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(path: Path) -> str:
        raise OSError("disk full")

    monkeypatch.setattr("training.registry._sha256", boom)
    with pytest.raises(OSError, match="disk full"):
        registry.register("v1", fake_adapter(tmp_path / "src"))
    assert not registry.path("v1").exists()
    assert list(registry.versions_dir.iterdir()) == []  # no temp dir either


def test_verify_catches_missing_partial_and_corrupted(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="not registered"):
        registry.verify("v9")
    dest = registry.register("v1", fake_adapter(tmp_path / "a"))
    (dest / "adapter_model.safetensors").write_bytes(b"weightz")  # same size, other bytes
    with pytest.raises(RegistryError, match="corrupted: adapter_model.safetensors"):
        registry.verify("v1")
    dest = registry.register("v2", fake_adapter(tmp_path / "b"))
    (dest / "adapter_model.safetensors").write_bytes(b"weights and more")
    with pytest.raises(RegistryError, match="corrupted"):
        registry.verify("v2")
    dest = registry.register("v3", fake_adapter(tmp_path / "c"))
    (dest / "adapter_model.safetensors").unlink()
    with pytest.raises(RegistryError, match="incomplete: adapter_model.safetensors is missing"):
        registry.verify("v3")
    partial = registry.versions_dir / "v4"  # a copy made by hand, never registered
    fake_adapter(partial)
    with pytest.raises(RegistryError, match="incomplete: .*MANIFEST.json is missing"):
        registry.verify("v4")
    dest = registry.register("v5", fake_adapter(tmp_path / "e"))
    (dest / MANIFEST).write_text("{not json")
    with pytest.raises(RegistryError, match="corrupted: unreadable"):
        registry.verify("v5")


def test_set_current_moves_pointer_and_logs_history(registry: Registry, tmp_path: Path) -> None:
    registry.register("v1", fake_adapter(tmp_path / "a"))
    registry.register("v2", fake_adapter(tmp_path / "b"))
    registry.set_current("v1")
    registry.set_current("v1")  # unchanged: not a change, not logged
    registry.set_current("v2")
    assert registry.current() == "v2"
    assert registry.pointer_file.read_text() == "v2\n"
    registry.set_current(None)
    assert registry.current() is None and not registry.pointer_file.exists()
    moves = [(e["from"], e["to"]) for e in registry.history()]
    assert moves == [(None, "v1"), ("v1", "v2"), ("v2", None)]
    assert all(e["at"] for e in registry.history())
    assert [p.name for p in registry.root.iterdir() if p.name.startswith(".CURRENT")] == []


def test_set_current_refuses_unusable_versions(registry: Registry, tmp_path: Path) -> None:
    dest = registry.register("v1", fake_adapter(tmp_path / "a"))
    registry.register("v2", fake_adapter(tmp_path / "b"))
    registry.set_current("v2")
    (dest / "adapter_model.safetensors").write_bytes(b"WEIGHTS")
    with pytest.raises(RegistryError, match="corrupted"):
        registry.set_current("v1")
    with pytest.raises(RegistryError, match="not registered"):
        registry.set_current("v7")
    assert registry.current() == "v2"
    assert len(registry.history()) == 1


def test_pointer_write_is_atomic(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.register("v1", fake_adapter(tmp_path / "a"))
    registry.register("v2", fake_adapter(tmp_path / "b"))
    registry.set_current("v1")

    def crash(src: str, dst: str) -> None:
        raise OSError("killed mid-switch")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        registry.set_current("v2")
    monkeypatch.undo()
    assert registry.current() == "v1"
    assert [p.name for p in registry.root.iterdir() if p.name.startswith(".CURRENT")] == []
    assert [e["to"] for e in registry.history()] == ["v1"]


def test_concurrent_switches_keep_pointer_and_history_consistent(
    registry: Registry, tmp_path: Path
) -> None:
    names = ["v1", "v2", "v3"]
    for name in names:
        registry.register(name, fake_adapter(tmp_path / name))
    seen: set[str | None] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.add(registry.current())

    def writer(i: int) -> None:
        for k in range(20):
            registry.set_current(names[(i + k) % 3])

    watcher = threading.Thread(target=reader)
    watcher.start()
    writers = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    watcher.join()
    assert seen <= {None, *names}  # never a torn or empty name
    history = registry.history()
    assert history[-1]["to"] == registry.current()
    for before, after in zip(history, history[1:], strict=False):
        assert after["from"] == before["to"] != after["to"]


def test_info_is_merged_atomically_and_kept_outside_the_checksums(
    tmp_path: Path, tiny_adapters: dict[str, Path]
) -> None:
    registry = Registry(tmp_path / "adapters")
    first = next(iter(tiny_adapters.values()))
    registry.register("v1", first)
    assert registry.info("v1") == {}
    registry.update_info("v1", metrics={"loss": 1.5}, reason=None)
    registry.update_info("v1", status="promoted")
    assert registry.info("v1") == {"metrics": {"loss": 1.5}, "reason": None, "status": "promoted"}
    registry.verify("v1")  # info does not touch the checksummed files
    with pytest.raises(RegistryError):
        registry.update_info("../escape", x=1)
