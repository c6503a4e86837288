"""Majority verdicts and inter-annotator agreement over Argilla's A / B / tie choices.

Pure functions on `(item, annotator, choice)` votes, so the numbers can be checked by hand:
- a record's verdict is the choice with the most votes; equal top counts are a "split";
- its agreement is the share of votes that went to the top choice;
- percent agreement is pairwise: of all pairs of annotators who voted on the same record,
  the share that chose the same;
- Krippendorff's alpha (nominal, the `krippendorff` package) corrects that for chance;
  per annotator it is computed on two rows, that annotator and the majority of the others.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from itertools import combinations
from typing import Any

CODES = {"A": 0, "B": 1, "tie": 2}


def verdict(choices: Sequence[str]) -> tuple[str, float]:
    """(decision, agreement) of one record: "A", "B", "tie" or "split" (no single winner)."""
    counts = Counter(choices).most_common()
    if not counts:
        raise ValueError("a verdict needs at least one vote")
    top, n = counts[0]
    if len(counts) > 1 and counts[1][1] == n:
        return "split", n / len(choices)
    return top, n / len(choices)


def _by_item(votes: Iterable[tuple[Any, str, str]]) -> dict[Any, dict[str, str]]:
    items: dict[Any, dict[str, str]] = defaultdict(dict)
    for item, annotator, choice in votes:
        items[item][annotator] = choice
    return items


def _pairwise(items: dict[Any, dict[str, str]], who: str | None = None) -> tuple[int, int]:
    """(agreeing pairs, pairs) over records with 2+ votes; only pairs with `who` if given."""
    agree = total = 0
    for votes in items.values():
        for (a, ca), (b, cb) in combinations(sorted(votes.items()), 2):
            if who is None or who in (a, b):
                total += 1
                agree += ca == cb
    return agree, total


def alpha(rows: list[list[float]]) -> float | None:
    """Nominal Krippendorff's alpha of a coders x units matrix (NaN = no vote), or None.

    None when it is undefined: fewer than two coded values in any unit, or one value only.
    """
    import numpy as np

    data = np.array(rows, dtype=float)
    pairable = (~np.isnan(data)).sum(axis=0) >= 2
    if data.shape[0] < 2 or not pairable.any():
        return None
    values = data[:, pairable]
    if len(set(values[~np.isnan(values)].tolist())) < 2:
        return None
    import krippendorff

    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))


def agreement_report(votes: Iterable[tuple[Any, str, str]]) -> dict[str, Any]:
    """Percent agreement and alpha for the whole set and for each annotator."""
    items = _by_item(votes)
    annotators = sorted({a for v in items.values() for a in v})
    units = sorted(items, key=str)
    nan = float("nan")
    matrix = [[CODES[items[u][a]] if a in items[u] else nan for u in units] for a in annotators]
    agree, total = _pairwise(items)
    per: dict[str, Any] = {}
    for annotator in annotators:
        a_agree, a_total = _pairwise(items, annotator)
        mine, others = [], []
        for u in units:
            rest = [c for who, c in items[u].items() if who != annotator]
            if annotator in items[u] and rest:
                decision, _ = verdict(rest)
                mine.append(float(CODES[items[u][annotator]]))
                others.append(float(CODES[decision]) if decision in CODES else nan)
        per[annotator] = {
            "votes": sum(1 for u in units if annotator in items[u]),
            "percent_agreement": _ratio(a_agree, a_total),
            "alpha": alpha([mine, others]) if mine else None,
        }
    return {
        "records": len(units),
        "votes": sum(len(v) for v in items.values()),
        "annotators": len(annotators),
        "percent_agreement": _ratio(agree, total),
        "alpha": alpha(matrix),
        "per_annotator": per,
    }


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None
