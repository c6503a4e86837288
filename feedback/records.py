"""Plain values the store hands out and takes in (never live ORM objects).

Callers on other threads can keep them as long as they like: nothing here lazy-loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def as_utc(value: datetime) -> datetime:
    """The same instant, timezone-aware UTC (SQLite hands back naive datetimes)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class UserInfo:
    """A user, without the password hash."""

    id: int
    name: str
    role: str
    created_at: datetime
    # active, disabled (no login until enabled) or removed (no login; feedback kept).
    status: str = "active"


@dataclass(frozen=True)
class ConversationInfo:
    """A chat in a user's history list."""

    id: int
    title: str
    created_at: datetime


@dataclass(frozen=True)
class MessageInfo:
    """One turn of the visible transcript; `response_id` is set on assistant turns."""

    role: str
    content: str
    response_id: int | None


@dataclass(frozen=True)
class ResponseInfo:
    """One model output with everything that produced it."""

    id: int
    conversation_id: int
    prompt: list[dict[str, str]]
    content: str
    model: str
    adapter_version: str | None
    params: dict[str, Any]
    latency_ms: float
    ttft_ms: float | None
    new_tokens: int | None
    kind: str
    error: str | None
    created_at: datetime
    completion_id: str | None = None  # the id an API client was given; None for the page's


@dataclass(frozen=True)
class NewPreference:
    """A preference pair to add in bulk (imports, sync); dedup is by content."""

    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    annotator: str | None = None


@dataclass(frozen=True)
class NewExample:
    """An SFT conversation, ending with an assistant turn, to add in bulk."""

    messages: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class BulkResult:
    """How many rows a bulk add wrote, and how many it skipped as already present."""

    added: int
    duplicates: int
