"""Paired comparisons of two models on one metric, with 95% intervals and a verdict.

Every metric is compared item by item: the same held-out prompt, pair or eval row answered
by the serving version and by the candidate. For each metric the gate reports the
difference (candidate - serving) with a 95% interval and a verdict against its margin:

- the margin is in the metric's "better" direction (loss metrics: a decrease is a gain):
  a positive margin makes the metric an *objective* (the candidate must be shown to gain at
  least that much), zero means "must not lose", a negative one tolerates that much loss;
- `better`: the whole interval lies above the margin (and above zero);
- `worse`: the whole interval lies below the margin (a regression beyond what is allowed,
  or an objective shown to fall short of its margin);
- `unsure`: the interval straddles the margin, or fewer than `min_items` items were
  compared: too few items to tell (the comparison says about how many would do).

The interval is a paired percentile bootstrap over items (2,000 resamples, fixed seed so a
decision is reproducible). One method serves every kind of metric we gate (pass/fail
shares, preference outcomes that count ties half, per-item losses weighted by tokens, any
scorer's per-row values) and keeps each item's pairing. A plain bootstrap on a handful of
items that all agree gives a zero-width interval, so for metrics bounded in [0, 1] one
pseudo-item at each extreme (a +1 and a -1 difference) joins the resample, the idea behind
the Agresti-Caffo adjusted interval: 3 wins out of 3 stays inconclusive, 6 out of 6 does not.
The same resamples give a gated comparison's one-sided p-value (the share of resampled
gains at or below max(margin, 0)), which the gate's Holm procedure reads (training/gate.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HELDOUT = "heldout"
RESAMPLES = 2000
# Below this many paired items a metric's verdict is "unsure" whatever its interval says: a
# bootstrap on a handful of items understates its own uncertainty.
MIN_ITEMS = 8
Z_95 = 1.96
Z_POWER_80 = 0.84
# With no difference seen yet, the item count needed is quoted for a true gain this much
# above the margin.
ASSUMED_EFFECT = 0.10


def lower_is_better(metric: str) -> bool:
    """Loss metrics improve downwards; every other metric upwards."""
    return metric.endswith("loss")


@dataclass
class ItemScores:
    """One metric's per-item values for one model, in item order (weights: tokens, or 1)."""

    values: list[float]
    weights: list[float] | None = None

    def mean(self) -> float | None:
        w = self.weights or [1.0] * len(self.values)
        total = sum(w)
        return None if not self.values or total <= 0 else _dot(w, self.values) / total


@dataclass
class Comparison:
    """One metric on one source, serving vs candidate, with its interval and verdict."""

    source: str
    metric: str
    n: int
    serving: float | None
    candidate: float | None
    diff: float | None  # candidate - serving, in the metric's own units
    low: float | None  # 95% interval of diff
    high: float | None
    margin: float | None  # in the better direction; None: reported, not gated
    verdict: str  # better | worse | unsure | ungated | missing
    items_needed: int | None = None
    # One-sided bootstrap p-value of "no gain above max(margin, 0)" (gated, enough items).
    p_value: float | None = None
    role: str = "reported"  # objective | guard | soft guard | reported (gate.decide_round)
    level: float | None = None  # an objective's Holm level, which p_value had to meet

    @property
    def name(self) -> str:
        return self.metric if self.source == HELDOUT else f"{self.source}:{self.metric}"

    def describe(self) -> str:
        """One line: `rubric_pass +0.250 [+0.083, +0.417] on 12 items (margin +0.05): better`."""
        if self.diff is None or self.low is None or self.high is None:
            return f"{self.name}: not measured"
        text = f"{self.name} {self.diff:+.3f} [{self.low:+.3f}, {self.high:+.3f}] on {self.n} items"
        if self.margin is not None:
            lower = ", lower is better" if lower_is_better(self.metric) else ""
            text += f" (margin {self.margin:+g}{lower})"
        text += f": {self.verdict}"
        if self.role == "objective" and self.p_value is not None and self.level is not None:
            met = "<=" if self.p_value <= self.level else ">"
            text += f" (objective, p={self.p_value:.4f} {met} {self.level:.4f} after Holm)"
        if self.items_needed:
            text += f"; about {self.items_needed} items would be needed to tell"
        return text


