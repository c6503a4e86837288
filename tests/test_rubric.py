"""The rubric: the demo domain's house style as checks, used by rounds and `tuneloop eval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.config import REPO_DATA_DIR
from training.eval.rubric import RubricError, load_rubric

GOOD = "Hi Dana, credits for outages over 4 hours are automatic (POL-3).\n\n— Brightwater Support"


def test_demo_rubric_passes_the_seed_answers_and_fails_bad_ones() -> None:
    rubric = load_rubric(REPO_DATA_DIR / "rubric.json")
    assert rubric.passes(GOOD, {"customer": "Dana"})
    assert rubric.score(GOOD, {"customer": "Omar"})["greets_by_name"] is False
    # No customer name in the row: the greeting check does not apply.
    assert rubric.score(GOOD, {})["greets_by_name"] is None
    assert rubric.passes(GOOD, {})
    no_sign_off = GOOD.replace("— Brightwater Support", "Thanks")
    assert rubric.score(no_sign_off, {})["signs_off"] is False
    assert not rubric.passes("Hi Dana " + "word " * 90 + "(POL-3)\n— Brightwater Support")
    assert not rubric.passes(GOOD.replace("(POL-3)", ""), {"customer": "Dana"})
    assert not rubric.passes("<b>Hi</b> (POL-3)\n— Brightwater Support")


def test_seed_examples_meet_the_demo_rubric() -> None:
    """The seed SFT rows are the house style; the rubric must agree with them."""
    rubric = load_rubric(REPO_DATA_DIR / "rubric.json")
    for line in (REPO_DATA_DIR / "seed_sft.jsonl").read_text().splitlines():
        reply = json.loads(line)["messages"][-1]["content"]
        result = rubric.score(reply, {})
        assert all(v is not False for v in result.values()), (reply, result)


def test_field_values_are_escaped(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"checks": [{"name": "n", "must_match": "^Hi {customer}$"}]}))
    rubric = load_rubric(path)
    assert rubric.passes("Hi A.B", {"customer": "A.B"})
    assert not rubric.passes("Hi AxB", {"customer": "A.B"})


@pytest.mark.parametrize(
    "body, message",
    [
        ("not json", "not valid JSON"),
        ({"checks": []}, "non-empty"),
        ({"checks": [{"must_match": "x"}]}, 'needs a "name"'),
        ({"checks": [{"name": "a", "must_match": "x", "max_words": 3}]}, "exactly one"),
        ({"checks": [{"name": "a", "must_match": "("}]}, "bad pattern"),
        ({"checks": [{"name": "a", "max_words": 0}]}, "positive integer"),
        ({"checks": [{"name": "a", "max_words": 3}, {"name": "a", "max_words": 4}]}, "unique"),
    ],
)
def test_bad_rubric_files_say_what_is_wrong(tmp_path: Path, body: object, message: str) -> None:
    path = tmp_path / "r.json"
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    with pytest.raises(RubricError, match=message):
        load_rubric(path)


def test_demo_rubric_checks_the_expected_policy_from_the_eval_row() -> None:
    """A well-formed reply citing the wrong policy fails on an eval row expecting another one;
    rows without a "policy" field (the round's in-store held-out prompts) skip those checks."""
    from training.eval.evalsets import load_set
    from training.eval.scorers import rubric_scorer

    rubric = load_rubric(REPO_DATA_DIR / "rubric.json")
    wrong = "Hi Lena, (POL-1). — Brightwater Support"
    row = {"customer": "Lena", "policy": "POL-3"}
    assert not rubric.passes(wrong, row)
    failed = [name for name, ok in rubric.score(wrong, row).items() if ok is False]
    assert failed == ["cites_expected_policy", "no_other_policy"]
    assert rubric.passes(wrong.replace("POL-1", "POL-3"), row)
    assert not rubric.passes("Hi Lena, POL-3 or POL-30. — Brightwater Support", row)
    assert rubric.passes(wrong, {"customer": "Lena"})  # no expected policy: not checked

    # On the demo eval set: every row names its policy, so citing one fixed policy passes
    # only the rows that expect it.
    evalset = load_set(REPO_DATA_DIR / "eval_demo.jsonl")
    replies = [
        f"Hi {r.get('customer') or 'there'}, (POL-1). — Brightwater Support" for r in evalset.rows
    ]
    metrics = rubric_scorer(REPO_DATA_DIR / "rubric.json")(evalset.rows, replies)
    expected = sum(r["policy"] == "POL-1" for r in evalset.rows) / len(evalset.rows)
    assert all(r.get("policy") for r in evalset.rows)
    assert metrics["rubric.cites_expected_policy"] == expected < 1.0
    assert metrics["rubric.cites_policy"] == 1.0
