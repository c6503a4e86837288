"""The train/heldout split is a pure function of the prompt's non-system turns."""

from __future__ import annotations

import hashlib
import random
import string

import pytest

from feedback.split import HELDOUT_PERCENT, prompt_key, split_of


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