def compare(
    source: str,
    metric: str,
    serving: ItemScores | None,
    candidate: ItemScores | None,
    margin: float | None,
    *,
    min_items: int = MIN_ITEMS,
    resamples: int = RESAMPLES,
) -> Comparison:
    """Pair the two models' items on `metric`, bootstrap the difference, give the verdict."""
    if (
        serving is None
        or candidate is None
        or not candidate.values
        or len(serving.values) != len(candidate.values)
    ):
        return Comparison(source, metric, 0, None, None, None, None, None, margin, "missing")
    n = len(candidate.values)
    weights = candidate.weights or [1.0] * n
    diffs = [c - s for c, s in zip(candidate.values, serving.values, strict=True)]
    bounded = not lower_is_better(metric) and all(
        0.0 <= v <= 1.0 for v in [*serving.values, *candidate.values]
    )
    diff = _dot(weights, diffs) / sum(weights)
    means = bootstrap_means(diffs, weights, bounded=bounded, resamples=resamples)
    low, high = _percentiles(means)
    comp = Comparison(
        source, metric, n, serving.mean(), candidate.mean(), diff, low, high, margin, "ungated"
    )
    if margin is not None:
        comp.verdict = _verdict(comp) if n >= min_items else "unsure"
        if n >= min_items:
            sign = -1.0 if lower_is_better(metric) else 1.0
            at_or_below = sum(1 for m in means if sign * m <= max(margin, 0.0))
            comp.p_value = (at_or_below + 1) / (len(means) + 1)
        if comp.verdict == "unsure" or (comp.verdict == "worse" and margin > 0):
            comp.items_needed = max(min_items, items_needed(diffs, weights, comp))
    return comp


def paired_interval(
    diffs: list[float],
    weights: list[float] | None = None,
    *,
    bounded: bool = False,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the weighted mean of paired differences."""
    return _percentiles(
        bootstrap_means(diffs, weights, bounded=bounded, resamples=resamples, seed=seed)
    )


def bootstrap_means(
    diffs: list[float],
    weights: list[float] | None = None,
    *,
    bounded: bool = False,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> list[float]:
    """The weighted mean of paired differences in each of `resamples` bootstrap resamples."""
    import numpy as np

    d = np.asarray(diffs, dtype=float)
    w = np.asarray(weights if weights is not None else [1.0] * len(diffs), dtype=float)
    if bounded:  # one pseudo-item at each extreme: see the module docstring
        d = np.concatenate([d, [1.0, -1.0]])
        w = np.concatenate([w, [w.mean(), w.mean()]])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(resamples, len(d)))
    return ((d[idx] * w[idx]).sum(axis=1) / w[idx].sum(axis=1)).tolist()


def _percentiles(means: list[float]) -> tuple[float, float]:
    import numpy as np

    low, high = np.percentile(np.asarray(means), [2.5, 97.5])
    return float(low), float(high)


def items_needed(diffs: list[float], weights: list[float], comp: Comparison) -> int:
    """Items for an 80%-power, 95% test that the gain exceeds the margin.

    n = ((1.96 + 0.84) * sd / effect)^2 with the observed spread of per-item gains (0.5 when
    every item tied) and the observed gain over the margin (ASSUMED_EFFECT when none was seen).
    """
    sign = -1.0 if lower_is_better(comp.metric) else 1.0
    gains = [sign * d for d in diffs]
    mean = sum(gains) / len(gains)
    sd = math.sqrt(sum((g - mean) ** 2 for g in gains) / max(1, len(gains) - 1)) or 0.5
    effect = sign * (comp.diff or 0.0) - (comp.margin or 0.0)
    if effect <= 0.01:
        effect = ASSUMED_EFFECT
    return max(len(gains) + 1, math.ceil(((Z_95 + Z_POWER_80) * sd / effect) ** 2))


def gain_interval(comp: Comparison) -> tuple[float, float]:
    """The interval of the gain (in the better direction)."""
    low, high = comp.low or 0.0, comp.high or 0.0
    return (-high, -low) if lower_is_better(comp.metric) else (low, high)


def _verdict(comp: Comparison) -> str:
    margin = comp.margin or 0.0
    low, high = gain_interval(comp)
    if low > max(margin, 0.0):
        return "better"
    if high < margin:
        return "worse"
    return "unsure"


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))
