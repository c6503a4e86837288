"""A 👎 reason that names the right answer trains as the rater's correction; any other reason
stays the 👎's explanation (feedback/reasons.py, feedback/rows.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from feedback.reasons import named_answer
from feedback.store import Store
from training.eval.reply_match import HUMAN_SOURCES


@pytest.mark.parametrize(
    ("reason", "answer"),
    [
        ("the answer is 08:30", "08:30"),
        ("The answer is €4.50.", "€4.50."),
        ("Wrong, the answer is yes", "yes"),
        ("Inaccurate — correct answer: Dr. Rossi, Tuesday", "Dr. Rossi, Tuesday"),
        ('Right answer is "category: billing"', "category: billing"),
        ("answer: doctor: Rossi\nday: Tuesday", "doctor: Rossi\nday: Tuesday"),
        ("too long. It should be: Dear Ana, no fee [P3]", "Dear Ana, no fee [P3]"),
        # the last lead wins: the first clause was the verdict
        ("the answer is wrong; the correct answer was 12", "12"),
    ],
)
def test_a_reason_naming_the_answer_is_read(reason: str, answer: str) -> None:
    assert named_answer(reason) == answer


@pytest.mark.parametrize(
    "reason",
    [
        None,
        "",
        "   ",
        "wrong answer",
        "the answer is wrong",
        "The answer is not what I asked",
        "answer is too long",
        "it is a billing ticket; the order is 12345",
        "the answer is incomplete, it misses the day",
        "correct answer:",
    ],
)
def test_a_verdict_or_a_partial_hint_names_no_answer(reason: str | None) -> None:
    assert named_answer(reason) is None


def _reply(store: Store, user_id: int, question: str, answer: str) -> int:
    conversation = store.start_conversation(user_id=user_id, title=question)
    store.add_user_message(conversation_id=conversation, content=question)
    return store.add_response(
        conversation_id=conversation, prompt=[{"role": "user", "content": question}],
        content=answer, model="tiny", adapter_version=None, params={}, latency_ms=1.0,
    )  # fmt: skip


def _last(rows: list[dict[str, Any]], key: str) -> list[str]:
    return [r[key][-1]["content"] for r in rows]


def test_named_answers_become_sft_rows_and_pairs_and_leave_kto(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'f.db'}")
    ann = store.add_user(name="ann", role="expert", password="pw").id
    bob = store.add_user(name="bob", role="expert", password="pw").id
    assert ann is not None and bob is not None

    named = _reply(store, ann, "When does the pool open?", "It opens at noon.")
    store.rate(response_id=named, user_id=ann, up=False, reason="the answer is 07:00")
    verdict = _reply(store, ann, "Is the sauna mixed?", "Maybe.")
    store.rate(response_id=verdict, user_id=ann, up=False, reason="the answer is wrong")
    corrected = _reply(store, ann, "How much is a swim?", "Free.")
    store.rate(response_id=corrected, user_id=ann, up=False, reason="the answer is €4.50")
    store.correct(response_id=corrected, user_id=bob, content="Adults pay €4.50.")
    changed = _reply(store, ann, "Can kids swim alone?", "Yes.")
    store.rate(response_id=changed, user_id=ann, up=False, reason="the answer is no")
    store.rate(response_id=changed, user_id=ann, up=True)  # the latest click counts
    two = _reply(store, ann, "How long is a lane booking?", "Two hours.")
    store.rate(response_id=two, user_id=ann, up=False, reason="correct answer: 45 minutes")
    store.rate(response_id=two, user_id=bob, up=False, reason="answer: 45 minutes")

    sft = list(store.sft_rows("all"))
    sources = store.sft_row_sources()
    from feedback.canonical import content_key

    by_answer = {r["messages"][-1]["content"]: sources[content_key(r["messages"])] for r in sft}
    assert by_answer == {
        "07:00": "reason",
        "Adults pay €4.50.": "correction",  # a rewrite wins over a reason
        "Yes.": "thumbs_up",
        "45 minutes": "reason",  # two raters naming the same answer: one row
    }
    dpo = list(store.dpo_rows("all"))
    pairs = sorted(zip(_last(dpo, "chosen"), _last(dpo, "rejected"), strict=True))
    assert pairs == [
        ("07:00", "It opens at noon."),
        ("45 minutes", "Two hours."),
        ("Adults pay €4.50.", "Free."),
    ]
    kto = list(store.kto_rows("all"))
    assert [(r["completion"][0]["content"], r["label"], r.get("reasons")) for r in kto] == [
        ("Maybe.", False, ["the answer is wrong"]),
        ("Yes.", True, None),
    ]
    # The gate's held-out loss counts named answers among the ones people wrote.
    assert "reason" in HUMAN_SOURCES
