"""Seeded samples of a stage's rows that keep each group's share (KTO's 👍/👎 labels).

Two places take one: a short stage trains on a sample of its rows (trainer_args.rows_seen), and
early stopping holds a sample of them out as its validation split (early_stopping.py). The
same seed picks the same rows, so a round that resumes from a checkpoint sees the same ones.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any


def seeded_sample(
    rows: list[dict[str, Any]],
    need: int,
    seed: int,
    group: Callable[[dict[str, Any]], Any] | None = None,
    leave: int = 0,
) -> list[int]:
    """The indices, in order, of `need` of `rows` drawn with `seed`. `group` keeps each
    group's share of the rows in the sample, at least one row of each; `leave` rows of every
    group stay out of it (a validation split must leave the training rows both labels)."""
    groups: dict[Any, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(group(row) if group else None, []).append(i)
    quotas = {g: max(1, round(need * len(idx) / len(rows))) for g, idx in groups.items()}
    largest = max(groups, key=lambda g: len(groups[g]))
    quotas[largest] = max(1, need - sum(q for g, q in quotas.items() if g != largest))
    rng = random.Random(seed)
    keep = [
        i
        for g, idx in groups.items()
        for i in rng.sample(idx, max(0, min(quotas[g], len(idx) - leave)))
    ]
    return sorted(keep)
