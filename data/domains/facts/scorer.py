"""The leisure-centre facts domain's checker: is the reply's answer the gold short answer?

    tuneloop eval --set data/domains/facts/facts_eval.jsonl \
        --scorer data/domains/facts/scorer.py:short_answer

The system prompt asks for the answer only. The checker takes the reply's first non-empty
line, folds case, spaces and a final full stop, and compares it with the row's accepted
forms (`answers`, folded the same way): a normalised exact match, as suits short answers.
A sentence around the right value fails.
"""

from __future__ import annotations


def fold(text: str) -> str:
    """Lower case, single spaces, no final full stop."""
    return " ".join(text.lower().split()).rstrip(".").strip()


def first_line(reply: str) -> str:
    return next((line for line in reply.splitlines() if line.strip()), "")


def short_answer(rows: list[dict], replies: list[str]) -> dict[str, float]:
    """Share of replies whose first line is an accepted form of the answer (`correct`), and
    of replies that are one line (`one_line`); higher is better for each."""
    scored = [(r, reply) for r, reply in zip(rows, replies, strict=True) if r.get("answers")]
    if not scored:
        raise ValueError('no row has a gold "answers" field')
    right = one = 0
    for row, reply in scored:
        right += fold(first_line(reply)) in {fold(a) for a in row["answers"]}
        one += len([x for x in reply.splitlines() if x.strip()]) == 1
    n = len(scored)
    return {"correct": right / n, "one_line": one / n}
