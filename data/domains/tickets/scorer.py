"""The ticket-triage domain's checker: is the reply's answer the gold answer?

    tuneloop eval --set data/domains/tickets/tickets_eval.jsonl \
        --scorer data/domains/tickets/scorer.py:triage

A reply answers with two fields, `category: <name>` and `order: <number or none>` (the
form `system_prompt.md` asks for). The checker reads the first of each field, in any case,
in either order, with or without a `#` before the number, and compares the values with the
row's gold `category` and `order`. Anything else in the reply is ignored: this grades the
answer, not the wording.
"""

from __future__ import annotations

import re

CATEGORY = re.compile(r"\bcategory\s*:\s*([a-z]+)", re.IGNORECASE)
ORDER = re.compile(r"\border\s*:\s*#?\s*(\d+|none)\b", re.IGNORECASE)


def parse(reply: str) -> tuple[str | None, str | None]:
    """The (category, order) a reply gives, lower-cased; None for a field it does not give."""
    category, order = CATEGORY.search(reply), ORDER.search(reply)
    return (
        category.group(1).lower() if category else None,
        order.group(1).lower() if order else None,
    )


def triage(rows: list[dict], replies: list[str]) -> dict[str, float]:
    """Shares of replies with both fields right (`correct`), the category right, the order
    right, and both fields present (`parseable`); higher is better for each."""
    scored = [(r, reply) for r, reply in zip(rows, replies, strict=True) if r.get("category")]
    if not scored:
        raise ValueError('no row has a gold "category" field')
    right = cat = order = parsed = 0
    for row, reply in scored:
        got_category, got_order = parse(reply)
        cat_ok = got_category == row["category"]
        order_ok = got_order == str(row.get("order", "none")).lower()
        right += cat_ok and order_ok
        cat += cat_ok
        order += order_ok
        parsed += got_category is not None and got_order is not None
    n = len(scored)
    return {"correct": right / n, "category_acc": cat / n, "order_acc": order / n,
            "parseable": parsed / n}  # fmt: skip
