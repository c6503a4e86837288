"""The preference store's tables (SQLModel), shared by SQLite and PostgreSQL.

Timestamps are UTC. JSON (prompts, parameters, conversations) is stored as TEXT written
with `json.dumps`, so both databases read and write it the same way. Rows are only ever
added, apart from a comparison's decision: a reply that was corrected keeps its original
text, and every rating click is its own row (the latest per response and user counts).

Any change here needs a new migration in `feedback/migrations/versions/`; a test compares
the migrated schema with this metadata and fails on drift.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import registry
from sqlmodel import Field, Session, SQLModel

from feedback.errors import FeedbackError

ROLES = ("expert", "annotator", "operator")
# A disabled account cannot log in until enabled again; a removed one never again, but its
# row stays so everything it gave stays attributed (and its name is not reused).
USER_STATUSES = ("active", "disabled", "removed")
MESSAGE_ROLES = ("user", "assistant")
RESPONSE_KINDS = ("reply", "candidate")
CHOICES = ("A", "B", "tie")
PREFERENCE_SOURCES = ("chat-compare", "edit", "import", "argilla", "best-of")

# Deterministic constraint names, so migrations can refer to them on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Our own MetaData: other SQLModel tables in the same process never mix into migrations.
metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def in_values(column: str, values: tuple[str, ...]) -> str:
    """SQL for `column IN (...)`, used by the CHECK constraints."""
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def created_field() -> datetime:
    return Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[no-any-return]


class FeedbackTable(SQLModel, registry=registry(metadata=metadata)):
    """Base class of every feedback table (binds them to `metadata`)."""


class User(FeedbackTable, table=True):
    """Someone who logs in: an expert chats and rates, an annotator compares, an operator runs."""

    __tablename__ = "users"
    __table_args__ = (
        Index("ux_users_name", "name", unique=True),
        CheckConstraint(in_values("role", ROLES), name="role"),
        CheckConstraint(in_values("status", USER_STATUSES), name="status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_type=String)
    role: str = Field(sa_type=String)
    password_hash: str = Field(sa_type=String)
    created_at: datetime = created_field()
    status: str = Field(default="active", sa_type=String)


class LoginFailure(FeedbackTable, table=True):
    """Recent failed logins for one key (a user name or a client address): the throttle.

    Kept in the database, not in the server's memory, so `tuneloop users unlock` in another
    process can lift a lockout and a restart does not reset the count.
    """

    __tablename__ = "login_failures"
    __table_args__ = (Index("ux_login_failures_key", "key", unique=True),)

    id: int | None = Field(default=None, primary_key=True)
    # "name:<user name, lower case>" or "addr:<client address>".
    key: str = Field(sa_type=String)
    failures: int = Field(default=0, sa_type=Integer)
    last_failure_at: datetime = created_field()
    locked_until: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class ApiKey(FeedbackTable, table=True):
    """A user's key for the OpenAI-compatible API, stored as a SHA-256 hash only.

    Keys are 256 random bits, so a fast hash is as safe as a slow one here and costs
    nothing per request. A revoked key keeps its row (`revoked_at`) for the audit trail.
    """

    __tablename__ = "api_keys"
    __table_args__ = (
        Index("ux_api_keys_key_hash", "key_hash", unique=True),
        Index("ix_api_keys_user", "user_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", sa_type=Integer)
    key_hash: str = Field(sa_type=String)
    # The first characters of the key, shown in listings so a user can tell keys apart.
    prefix: str = Field(sa_type=String)
    created_at: datetime = created_field()
    revoked_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class Conversation(FeedbackTable, table=True):
    """One chat session, owned by one user."""

    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_user_created", "user_id", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", sa_type=Integer)
    title: str = Field(sa_type=Text)
    created_at: datetime = created_field()


class Response(FeedbackTable, table=True):
    """One model output with exactly what produced it (prompt, model, adapter, sampling)."""

    __tablename__ = "responses"
    __table_args__ = (
        Index("ix_responses_conversation", "conversation_id"),
        Index("ux_responses_completion_id", "completion_id", unique=True),
        CheckConstraint(in_values("kind", RESPONSE_KINDS), name="kind"),
    )

    id: int | None = Field(default=None, primary_key=True)
    conversation_id: int = Field(foreign_key="conversations.id", sa_type=Integer)
    # The exact message list sent to the model, system message included.
    prompt_json: str = Field(sa_type=Text)
    content: str = Field(sa_type=Text)
    model: str = Field(sa_type=String)
    # None means the bare base model, no adapter.
    adapter_version: str | None = Field(default=None, sa_type=String)
    params_json: str = Field(sa_type=Text)
    latency_ms: float = Field(sa_type=Float)
    ttft_ms: float | None = Field(default=None, sa_type=Float)
    new_tokens: int | None = Field(default=None, sa_type=Integer)
    # "reply" is shown in the transcript; "candidate" is the second reply of a compare.
    kind: str = Field(default="reply", sa_type=String)
    error: str | None = Field(default=None, sa_type=Text)
    # The id an API client was given for this reply ("chatcmpl-..."); None for the page's.
    completion_id: str | None = Field(default=None, sa_type=String)
    created_at: datetime = created_field()


class Message(FeedbackTable, table=True):
    """One turn of the visible transcript, in order."""

    __tablename__ = "messages"
    __table_args__ = (
        Index("ux_messages_conversation_position", "conversation_id", "position", unique=True),
        CheckConstraint(in_values("role", MESSAGE_ROLES), name="role"),
    )

    id: int | None = Field(default=None, primary_key=True)
    conversation_id: int = Field(foreign_key="conversations.id", sa_type=Integer)
    position: int = Field(sa_type=Integer)
    role: str = Field(sa_type=String)
    content: str = Field(sa_type=Text)
    response_id: int | None = Field(default=None, foreign_key="responses.id", sa_type=Integer)
    created_at: datetime = created_field()


class Rating(FeedbackTable, table=True):
    """One thumbs-up/down click; the latest per (response, user) is the one that counts."""

    __tablename__ = "ratings"
    __table_args__ = (
        Index("ix_ratings_response_user", "response_id", "user_id"),
        Index("ix_ratings_user", "user_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    response_id: int = Field(foreign_key="responses.id", sa_type=Integer)
    user_id: int = Field(foreign_key="users.id", sa_type=Integer)
    up: bool = Field(sa_type=Boolean)
    reason: str | None = Field(default=None, sa_type=Text)
    created_at: datetime = created_field()


class Correction(FeedbackTable, table=True):
    """An expert's rewrite of a response; the response row itself is never changed."""

    __tablename__ = "corrections"
    __table_args__ = (
        Index("ix_corrections_response", "response_id"),
        Index("ix_corrections_user", "user_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    response_id: int = Field(foreign_key="responses.id", sa_type=Integer)
    user_id: int = Field(foreign_key="users.id", sa_type=Integer)
    content: str = Field(sa_type=Text)
    created_at: datetime = created_field()


class Comparison(FeedbackTable, table=True):
    """Two replies to one prompt shown side by side (A left, B right) in a random order."""

    __tablename__ = "comparisons"
    __table_args__ = (
        Index("ix_comparisons_user", "user_id"),
        Index("ix_comparisons_conversation", "conversation_id"),
        CheckConstraint(in_values("choice", CHOICES), name="choice"),
    )

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", sa_type=Integer)
    conversation_id: int = Field(foreign_key="conversations.id", sa_type=Integer)
    response_a_id: int = Field(foreign_key="responses.id", sa_type=Integer)
    response_b_id: int = Field(foreign_key="responses.id", sa_type=Integer)
    # Whether the transcript's reply was shown as A; recorded to audit position bias.
    original_is_a: bool = Field(sa_type=Boolean)
    choice: str | None = Field(default=None, sa_type=String)
    created_at: datetime = created_field()
    decided_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class Preference(FeedbackTable, table=True):
    """One DPO pair: a prompt with a chosen and a rejected assistant reply."""

    __tablename__ = "preferences"
    __table_args__ = (
        Index("ux_preferences_dedup_key", "dedup_key", unique=True),
        Index("ix_preferences_source", "source"),
        CheckConstraint(in_values("source", PREFERENCE_SOURCES), name="source"),
    )

    id: int | None = Field(default=None, primary_key=True)
    prompt_json: str = Field(sa_type=Text)
    chosen: str = Field(sa_type=Text)
    rejected: str = Field(sa_type=Text)
    # A tie keeps A as chosen and B as rejected; ties never become DPO rows.
    tie: bool = Field(default=False, sa_type=Boolean)
    source: str = Field(sa_type=String)
    annotator: str | None = Field(default=None, sa_type=String)
    comparison_id: int | None = Field(default=None, foreign_key="comparisons.id", sa_type=Integer)
    correction_id: int | None = Field(default=None, foreign_key="corrections.id", sa_type=Integer)
    chosen_response_id: int | None = Field(
        default=None, foreign_key="responses.id", sa_type=Integer
    )
    rejected_response_id: int | None = Field(
        default=None, foreign_key="responses.id", sa_type=Integer
    )
    dedup_key: str = Field(sa_type=String)
    created_at: datetime = created_field()


class Example(FeedbackTable, table=True):
    """One SFT conversation (ending in an assistant turn) brought in by an import."""

    __tablename__ = "examples"
    __table_args__ = (Index("ux_examples_dedup_key", "dedup_key", unique=True),)

    id: int | None = Field(default=None, primary_key=True)
    messages_json: str = Field(sa_type=Text)
    source: str = Field(default="import", sa_type=String)
    dedup_key: str = Field(sa_type=String)
    created_at: datetime = created_field()


T = TypeVar("T", bound=FeedbackTable)


def fetch(session: Session, model: type[T], row_id: int, what: str) -> T:
    """The `model` row with id `row_id`; FeedbackError naming `what` when there is none."""
    row = session.get(model, row_id)
    if row is None:
        raise FeedbackError(f"there is no {what} with id {row_id}; check the id")
    return row
