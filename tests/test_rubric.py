"""The rubric: the demo domain's house style as checks, used by rounds and `tuneloop eval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.config import REPO_DATA_DIR
from training.rubric import RubricError, load_rubric

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
