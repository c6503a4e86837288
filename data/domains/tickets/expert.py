"""The ticket-triage domain's simulated expert: a support lead reading the reply.

The lead accepts a reply that names the right category and order number in any form ("This
is a shipping ticket about order 416183.", "order: no" for none) and rejects one that names
a wrong or a second category or order. What a `category:` or `order:` field says counts,
whatever the value: "order: 12" is a wrong order, "category: refund" a wrong category.
"""

from __future__ import annotations

import re

CATEGORIES = ("billing", "shipping", "returns", "damaged", "account")
CATEGORY_FIELD = re.compile(r"\bcategory\s*:\s*([^\s,.;]+)", re.IGNORECASE)
ORDER_FIELD = re.compile(r"\border\s*[:#]\s*#?\s*([^\s,.;]+)", re.IGNORECASE)
NO_ORDER = {"none", "no", "n/a", "-"}
# The gold answer as the lead writes it: the two fields, in varied wording.
FORMS = (
    "category: {c}\norder: {o}",
    "Category: {c}\nOrder: {o}",
    "category: {c}\norder: {h}{o}",
    "order: {o}\ncategory: {c}",
    "category: {c}\norder: {o}\nRouted to the {c} team.",
    "Category: {c}\nOrder: {h}{o}",
)


def reads(reply: str) -> tuple[set[str], set[str]]:
    """The categories and order numbers a reply names: the categories it mentions and the
    6-digit numbers in it, plus the values of its `category:` and `order:` fields."""
    lowered = reply.lower()
    cats = {c for c in CATEGORIES if re.search(rf"\b{c}\b", lowered)}
    cats |= {value.lower() for value in CATEGORY_FIELD.findall(reply)}
    orders = set(re.findall(r"(?<!\d)\d{6}(?!\d)", reply))
    orders |= {v.lower() for v in ORDER_FIELD.findall(reply) if v.lower() not in NO_ORDER}
    return cats, orders


def verdict(reply: str, item: dict) -> str:
    """'' when the reply gives the gold answer (however worded), else what is wrong."""
    cats, orders = reads(reply)
    wrong = []
    if cats != {item["category"]}:
        wrong.append(f"it is a {item['category']} ticket")
    gold = set() if item["order"] == "none" else {item["order"]}
    if orders != gold:
        wrong.append(f"the order is {item['order']}")
    return "; ".join(wrong)


def corrections(item: dict) -> list[str]:
    """The gold answer in the lead's several wordings."""
    order = item["order"]
    hash_ = "" if order == "none" else "#"
    return [f.format(c=item["category"], o=order, h=hash_) for f in FORMS]
