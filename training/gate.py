"""The promotion gate: paired comparisons with 95% intervals, and one decision per stage.

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

A stage's decision: `reject` when any gated metric is `worse`; `promote` when every
objective that could be measured is `better` (with no objective measured, at least one
gated metric must be `better`), and none is `worse`; otherwise `inconclusive`, which never
promotes by itself (an operator can force it with `tuneloop promote --force`).

The held-out preference accuracy, KTO accuracy and loss are measured against the feedback's
own labels, split off the same feedback the candidate trained on: if the labels are
backwards, a candidate trained on them looks *better* there too. So when the round also
measured an eval set, those three still guard (a `worse` rejects) but cannot promote on
their own: with no objective, the `better` metric must be one the feedback cannot bend.

The interval is a paired percentile bootstrap over items (2,000 resamples, fixed seed so a
decision is reproducible). One method serves every kind of metric we gate (pass/fail
shares, preference outcomes that count ties half, per-item losses weighted by tokens, any
scorer's per-row values) and keeps each item's pairing. A plain bootstrap on a handful of
items that all agree gives a zero-width interval, so for metrics bounded in [0, 1] one
pseudo-item at each extreme (a +1 and a -1 difference) joins the resample, the idea behind
the Agresti-Caffo adjusted interval: 3 wins out of 3 stays inconclusive, 6 out of 6 does not.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The gate's defaults, in one place (Settings shows them, the round applies them): the
# held-out rubric pass rate is the objective; the rest are regression guards.
DEFAULT_MARGINS = "rubric_pass=0.05,pref_acc=0,heldout_loss=-0.05,general_loss=-0.25,general_pass=0"
HELDOUT = "heldout"
# Held-out metrics graded by the feedback's own labels (see the module docstring).
FEEDBACK_LABEL_METRICS = frozenset({"pref_acc", "kto_acc", "heldout_loss"})
RESAMPLES = 2000
# Below this many paired items a metric's verdict is "unsure" whatever its interval says: a
# bootstrap on a handful of items understates its own uncertainty.
MIN_ITEMS = 8
Z_95 = 1.96
Z_POWER_80 = 0.84
# With no difference seen yet, the item count needed is quoted for a true gain this much
# above the margin.
ASSUMED_EFFECT = 0.10


class GateConfigError(ValueError):
    """A gate setting that cannot be parsed (the message says how to write it)."""


@dataclass(frozen=True)
class GateConfig:
    """What the gate compares and how strictly: built once from Settings for every round."""

    margins: dict[str, float] = field(default_factory=lambda: parse_margins(DEFAULT_MARGINS))
    eval_sets: tuple[Path, ...] = ()
    eval_scorer: str = "auto"
    rubric_file: Path | None = None
    eval_max_new_tokens: int = 256
    eval_temperature: float = 0.0
    eval_batch_size: int | None = None
    load_in_4bit: bool = False
    bf16: bool | None = None  # answering in bf16 (training/device/precision.py inference_dtype)
    evals_dir: Path | None = None  # reply cache and recorded results; None: no eval sets
    judge: Any = None  # the pairwise scorer's judge (training.eval.scorers.Judge), when set
    min_items: int = MIN_ITEMS
    resamples: int = RESAMPLES

    def margin(self, source: str, metric: str) -> float | None:
        """The margin of `metric` from `source` (None: not gated). `SET:METRIC` wins over
        `METRIC`; an eval set's metrics not named at all are gated at 0 (must not lose)."""
        qualified = f"{source}:{metric}"
        if qualified in self.margins:
            return self.margins[qualified]
        if metric in self.margins:
            return self.margins[metric]
        if source != HELDOUT and not any(k.startswith(f"{source}:") for k in self.margins):
            return 0.0
        return None


def parse_margins(text: str) -> dict[str, float]:
    """`"rubric_pass=0.05,eval_demo:exact=0"` -> {"rubric_pass": 0.05, "eval_demo:exact": 0.0}."""
    margins: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
        except ValueError:
            raise GateConfigError(
                f"bad gate margin {part.strip()!r}: write METRIC=NUMBER or SET:METRIC=NUMBER, "
                "e.g. rubric_pass=0.05,eval_demo:exact=0"
            ) from None
        margins[name.strip()] = number
    return margins


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
        if self.items_needed:
            text += f"; about {self.items_needed} items would be needed to tell"
        return text


