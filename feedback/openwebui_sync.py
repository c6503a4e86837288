"""Bring Open WebUI's ratings into the store: from its admin API (`sync`) or a saved export
(`apply`), the same way.

The cursor is the store itself: each applied entry keeps Open WebUI's `updated_at`, so a sync
asks Open WebUI for its feedback ids (`/feedbacks/all/ids`, small), fetches only the entries
that are new or changed (one by one, or the whole export when many changed) and applies them
in short transactions of `BATCH`, each with its cursor rows. Stopped anywhere, the next sync
finishes the work; repeated, it adds nothing. Picks are made last, from every applied
rating, and each pick only once.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from feedback.errors import FeedbackError
from feedback.openwebui import RatedReply, parse_export, picks
from feedback.store import Store

log = logging.getLogger(__name__)

# Ratings per transaction: each batch commits whole (its cursor rows with it), and is short
# enough that an expert's click waits behind it no longer than a bulk import's batch.
BATCH = 200
# More changed entries than this: one export request instead of one request per entry.
WHOLE_EXPORT_OVER = 50
_IDS = "/api/v1/evaluations/feedbacks/all/ids"
_EXPORT = "/api/v1/evaluations/feedbacks/all/export"
_ONE = "/api/v1/evaluations/feedback/"


class OpenWebUIError(FeedbackError):
    """Open WebUI could not be reached or refused us; the message says what to do."""


@dataclass
class Report:
    """What one sync or import did."""

    entries: int = 0  # ratings looked at (new or changed since the last sync)
    rated: int = 0  # attached to a reply tuneloop served
    brought_in: int = 0  # replies tuneloop never served, brought in from the snapshot
    unchanged: int = 0
    skipped: int = 0
    picks: int = 0
    skipped_reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def apply(store: Store, ratings: Iterable[RatedReply], report: Report | None = None) -> Report:
    """Apply ratings (oldest change first), then make the picks they complete."""
    report = report or Report()
    pending = list(ratings)
    outcomes: list[tuple[RatedReply, str]] = []
    for start in range(0, len(pending), BATCH):
        batch = pending[start : start + BATCH]
        outcomes += zip(batch, store.apply_openwebui_ratings(ratings=batch), strict=True)
    for rated, outcome in outcomes:
        report.entries += 1
        if outcome == "rated":
            report.rated += 1
        elif outcome == "brought-in":
            report.brought_in += 1
        elif outcome == "unchanged":
            report.unchanged += 1
        else:
            report.skipped += 1
            why = outcome.removeprefix("skipped: ")
            report.skipped_reasons.append(f"{rated.feedback_id}: {why}")
    for pick in picks(store.openwebui_judged()):
        if store.apply_openwebui_pick(pick=pick):
            report.picks += 1
    return report


@dataclass(frozen=True)
class Target:
    """An Open WebUI and an admin's token for it (its API key or a session token)."""

    url: str
    token: str
    timeout: float = 60.0

    def get(self, path: str) -> Any:
        request = urllib.request.Request(
            self.url.rstrip("/") + path,
            headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            if err.code in (401, 403):
                raise OpenWebUIError(
                    f"Open WebUI at {self.url} refused the token ({err.code}): give an admin's "
                    "API key or token (TUNELOOP_OPENWEBUI_TOKEN or TUNELOOP_OPENWEBUI_TOKEN_FILE)"
                ) from None
            raise OpenWebUIError(
                f"Open WebUI at {self.url} answered {err.code} for {path}"
            ) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise OpenWebUIError(
                f"Open WebUI at {self.url} cannot be reached ({reason}); is it running, and is "
                "TUNELOOP_OPENWEBUI_URL right?"
            ) from None
        except json.JSONDecodeError:
            raise OpenWebUIError(
                f"Open WebUI at {self.url} did not answer JSON for {path}; is that Open WebUI's "
                "address?"
            ) from None


def sync(store: Store, target: Target) -> Report:
    """Pull new and changed ratings from Open WebUI and apply them (see the module)."""
    listed = target.get(_IDS)
    if not isinstance(listed, list):
        raise OpenWebUIError(f"Open WebUI at {target.url} listed its feedback in an unknown shape")
    applied = store.openwebui_applied()
    changed = {
        str(item["id"]): int(item.get("updated_at") or 0)
        for item in listed
        if isinstance(item, dict)
        and "id" in item
        and applied.get(str(item["id"])) != int(item.get("updated_at") or 0)
    }
    report = Report()
    if changed:
        if len(changed) > WHOLE_EXPORT_OVER:
            entries = [e for e in target.get(_EXPORT) if str(e.get("id")) in changed]
        else:
            entries = [target.get(_ONE + urllib.parse.quote(i, safe="")) for i in changed]
        ratings = parse_export(entries, f"Open WebUI at {target.url}")
        apply(store, ratings, report)
    else:
        apply(store, [], report)  # a pick a stopped sync did not make yet
    return report
