"""The pairs outbox: queue reply pairs for Argilla without ever waiting on Argilla.

Queuing writes one `argilla_pairs` row in our own database and returns; `feedback.argilla_sync`
pushes pending rows later. Each pair gets a stable external id derived from its content,
so queuing the same pair twice is a no-op and pushing it twice upserts one Argilla record.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from feedback.canonical import content_key
from feedback.db import WRITE_OPTIONS
from feedback.errors import FeedbackError
from feedback.messages import check_prompt
from feedback.models import (
    PAIR_SOURCES,
    ArgillaPair,
    Comparison,
    Correction,
    Rating,
    Response,
    utcnow,
)


@contextmanager
def write_session(store: Any) -> Iterator[Session]:
    """A write transaction on the store's engine (BEGIN IMMEDIATE on SQLite)."""
    with Session(store.engine.execution_options(**WRITE_OPTIONS), expire_on_commit=False) as s:
        yield s
        s.commit()


@dataclass(frozen=True)
class QueuedPair:
    """What a caller needs to know about a pair it queued."""

    id: int
    external_id: str
    created: bool


def external_id_for(source: str, prompt: list[dict[str, Any]], first: str, second: str) -> str:
    """The pair's stable id in Argilla: the same content always gives the same id."""
    key = content_key({"source": source, "prompt": prompt, "pair": [first, second]})
    return f"tl-{key[:32]}"


@dataclass(frozen=True)
class NewPair:
    """One pair to queue: the prompt, the two replies, where they came from."""

    source: str
    prompt: list[dict[str, Any]]
    first: str
    second: str
    metadata: dict[str, Any] = field(default_factory=dict)
    first_response_id: int | None = None
    second_response_id: int | None = None
    comparison_id: int | None = None


def queue_pair(store: Any, *, rng: random.Random | None = None, **pair: Any) -> QueuedPair:
    """Queue one pair for ranking (see `NewPair`); which reply is A is random and recorded."""
    return queue_pairs(store, [NewPair(**pair)], rng=rng)[0]


def queue_pairs(
    store: Any, pairs: list[NewPair], *, rng: random.Random | None = None
) -> list[QueuedPair]:
    """Queue many pairs in ONE transaction; pairs already queued are returned, not added."""
    rng = rng or random.SystemRandom()
    rows: dict[str, ArgillaPair] = {}
    for new in pairs:
        if new.source not in PAIR_SOURCES:
            raise FeedbackError(f"pair source {new.source!r} is unknown; use one of {PAIR_SOURCES}")
        messages = check_prompt(new.prompt)
        if not new.first.strip() or not new.second.strip():
            raise FeedbackError("both replies of a pair need text")
        if new.first.strip() == new.second.strip():
            raise FeedbackError("the two replies are identical; there is nothing to rank")
        external_id = external_id_for(new.source, messages, new.first, new.second)
        rows.setdefault(
            external_id,
            ArgillaPair(
                external_id=external_id,
                source=new.source,
                prompt_json=json.dumps(messages, ensure_ascii=False),
                first=new.first,
                second=new.second,
                first_response_id=new.first_response_id,
                second_response_id=new.second_response_id,
                comparison_id=new.comparison_id,
                first_is_a=rng.random() < 0.5,
                metadata_json=json.dumps(new.metadata, sort_keys=True, default=str),
            ),
        )
    keys = list(rows)
    with write_session(store) as session:
        existing: dict[str, int] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            found = session.exec(
                select(ArgillaPair.external_id, ArgillaPair.id).where(
                    col(ArgillaPair.external_id).in_(chunk)
                )
            )
            existing.update({key: pid or 0 for key, pid in found})
        fresh = [row for key, row in rows.items() if key not in existing]
        session.add_all(fresh)
        session.flush()
        ids = {**existing, **{row.external_id: row.id or 0 for row in fresh}}
    made = {row.external_id for row in fresh}
    return [
        QueuedPair(ids[key], key, key in made)
        for key in (
            external_id_for(p.source, check_prompt(p.prompt), p.first, p.second) for p in pairs
        )
    ]


