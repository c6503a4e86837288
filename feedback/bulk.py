"""Adding many preference pairs and SFT conversations at once, without duplicates.

Used by file imports and the Argilla sync. Dedup is by content: the same pair or
conversation, from this batch or already stored, is counted as a duplicate and skipped.
The work is split in two so a big import never holds the database for long: `prepare`
(keys, canonical JSON, dedup within the input) runs outside any transaction, and
`insert_new` writes one batch of prepared rows in a short transaction of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session, col, select

from feedback.canonical import example_key, preference_key
from feedback.errors import FeedbackError
from feedback.models import PREFERENCE_SOURCES, Example, Preference, utcnow
from feedback.records import BulkResult, NewExample, NewPreference

_KEY_CHUNK = 500  # dedup keys per IN (...) query


@dataclass
class Prepared:
    """Rows ready to insert, keyed by their dedup key (first occurrence wins)."""

    total: int = 0
    preferences: dict[str, dict[str, Any]] = field(default_factory=dict)
    examples: dict[str, dict[str, Any]] = field(default_factory=dict)

    def batches(self, size: int) -> Iterator[Prepared]:
        """The rows in batches of at most `size` (preferences first, then examples)."""
        items = [("p", k, v) for k, v in self.preferences.items()]
        items += [("e", k, v) for k, v in self.examples.items()]
        for start in range(0, len(items), size):
            batch = Prepared()
            for kind, key, row in items[start : start + size]:
                (batch.preferences if kind == "p" else batch.examples)[key] = row
            yield batch


def prepare(
    preferences: Iterable[NewPreference], examples: Iterable[NewExample], source: str
) -> Prepared:
    """Compute every row's dedup key and stored form; no database access."""
    if source not in PREFERENCE_SOURCES:
        raise FeedbackError(f"source {source!r} is unknown; use one of {PREFERENCE_SOURCES}")
    prepared = Prepared()
    for pref in preferences:
        prepared.total += 1
        key = preference_key(prompt=pref.prompt, chosen=pref.chosen, rejected=pref.rejected)
        if key not in prepared.preferences:
            prepared.preferences[key] = {
                "prompt_json": json.dumps(pref.prompt, ensure_ascii=False),
                "chosen": pref.chosen,
                "rejected": pref.rejected,
                "tie": False,
                "source": source,
                "annotator": pref.annotator,
                "dedup_key": key,
            }
    for example in examples:
        prepared.total += 1
        key = example_key(example.messages)
        if key not in prepared.examples:
            prepared.examples[key] = {
                "messages_json": json.dumps(example.messages, ensure_ascii=False),
                "source": source,
                "dedup_key": key,
            }
    return prepared


def insert_new(session: Session, batch: Prepared) -> int:
    """Insert the rows of `batch` not stored yet, in the caller's transaction; how many."""
    now = utcnow()
    added = 0
    for model, rows in ((Preference, batch.preferences), (Example, batch.examples)):
        if not rows:
            continue
        existing = _existing_keys(session, model, list(rows))
        new = [{**row, "created_at": now} for key, row in rows.items() if key not in existing]
        if new:
            session.execute(insert(model.__table__), new)  # type: ignore[union-attr]
            added += len(new)
    return added


def add_bulk(
    session: Session,
    *,
    preferences: Iterable[NewPreference],
    examples: Iterable[NewExample],
    source: str,
) -> BulkResult:
    """Add the new rows in the caller's transaction; returns added and duplicate counts."""
    prepared = prepare(preferences, examples, source)
    added = insert_new(session, prepared)
    return BulkResult(added=added, duplicates=prepared.total - added)


def _existing_keys(
    session: Session, model: type[Preference] | type[Example], keys: list[str]
) -> set[str]:
    """Which of `keys` are already stored as `model.dedup_key`."""
    found: set[str] = set()
    for start in range(0, len(keys), _KEY_CHUNK):
        chunk = keys[start : start + _KEY_CHUNK]
        found.update(
            session.exec(select(model.dedup_key).where(col(model.dedup_key).in_(chunk))).all()
        )
    return found
