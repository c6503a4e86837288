"""The train/heldout split: by the prompt's non-system turns (and earlier user turns), with
a minimum size, and no held-out answer trained on under another prompt."""

from __future__ import annotations

import hashlib
import json
import random
import string
from pathlib import Path

import pytest

from feedback.split import HELDOUT_PERCENT, HeldoutSplit, plan_split, prompt_key, split_value
from tests.cli import run_cli

split_of = HeldoutSplit().side


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# Computed once and frozen: if any of these moves, every past export's split moves too.
@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("What is the boiling point of water?", "train"),
        ("Explain DPO in one sentence.", "train"),
        ("hello", "heldout"),
        ("How do I reset my password?", "heldout"),
        ("Translate 'cat' to French.", "heldout"),
    ],
)
def test_frozen_expectations(question: str, expected: str) -> None:
    assert split_of(user(question)) == expected


def test_prompt_key_is_sha256_of_compact_role_content_pairs() -> None:
    expected = hashlib.sha256(b'[["user","hello"]]').hexdigest()
    assert prompt_key(user("hello")) == expected
    # "hello" is heldout because the first 16 hex digits, mod 100, fall below 10.
    assert int(expected[:16], 16) % 100 < HELDOUT_PERCENT


def test_system_prompt_key_order_and_whitespace_do_not_matter() -> None:
    base = [
        {"role": "user", "content": "Can I take ibuprofen with coffee?"},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "And with tea?"},
    ]
    variants = [
        [{"role": "system", "content": "You are a pharmacist."}, *base],
        [{"role": "system", "content": "A completely different system prompt."}, *base],
        [{"content": m["content"], "role": m["role"]} for m in base],
        [{"role": m["role"], "content": f"  {m['content']}\n", "name": "x"} for m in base],
    ]
    for variant in variants:
        assert prompt_key(variant) == prompt_key(base)
        assert split_of(variant) == split_of(base)
    assert prompt_key(base[:1]) != prompt_key(base)
    assert prompt_key(user("Hello")) != prompt_key(user("hello"))


def test_about_ten_percent_heldout() -> None:
    rng = random.Random(1234)
    prompts = [
        user("".join(rng.choices(string.ascii_letters + " ", k=rng.randint(5, 80))))
        for _ in range(2000)
    ]
    heldout = sum(split_of(p) == "heldout" for p in prompts)
    # 10% of 2,000 is 200; the binomial standard deviation is about 13.
    assert 150 <= heldout <= 250


# -- what the split keeps out of training besides the held-out prompts themselves ----------
HELD = "hello"  # held out (frozen above)
TRAIN_Q = "What is the boiling point of water?"  # train (frozen above)
FOLLOW_UP = [
    {"role": "user", "content": HELD},
    {"role": "assistant", "content": "Hi there!"},
    {"role": "user", "content": "And then what?"},
]


def _bucket(prompt: list[dict[str, str]]) -> int:
    return int(prompt_key(prompt)[:16], 16) % 100


