"""The promotion gate: one decision per stage from its paired comparisons
(training/comparisons.py), and the choice of the stage a round registers.

A stage's decision: `reject` when any gated metric is `worse`; `promote` when every
objective that could be measured is `better` (with no objective measured, at least one
gated metric must be `better`), and none is `worse`; otherwise `inconclusive`, which never
promotes by itself (an operator can force it with `tuneloop promote --force`).

The held-out preference accuracy, KTO accuracy and loss are measured against the feedback's
own labels, split off the same feedback the candidate trained on: if the labels are
backwards, a candidate trained on them looks *better* there too. So when the round also
measured an eval set, those three still guard (a `worse` rejects) but cannot promote on
their own: with no objective, the `better` metric must be one the feedback cannot bend.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training.comparisons import (
    HELDOUT,
    MIN_ITEMS,
    RESAMPLES,
    Comparison,
    ItemScores,
    compare,
    gain_interval,
)

# The gate's defaults, in one place (Settings shows them, the round applies them): the
# held-out rubric pass rate is the objective; the rest are regression guards.
DEFAULT_MARGINS = "rubric_pass=0.05,pref_acc=0,heldout_loss=-0.05,general_loss=-0.25,general_pass=0"
# Held-out metrics graded by the feedback's own labels (see the module docstring).
FEEDBACK_LABEL_METRICS = frozenset({"pref_acc", "kto_acc", "heldout_loss"})


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
        promoted on (objectives, else the gated metrics that may promote: see `decide_stage`);
        for picking among passing stages."""
        judged = [c for c in self.comparisons if c.margin is not None and c.low is not None]
        objectives = [c for c in judged if (c.margin or 0) > 0] or _may_promote(judged)
        gains = [gain_interval(c)[0] for c in objectives]
        return sum(gains) / len(gains) if gains else -math.inf


def decide_stage(stage: str, comparisons: list[Comparison]) -> StageDecision:
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


def decide_stages(
    gate: GateConfig,
    metrics: dict[str, dict[str, Any]],
    runs: list[Any],
    stages: list[str],
    eval_error: str | None,
) -> dict[str, Any]:
    """Every stage's decision against the serving version, on held-out items (`metrics`, per
    model) and eval sets (`runs`, training.eval.evalsets.EvalRun); an eval that could not
    run (`eval_error`) rejects every stage."""
    decisions: dict[str, StageDecision] = {}
    for stage in stages:
        comparisons = []
        serving_items = metrics["serving"].get("items", {})
        for metric, items in metrics[stage].get("items", {}).items():
            ref = serving_items.get(metric)
            comparisons.append(
                compare(
                    HELDOUT,
                    metric,
                    ItemScores(**ref) if ref else None,
                    ItemScores(**items),
                    gate.margin(HELDOUT, metric),
                    min_items=gate.min_items,
                    resamples=gate.resamples,
                )
            )
        for run in runs:
            reference = run.items[run.labels[0]]
            for metric, values in run.items[stage].items():
                pairs = [
                    (a, b)
                    for a, b in zip(reference.get(metric, []), values, strict=False)
                    if a is not None and b is not None
                ]
                comparisons.append(
                    compare(
                        run.evalset.name,
                        metric,
                        ItemScores([a for a, _ in pairs]),
                        ItemScores([b for _, b in pairs]),
                        gate.margin(run.evalset.name, metric),
                        min_items=gate.min_items,
                        resamples=gate.resamples,
                    )
                )
        decision = decide_stage(stage, comparisons)
        if eval_error:  # an eval that cannot run blocks the promotion too
            decision.decision = "reject"
            decision.reasons = [eval_error, *decision.reasons]
        decisions[stage] = decision
    return decisions


def pick_candidate(decisions: dict[str, Any], order: list[str]) -> tuple[str, list[str]]:
    """The stage to register: the clearest winner among those the gate would promote (the
    earlier stage wins a tie: DPO and KTO must earn their place); with none, the clearest of
    all, so an operator can still force it. Returns it with the reasons for the choice."""
    passing = [s for s in order if decisions[s].decision == "promote"]
    pool = passing or order
    best = max(pool, key=lambda s: (round(decisions[s].strength(), 9), -order.index(s)))
    reasons: list[str] = []
    for stage in order:
        d = decisions[stage]
        if stage == best and d.decision == "promote":
            continue
        label = "dropped" if passing else d.decision
        if passing and d.decision == "promote":
            why = [f"{best} wins more clearly"]
        else:
            why = d.reasons or [d.decision]
        reasons += [f"{stage} {label}: {r}" for r in why]
    return best, reasons
