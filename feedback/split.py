"""The train/heldout split, decided by the prompts' content, never by when rows arrived.

Each prompt (its non-system turns) has a sort value from its sha256: the hash's first 16
hex digits mod 100 (its bucket), then the next 16 as a tie-break. A prompt is held out when
its value, or the value of any earlier user-ending prefix of it, is below the threshold:

  - by default the threshold is HELDOUT_PERCENT, so about 10% of prompts are held out, and
    the same prompt lands on the same side forever: in every export, on every machine,
    after a change of system prompt;
  - a conversation that continues a held-out prompt is held out with it (its earlier turns,
    and the assistant's answer to them, would otherwise be trained on);
  - `plan_split(..., min_items=N)` raises the threshold just enough that at least N distinct
    prompts are held out (never more than HELDOUT_MAX_SHARE of them): the prompts with the
    lowest values join first, so a larger data set holds out a superset of what a smaller
    one held out at the same threshold, and once 10% reaches N the split is the plain one;
  - a training row whose answer repeats a held-out answer word for word (under another
    prompt) is kept out of training too: `HeldoutSplit.in_split("train", ...)` is False for
    it, and it is not held out either.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from feedback.canonical import canonical_json

HELDOUT_PERCENT = 10
HELDOUT_MIN_ITEMS = 20
HELDOUT_MAX_SHARE = 1 / 3

Split = Literal["train", "heldout"]
SPLITS = ("train", "heldout", "all")
Messages = Sequence[dict[str, Any]]


def _turns(prompt_messages: Messages) -> list[list[str]]:
    return [
        [str(message.get("role", "")), str(message.get("content", "")).strip()]
        for message in prompt_messages
        if message.get("role") != "system"
    ]


def prompt_key(prompt_messages: Messages) -> str:
    """The sha256 hex digest that identifies a prompt for splitting.

    Only non-system messages count, as (role, content stripped) pairs: the system prompt
    and extra message keys may change without moving a prompt to the other side.
    """
    return hashlib.sha256(canonical_json(_turns(prompt_messages)).encode("utf-8")).hexdigest()


def _value(key: str) -> float:
    """The sort value of a prompt key: its bucket (0-99), then a fraction to break ties."""
    return int(key[:16], 16) % 100 + int(key[16:32], 16) / 16**16


def split_value(prompt_messages: Messages) -> float:
    """The lowest sort value of the prompt and of each earlier prefix that ends in a user
    turn: a prompt is held out when this is below the split's threshold."""
    turns = _turns(prompt_messages)
    values = [
        _value(hashlib.sha256(canonical_json(turns[: i + 1]).encode("utf-8")).hexdigest())
        for i, (role, _) in enumerate(turns)
        if role == "user" and i < len(turns) - 1
    ]
    return min([*values, _value(prompt_key(prompt_messages))])


def normalise_answer(text: str) -> str:
    """An answer as compared for repeats: whitespace collapsed, case folded."""
    return re.sub(r"\s+", " ", text).strip().casefold()


@dataclass(frozen=True)
class HeldoutSplit:
    """Which prompts are held out (value below `threshold`) and which answers they hold."""

    threshold: float = float(HELDOUT_PERCENT)
    heldout_answers: frozenset[str] = field(default_factory=frozenset)

    def side(self, prompt_messages: Messages) -> Split:
        """ "heldout" or "train", by the prompt alone."""
        return "heldout" if split_value(prompt_messages) < self.threshold else "train"

    def in_split(self, split: str, prompt_messages: Messages, answers: Iterable[str] = ()) -> bool:
        """Whether a row with this prompt and these answers belongs to `split`.

        A train-side row whose answer repeats a held-out answer is in neither split."""
        if split == "all":
            return True
        side = self.side(prompt_messages)
        if side == "train" and any(normalise_answer(a) in self.heldout_answers for a in answers):
            return False
        return side == split


def plan_split(
    rows: Iterable[tuple[Messages, Sequence[str]]],
    *,
    min_items: int = 0,
    max_share: float = HELDOUT_MAX_SHARE,
) -> HeldoutSplit:
    """The split for these (prompt, answers) rows: at least `min_items` distinct prompts
    held out when `max_share` of them allows it, and the held-out answers to keep out of
    training. `answers` are what a row trains towards (an SFT reply, a pair's chosen)."""
    rows = list(rows)
    values: dict[str, float] = {}
    for prompt, _ in rows:
        values.setdefault(prompt_key(prompt), split_value(prompt))
    threshold = float(HELDOUT_PERCENT)
    target = min(min_items, math.floor(len(values) * max_share))
    ordered = sorted(values.values())
    if target > 0 and sum(v < threshold for v in ordered) < target:
        threshold = math.nextafter(ordered[target - 1], math.inf)
    answers = frozenset(
        normalise_answer(answer)
        for prompt, row_answers in rows
        if values[prompt_key(prompt)] < threshold
        for answer in row_answers
    )
    return HeldoutSplit(threshold=threshold, heldout_answers=answers)
