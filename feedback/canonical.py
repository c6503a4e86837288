"""Canonical JSON and content hashes: the same data always gives the same bytes and key.

Used for dedup keys (re-importing a file adds nothing) and for the train/heldout split, so
neither depends on dict key order, whitespace in the JSON, or Python's hash seed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys and real Unicode: stable across runs and machines."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def content_key(value: Any) -> str:
    """The sha256 hex digest of `value`'s canonical JSON."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def preference_key(*, prompt: list[dict[str, str]], chosen: str, rejected: str) -> str:
    """Dedup key of a preference pair, by content (the source does not matter)."""
    return content_key(
        {"kind": "preference", "prompt": prompt, "chosen": chosen, "rejected": rejected}
    )


def example_key(messages: list[dict[str, str]]) -> str:
    """Dedup key of an SFT conversation, by content."""
    return content_key({"kind": "example", "messages": messages})


def event_key(kind: str, row_id: int) -> str:
    """Dedup key of a preference made by one event in the app (a correction, a decision).

    Such rows are unique by construction; keying them by event keeps an identical imported
    pair from blocking them, and a retried write of the same event from duplicating it.
    """
    return content_key({"kind": kind, "id": row_id})
