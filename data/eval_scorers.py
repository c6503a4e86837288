"""An example custom scorer for `tuneloop eval` (the demo domain's eval set has a "policy" field).

    tuneloop eval --set data/eval_demo.jsonl --scorer rubric,data/eval_scorers.py:right_policy

A scorer takes the set's rows and the replies (same order) and returns metric -> number,
higher is better.
"""

import re


def right_policy(rows: list[dict], replies: list[str]) -> dict[str, float]:
    """Share of replies citing the row's expected policy id, and of those citing another one."""
    pairs = zip(rows, replies, strict=True)
    rows_with = [(row["policy"], reply) for row, reply in pairs if row.get("policy")]
    if not rows_with:
        raise ValueError('no row has a "policy" field')
    right = wrong = 0
    for policy, reply in rows_with:
        cited = set(re.findall(r"\bPOL-\d+\b", reply))
        right += policy in cited
        wrong += bool(cited - {policy})
    n = len(rows_with)
    return {"right_policy": right / n, "no_wrong_policy": 1 - wrong / n}