@dataclass
class StageDecision:
    """The gate's decision on one stage, with every comparison it rests on."""

    stage: str
    decision: str  # promote | reject | inconclusive
    reasons: list[str]
    comparisons: list[Comparison]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for comp, raw in zip(self.comparisons, out["comparisons"], strict=True):
            raw["name"] = comp.name
        return out

    def strength(self) -> float:
        """How clearly the stage wins: the mean lower interval end of the gains it may be
        promoted on (objectives, else the gated metrics that may promote: see `decide`);
        for picking among passing stages."""
        judged = [c for c in self.comparisons if c.margin is not None and c.low is not None]
        objectives = [c for c in judged if (c.margin or 0) > 0] or _may_promote(judged)
        gains = [_gain_interval(c)[0] for c in objectives]
        return sum(gains) / len(gains) if gains else -math.inf


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
    low, high = paired_interval(diffs, weights, bounded=bounded, resamples=resamples)
    comp = Comparison(
        source, metric, n, serving.mean(), candidate.mean(), diff, low, high, margin, "ungated"
    )
    if margin is not None:
        comp.verdict = _verdict(comp) if n >= min_items else "unsure"
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
    import numpy as np

    d = np.asarray(diffs, dtype=float)
    w = np.asarray(weights if weights is not None else [1.0] * len(diffs), dtype=float)
    if bounded:  # one pseudo-item at each extreme: see the module docstring
        d = np.concatenate([d, [1.0, -1.0]])
        w = np.concatenate([w, [w.mean(), w.mean()]])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(resamples, len(d)))
    means = (d[idx] * w[idx]).sum(axis=1) / w[idx].sum(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
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


def decide(stage: str, comparisons: list[Comparison]) -> StageDecision:
    """The stage's decision from its comparisons (see the module docstring)."""
    gated = [c for c in comparisons if c.margin is not None and c.verdict != "missing"]
    worse = [c for c in gated if c.verdict == "worse"]
    objectives = [c for c in gated if (c.margin or 0) > 0]
    reasons: list[str] = []
    if worse:
        reasons = [c.describe() for c in worse]
        return StageDecision(stage, "reject", reasons, comparisons)
    if not gated:
        reasons = ["no gated metric could be measured (no held-out items, no eval set)"]
        return StageDecision(stage, "inconclusive", reasons, comparisons)
    if objectives:
        short = [c for c in objectives if c.verdict != "better"]
        if not short:
            return StageDecision(stage, "promote", [], comparisons)
        reasons = [c.describe() for c in short]
    else:
        promoters = _may_promote(gated)
        if any(c.verdict == "better" for c in promoters):
            return StageDecision(stage, "promote", [], comparisons)
        what = "gated metric" if promoters is gated else "metric the feedback cannot bend"
        reasons = [f"no {what} is shown better than the serving version: " + "; ".join(
            c.describe() for c in promoters
        )]  # fmt: skip
    return StageDecision(stage, "inconclusive", reasons, comparisons)


def _graded_by_feedback(comp: Comparison) -> bool:
    return comp.source == HELDOUT and comp.metric in FEEDBACK_LABEL_METRICS


def _may_promote(gated: list[Comparison]) -> list[Comparison]:
    """With no objective, the gated metrics whose `better` promotes: all of them, except the
    ones graded by the feedback's own labels once an eval set was measured."""
    if any(c.source != HELDOUT for c in gated):
        return [c for c in gated if not _graded_by_feedback(c)]
    return gated


def _gain_interval(comp: Comparison) -> tuple[float, float]:
    """The interval of the gain (in the better direction)."""
    low, high = comp.low or 0.0, comp.high or 0.0
    return (-high, -low) if lower_is_better(comp.metric) else (low, high)


def _verdict(comp: Comparison) -> str:
    margin = comp.margin or 0.0
    low, high = _gain_interval(comp)
    if low > max(margin, 0.0):
        return "better"
    if high < margin:
        return "worse"
    return "unsure"


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))
