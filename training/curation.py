"""Curation before training: duplicate removal for the round's rows.

Duplicates: exact (same normalised text) and near (MinHash over character 5-grams with
`datasketch`'s LSH index, Jaccard >= threshold); the oldest row is kept. Train rows whose
prompt nearly duplicates a held-out prompt are dropped too, so the held-out split measures
prompts training has not seen in any spelling.

PII scrubbing is `feedback.pii`: one policy for training rows, Argilla records and exports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

Row = dict[str, Any]


@dataclass
class CurationReport:
    """What curation removed or changed, for the round's snapshot."""

    exact_duplicates: int = 0
    near_duplicates: int = 0
    near_heldout: int = 0
    pii: dict[str, int] = field(default_factory=dict)  # kind -> replaced (`feedback.pii`)


# -- duplicates -----------------------------------------------------------------------------
def _normalise(text: str) -> str:
    """Lower case, punctuation as spaces, whitespace collapsed: "Hi, Dana!" == "hi dana"."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def row_text(row: Row) -> str:
    """The row's turns as one normalised string (roles included, system message left out),
    for duplicate checks."""
    parts: list[str] = []
    for key in ("messages", "prompt", "chosen", "rejected", "completion"):
        parts.extend(
            f"{key}:{m.get('role')}:{m.get('content', '')}"
            for m in row.get(key, [])
            if m.get("role") != "system"  # shared by every row: it would make all rows alike
        )
    if "label" in row:  # a 👍 and a 👎 of the same reply are not duplicates of each other
        parts.append(f"label:{row['label']}")
    return _normalise("\n".join(parts))


def prompt_text(row: Row) -> str:
    """The row's prompt turns (no system message, no final reply), normalised."""
    messages = row.get("prompt") or row.get("messages", [])[:-1]
    return _normalise(
        "\n".join(
            f"{m.get('role')}:{m.get('content', '')}" for m in messages if m.get("role") != "system"
        )
    )


def _minhash(text: str, num_perm: int) -> Any:
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=1)
    shingles = {text[i : i + 5] for i in range(max(1, len(text) - 4))}
    m.update_batch([s.encode("utf-8") for s in shingles])
    return m


def dedup(
    rows: list[Row],
    *,
    threshold: float = 0.85,
    num_perm: int = 128,
    report: CurationReport | None = None,
    near: bool = True,
) -> list[Row]:
    """`rows` without exact or (if `near`) near duplicates (MinHash LSH, Jaccard >=
    threshold), first occurrence kept, in order."""
    from datasketch import MinHashLSH

    report = report or CurationReport()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    seen: set[str] = set()
    kept: list[Row] = []
    for i, row in enumerate(rows):
        text = row_text(row)
        if text in seen:
            report.exact_duplicates += 1
            continue
        seen.add(text)
        if not near:
            kept.append(row)
            continue
        mh = _minhash(text, num_perm)
        if lsh.query(mh):
            report.near_duplicates += 1
            continue
        lsh.insert(str(i), mh)
        kept.append(row)
    return kept


def drop_near_heldout(
    train: list[Row],
    heldout: list[Row],
    *,
    threshold: float = 0.85,
    num_perm: int = 128,
    report: CurationReport | None = None,
) -> list[Row]:
    """Train rows whose prompt is not (nearly) a held-out prompt."""
    from datasketch import MinHashLSH

    report = report or CurationReport()
    if not heldout:
        return list(train)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    held_texts = set()
    for i, row in enumerate(heldout):
        text = prompt_text(row)
        held_texts.add(text)
        lsh.insert(str(i), _minhash(text, num_perm))
    kept = []
    for row in train:
        text = prompt_text(row)
        if text in held_texts or lsh.query(_minhash(text, num_perm)):
            report.near_heldout += 1
            continue
        kept.append(row)
    return kept
