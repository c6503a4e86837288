"""The promotion gate: one decision per stage from its paired comparisons
(training/comparisons.py), and the choice of the stage a round registers. The rule for
operators is docs/gate-rule.md.

Roles. Only an *objective* can promote; every other gated metric is a *guard*, which can
only block. The objectives are:
- every measured metric given a positive margin (TUNELOOP_GATE_MARGINS, e.g. the rubric's
  `rubric_pass=0.05`), except the metrics graded by the feedback's own labels, which are
  always guards;
- one primary objective per source that has none of those: for each eval set its first
  metric (the first its first scorer returns), and for the held-out prompts, when no eval
  set was measured, the generated-reply metric (`reply_judge` with a judge model, else
  `reply_match`: training/eval/reply_match.py), so a domain with only a system prompt is
  gated on what users see.
The held-out preference accuracy, KTO accuracy, loss and reply metrics are graded by the
feedback the candidate trained on (its held-out split): if the labels are backwards, a
candidate trained on them looks *better* there too. So `pref_acc`, `kto_acc` and
`heldout_loss` never promote, and as guards (the reply metrics too, where they are guards)
they are *soft*: shown worse, they block a stage whose objectives are not all shown better
(reject instead of inconclusive), but cannot veto one whose objectives are. The other
guards (general checks, an eval set's other metrics, a rubric without a positive margin)
block always.

False promotions. An objective is `better` when its one-sided bootstrap p-value passes
Holm's step-down procedure over every (stage, objective) comparison of the round at a
family-wise level of FAMILY_ALPHA (2.5%, the level of one side of a single 95% interval).
A stage promotes only when every one of its objectives is `better`, so the chance that a
round promotes any stage that is not better on all of its objectives is at most
FAMILY_ALPHA, however many stages and objectives compete (tests/test_gate_rate.py measures
it on recorded outcomes).

A stage's decision: `reject` when an objective or a guard is `worse` (a soft guard: only
when the objectives are not all `better`); `promote` when every objective is `better`;
otherwise `inconclusive`, which never promotes by itself (an operator can force it with
`tuneloop promote --force`). With no objective measured a stage is inconclusive.
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
# held-out rubric pass rate is an objective where a rubric exists; the generated-reply
# metric is the objective of a round without eval sets (a primary objective, see above,
# gated at 0 unless named here); the rest are guards.
DEFAULT_MARGINS = "rubric_pass=0.05,pref_acc=0,heldout_loss=-0.05,general_loss=-0.25,general_pass=0"
# The held-out generated-reply metrics, the one a round uses first: the judge's when set.
REPLY_METRICS = ("reply_judge", "reply_match")
# Held-out metrics graded by the feedback's own labels: never objectives.
FEEDBACK_LABEL_METRICS = frozenset({"pref_acc", "kto_acc", "heldout_loss"})
# Guards that cannot veto a stage whose objectives are all shown better (module docstring).
SOFT_GUARDS = FEEDBACK_LABEL_METRICS | frozenset(REPLY_METRICS)
# Family-wise one-sided level of the objectives' tests across a round's stages (Holm).
FAMILY_ALPHA = 0.025


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
        if source == HELDOUT and metric in REPLY_METRICS:
            return 0.0  # gated unless a margin says otherwise: it may be the objective
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
    notes: list[str] = field(default_factory=list)  # soft guards overruled by the objectives

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for comp, raw in zip(self.comparisons, out["comparisons"], strict=True):
            raw["name"] = comp.name
        return out

    def strength(self) -> float:
        """How clearly the stage wins: the mean lower interval end of its objectives' gains
        (guards never count); for picking among passing stages."""
        judged = [c for c in self.comparisons if c.margin is not None and c.low is not None]
        objectives = [c for c in judged if c.role == "objective"] or objectives_of(judged)
        gains = [gain_interval(c)[0] for c in objectives]
        return sum(gains) / len(gains) if gains else -math.inf


def decide_round(
    stages: dict[str, list[Comparison]], *, alpha: float = FAMILY_ALPHA
) -> dict[str, StageDecision]:
    """Every stage's decision (see the module docstring): roles first, then Holm over all
    the stages' objectives, then each stage's verdict."""
    family: list[Comparison] = []
    for comparisons in stages.values():
        for comp in comparisons:
            if comp.margin is not None and comp.verdict != "missing":
                comp.role = "guard"
                if comp.source == HELDOUT and comp.metric in SOFT_GUARDS:
                    comp.role = "soft guard"
        for comp in objectives_of(comparisons):
            comp.role = "objective"
            family.append(comp)
    holm(family, alpha)
    return {stage: _decide_stage(stage, comparisons) for stage, comparisons in stages.items()}


def objectives_of(comparisons: list[Comparison]) -> list[Comparison]:
    """A stage's objectives (the rule in the module docstring), in comparison order."""
    measured = [c for c in comparisons if c.margin is not None and c.verdict != "missing"]
    chosen = [
        c for c in measured if (c.margin or 0.0) > 0 and c.metric not in FEEDBACK_LABEL_METRICS
    ]
    have = {c.source for c in chosen}
    sources = list(dict.fromkeys(c.source for c in measured))
    evalsets = [s for s in sources if s != HELDOUT]
    for source in sources:
        if source in have:
            continue
        if source == HELDOUT:
            replies = (c for m in REPLY_METRICS for c in measured if (c.source, c.metric) == (
                HELDOUT, m))  # fmt: skip
            pick = None if evalsets else next(replies, None)
        else:
            pick = next(c for c in measured if c.source == source)
        if pick is not None:
            chosen.append(pick)
    return [c for c in comparisons if any(c is o for o in chosen)]


