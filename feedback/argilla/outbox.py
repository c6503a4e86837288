"""The pairs outbox: queue reply pairs for Argilla without ever waiting on Argilla.

Queuing writes one `argilla_pairs` row in our own database (through the Store) and returns;
`feedback.argilla.sync` pushes pending rows later. Each pair gets a stable external id derived
from its content, so queuing the same pair twice is a no-op and pushing it twice upserts one
Argilla record.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from feedback.canonical import content_key
from feedback.errors import FeedbackError
from feedback.messages import check_prompt
from feedback.models import utcnow
from feedback.models_external import PAIR_SOURCES
from feedback.records import ResponseInfo

if TYPE_CHECKING:
    from feedback.store import Store


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


def queue_pair(store: Store, *, rng: random.Random | None = None, **pair: Any) -> QueuedPair:
    """Queue one pair for ranking (see `NewPair`); which reply is A is random and recorded."""
    return queue_pairs(store, [NewPair(**pair)], rng=rng)[0]


def queue_pairs(
    store: Store, pairs: list[NewPair], *, rng: random.Random | None = None
) -> list[QueuedPair]:
    """Queue many pairs in ONE transaction; pairs already queued are returned, not added."""
    rng = rng or random.SystemRandom()
    rows: dict[str, dict[str, Any]] = {}
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
            {
                "external_id": external_id,
                "source": new.source,
                "prompt_json": json.dumps(messages, ensure_ascii=False),
                "first": new.first,
                "second": new.second,
                "first_response_id": new.first_response_id,
                "second_response_id": new.second_response_id,
                "comparison_id": new.comparison_id,
                "first_is_a": rng.random() < 0.5,
                "metadata_json": json.dumps(new.metadata, sort_keys=True, default=str),
            },
        )
    stored = store.add_pairs(rows)
    return [
        QueuedPair(stored[key][0], key, stored[key][1])
        for key in (
            external_id_for(p.source, check_prompt(p.prompt), p.first, p.second) for p in pairs
        )
    ]


def queue_undecided_comparisons(
    store: Store, *, older_than: timedelta = timedelta(0), rng: random.Random | None = None
) -> int:
    """Queue every chat comparison the expert left undecided for at least `older_than`."""
    found = store.undecided_comparisons(before=utcnow() - older_than)
    added = 0
    for comparison_id, original, candidate in found:
        try:
            queued = queue_pair(
                store,
                source="compare",
                prompt=original.prompt,
                first=original.content,
                second=candidate.content,
                first_response_id=original.id,
                second_response_id=candidate.id,
                comparison_id=comparison_id,
                metadata=_response_metadata(original, candidate),
                rng=rng,
            )
        except FeedbackError:  # identical or empty replies: nothing an annotator can rank
            continue
        added += queued.created
    return added


def thumbs_down_to_pair(store: Store, *, limit: int = 50) -> list[dict[str, Any]]:
    """Replies whose latest rating is 👎, uncorrected and not queued yet (oldest first).

    The caller samples a fresh reply for each (`feedback` cannot import the model) and
    queues it with `queue_pair(source="thumbs-down", first_response_id=...)`.
    """
    return [
        {
            "response_id": r.id,
            "prompt": r.prompt,
            "content": r.content,
            "model": r.model,
            "adapter_version": r.adapter_version,
            "conversation_id": r.conversation_id,
        }
        for r in store.unpaired_thumbs_down(limit=limit)
    ]


def _response_metadata(first: ResponseInfo, second: ResponseInfo) -> dict[str, Any]:
    return {
        "model": first.model,
        "adapter_first": first.adapter_version or "base",
        "adapter_second": second.adapter_version or "base",
        "conversation_id": first.conversation_id,
    }
