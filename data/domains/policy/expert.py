"""The bank-replies domain's simulated expert: a customer-care lead reading the reply.

The lead accepts a reply that greets the customer by their first name near its start
("Hi Maria,", "Dear Maria"), refers to the policy that applies (by its code in any form,
"[P2]", "P2", "policy 2") and to no other, and is signed by Harbor Bank, however the
sign-off is punctuated. It rejects a reply that mentions a second policy anywhere, even
outside brackets. Never the checker's code.
"""

from __future__ import annotations

import re

from bench.expert_reading import words

CODE = re.compile(r"\b(?:p|policy\s*)([1-6])\b", re.IGNORECASE)
ANSWERS = {
    "P1": ["We have blocked your card; a new one reaches you within 5 working days.",
           "Your card is blocked, and a new one is on its way within 5 working days."],
    "P2": ["We waive one late fee per calendar year, so this fee is removed.",
           "This is your first late fee this year, so we have waived it."],
    "P3": ["A payment can be disputed within 60 days, and we will look into this one.",
           "Since the payment is less than 60 days old, we can open a dispute."],
    "P4": ["You can update your address in the app under Profile; we never change it by email.",
           "Please change your address in the app, under Profile."],
    "P5": ["An arranged overdraft of up to €500 can be requested in the app.",
           "You can ask for an arranged overdraft of up to €500 in the app."],
    "P6": ["When your balance is zero, we close the account within 10 days.",
           "We close your account within 10 days once the balance is zero."],
}  # fmt: skip


def verdict(reply: str, item: dict) -> str:
    """'' when the reply is one the lead would send, else what is wrong, in words."""
    wrong = []
    if item["name"].lower() not in words(reply)[:4]:
        wrong.append(f"greet {item['name']} by name")
    cited = {f"P{n}" for n in CODE.findall(reply)}
    if cited != {item["policy"]}:
        wrong.append(f"the policy is {item['policy']}")
    lines = [x for x in reply.strip().splitlines() if x.strip()]
    if not lines or "harbor bank" not in lines[-1].lower():
        wrong.append("sign off as Harbor Bank")
    return "; ".join(wrong)


def corrections(item: dict) -> list[str]:
    """The reply the lead would have sent, in the house style, in several wordings."""
    name, policy = item["name"], item["policy"]
    out = []
    for answer in ANSWERS[policy]:
        out.append(f"Dear {name}, {answer} [{policy}]\n— Harbor Bank")
        out.append(f"Dear {name},\n{answer} [{policy}]\n— Harbor Bank")
        out.append(f"Dear {name}, [{policy}] {answer}\n— Harbor Bank")
    return out
