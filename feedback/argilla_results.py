"""What annotators answered in Argilla, written into the store inside one transaction.

`Store.apply_argilla_page` calls `apply_page` for each page a sync pulls: the responses are
upserted, then each touched pair gets its verdict (`feedback.agreement.verdict`) and, once
decided, a preference (source "argilla"); a corrected answer becomes an SFT example and two
edit pairs. Responses and what follows from them commit together, so a sync killed half-way
resumes where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from feedback import bulk
from feedback.agreement import verdict
from feedback.canonical import event_key
from feedback.models import ArgillaPair, ArgillaResponse, Preference, utcnow
from feedback.records import NewExample, NewPreference


@dataclass
class PageResult:
    """What one page changed (added to the sync's report once the page committed)."""

    pulled: int = 0
    decided: int = 0
    preferences: int = 0
    corrections: int = 0


def apply_page(
    session: Session,
    changes: list[tuple[int, dict[str, Any]]],
    *,
    min_submitted: int,
    min_agreement: float,
) -> PageResult:
    """Upsert one page of (pair id, parsed response) and decide the pairs it touched."""
    result = PageResult()
    existing = {
        row.argilla_id: row
        for row in session.exec(
            select(ArgillaResponse).where(
                col(ArgillaResponse.argilla_id).in_([c["argilla_id"] for _, c in changes])
            )
        )
    }
    touched: set[int] = set()
    for pair_id, change in changes:
        row = existing.get(change["argilla_id"])
        if row is None:
            row = ArgillaResponse(pair_id=pair_id, **change)
        else:
            for key, value in change.items():
                setattr(row, key, value)
            row.pulled_at = utcnow()
        session.add(row)
        touched.add(pair_id)
        result.pulled += 1
    session.flush()
    for pair_id in sorted(touched):
        pair = session.get(ArgillaPair, pair_id)
        assert pair is not None
        _decide(session, pair, min_submitted, min_agreement, result)
        _corrections(session, pair, [c for p, c in changes if p == pair_id], result)
    return result


def _texts(pair: ArgillaPair) -> tuple[str, str]:
    """(text shown as A, text shown as B)."""
    return (pair.first, pair.second) if pair.first_is_a else (pair.second, pair.first)


def _decide(
    session: Session,
    pair: ArgillaPair,
    min_submitted: int,
    min_agreement: float,
    result: PageResult,
) -> None:
    rows = session.exec(
        select(ArgillaResponse)
        .where(ArgillaResponse.pair_id == pair.id)
        .where(ArgillaResponse.status == "submitted")
    ).all()
    if len(rows) < min_submitted:
        return
    decision, agreement = verdict([r.choice for r in rows if r.choice])
    first = pair.decision is None
    pair.decision, pair.agreement = decision, round(agreement, 4)
    pair.flagged = agreement < min_agreement
    pair.decided_at = utcnow()
    result.decided += first
    if pair.flagged or decision == "split" or pair.preference_id is not None:
        session.add(pair)
        return
    text_a, text_b = _texts(pair)
    ids_a, ids_b = (
        (pair.first_response_id, pair.second_response_id)
        if pair.first_is_a
        else (pair.second_response_id, pair.first_response_id)
    )
    chosen, rejected, chosen_id, rejected_id = (
        (text_b, text_a, ids_b, ids_a) if decision == "B" else (text_a, text_b, ids_a, ids_b)
    )
    preference = Preference(
        prompt_json=pair.prompt_json,
        chosen=chosen,
        rejected=rejected,
        tie=decision == "tie",
        source="argilla",
        annotator=",".join(sorted(r.annotator for r in rows)),
        chosen_response_id=chosen_id,
        rejected_response_id=rejected_id,
        dedup_key=event_key("argilla", pair.id or 0),
    )
    session.add(preference)
    session.flush()
    pair.preference_id = preference.id
    session.add(pair)
    result.preferences += 1


def _corrections(
    session: Session, pair: ArgillaPair, changes: list[dict[str, Any]], result: PageResult
) -> None:
    """A submitted corrected answer: one SFT example, and corrected > each original."""
    prompt = json.loads(pair.prompt_json)
    for change in changes:
        text = change["corrected"]
        if change["status"] != "submitted" or not text:
            continue
        prefs = [
            NewPreference(prompt=prompt, chosen=text, rejected=original,
                          annotator=change["annotator"])
            for original in (pair.first, pair.second)
            if original.strip() != text
        ]  # fmt: skip
        example = NewExample(messages=[*prompt, {"role": "assistant", "content": text}])
        bulk.add_bulk(session, preferences=prefs, examples=[example], source="argilla")
        result.corrections += 1
