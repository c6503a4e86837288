"""What training rounds and exports read, and bulk imports."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select

from feedback import bulk, rows
from feedback.models import Correction, Preference, Rating
from feedback.records import BulkResult, NewExample, NewPreference
from feedback.split import HeldoutSplit
from feedback.store.base import Row, StoreBase

# Rows per transaction of a bulk import: on SQLite each holds the one write lock for a few
# tens of milliseconds, so ratings that arrive meanwhile wait no longer than that.
BULK_BATCH_ROWS = 500

# What "new feedback since the last round" counts.
_COUNTED = (("preferences", Preference), ("corrections", Correction), ("ratings", Rating))


class DataStore(StoreBase):
    """What training rounds and exports read, and bulk imports."""

    # Training data -------------------------------------------------------------------

    def sft_rows(self, split: str = "all", plan: HeldoutSplit | None = None) -> Iterator[Row]:
        """SFT conversations `{"messages": [...]}`; see `feedback.rows.sft_rows`."""
        with self._read() as session:
            return iter(rows.sft_rows(session, split, plan))

    def sft_row_sources(self) -> dict[str, str]:
        """Where each SFT row came from, by its messages' `content_key` (import, correction,
        thumbs_up, argilla): the gate's held-out loss measures the answers people wrote."""
        found: dict[str, str] = {}
        with self._read() as session:
            rows.sft_rows(session, "all", sources=found)
        return found

    def dpo_rows(self, split: str = "all", plan: HeldoutSplit | None = None) -> Iterator[Row]:
        """TRL conversational DPO rows; see `feedback.rows.dpo_rows`."""
        with self._read() as session:
            return iter(rows.dpo_rows(session, split, plan))

    def dpo_row_sources(self) -> dict[str, str]:
        """Where each DPO row came from, by `content_key([prompt, chosen, rejected])`: a
        round reports how many of its pairs each source gave (`feedback.rows.dpo_rows`)."""
        found: dict[str, str] = {}
        with self._read() as session:
            rows.dpo_rows(session, "all", sources=found)
        return found

    def kto_rows(self, split: str = "all", plan: HeldoutSplit | None = None) -> Iterator[Row]:
        """TRL unpaired rows from thumbs without a partner; see `feedback.rows.kto_rows`."""
        with self._read() as session:
            return iter(rows.kto_rows(session, split, plan))

    def heldout_split(self, *, min_items: int = 0, extra: list[Row] | None = None) -> HeldoutSplit:
        """The train/heldout split of everything stored (`feedback.split`), holding out at
        least `min_items` prompts where the data allows; `extra`: SFT rows kept elsewhere
        (the domain's seed examples) that the split must also cover."""
        with self._read() as session:
            return rows.split_plan(session, min_items=min_items, extra=extra)

    # Bulk ----------------------------------------------------------------------------

    def add_bulk(
        self,
        *,
        preferences: Iterable[NewPreference] = (),
        examples: Iterable[NewExample] = (),
        source: str = "import",
        batch_rows: int = BULK_BATCH_ROWS,
    ) -> BulkResult:
        """Add pairs and conversations, skipping duplicates, in short transactions.

        Duplicates (same content already stored, or repeated in the input) are counted, not
        added. Each batch of `batch_rows` commits on its own, so a big import never holds
        the database long enough to keep an expert's rating waiting; an import stopped
        half-way is finished by running it again (what is stored counts as duplicates).
        """
        prepared = bulk.prepare(preferences, examples, source)  # outside any transaction
        added = 0
        for batch in prepared.batches(batch_rows):
            with self._write(bulk=True) as session:
                added += bulk.insert_new(session, batch)
        return BulkResult(added=added, duplicates=prepared.total - added)

    # What is new since a round ---------------------------------------------------------

    def feedback_marks(self, plan: HeldoutSplit | None = None) -> dict[str, Any]:
        """The newest preference / correction / rating ids now, and the ids of the pairs
        `plan` puts in training: what a round's snapshot records, so that a later
        `new_feedback_since` counts only what arrived after it."""
        with self._read() as session:
            marks = {
                name: int(session.exec(select(func.max(col(model.id)))).one() or 0)
                for name, model in _COUNTED
            }
            pairs = session.exec(
                select(Preference.id, Preference.prompt_json, Preference.chosen)
                .where(col(Preference.tie).is_(False))
                .order_by(col(Preference.id))
            ).all()
        plan = plan or HeldoutSplit()
        ids = [
            int(i or 0)
            for i, prompt, chosen in pairs
            if plan.in_split("train", json.loads(prompt), [chosen])
        ]
        return {"max_ids": marks, "preference_ids": ids}

    def new_feedback_since(self, max_ids: dict[str, int] | None) -> dict[str, int]:
        """How many preferences / corrections / ratings have ids above `max_ids` (None: all)."""
        marks = max_ids or {}
        with self._read() as session:
            return {
                name: int(
                    session.exec(
                        select(func.count())
                        .select_from(model)
                        .where(col(model.id) > marks.get(name, 0))
                    ).one()
                )
                for name, model in _COUNTED
            }
