"""Intervals over the benchmark suite: a mean over domains, each domain weighing the same."""

from __future__ import annotations

import random
from typing import Any


def mean_gain(
    per_domain: dict[str, list[float]], reps: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """The mean over domains of each domain's mean paired difference (every domain weighs
    the same), with a 95% stratified bootstrap interval: items are resampled within each
    domain, so the interval reflects the items measured, not a guess at other domains."""
    names = sorted(d for d, diffs in per_domain.items() if diffs)
    if not names:
        return {"diff": None, "low": None, "high": None, "domains": 0}

    def stat(samples: dict[str, list[float]]) -> float:
        return sum(sum(s) / len(s) for s in samples.values()) / len(samples)

    rng = random.Random(seed)
    draws = sorted(
        stat({d: rng.choices(per_domain[d], k=len(per_domain[d])) for d in names})
        for _ in range(reps)
    )
    return {
        "diff": stat({d: per_domain[d] for d in names}),
        "low": draws[int(0.025 * reps)],
        "high": draws[int(0.975 * reps) - 1],
        "domains": len(names),
    }
