"""The gate's statistics on hand-made paired outcomes whose right answer is known."""

from __future__ import annotations

from typing import Any

import pytest

from training.comparisons import HELDOUT, ItemScores, compare, paired_interval
from training.gate import GateConfig, GateConfigError, StageDecision, decide_round, parse_margins


def decide_stage(stage: str, comparisons: list) -> StageDecision:
    """One stage's decision: a round of that stage alone."""
    return decide_round({stage: comparisons})[stage]


def _binary(wins: int, losses: int, ties: int) -> tuple[ItemScores, ItemScores]:
    """Serving and candidate pass/fail per item: `wins` only the candidate passes, `losses`
    only serving passes, `ties` both fail."""
    serving = [0.0] * wins + [1.0] * losses + [0.0] * ties
    candidate = [1.0] * wins + [0.0] * losses + [0.0] * ties
    return ItemScores(serving), ItemScores(candidate)


def _decision(wins: int, losses: int, ties: int, margin: float = 0.0, **kw: int) -> str:
    serving, candidate = _binary(wins, losses, ties)
    comp = compare("evalset", "exact", serving, candidate, margin, **kw)
    return decide_stage("sft", [comp]).decision


def test_all_ties_are_inconclusive_whatever_the_size() -> None:
    assert _decision(0, 0, 12) == "inconclusive"
    assert _decision(0, 0, 500) == "inconclusive"
    serving, candidate = _binary(0, 0, 20)
    comp = compare("evalset", "exact", serving, candidate, 0.05)
    assert comp.verdict == "unsure" and comp.items_needed and comp.items_needed > 20
    assert "items would be needed" in decide_stage("sft", [comp]).reasons[0]


def test_a_clear_win_promotes_and_a_clear_loss_rejects() -> None:
    assert _decision(12, 0, 8) == "promote"
    assert _decision(0, 12, 8) == "reject"
    comp = compare("evalset", "exact", *_binary(0, 12, 8), 0.0)
    assert comp.diff == pytest.approx(-0.6) and comp.high is not None and comp.high < 0
    assert "exact -0.600" in decide_stage("sft", [comp]).reasons[0]


def test_a_handful_of_agreeing_items_is_not_enough() -> None:
    # Three of three: a plain bootstrap would give [+1, +1]; ours stays unsure.
    assert _decision(3, 0, 0, min_items=1) == "inconclusive"
    assert _decision(6, 0, 0, min_items=1) == "promote"
    # Below the minimum item count nothing is decided, however clear it looks.
    assert _decision(6, 0, 0) == "inconclusive"  # default minimum: 8
    assert _decision(0, 7, 0) == "inconclusive"


def test_a_small_team_with_50_prompts_and_a_real_20_point_gain_gets_promoted() -> None:
    # +20 pp on 50 prompts: 15 items better, 5 worse, 30 unchanged.
    assert _decision(15, 5, 30) == "promote"
    # The same gain on 10 prompts is too few to tell.
    assert _decision(3, 1, 6) == "inconclusive"
    # A margin of +0.10 asks for more evidence than +0.20 on 50 items gives.
    serving, candidate = _binary(15, 5, 30)
    comp = compare("evalset", "exact", serving, candidate, 0.10)
    assert comp.verdict == "unsure" and comp.items_needed and comp.items_needed > 50


def test_loss_metrics_improve_downwards_and_guards_tolerate_their_margin() -> None:
    serving = ItemScores([2.0] * 10, [5.0] * 10)
    lower = ItemScores([1.5 + 0.01 * i for i in range(10)], [5.0] * 10)
    higher = ItemScores([2.5 + 0.01 * i for i in range(10)], [5.0] * 10)
    slightly = ItemScores([2.02 + 0.001 * i for i in range(10)], [5.0] * 10)
    assert compare(HELDOUT, "heldout_loss", serving, lower, -0.05).verdict == "better"
    assert compare(HELDOUT, "heldout_loss", serving, higher, -0.05).verdict == "worse"
    # A rise of ~0.025 is within a tolerated 0.05: not a regression, not a gain.
    assert compare(HELDOUT, "heldout_loss", serving, slightly, -0.05).verdict == "unsure"
    # Objectives must all be shown better; a guard only blocks when shown worse.
    objective = compare("evalset", "exact", *_binary(15, 0, 5), 0.05)
    guard = compare(HELDOUT, "heldout_loss", serving, slightly, -0.05)
    assert decide_stage("dpo", [objective, guard]).decision == "promote"
    # The feedback's own held-out loss cannot veto an objective shown better (it is said)...
    broken = compare(HELDOUT, "heldout_loss", serving, higher, -0.05)
    overruled = decide_stage("dpo", [objective, broken])
    assert overruled.decision == "promote"
    assert "heldout_loss +0.5" in overruled.notes[0] and "overruled" in overruled.notes[0]
    # ...but it still blocks a stage whose objective is not shown better.
    unsure = compare("evalset", "exact", *_binary(2, 1, 17), 0.05)
    blocked = decide_stage("dpo", [unsure, broken])
    assert blocked.decision == "reject" and "heldout_loss +0.5" in blocked.reasons[0]
    # A guard the feedback cannot bend (forgetting outside the domain) always blocks.
    forgot = compare(HELDOUT, "general_loss", serving, higher, -0.05)
    assert decide_stage("dpo", [objective, forgot]).decision == "reject"


