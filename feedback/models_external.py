"""The store's tables for what comes from outside the chat page: Argilla's pairs and
responses, and front ends' end users, chats and ratings (Open WebUI).

Part of the same metadata as `feedback.models` (the migrations read both modules).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, DateTime, Float, Index, Integer, String, Text
from sqlmodel import Field

from feedback.models import CHOICES, FeedbackTable, created_field, in_values

# Argilla: pairs out for ranking, rankings back ---------------------------------

PAIR_SOURCES = ("compare", "thumbs-down", "generated")
PAIR_STATUSES = ("pending", "pushed")
PAIR_DECISIONS = ("A", "B", "tie", "split")
ARGILLA_RESPONSE_STATUSES = ("submitted", "discarded")


class ArgillaPair(FeedbackTable, table=True):
    """One pair of replies queued for annotators: the outbox row and, later, its verdict.

    Queuing only writes this row (it never waits on Argilla); a sync pushes pending rows
    under `external_id`, which is stable, so pushing again upserts the same record. Which
    reply is shown as A is random and recorded (`first_is_a`). The verdict columns are
    recomputed from the pulled responses on every sync that touches the pair.
    """

    __tablename__ = "argilla_pairs"
    __table_args__ = (
        Index("ux_argilla_pairs_external_id", "external_id", unique=True),
        Index("ix_argilla_pairs_status", "status"),
        CheckConstraint(in_values("source", PAIR_SOURCES), name="source"),
        CheckConstraint(in_values("status", PAIR_STATUSES), name="status"),
        CheckConstraint(in_values("decision", PAIR_DECISIONS), name="decision"),
    )

    id: int | None = Field(default=None, primary_key=True)
    external_id: str = Field(sa_type=String)
    source: str = Field(sa_type=String)
    prompt_json: str = Field(sa_type=Text)
    # "first" is the transcript's reply (or the first sample); "second" the other one.
    first: str = Field(sa_type=Text)
    second: str = Field(sa_type=Text)
    first_response_id: int | None = Field(default=None, foreign_key="responses.id", sa_type=Integer)
    second_response_id: int | None = Field(
        default=None, foreign_key="responses.id", sa_type=Integer
    )
    comparison_id: int | None = Field(default=None, foreign_key="comparisons.id", sa_type=Integer)
    first_is_a: bool = Field(sa_type=Boolean)
    metadata_json: str = Field(sa_type=Text)
    status: str = Field(default="pending", sa_type=String)
    attempts: int = Field(default=0, sa_type=Integer)
    last_error: str | None = Field(default=None, sa_type=Text)
    created_at: datetime = created_field()
    pushed_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    decision: str | None = Field(default=None, sa_type=String)
    agreement: float | None = Field(default=None, sa_type=Float)
    flagged: bool = Field(default=False, sa_type=Boolean)
    preference_id: int | None = Field(default=None, foreign_key="preferences.id", sa_type=Integer)
    decided_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class ArgillaResponse(FeedbackTable, table=True):
    """One annotator's response to one pair, as last pulled (drafts are never stored)."""

    __tablename__ = "argilla_responses"
    __table_args__ = (
        Index("ux_argilla_responses_argilla_id", "argilla_id", unique=True),
        Index("ix_argilla_responses_pair", "pair_id"),
        Index("ix_argilla_responses_annotator", "annotator"),
        CheckConstraint(in_values("status", ARGILLA_RESPONSE_STATUSES), name="status"),
        CheckConstraint(in_values("choice", CHOICES), name="choice"),
    )

    id: int | None = Field(default=None, primary_key=True)
    pair_id: int = Field(foreign_key="argilla_pairs.id", sa_type=Integer)
    # Argilla's response UUID: one per record and annotator, stable across edits.
    argilla_id: str = Field(sa_type=String)
    annotator: str = Field(sa_type=String)
    status: str = Field(sa_type=String)
    # In our terms (A/B as shown to the annotator); None for a discarded response.
    choice: str | None = Field(default=None, sa_type=String)
    corrected: str | None = Field(default=None, sa_type=Text)
    rating: int | None = Field(default=None, sa_type=Integer)
    argilla_updated_at: str = Field(sa_type=String)
    pulled_at: datetime = created_field()


# Chat front ends (Open WebUI): their end users, their chats, their feedback ---------------


class FrontendUser(FeedbackTable, table=True):
    """A trusted front end's end user, kept as our own (expert) account.

    The account cannot log in (its password hash matches no password); it owns the
    conversations the front end's headers attribute to that end user and the ratings its
    feedback export carries. Keyed by the front end's stable user id, never by a name or an
    email address (those change, and are personal data).
    """

    __tablename__ = "frontend_users"
    __table_args__ = (
        Index("ux_frontend_users_source_external_id", "source", "external_id", unique=True),
    )

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(sa_type=String)
    external_id: str = Field(sa_type=String)
    user_id: int = Field(foreign_key="users.id", sa_type=Integer)
    created_at: datetime = created_field()


class FrontendChat(FeedbackTable, table=True):
    """A front end's chat id and the one conversation its turns are stored in."""

    __tablename__ = "frontend_chats"
    __table_args__ = (
        Index("ux_frontend_chats_source_external_id", "source", "external_id", unique=True),
    )

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(sa_type=String)
    external_id: str = Field(sa_type=String)
    conversation_id: int = Field(foreign_key="conversations.id", sa_type=Integer)
    created_at: datetime = created_field()


class OpenWebUIFeedback(FeedbackTable, table=True):
    """One Open WebUI feedback entry as last applied: the sync's cursor and its dedup.

    An entry is applied again only when Open WebUI's `updated_at` changed (the user changed
    their thumb or comment); the new click becomes a new rating row, and the latest counts.
    """

    __tablename__ = "openwebui_feedback"
    __table_args__ = (Index("ux_openwebui_feedback_feedback_id", "feedback_id", unique=True),)

    id: int | None = Field(default=None, primary_key=True)
    feedback_id: str = Field(sa_type=String)
    updated_at: int = Field(sa_type=Integer)
    user_id: int = Field(foreign_key="users.id", sa_type=Integer)
    response_id: int = Field(foreign_key="responses.id", sa_type=Integer)
    rating_id: int | None = Field(default=None, foreign_key="ratings.id", sa_type=Integer)
    # Open WebUI's user, chat, message and parent message ids: siblings make picks.
    user_ref: str = Field(sa_type=String)
    chat_id: str = Field(sa_type=String)
    message_id: str = Field(sa_type=String)
    parent_id: str | None = Field(default=None, sa_type=String)
    up: bool = Field(sa_type=Boolean)
    # Open WebUI's optional 1-10 score of the reply.
    score: int | None = Field(default=None, sa_type=Integer)
    applied_at: datetime = created_field()
