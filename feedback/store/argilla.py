"""The Argilla outbox (pairs queued for ranking) and what a sync reads and writes.

The policy lives beside it: `feedback.argilla.outbox` decides what a pair is and which reply is A,
`feedback.argilla.sync` talks to Argilla and turns answers into preferences. This part runs
their queries, in the store's short transactions.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from feedback.models import Comparison, Correction, Rating, Response, utcnow
from feedback.models_external import ArgillaPair, ArgillaResponse
from feedback.records import ResponseInfo
from feedback.store.base import StoreBase, response_info, retried

T = TypeVar("T")

# External ids per IN (...) query.
_KEY_CHUNK = 500


def _queued(column: Any) -> Any:
    return select(column).where(col(column).is_not(None))


class ArgillaStore(StoreBase):
    """The Argilla outbox and the sync's reads and writes."""

    # The outbox ----------------------------------------------------------------------

    @retried
    def add_pairs(self, rows: dict[str, dict[str, Any]]) -> dict[str, tuple[int, bool]]:
        """Add the pairs (columns by external id) not queued yet, in ONE transaction.

        Returns every given external id's (pair id, created now).
        """
        keys = list(rows)
        with self._write() as session:
            existing: dict[str, int] = {}
            for start in range(0, len(keys), _KEY_CHUNK):
                found = session.exec(
                    select(ArgillaPair.external_id, ArgillaPair.id).where(
                        col(ArgillaPair.external_id).in_(keys[start : start + _KEY_CHUNK])
                    )
                )
                existing.update({key: pid or 0 for key, pid in found})
            fresh = [ArgillaPair(**row) for key, row in rows.items() if key not in existing]
            session.add_all(fresh)
            session.flush()
            out = {key: (pid, False) for key, pid in existing.items()}
            out.update({row.external_id: (row.id or 0, True) for row in fresh})
            return out

    def undecided_comparisons(
        self, *, before: datetime
    ) -> list[tuple[int, ResponseInfo, ResponseInfo]]:
        """(comparison id, original, candidate) of chat comparisons made before `before`,
        still undecided and not queued for Argilla yet, oldest first."""
        with self._read() as session:
            rows = session.exec(
                select(Comparison)
                .where(col(Comparison.choice).is_(None))
                .where(col(Comparison.created_at) <= before)
                .where(col(Comparison.id).not_in(_queued(ArgillaPair.comparison_id)))
                .order_by(col(Comparison.id))
            ).all()
            found = []
            for c in rows:
                a = session.get(Response, c.response_a_id)
                b = session.get(Response, c.response_b_id)
                assert a is not None and b is not None and c.id is not None
                original, candidate = (a, b) if c.original_is_a else (b, a)
                found.append((c.id, response_info(original), response_info(candidate)))
            return found

    def unpaired_thumbs_down(self, *, limit: int) -> list[ResponseInfo]:
        """Replies whose latest rating is 👎, without an error or a correction, and not
        queued for Argilla yet (oldest first)."""
        with self._read() as session:
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
            return [response_info(r) for r in rows]

    def pending_pairs(self, *, limit: int) -> list[ArgillaPair]:
        """Up to `limit` pairs not yet confirmed as pushed, oldest first (detached rows)."""
        with self._read() as session:
            pairs = list(
                session.exec(
                    select(ArgillaPair)
                    .where(ArgillaPair.status == "pending")
                    .order_by(col(ArgillaPair.id))
                    .limit(limit)
                ).all()
            )
            session.expunge_all()
            return pairs

    @retried
    def mark_pairs_pushed(self, ids: list[int]) -> None:
        """Record that Argilla confirmed these pairs (after the upsert returned)."""
        with self._write() as session:
            session.exec(
                update(ArgillaPair)
                .where(col(ArgillaPair.id).in_(ids))
                .values(status="pushed", pushed_at=utcnow(), last_error=None)
            )

    @retried
    def mark_pairs_failed(self, ids: list[int], error: str) -> None:
        """Count a failed push attempt; the pairs stay pending for the next sync."""
        with self._write() as session:
            session.exec(
                update(ArgillaPair)
                .where(col(ArgillaPair.id).in_(ids))
                .values(attempts=ArgillaPair.attempts + 1, last_error=error[:500])
            )

    def outbox_counts(self) -> dict[str, int]:
        """Pairs by status, and how many have a verdict / are flagged."""
        with self._read() as session:
            by_status = dict(
                session.exec(
                    select(ArgillaPair.status, func.count()).group_by(col(ArgillaPair.status))
                ).all()
            )
            decided = session.exec(
                select(func.count()).where(col(ArgillaPair.decision).is_not(None))
            ).one()
            flagged = session.exec(
                select(func.count()).where(col(ArgillaPair.flagged).is_(True))
            ).one()
        return {
            "pending": int(by_status.get("pending", 0)),
            "pushed": int(by_status.get("pushed", 0)),
            "decided": int(decided),
            "flagged": int(flagged),
        }

    # What a sync pulls ---------------------------------------------------------------

    def argilla_seen(self) -> tuple[dict[str, int], dict[str, str], set[str]]:
        """(pair id by external id, each stored response's Argilla `updated_at` by its
        Argilla id, the external ids pushed): what a pull compares Argilla's records with."""
        with self._read() as session:
            pairs = {
                ext: pid or 0
                for ext, pid in session.exec(select(ArgillaPair.external_id, ArgillaPair.id)).all()
            }
            known = dict(
                session.exec(
                    select(ArgillaResponse.argilla_id, ArgillaResponse.argilla_updated_at)
                ).all()
            )
            pushed = set(
                session.exec(
                    select(ArgillaPair.external_id).where(ArgillaPair.status == "pushed")
                ).all()
            )
        return pairs, known, pushed

    @retried
    def apply_argilla_page(
        self,
        changes: list[tuple[int, dict[str, Any]]],
        settle: Callable[[Session, list[int]], T],
    ) -> T:
        """Upsert one pulled page of (pair id, response columns), then let `settle` decide
        the pairs it touched (`feedback.argilla.sync`), all in ONE transaction: a sync
        killed half-way resumes where it stopped. May run `settle` again after a busy
        database, so `settle` keeps its counts to what it returns."""
        with self._write() as session:
            existing = {
                row.argilla_id: row
                for row in session.exec(
                    select(ArgillaResponse).where(
                        col(ArgillaResponse.argilla_id).in_([c["argilla_id"] for _, c in changes])
                    )
                )
            }
            for pair_id, change in changes:
                row = existing.get(change["argilla_id"])
                if row is None:
                    row = ArgillaResponse(pair_id=pair_id, **change)
                else:
                    for key, value in change.items():
                        setattr(row, key, value)
                    row.pulled_at = utcnow()
                session.add(row)
            session.flush()
            return settle(session, sorted({pair_id for pair_id, _ in changes}))

    def argilla_votes(self) -> tuple[list[tuple[int, str, str]], int]:
        """Every submitted (pair id, annotator, choice), and how many pairs are flagged."""
        with self._read() as session:
            votes = session.exec(
                select(ArgillaResponse.pair_id, ArgillaResponse.annotator, ArgillaResponse.choice)
                .where(ArgillaResponse.status == "submitted")
                .where(col(ArgillaResponse.choice).is_not(None))
            ).all()
            flagged = session.exec(
                select(func.count()).where(col(ArgillaPair.flagged).is_(True))
            ).one()
        return [(p, a, c) for p, a, c in votes if c is not None], int(flagged)