def test_the_interval_is_reproducible_and_covers_the_mean() -> None:
    diffs = [1.0, 0.0, 0.0, 1.0, -1.0, 0.0, 1.0, 1.0, 0.0, 0.0] * 3
    first = paired_interval(diffs)
    assert first == paired_interval(diffs)  # fixed seed: the same decision every time
    assert first[0] < sum(diffs) / len(diffs) < first[1]


def test_margins_parse_and_qualify_by_set() -> None:
    margins = parse_margins("rubric_pass=0.05, eval_demo:exact=0 ,heldout_loss=-0.1")
    assert margins == {"rubric_pass": 0.05, "eval_demo:exact": 0.0, "heldout_loss": -0.1}
    gate = GateConfig(margins=margins)
    assert gate.margin(HELDOUT, "rubric_pass") == 0.05
    assert gate.margin("eval_demo", "exact") == 0.0
    assert gate.margin("eval_demo", "json_valid") is None  # the set is named: only exact
    assert gate.margin("other_set", "json_valid") == 0.0  # a set not named: every metric at 0
    assert gate.margin(HELDOUT, "general_pass") is None  # not gated, only reported
    for bad in ("rubric_pass", "=1", "exact=abc", "exact=nan"):
        with pytest.raises(GateConfigError, match="METRIC=NUMBER"):
            parse_margins(bad)


def test_no_gated_metric_measured_is_inconclusive() -> None:
    missing = compare(HELDOUT, "pref_acc", None, ItemScores([1.0]), 0.0)
    assert missing.verdict == "missing"
    assert decide_stage("sft", [missing]).decision == "inconclusive"


def test_feedback_labels_never_promote_alone() -> None:
    # A candidate trained on backwards labels: "better" on held-out rows split off the same
    # feedback, no change on the operator's eval set.
    serving = ItemScores([2.0] * 10, [5.0] * 10)
    lower = ItemScores([1.5 + 0.01 * i for i in range(10)], [5.0] * 10)
    higher = ItemScores([2.5 + 0.01 * i for i in range(10)], [5.0] * 10)
    flipped_loss = compare(HELDOUT, "heldout_loss", serving, lower, -0.05)
    flipped_acc = compare(HELDOUT, "pref_acc", *_binary(12, 0, 0), 0.0)
    assert flipped_loss.verdict == flipped_acc.verdict == "better"
    tie = compare("evalset", "correct", *_binary(0, 0, 80), 0.0)
    win = compare("evalset", "correct", *_binary(15, 0, 65), 0.0)

    # With no eval set and no generated reply, the feedback's own labels cannot promote,
    # however much better they look (they promoted here before).
    alone = decide_stage("dpo", [flipped_loss, flipped_acc])
    assert alone.decision == "inconclusive"
    assert "the feedback's own labels never promote alone" in alone.reasons[0]
    # Even given a positive margin, pref_acc stays a guard: no objective, no promotion.
    eager = compare(HELDOUT, "pref_acc", *_binary(12, 0, 0), 0.05)
    assert decide_stage("dpo", [eager]).decision == "inconclusive" and eager.role == "soft guard"
    held = decide_stage("dpo", [flipped_loss, flipped_acc, tie])
    assert held.decision == "inconclusive"
    assert "evalset:correct +0.000" in held.reasons[0]
    assert decide_stage("dpo", [flipped_loss, win]).decision == "promote"
    # The generated replies to held-out prompts are what may promote without an eval set.
    replies_up = compare(HELDOUT, "reply_match", *_binary(12, 0, 8), 0.0)
    replies_down = compare(HELDOUT, "reply_match", *_binary(0, 12, 8), 0.0)
    assert decide_stage("dpo", [flipped_loss, flipped_acc, replies_up]).decision == "promote"
    # Worse replies reject the stage however much lower its held-out loss is.
    down = decide_stage("dpo", [flipped_loss, flipped_acc, replies_down])
    assert down.decision == "reject" and "reply_match -0.600" in down.reasons[0]
    # With an eval set named, the reply metric is a guard: it cannot veto the set's win.
    assert decide_stage("dpo", [replies_down, win]).decision == "promote"
    # The held-out rubric is the operator's rule, not the feedback's: it may promote.
    rubric = compare(HELDOUT, "rubric_pass", *_binary(12, 0, 0), 0.05)
    assert decide_stage("dpo", [rubric, tie]).decision == "inconclusive"  # the set's tie: unsure
    assert decide_stage("dpo", [rubric, flipped_loss]).decision == "promote"
    broken = compare(HELDOUT, "heldout_loss", serving, higher, -0.05)
    assert decide_stage("dpo", [broken, win]).decision == "promote"  # cannot veto a shown win


