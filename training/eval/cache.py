"""Per-item results of one model on held-out items, kept between rounds.

A round evaluates the serving version, the bare base and its new stages on the held-out
rows; the serving version and the base are the same model as in the round before (and a
promoted stage becomes the next round's serving version, byte for byte), and most held-out
rows are the same too (the split is by content hash). Every reply log-probability and
every greedy reply is stored under what decides it: the base model's files, the adapter's
weights and config, the precision and the token limits (the model's identity, one file
each), and the item itself (prompt and reply, or prompt and reply budget). A round then
computes only what it has not seen; with no cache folder the same store still spares
recomputing an item that appears twice in one evaluation (a held-out pair's chosen reply
is also a held-out SFT reply).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from feedback.atomic_write import write_atomic

# Model identities kept: a round adds up to four (base, serving, each stage); older files
# (adapters long replaced) are dropped, newest use first.
KEEP_FILES = 48
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def adapter_identity(adapter_dir: Path | None) -> str:
    """A digest of what decides an adapter's outputs (its config and weights): the same for
    a round's stage and the registered version copied from it."""
    if adapter_dir is None:
        return "base"
    digest = hashlib.sha256()
    for name in _ADAPTER_FILES:
        path = Path(adapter_dir) / name
        if path.is_file():
            digest.update(name.encode() + b"\0")
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


class ItemCache:
    """Results of one model (base + adapter, loaded one way) per item; `folder` None keeps
    them for this evaluation only."""

    def __init__(self, folder: Path | None, identity: dict[str, Any]) -> None:
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        self.path = Path(folder) / f"{key}.json" if folder is not None else None
        self.items: dict[str, Any] = {}
        self.dirty = False
        if self.path is not None and self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
                self.items = loaded["items"] if isinstance(loaded.get("items"), dict) else {}
            except (OSError, ValueError, AttributeError):
                self.items = {}  # a damaged file: recompute, and overwrite it on save

    @staticmethod
    def key(kind: str, *parts: Any) -> str:
        return kind + ":" + hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> Any:
        return self.items.get(key)

    def put(self, key: str, value: Any) -> None:
        self.items[key] = value
        self.dirty = True

    def save(self) -> None:
        """Write the file atomically (when anything is new) and drop the oldest files."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.dirty:
            write_atomic(self.path, json.dumps({"items": self.items}))
            self.dirty = False
        elif self.path.is_file():
            os.utime(self.path)  # used: keep it among the newest
        files = sorted(self.path.parent.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for old in files[:-KEEP_FILES]:
            old.unlink(missing_ok=True)
