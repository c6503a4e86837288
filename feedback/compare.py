"""Side-by-side comparisons: two replies to one prompt, and the owner's verdict.

The UI shows the transcript's reply and a second "candidate" in a random order; the
verdict becomes a "chat-compare" preference. Functions take an open session; the caller
(`Store`) owns the transaction.
"""

from __future__ import annotations

from sqlmodel import Session, select

from feedback.canonical import event_key
from feedback.errors import FeedbackError
from feedback.models import (
    CHOICES,
    Comparison,
    Conversation,
    Preference,
    Response,
    User,
    fetch,
    utcnow,
)


def add_comparison(
    session: Session,
    *,
    user_id: int,
    original_response_id: int,
    candidate_response_id: int,
    original_is_a: bool,
) -> int:
    """Record a comparison of two replies in the user's own chats; returns its id.

    Both replies answer the same prompt: a compare candidate sits in its original's
    conversation; two API completions of the same messages each have their own, with
    identical prompts. `original_is_a` says whether the transcript's reply is shown on
    the left (A); the UI randomises it, and keeping it lets position bias be measured.
    """
    if original_response_id == candidate_response_id:
        raise FeedbackError("a comparison needs two different responses")
    fetch(session, User, user_id, "user")
    original = fetch(session, Response, original_response_id, "response")
    candidate = fetch(session, Response, candidate_response_id, "response")
    if (
        original.conversation_id != candidate.conversation_id
        and original.prompt_json != candidate.prompt_json
    ):
        raise FeedbackError("both responses must answer the same prompt")
    for conversation_id in {original.conversation_id, candidate.conversation_id}:
        conversation = fetch(session, Conversation, conversation_id, "conversation")
        if conversation.user_id != user_id:
            raise FeedbackError(
                f"conversation {conversation.id} is not yours; compare in your own chats"
            )
    a, b = (original, candidate) if original_is_a else (candidate, original)
    assert a.id is not None and b.id is not None
    comparison = Comparison(
        user_id=user_id,
        conversation_id=original.conversation_id,
        response_a_id=a.id,
        response_b_id=b.id,
        original_is_a=bool(original_is_a),
    )
    session.add(comparison)
    session.flush()
    assert comparison.id is not None
    return comparison.id


def decide_comparison(session: Session, *, comparison_id: int, user_id: int, choice: str) -> int:
    """Record the owner's choice ("A", "B" or "tie"); returns the new preference id.

    A decision is final: deciding again raises FeedbackError (start a new comparison), so
    a preference never changes under a training run. The prompt is the transcript reply's
    prompt. A tie is stored with chosen = A and rejected = B and never becomes a DPO row.
    """
    if choice not in CHOICES:
        raise FeedbackError(f"choice {choice!r} is unknown; use 'A', 'B' or 'tie'")
    # FOR UPDATE: on PostgreSQL two concurrent decisions cannot both see "undecided"
    # (SQLite gets the same from BEGIN IMMEDIATE).
    comparison = session.exec(
        select(Comparison).where(Comparison.id == comparison_id).with_for_update()
    ).first()
    if comparison is None:
        raise FeedbackError(f"there is no comparison with id {comparison_id}; check the id")
    if comparison.user_id != user_id:
        raise FeedbackError(
            f"comparison {comparison_id} belongs to another user; only its owner can decide it"
        )
    if comparison.choice is not None:
        raise FeedbackError(
            f"comparison {comparison_id} is already decided ({comparison.choice}); "
            "start a new comparison to choose again"
        )
    user = fetch(session, User, user_id, "user")
    a = fetch(session, Response, comparison.response_a_id, "response")
    b = fetch(session, Response, comparison.response_b_id, "response")
    original = a if comparison.original_is_a else b
    chosen, rejected = (b, a) if choice == "B" else (a, b)
    comparison.choice = choice
    comparison.decided_at = utcnow()
    session.add(comparison)
    preference = Preference(
        prompt_json=original.prompt_json,
        chosen=chosen.content,
        rejected=rejected.content,
        tie=choice == "tie",
        source="chat-compare",
        annotator=user.name,
        comparison_id=comparison_id,
        chosen_response_id=chosen.id,
        rejected_response_id=rejected.id,
        dedup_key=event_key("chat-compare", comparison_id),
    )
    session.add(preference)
    session.flush()
    assert preference.id is not None
    return preference.id
