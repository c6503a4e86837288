"""Push queued pairs to Argilla and pull annotators' responses back into the store.

Push: pending outbox rows go out through the Argilla SDK's bulk `records.log` keyed by the
pair's stable external id, so a repeated push (or a retry after a timeout that did reach
the server) upserts the same record instead of adding one. A pair is marked pushed only
after Argilla confirmed it.

Pull: the dataset's records are read page by page with their responses; a response is
written only when it is new or its `updated_at` changed, one transaction per page (a sync
killed half-way resumes where it stopped). Drafts are ignored, submitted and discarded are
kept apart, one row per annotator. Then each touched pair gets its verdict
(`feedback.argilla.agreement.verdict`) and, once decided, a preference (source "argilla"); a
corrected answer becomes an SFT example and two edit pairs. Anything Argilla returns that
we cannot use (an unknown choice, a record we never pushed, a deleted record) is logged
and skipped, never fatal.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, select

from feedback import bulk
from feedback.argilla.agreement import agreement_report, verdict
from feedback.argilla.dataset import Target, connect, ensure_dataset
from feedback.argilla.stack import ArgillaError
from feedback.canonical import event_key
from feedback.models import CHOICES, Preference, utcnow
from feedback.models_external import ArgillaPair, ArgillaResponse
from feedback.pii import scrub_texts
from feedback.records import NewExample, NewPreference

log = logging.getLogger("tuneloop.argilla")

PAGE = 1000  # records per pull request (the server's maximum)


@dataclass
class SyncReport:
    """What one sync did; `skipped` lists what was logged and left out."""

    pushed: int = 0
    push_failed: int = 0
    pulled: int = 0
    unchanged: int = 0
    decided: int = 0
    preferences: int = 0
    corrections: int = 0
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "skipped": self.skipped[:20], "skipped_total": len(self.skipped)}


def shown(pair: ArgillaPair, pii_region: str = "US") -> tuple[list[dict[str, str]], str, str]:
    """(conversation, first reply, second reply) as annotators see them: PII-scrubbed
    together (`feedback.pii`), so a customer's name has one stand-in in all three. The
    store keeps the raw pair; the record's id (the pair's external id) leads back to it."""
    prompt = json.loads(pair.prompt_json)
    texts = [*(m["content"] for m in prompt), pair.first, pair.second]
    *turns, first, second = scrub_texts(texts, region=pii_region)
    conversation = [
        {"role": m["role"], "content": text} for m, text in zip(prompt, turns, strict=True)
    ]
    return conversation, first, second


def to_record(pair: ArgillaPair, pii_region: str = "US") -> Any:
    """The Argilla record of a pair (fields, metadata; never responses), scrubbed (`shown`)."""
    import argilla as rg

    meta = json.loads(pair.metadata_json)
    conversation, first, second = shown(pair, pii_region)
    a, b = (first, second) if pair.first_is_a else (second, first)
    first_adapter, second_adapter = meta.get("adapter_first"), meta.get("adapter_second")
    adapter_a, adapter_b = (
        (first_adapter, second_adapter) if pair.first_is_a else (second_adapter, first_adapter)
    )
    metadata: dict[str, Any] = {"source": pair.source}
    for key, value in (("model", meta.get("model")), ("adapter_a", adapter_a),
                       ("adapter_b", adapter_b)):  # fmt: skip
        if value:
            metadata[key] = str(value)
    if meta.get("conversation_id") is not None:
        metadata["conversation_id"] = int(meta["conversation_id"])
    return rg.Record(
        id=pair.external_id,
        fields={"conversation": conversation, "response_a": a, "response_b": b},
        metadata=metadata,
    )


def push(store: Any, dataset: Any, *, batch: int = 512, pii_region: str = "US") -> tuple[int, int]:
    """Upsert every pending pair, scrubbed; returns (pushed, failed). Failed pairs stay
    pending."""
    pushed = failed = 0
    while True:
        pairs = store.pending_pairs(limit=batch)
        if not pairs:
            return pushed, failed
        ids = [p.id for p in pairs if p.id is not None]
        try:
            dataset.records.log([to_record(p, pii_region) for p in pairs], batch_size=256)
        except Exception as err:
            store.mark_pairs_failed(ids, f"{type(err).__name__}: {err}")
            log.warning("push of %d pairs failed (%s); they stay queued", len(ids), err)
            return pushed, failed + len(ids)
        store.mark_pairs_pushed(ids)
        pushed += len(ids)


def _users(http: Any) -> dict[str, str]:
    response = http.get("/api/v1/users")
    response.raise_for_status()
    return {u["id"]: u["username"] for u in response.json()["items"]}


def pull(store: Any, dataset: Any, target: Target, report: SyncReport) -> None:
    """Read every record's responses; store what is new; decide the pairs it touched."""
    import httpx

    creds = target.credentials
    pairs, known, pushed = store.argilla_seen()
    headers = {"X-Argilla-Api-Key": creds.api_key}
    with httpx.Client(base_url=creds.url, headers=headers, timeout=target.timeout) as http:
        users = _users(http)
        seen: set[str] = set()
        offset = 0
        while True:
            response = http.get(
                f"/api/v1/datasets/{dataset.id}/records",
                params={"include": "responses", "offset": offset, "limit": PAGE},
            )
            response.raise_for_status()
            items = response.json()["items"]
            if not items:
                break
            offset += len(items)
            changes = []
            for record in items:
                ext = record.get("external_id")
                seen.add(ext)
                if ext not in pairs:
                    report.skipped.append(f"record {ext!r} was never pushed by this store")
                    continue
                for r in record.get("responses") or []:
                    if r.get("status") not in ("submitted", "discarded"):
                        continue  # drafts are the annotator's business until submitted
                    if known.get(r["id"]) == r["updated_at"]:
                        report.unchanged += 1
                        continue
                    parsed = _parse(r, users, report)
                    if parsed is not None:
                        changes.append((pairs[ext], parsed))
            if changes:
                _apply(store, changes, target, report)
                for _pid, parsed in changes:
                    known[parsed["argilla_id"]] = parsed["argilla_updated_at"]
    for ext in sorted(pushed - seen):
        report.skipped.append(f"record {ext!r} is no longer in Argilla (deleted?)")
    for line in report.skipped:
        log.warning("argilla sync skipped: %s", line)


