"""Adding many preference pairs and SFT conversations at once, without duplicates.

Used by file imports (and later the Argilla sync). Dedup is by content: the same pair or
conversation, from this batch or already stored, is counted as a duplicate and skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from sqlmodel import Session, col, select

from feedback.canonical import example_key, preference_key
from feedback.errors import FeedbackError
from feedback.models import PREFERENCE_SOURCES, Example, Preference
from feedback.records import BulkResult, NewExample, NewPreference

_KEY_CHUNK = 500  # dedup keys per IN (...) query


def add_bulk(
    session: Session,
    *,
    preferences: Iterable[NewPreference],
    examples: Iterable[NewExample],
    source: str,
) -> BulkResult:
    """Add the new rows in the caller's transaction; returns added and duplicate counts."""
    if source not in PREFERENCE_SOURCES:
        raise FeedbackError(f"source {source!r} is unknown; use one of {PREFERENCE_SOURCES}")
    new_prefs: dict[str, NewPreference] = {}
    new_examples: dict[str, NewExample] = {}
    total = 0
    for pref in preferences:
        total += 1
        key = preference_key(prompt=pref.prompt, chosen=pref.chosen, rejected=pref.rejected)
        new_prefs.setdefault(key, pref)
    for example in examples:
        total += 1
        new_examples.setdefault(example_key(example.messages), example)
    for key in _existing_keys(session, Preference, list(new_prefs)):
        del new_prefs[key]
    for key in _existing_keys(session, Example, list(new_examples)):
        del new_examples[key]
    for key, pref in new_prefs.items():
        session.add(
            Preference(
                prompt_json=json.dumps(pref.prompt, ensure_ascii=False),
                chosen=pref.chosen,
                rejected=pref.rejected,
                source=source,
                annotator=pref.annotator,
                dedup_key=key,
            )
        )
    for key, example in new_examples.items():
        session.add(
            Example(
                messages_json=json.dumps(example.messages, ensure_ascii=False),
                source=source,
                dedup_key=key,
            )
        )
    added = len(new_prefs) + len(new_examples)
    return BulkResult(added=added, duplicates=total - added)


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
