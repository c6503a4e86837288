"""Ratings, corrections, comparisons, and the SFT/DPO rows and counts they produce."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_store import chat, db_url, rows_of

from feedback.errors import FeedbackError
from feedback.models import Correction, Preference, Rating
from feedback.records import UserInfo
from feedback.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(db_url(tmp_path / "tuneloop.db"))


@pytest.fixture
def ann(store: Store) -> UserInfo:
    return store.add_user(name="ann", role="expert", password="s3cret")


# Feedback ----------------------------------------------------------------------------


def test_every_click_is_a_rating_row_and_the_latest_counts(store: Store, ann: UserInfo) -> None:
    _, response, _ = chat(store, ann)
    first = store.rate(response_id=response, user_id=ann.id, up=True)
    second = store.rate(response_id=response, user_id=ann.id, up=False, reason=" wrong dose ")
    assert second > first
    ratings = rows_of(store, Rating)
    assert [(r.up, r.reason) for r in ratings] == [(True, None), (False, "wrong dose")]
    counts = store.counts()
    assert (counts["ratings_up"], counts["ratings_down"]) == (0, 1)


def test_correction_keeps_original_and_makes_edit_preference(store: Store, ann: UserInfo) -> None:
    _, response, prompt = chat(store, ann)
    before = store.response(response_id=response)
    correction = store.correct(
        response_id=response, user_id=ann.id, content="  Yes; caffeine does not interact.  "
    )
    assert store.response(response_id=response) == before
    [stored] = rows_of(store, Correction)
    assert (stored.id, stored.content, stored.user_id) == (
        correction,
        "Yes; caffeine does not interact.",
        ann.id,
    )
    [preference] = rows_of(store, Preference)
    assert preference.source == "edit" and not preference.tie
    assert (preference.chosen, preference.rejected) == (
        "Yes; caffeine does not interact.",
        "No, never.",
    )
    assert preference.annotator == "ann"
    assert (preference.correction_id, preference.rejected_response_id) == (correction, response)
    assert store.response(response_id=response).prompt == prompt
    assert list(store.dpo_rows("all")) == [
        {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": "Yes; caffeine does not interact."}],
            "rejected": [{"role": "assistant", "content": "No, never."}],
        }
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "correction is empty"), ("   ", "correction is empty"), (" No, never. ", "equals")],
)
def test_correction_rejects_empty_or_unchanged(
    store: Store, ann: UserInfo, content: str, message: str
) -> None:
    _, response, _ = chat(store, ann)
    with pytest.raises(FeedbackError, match=message):
        store.correct(response_id=response, user_id=ann.id, content=content)
    assert rows_of(store, Correction) == [] and rows_of(store, Preference) == []


def _compare(store: Store, user: UserInfo, original_is_a: bool) -> tuple[int, int, int, list]:
    conversation, original, prompt = chat(store, user)
    candidate = store.add_response(
        conversation_id=conversation,
        prompt=prompt,
        content="Yes, with food.",
        model="SmolLM2-135M",
        adapter_version="v1",
        params={"temperature": 1.0},
        latency_ms=80,
        kind="candidate",
    )
    comparison = store.add_comparison(
        user_id=user.id,
        original_response_id=original,
        candidate_response_id=candidate,
        original_is_a=original_is_a,
    )
    return comparison, original, candidate, prompt


@pytest.mark.parametrize(
    ("original_is_a", "choice", "chosen", "rejected", "tie"),
    [
        (True, "A", "No, never.", "Yes, with food.", False),
        (True, "B", "Yes, with food.", "No, never.", False),
        (False, "A", "Yes, with food.", "No, never.", False),
        (False, "B", "No, never.", "Yes, with food.", False),
        (False, "tie", "Yes, with food.", "No, never.", True),
    ],
)
def test_decide_comparison(
    store: Store,
    ann: UserInfo,
    original_is_a: bool,
    choice: str,
    chosen: str,
    rejected: str,
    tie: bool,
) -> None:
    comparison, _, _, prompt = _compare(store, ann, original_is_a)
    assert store.counts()["comparisons_decided"] == 0
    preference_id = store.decide_comparison(comparison_id=comparison, user_id=ann.id, choice=choice)
    [preference] = rows_of(store, Preference)
    assert preference.id == preference_id
    assert (preference.chosen, preference.rejected, preference.tie) == (chosen, rejected, tie)
    assert (preference.source, preference.annotator) == ("chat-compare", "ann")
    assert preference.comparison_id == comparison
    counts = store.counts()
    assert counts["comparisons"] == counts["comparisons_decided"] == 1
    assert counts["preferences_by_source"] == {"chat-compare": 1}
    dpo = list(store.dpo_rows("all"))
    if tie:
        assert dpo == []  # ties never train DPO
    else:
        assert dpo == [
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        ]


def test_comparison_owner_and_single_decision(store: Store, ann: UserInfo) -> None:
    bob = store.add_user(name="bob", role="annotator", password="pw")
    comparison, original, candidate, _ = _compare(store, ann, True)
    with pytest.raises(FeedbackError, match="belongs to another user"):
        store.decide_comparison(comparison_id=comparison, user_id=bob.id, choice="A")
    with pytest.raises(FeedbackError, match="choice 'C' is unknown"):
        store.decide_comparison(comparison_id=comparison, user_id=ann.id, choice="C")
    store.decide_comparison(comparison_id=comparison, user_id=ann.id, choice="B")
    with pytest.raises(FeedbackError, match=r"already decided \(B\); start a new comparison"):
        store.decide_comparison(comparison_id=comparison, user_id=ann.id, choice="A")
    assert len(rows_of(store, Preference)) == 1
    with pytest.raises(FeedbackError, match="is not yours"):
        store.add_comparison(
            user_id=bob.id,
            original_response_id=original,
            candidate_response_id=candidate,
            original_is_a=True,
        )
    with pytest.raises(FeedbackError, match="two different responses"):
        store.add_comparison(
            user_id=ann.id,
            original_response_id=original,
            candidate_response_id=original,
            original_is_a=True,
        )
    with pytest.raises(FeedbackError, match="no comparison with id 99"):
        store.decide_comparison(comparison_id=99, user_id=ann.id, choice="A")


# Training rows -----------------------------------------------------------------------


def test_sft_rows_from_corrections_and_thumbs_up(store: Store, ann: UserInfo) -> None:
    bob = store.add_user(name="bob", role="expert", password="pw")
    _, liked, liked_prompt = chat(store, ann, "liked question")
    _, changed_mind, _ = chat(store, ann, "changed mind")
    _, corrected, corrected_prompt = chat(store, ann, "corrected question")
    _, disputed, _ = chat(store, ann, "disputed question")
    _, unrated, _ = chat(store, ann, "unrated question")
    store.rate(response_id=liked, user_id=ann.id, up=False)
    store.rate(response_id=liked, user_id=ann.id, up=True)  # latest click wins
    store.rate(response_id=changed_mind, user_id=ann.id, up=True)
    store.rate(response_id=changed_mind, user_id=ann.id, up=False)
    store.rate(response_id=corrected, user_id=ann.id, up=True)
    store.correct(response_id=corrected, user_id=ann.id, content="Better answer.")
    store.rate(response_id=disputed, user_id=ann.id, up=True)
    store.rate(response_id=disputed, user_id=bob.id, up=False)
    assert unrated
    rows = list(store.sft_rows("all"))
    assert rows == [
        {"messages": [*corrected_prompt, {"role": "assistant", "content": "Better answer."}]},
        {"messages": [*liked_prompt, {"role": "assistant", "content": "No, never."}]},
    ]
    with pytest.raises(FeedbackError, match="split 'test' is unknown"):
        store.sft_rows("test")


def test_counts(store: Store, ann: UserInfo) -> None:
    empty = store.counts()
    assert empty["preferences_total"] == 0 and empty["preferences_by_source"] == {}
    comparison, original, _, _ = _compare(store, ann, True)
    store.rate(response_id=original, user_id=ann.id, up=True)
    store.correct(response_id=original, user_id=ann.id, content="Yes.")
    store.decide_comparison(comparison_id=comparison, user_id=ann.id, choice="tie")
    assert store.counts() == {
        "conversations": 1,
        "messages": 2,
        "responses": 2,
        "ratings_up": 1,
        "ratings_down": 0,
        "corrections": 1,
        "comparisons": 1,
        "comparisons_decided": 1,
        "examples": 0,
        "preferences_by_source": {"chat-compare": 1, "edit": 1},
        "preferences_total": 2,
    }