def _parse(r: dict[str, Any], users: dict[str, str], report: SyncReport) -> dict[str, Any] | None:
    """One Argilla response in our terms, or None (logged) when it cannot be used."""
    values = r.get("values") or {}
    choice = (values.get("choice") or {}).get("value")
    if r["status"] == "submitted" and choice not in CHOICES:
        report.skipped.append(f"response {r['id']} has an unknown choice {choice!r}")
        return None
    corrected = (values.get("corrected") or {}).get("value")
    rating = (values.get("rating") or {}).get("value")
    if rating is not None and (not isinstance(rating, int) or not 1 <= rating <= 5):
        report.skipped.append(f"response {r['id']} has an invalid rating {rating!r}; ignored")
        rating = None
    return {
        "argilla_id": r["id"],
        "annotator": users.get(r["user_id"], str(r["user_id"])),
        "status": r["status"],
        "choice": choice if r["status"] == "submitted" else None,
        "corrected": corrected.strip()
        if isinstance(corrected, str) and corrected.strip()
        else None,
        "rating": rating,
        "argilla_updated_at": r["updated_at"],
    }


def _apply(
    store: Any, changes: list[tuple[int, dict[str, Any]]], target: Target, report: SyncReport
) -> None:
    """Upsert one page of responses and decide the touched pairs, in ONE transaction."""

    def settle(session: Session, touched: list[int]) -> SyncReport:
        page = SyncReport()  # counted apart: a retried transaction starts again from zero
        for pair_id in touched:
            pair = session.get(ArgillaPair, pair_id)
            assert pair is not None
            _decide(session, pair, target, page)
            mine = [c for p, c in changes if p == pair_id]
            _corrections(session, pair, mine, page, target.pii_region)
        return page

    page = store.apply_argilla_page(changes, settle)
    report.pulled += len(changes)
    report.decided += page.decided
    report.preferences += page.preferences
    report.corrections += page.corrections


def _texts(pair: ArgillaPair) -> tuple[str, str]:
    """(text shown as A, text shown as B)."""
    return (pair.first, pair.second) if pair.first_is_a else (pair.second, pair.first)


def _decide(session: Session, pair: ArgillaPair, target: Target, report: SyncReport) -> None:
    rows = session.exec(
        select(ArgillaResponse)
        .where(ArgillaResponse.pair_id == pair.id)
        .where(ArgillaResponse.status == "submitted")
    ).all()
    if len(rows) < target.min_submitted:
        return
    decision, agreement = verdict([r.choice for r in rows if r.choice])
    first = pair.decision is None
    pair.decision, pair.agreement = decision, round(agreement, 4)
    pair.flagged = agreement < target.min_agreement
    pair.decided_at = utcnow()
    report.decided += first
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
    report.preferences += 1


def _corrections(
    session: Session,
    pair: ArgillaPair,
    changes: list[dict[str, Any]],
    report: SyncReport,
    pii_region: str,
) -> None:
    """A submitted corrected answer: one SFT example, and corrected > each original (unless
    it is that original as the annotator saw it, scrubbed)."""
    prompt = json.loads(pair.prompt_json)
    _, *seen = shown(pair, pii_region)
    for change in changes:
        text = change["corrected"]
        if change["status"] != "submitted" or not text:
            continue
        prefs = [
            NewPreference(prompt=prompt, chosen=text, rejected=original,
                          annotator=change["annotator"])
            for original, as_seen in zip((pair.first, pair.second), seen, strict=True)
            if text not in (original.strip(), as_seen.strip())
        ]  # fmt: skip
        example = NewExample(messages=[*prompt, {"role": "assistant", "content": text}])
        bulk.add_bulk(session, preferences=prefs, examples=[example], source="argilla")
        report.corrections += 1


def sync(store: Any, target: Target) -> SyncReport:
    """Push pending pairs, then pull responses; raises ArgillaError if Argilla is away."""
    report = SyncReport()
    client = connect(target)
    try:
        dataset = ensure_dataset(client, target)
    except Exception as err:
        raise ArgillaError(f"Argilla at {target.credentials.url} failed: {err}") from None
    report.pushed, report.push_failed = push(store, dataset, pii_region=target.pii_region)
    try:
        pull(store, dataset, target, report)
    except Exception as err:  # server gone or answering errors: what was stored stays
        raise ArgillaError(f"pulling from {target.credentials.url} failed: {err}") from None
    return report


def agreement(store: Any) -> dict[str, Any]:
    """Agreement over every submitted response in the store (see `feedback.argilla.agreement`)."""
    votes, flagged = store.argilla_votes()
    report = agreement_report(votes)
    report["flagged_records"] = flagged
    return report
