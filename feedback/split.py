"""The train/heldout split, decided by the prompt's content alone.

The same conversation lands on the same side forever: in every export, on every machine,
after a change of system prompt. Evaluation on "heldout" therefore never sees a prompt that
training saw, round after round.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Literal

from feedback.canonical import canonical_json

HELDOUT_PERCENT = 10

Split = Literal["train", "heldout"]
SPLITS = ("train", "heldout", "all")


def prompt_key(prompt_messages: Sequence[dict[str, Any]]) -> str:
    """The sha256 hex digest that identifies a prompt for splitting.

    Only non-system messages count, as (role, content stripped) pairs: the system prompt
    and extra message keys may change without moving a prompt to the other side.
    """
    turns = [
        [str(message.get("role", "")), str(message.get("content", "")).strip()]
        for message in prompt_messages
        if message.get("role") != "system"
    ]
    return hashlib.sha256(canonical_json(turns).encode("utf-8")).hexdigest()


def split_of(prompt_messages: Sequence[dict[str, Any]]) -> Split:
    """ "heldout" for about HELDOUT_PERCENT % of prompts, "train" for the rest."""
    bucket = int(prompt_key(prompt_messages)[:16], 16) % 100
    return "heldout" if bucket < HELDOUT_PERCENT else "train"


def in_split(prompt_messages: Sequence[dict[str, Any]], split: str) -> bool:
    """Whether a prompt belongs to `split` ("train", "heldout" or "all")."""
    return split == "all" or split_of(prompt_messages) == split
