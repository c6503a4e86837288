"""How often the gate promotes a candidate that is not better: measured, not argued.

The recorded outcomes are a real round's per-item results (`items.json` of a round of the
tiny model, the one tests/test_gate_round.py runs first: a domain with only a system prompt,
serving = the bare base, SFT and DPO stages; `reply_match` on 24 held-out prompts with
approved answers, `heldout_loss` on the answers people wrote, `pref_acc` on held-out pairs).
Each simulated round shuffles, item by item, which model gave which result: serving and the
stages are then equally good by construction, yet keep the recorded items' spread, ties and
weights. Every round goes through the gate's own decision (`decide_round`: roles, Holm,
guards) with the default margins.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from training.comparisons import HELDOUT, ItemScores, compare
from training.gate import GateConfig, decide_round

RECORDED = Path(__file__).parent / "data" / "gate_items_tiny_round.json"
ROUNDS = 400
MAX_RATE = 0.05
RESAMPLES = 1000  # per comparison; the gate's own 2,000 change the rate by noise only


def _load() -> dict[str, dict[str, Any]]:
    return json.loads(RECORDED.read_text(encoding="utf-8"))[HELDOUT]


def _decisions(items: dict[str, dict[str, Any]], joint: bool = True) -> dict[str, str]:
    """The gate's decision on every stage of one round's per-item results (`joint`: Holm
    across the stages, as a round decides; else each stage alone, as the gate did before)."""
    gate = GateConfig()
    stages = [m for m in items if m != "serving"]
    comparisons: dict[str, list] = {}
    for stage in stages:
        comparisons[stage] = [
            compare(
                HELDOUT,
                metric,
                ItemScores(**items["serving"][metric]),
                ItemScores(**items[stage][metric]),
                gate.margin(HELDOUT, metric),
                min_items=gate.min_items,
                resamples=RESAMPLES,
            )
            for metric in items[stage]
            if metric in items["serving"]
        ]
    if joint:
        return {s: d.decision for s, d in decide_round(comparisons).items()}
    return {s: decide_round({s: comparisons[s]})[s].decision for s in stages}


def _shuffled(items: dict[str, dict[str, Any]], rng: random.Random) -> dict[str, dict[str, Any]]:
    """The same items with each one's results dealt out to the models at random."""
    models = list(items)
    out: dict[str, dict[str, Any]] = {m: {} for m in models}
    for metric in items["serving"]:
        if not all(metric in items[m] for m in models):
            continue
        columns = [items[m][metric]["values"] for m in models]
        weights = items["serving"][metric].get("weights")
        dealt: list[list[float]] = [[] for _ in models]
        for row in zip(*columns, strict=True):
            values = list(row)
            rng.shuffle(values)
            for column, value in zip(dealt, values, strict=True):
                column.append(value)
        for m, column in zip(models, dealt, strict=True):
            out[m][metric] = {"values": column, "weights": weights}
    return out


def test_the_recorded_round_is_one_the_gate_can_tell_apart() -> None:
    """The recorded results carry signal both ways, so the rate below is not low because
    nothing ever differs: as recorded, the stages lose on replies (rejected); with the
    serving version's results given to a stage instead, that stage wins (promoted)."""
    items = _load()
    assert set(items) >= {"serving", "sft", "dpo"}
    assert len(items["serving"]["reply_match"]["values"]) >= 16
    assert set(_decisions(items).values()) == {"reject"}
    swapped = {**items, "sft": items["serving"], "serving": items["sft"]}
    assert _decisions(swapped)["sft"] == "promote"


def test_equally_good_candidates_are_promoted_at_most_5_percent_of_the_time() -> None:
    items = _load()
    rng = random.Random(27)
    promoted = alone = 0
    for _ in range(ROUNDS):
        shuffled = _shuffled(items, rng)
        promoted += "promote" in _decisions(shuffled).values()
        alone += "promote" in _decisions(shuffled, joint=False).values()
    rate = promoted / ROUNDS
    print(
        f"\nfalse promotions: {promoted}/{ROUNDS} rounds = {rate:.1%} with Holm across stages "
        f"(each stage alone: {alone}/{ROUNDS} = {alone / ROUNDS:.1%})"
    )
    assert rate <= MAX_RATE, f"{promoted} of {ROUNDS} rounds promoted an equal candidate"