def test_the_clearest_stage_is_judged_on_its_primary_objective() -> None:
    """A triage round's SFT and DPO stages (figures from a real one): both pass on the eval
    set. Its first metric (`correct`) is the set's one primary objective; the others guard,
    and the held-out loss on 7 feedback rows never counts towards the choice."""
    from training.comparisons import Comparison

    def comp(source: str, metric: str, low: float, high: float, margin: float) -> Comparison:
        return Comparison(source, metric, 40, 0.0, (low + high) / 2, (low + high) / 2,
                          low, high, margin, "better")  # fmt: skip

    def stage(name: str, loss: tuple[float, float], evals: list[tuple[float, float]]) -> Any:
        comps = [comp(HELDOUT, "heldout_loss", *loss, -0.05)]
        metrics = ("correct", "category_acc", "order_acc", "parseable")
        comps += [comp("tickets_eval", m, *iv, 0.0) for m, iv in zip(metrics, evals, strict=True)]
        return StageDecision(name, "promote", [], comps)

    sft = stage("sft", (-1.812, -0.269), [(0.26, 0.60), (0.21, 0.55), (0.55, 0.86), (0.76, 0.98)])
    dpo = stage("dpo", (-1.820, 0.828), [(0.31, 0.64), (0.26, 0.60), (0.74, 0.98), (0.86, 1.0)])
    assert dpo.strength() == pytest.approx(0.31) and sft.strength() == pytest.approx(0.26)
    # Without an eval set the held-out loss is all there is, and it cannot pick a stage.
    alone = [StageDecision(s.stage, "promote", [], s.comparisons[:1]) for s in (sft, dpo)]
    assert alone[0].strength() == alone[1].strength() == float("-inf")


def test_holm_across_stages_asks_more_of_each() -> None:
    """A gain that one stage alone would show passes; the same gain in one of three competing
    stages (the other two tied) does not: each stage is another chance to promote by luck."""

    def comps() -> list:
        return [compare(HELDOUT, "reply_match", *_binary(8, 1, 31), 0.0)]

    alone = decide_round({"sft": comps()})
    assert alone["sft"].decision == "promote"
    p = alone["sft"].comparisons[0].p_value
    assert p is not None and 0.025 / 3 < p <= 0.025, p
    tied = [compare(HELDOUT, "reply_match", *_binary(0, 0, 40), 0.0)]
    three = decide_round({"sft": comps(), "dpo": list(tied), "kto": [
        compare(HELDOUT, "reply_match", *_binary(0, 0, 40), 0.0)]})  # fmt: skip
    assert three["sft"].decision == "inconclusive"
    assert "after Holm" in three["sft"].reasons[0]
    # One more prompt won is enough among three (docs/gate-rule.md quotes both counts).
    clearer = [compare(HELDOUT, "reply_match", *_binary(9, 1, 30), 0.0)]
    three = decide_round({"sft": clearer, "dpo": [
        compare(HELDOUT, "reply_match", *_binary(0, 0, 40), 0.0)], "kto": [
        compare(HELDOUT, "reply_match", *_binary(0, 0, 40), 0.0)]})  # fmt: skip
    assert three["sft"].decision == "promote"