def test_a_conversation_continuing_a_heldout_prompt_is_held_out() -> None:
    assert _bucket(FOLLOW_UP) >= HELDOUT_PERCENT  # on its own hash it would be trained on
    assert split_of(FOLLOW_UP) == "heldout"
    # ...and so is anything longer that starts the same way, whatever the assistant said.
    longer = [*FOLLOW_UP, {"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]
    assert split_of([FOLLOW_UP[0], {"role": "assistant", "content": "other"}, *longer[2:]]) == (
        "heldout"
    )
    # A conversation that only mentions the held-out text later is not a continuation.
    later = [{"role": "user", "content": TRAIN_Q}, {"role": "assistant", "content": "100 C"}]
    assert split_of([*later, {"role": "user", "content": "And then what?"}]) == "train"


def test_a_train_row_repeating_a_heldout_answer_is_in_neither_split() -> None:
    plan = plan_split([(user(HELD), ["Hi there!"]), (user(TRAIN_Q), ["100 C at sea level."])])
    assert plan.in_split("heldout", user(HELD), ["Hi there!"])
    # Same answer (up to case and whitespace) under another prompt: not trained on.
    assert not plan.in_split("train", user(TRAIN_Q), ["  hi   THERE! "])
    assert not plan.in_split("heldout", user(TRAIN_Q), ["  hi   THERE! "])
    assert plan.in_split("train", user(TRAIN_Q), ["100 C at sea level."])
    assert plan.in_split("all", user(TRAIN_Q), ["Hi there!"])


def test_minimum_heldout_size_takes_the_lowest_hashes_and_stays_nested() -> None:
    prompts = [user(f"question {i}") for i in range(30)]
    rows = [(p, [f"answer {i}"]) for i, p in enumerate(prompts)]
    plain = {i for i, p in enumerate(prompts) if plan_split(rows).side(p) == "heldout"}
    assert len(plain) == 4  # 10% by hash alone: 4 of these 30
    plan = plan_split(rows, min_items=8)
    held = {i for i, p in enumerate(prompts) if plan.side(p) == "heldout"}
    by_value = sorted(range(30), key=lambda i: split_value(prompts[i]))
    assert held == set(by_value[:8]) and plain < held
    assert plan.heldout_answers == {f"answer {i}" for i in held}
    # Never more than a third of the prompts: 20 asked, 10 given.
    assert sum(plan_split(rows, min_items=20).side(p) == "heldout" for p in prompts) == 10
    # More data: the old prompts held out now are a subset of those held out before, and
    # once 10% alone reaches the minimum the split is the plain hash split again.
    more = [(user(f"question {i}"), [f"answer {i}"]) for i in range(30, 90)]
    grown = plan_split([*rows, *more], min_items=8)
    assert {i for i, p in enumerate(prompts) if grown.side(p) == "heldout"} <= held
    big = [(user(f"question {i}"), ["a"]) for i in range(400)]
    assert plan_split(big, min_items=20).threshold == HELDOUT_PERCENT


def test_export_through_the_cli_applies_all_three_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`tuneloop import` then `tuneloop export --split` with TUNELOOP_HELDOUT_MIN_ITEMS."""
    convs = [
        {"messages": [*user(HELD), {"role": "assistant", "content": "Hi there!"}]},
        {"messages": [*FOLLOW_UP, {"role": "assistant", "content": "Then we start."}]},
        {"messages": [*user(TRAIN_Q), {"role": "assistant", "content": "hi there!"}]},
        *(
            {"messages": [*user(f"topic {i}"), {"role": "assistant", "content": f"answer {i}"}]}
            for i in range(27)
        ),
    ]
    src = tmp_path / "convs.jsonl"
    src.write_text("".join(json.dumps(c) + "\n" for c in convs), encoding="utf-8")
    monkeypatch.setenv("TUNELOOP_HELDOUT_MIN_ITEMS", "8")
    monkeypatch.setenv("TUNELOOP_DATA_DIR", str(tmp_path / "domain"))  # no seed examples
    code, _, err = run_cli(monkeypatch, capsys, "import", str(src), "--json")
    assert code == 0, err
    out: dict[str, list[dict]] = {}
    for split in ("train", "heldout", "all"):
        path = tmp_path / f"{split}.jsonl"
        code, _, err = run_cli(
            monkeypatch, capsys, "export", "sft", "--out", str(path), "--split", split
        )
        assert code == 0, err
        out[split] = [json.loads(line) for line in path.read_text().splitlines()]
    firsts = {json.dumps(r["messages"][:-1]) for r in out["heldout"]}
    assert json.dumps(user(HELD)) in firsts and json.dumps(FOLLOW_UP) in firsts
    assert len(firsts) == 8  # the minimum (of 30 prompts; 10% would be 3)
    trained = [r["messages"][-1]["content"] for r in out["train"]]
    assert "hi there!" not in trained  # repeats a held-out answer
    assert len(out["train"]) + len(out["heldout"]) == len(out["all"]) - 1 == 29


def test_a_round_snapshot_applies_the_split_to_seeds_and_feedback(tmp_path: Path) -> None:
    """The round's snapshot: a seed conversation continuing a held-out prompt is held out,
    a pair repeating a held-out answer is not trained on, and the minimum counts seeds."""
    from feedback.records import NewExample, NewPreference
    from feedback.store import Store
    from training.datasets import take_snapshot

    store = Store.open(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.add_bulk(
        examples=[
            NewExample(messages=[*user(HELD), {"role": "assistant", "content": "Hi there!"}])
        ],
        preferences=[
            NewPreference(prompt=user(TRAIN_Q), chosen="Hi there!", rejected="no"),
            *(
                NewPreference(prompt=user(f"topic {i}"), chosen=f"answer {i}", rejected="no")
                for i in range(40)
            ),
        ],
    )
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        json.dumps({"messages": [*FOLLOW_UP, {"role": "assistant", "content": "Then we go."}]})
        + "\n"
    )
    snap = take_snapshot(store, seed_file=seeds, system_prompt="S", heldout_min_items=12)
    held_prompts = [r["messages"][1:-1] for r in snap.sft_heldout]
    assert user(HELD) in held_prompts and FOLLOW_UP in held_prompts
    assert not snap.sft_train
    assert all(r["prompt"][1:] != user(TRAIN_Q) for r in [*snap.dpo_train, *snap.dpo_heldout])
    assert snap.info["curation"]["same_answer_as_heldout"] == 1
    # 43 prompts, 10% by hash would hold out 9; the minimum asks for 12 (a third is 14):
    # the seed conversation and the prompt it continues, and 10 of the pairs.
    assert snap.info["split"]["heldout_prompts"] == 12
    assert snap.info["split"]["threshold"] > HELDOUT_PERCENT
    assert len(snap.dpo_heldout) == 10
    # On the train side: 41 pairs less 10 held out, less the one repeating a held-out answer
    # (curation then merges near-duplicate "topic N" prompts further).
    assert len(snap.info["preference_ids"]) == 41 - 10 - 1