def holm(family: list[Comparison], alpha: float = FAMILY_ALPHA) -> None:
    """Holm's step-down procedure on the objectives' p-values: the k-th smallest of m must be
    at most alpha / (m - k + 1), and the first that is not stops the rest. Sets each
    objective's `level` and its verdict (`better` only where Holm passes it)."""
    ranked = sorted(family, key=lambda c: 1.0 if c.p_value is None else c.p_value)
    passing = True
    for k, comp in enumerate(ranked):
        comp.level = alpha / (len(ranked) - k)
        passing = passing and comp.p_value is not None and comp.p_value <= comp.level
        if passing:
            comp.verdict = "better"
        elif comp.verdict == "better":
            comp.verdict = "unsure"


def _decide_stage(stage: str, comparisons: list[Comparison]) -> StageDecision:
    objectives = [c for c in comparisons if c.role == "objective"]
    worse = [c for c in comparisons if c.role in ("objective", "guard") and c.verdict == "worse"]
    soft = [c for c in comparisons if c.role == "soft guard" and c.verdict == "worse"]
    if worse:
        return StageDecision(stage, "reject", [c.describe() for c in worse], comparisons)
    short = [c for c in objectives if c.verdict != "better"]
    if objectives and not short:
        notes = [f"{c.describe()}; overruled: the objectives are shown better" for c in soft]
        return StageDecision(stage, "promote", [], comparisons, notes)
    if soft:
        reasons = [c.describe() for c in soft] + [c.describe() for c in short]
        return StageDecision(stage, "reject", reasons, comparisons)
    if not objectives:
        guards = "; ".join(c.describe() for c in comparisons if c.role != "reported")
        reasons = [
            "no objective could be measured (no held-out prompt with an approved answer "
            "whose reply was generated, no eval set); the feedback's own labels never promote "
            "alone" + (f": {guards}" if guards else "")
        ]
        return StageDecision(stage, "inconclusive", reasons, comparisons)
    return StageDecision(stage, "inconclusive", [c.describe() for c in short], comparisons)


def decide_stages(
    gate: GateConfig,
    metrics: dict[str, dict[str, Any]],
    runs: list[Any],
    stages: list[str],
    eval_error: str | None,
) -> dict[str, Any]:
    """Every stage's decision against the serving version, on held-out items (`metrics`, per
    model) and eval sets (`runs`, training.eval.evalsets.EvalRun), Holm across the stages;
    an eval that could not run (`eval_error`) rejects every stage."""
    comparisons: dict[str, list[Comparison]] = {}
    for stage in stages:
        comps = comparisons.setdefault(stage, [])
        serving_items = metrics["serving"].get("items", {})
        for metric, items in metrics[stage].get("items", {}).items():
            ref = serving_items.get(metric)
            comps.append(
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
            # in the order the scorers return them: a set's first metric is its objective
            order = [m for m in run.metrics.get(stage, {}) if m in run.items[stage]]
            order += [m for m in run.items[stage] if m not in order]
            for metric in order:
                pairs = [
                    (a, b)
                    for a, b in zip(
                        reference.get(metric, []), run.items[stage][metric], strict=False
                    )
                    if a is not None and b is not None
                ]
                comps.append(
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
    decisions = decide_round(comparisons)
    if eval_error:  # an eval that cannot run blocks the promotion too
        for decision in decisions.values():
            decision.decision = "reject"
            decision.reasons = [eval_error, *decision.reasons]
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