def queue_undecided_comparisons(
    store: Any, *, older_than: timedelta = timedelta(0), rng: random.Random | None = None
) -> int:
    """Queue every chat comparison the expert left undecided for at least `older_than`."""
    cutoff = utcnow() - older_than
    with Session(store.engine) as session:
        rows = session.exec(
            select(Comparison)
            .where(col(Comparison.choice).is_(None))
            .where(col(Comparison.created_at) <= cutoff)
            .where(col(Comparison.id).not_in(_queued(ArgillaPair.comparison_id)))
            .order_by(col(Comparison.id))
        ).all()
        found = []
        for c in rows:
            a, b = session.get(Response, c.response_a_id), session.get(Response, c.response_b_id)
            assert a is not None and b is not None
            original, candidate = (a, b) if c.original_is_a else (b, a)
            found.append((c, original, candidate))
    added = 0
    for c, original, candidate in found:
        try:
            queued = queue_pair(
                store,
                source="compare",
                prompt=json.loads(original.prompt_json),
                first=original.content,
                second=candidate.content,
                first_response_id=original.id,
                second_response_id=candidate.id,
                comparison_id=c.id,
                metadata=_response_metadata(original, candidate),
                rng=rng,
            )
        except FeedbackError:  # identical or empty replies: nothing an annotator can rank
            continue
        added += queued.created
    return added


def thumbs_down_to_pair(store: Any, *, limit: int = 50) -> list[dict[str, Any]]:
    """Replies whose latest rating is 👎, uncorrected and not queued yet (oldest first).

    The caller samples a fresh reply for each (`feedback` cannot import the model) and
    queues it with `queue_pair(source="thumbs-down", first_response_id=...)`.
    """
    with Session(store.engine) as session:
        latest = (
            select(func.max(Rating.id)).group_by(col(Rating.response_id), col(Rating.user_id))
        ).scalar_subquery()
        rows = session.exec(
            select(Response)
            .join(Rating, col(Rating.response_id) == col(Response.id))
            .where(col(Rating.id).in_(latest))
            .where(col(Rating.up).is_(False))
            .where(col(Response.error).is_(None))
            .where(col(Response.id).not_in(select(Correction.response_id)))
            .where(col(Response.id).not_in(_queued(ArgillaPair.first_response_id)))
            .distinct()
            .order_by(col(Response.id))
            .limit(limit)
        ).all()
        return [
            {
                "response_id": r.id,
                "prompt": json.loads(r.prompt_json),
                "content": r.content,
                "model": r.model,
                "adapter_version": r.adapter_version,
                "conversation_id": r.conversation_id,
            }
            for r in rows
        ]


def _queued(column: Any) -> Any:
    return select(column).where(col(column).is_not(None))


def _response_metadata(first: Response, second: Response) -> dict[str, Any]:
    return {
        "model": first.model,
        "adapter_first": first.adapter_version or "base",
        "adapter_second": second.adapter_version or "base",
        "conversation_id": first.conversation_id,
    }


def pending(store: Any, *, limit: int) -> list[ArgillaPair]:
    """Up to `limit` pairs not yet confirmed as pushed, oldest first."""
    with Session(store.engine, expire_on_commit=False) as session:
        return list(
            session.exec(
                select(ArgillaPair)
                .where(ArgillaPair.status == "pending")
                .order_by(col(ArgillaPair.id))
                .limit(limit)
            ).all()
        )


def mark_pushed(store: Any, ids: list[int]) -> None:
    """Record that Argilla confirmed these pairs (after the upsert returned)."""
    with write_session(store) as session:
        session.exec(  # type: ignore[call-overload]
            update(ArgillaPair)
            .where(col(ArgillaPair.id).in_(ids))
            .values(status="pushed", pushed_at=utcnow(), last_error=None)
        )


def mark_failed(store: Any, ids: list[int], error: str) -> None:
    """Count a failed push attempt; the pairs stay pending for the next sync."""
    with write_session(store) as session:
        session.exec(  # type: ignore[call-overload]
            update(ArgillaPair)
            .where(col(ArgillaPair.id).in_(ids))
            .values(attempts=ArgillaPair.attempts + 1, last_error=error[:500])
        )


def outbox_counts(store: Any) -> dict[str, int]:
    """Pairs by status, and how many have a verdict / are flagged."""
    with Session(store.engine) as session:
        by_status = dict(
            session.exec(
                select(ArgillaPair.status, func.count()).group_by(col(ArgillaPair.status))
            ).all()
        )
        decided = session.exec(
            select(func.count()).where(col(ArgillaPair.decision).is_not(None))
        ).one()
        flagged = session.exec(select(func.count()).where(col(ArgillaPair.flagged).is_(True))).one()
    return {
        "pending": int(by_status.get("pending", 0)),
        "pushed": int(by_status.get("pushed", 0)),
        "decided": int(decided),
        "flagged": int(flagged),
    }
