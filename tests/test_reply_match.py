"""The generated-reply metric's scoring rule, which answers count as approved, and the judge's
per-prompt verdicts (tiny model as the judge: its verdicts mean nothing, the plumbing does)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.eval.reply_match import (
    approved_answers,
    best_score,
    human_written,
    score,
    token_f1,
)


def test_short_answers_must_match_whole_and_long_ones_earn_partial_credit() -> None:
    # Short (at most 10 words): the same words after case and punctuation, or nothing.
    assert score("Category: shipping.  Order: 361915", "category: shipping\norder: 361915") == 1
    assert score("category: shipping order: 361916", "category: shipping\norder: 361915") == 0
    assert score("Paris is the capital of France.", "Paris") == 0
    # Longer: token F1, so other wording of the same answer keeps most of the credit.
    answer = "Tomatoes like deep water twice a week and a little mulch to keep the soil cool."
    assert score(answer.upper(), answer) == 1
    reworded = "Give tomatoes deep water twice a week, with a little mulch to keep soil cool."
    assert 0.6 < score(reworded, answer) < 1
    assert score("Bread needs flour.", answer) == 0
    assert token_f1("a b c d", "a b") == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_json_answers_are_scored_field_by_field() -> None:
    answer = '{"team": "billing", "priority": "high", "tags": ["refund"]}'
    assert score('{"priority": "high", "team": "billing", "tags": ["refund"]}', answer) == 1
    assert score('{"team": "billing", "priority": "low", "tags": ["refund"]}', answer) == (
        pytest.approx(2 / 3)
    )
    assert score("team: billing, priority: high", answer) == 0  # not JSON at all
    assert score('{"team": "billing"}', answer) == pytest.approx(0.5)  # recall 1/3, precision 1


def test_approved_answers_gather_per_prompt_and_the_loss_takes_written_ones() -> None:
    ask = [{"role": "user", "content": "q1"}]
    other = [{"role": "user", "content": "q2"}]

    def reply(text: str) -> list[dict]:
        return [{"role": "assistant", "content": text}]

    sft = [
        {"messages": [*ask, *reply("fixed by an expert")], "source": "correction"},
        {"messages": [*other, *reply("a sampled reply someone liked")], "source": "thumbs_up"},
        {"messages": [*other, *reply("an imported answer")]},  # no source: an old snapshot
    ]
    pairs = [{"prompt": ask, "chosen": reply("picked"), "rejected": reply("not picked")}]
    kto = [
        {"prompt": ask, "completion": reply("thumbs down"), "label": False},
        {"prompt": other, "completion": reply("thumbs up"), "label": True},
    ]
    found = approved_answers(sft, pairs, kto)
    assert found == [
        (ask, ["fixed by an expert", "picked"]),
        (other, ["a sampled reply someone liked", "an imported answer", "thumbs up"]),
    ]
    assert [r["messages"][-1]["content"] for r in human_written(sft)] == [
        "fixed by an expert",
        "an imported answer",
    ]
    assert best_score("picked", found[0][1]) == 1


def test_the_judge_scores_each_reply_against_the_serving_versions(tiny_model_dir: Path) -> None:
    from training.comparisons import HELDOUT, ItemScores, compare
    from training.eval.reply_match import JUDGE_METRIC, judge_replies
    from training.eval.scorers import Judge
    from training.gate import objectives_of

    prompts = [
        [{"role": "user", "content": f"How do I water tomatoes, case {i}?"}] for i in range(4)
    ]
    same, different = "Deep water twice a week.", "Bread needs flour and water."
    metrics = {
        "serving": {"items": {}, "replies": [{"prompt": p, "reply": same} for p in prompts]},
        "sft": {
            "items": {},
            "replies": [
                {"prompt": p, "reply": same if i < 2 else different} for i, p in enumerate(prompts)
            ],
        },  # fmt: skip
        "kto": {"items": {}},  # no replies generated: left as it is
    }
    judge = Judge(model_dir=lambda: tiny_model_dir, bf16=False)
    judge_replies(judge, metrics, "serving")
    assert metrics["serving"]["items"][JUDGE_METRIC]["values"] == [0.5] * 4
    verdicts = metrics["sft"]["items"][JUDGE_METRIC]["values"]
    assert verdicts[:2] == [0.5, 0.5] and all(v in (0.0, 0.5, 1.0) for v in verdicts)
    assert JUDGE_METRIC not in metrics["kto"]["items"]
    # With both measured, the judge's metric is the held-out objective.
    comps = [
        compare(HELDOUT, metric, ItemScores([0.0] * 8), ItemScores([1.0] * 8), 0.0)
        for metric in ("reply_match", JUDGE_METRIC)
    ]
    assert [c.metric for c in objectives_of(comps)] == [JUDGE_METRIC]
