"""The bank-replies domain's checker: house style, and the right policy cited.

    tuneloop eval --set data/domains/policy/policy_eval.jsonl \
        --scorer data/domains/policy/scorer.py:house_reply

A reply is right when it starts with "Dear <the gold first name>,", cites exactly one
policy in square brackets and it is the gold one ([P2]), and ends with the line
"— Harbor Bank". Policy codes outside square brackets are not citations here.
"""

from __future__ import annotations

import re

CITED = re.compile(r"\[(P\d)\]")
SIGNOFF = "— Harbor Bank"


def house_reply(rows: list[dict], replies: list[str]) -> dict[str, float]:
    """Shares of replies right in every respect (`correct`), citing exactly the gold policy
    (`policy_acc`), greeting the customer by name (`greeting`) and signing off (`signoff`)."""
    scored = [(r, reply) for r, reply in zip(rows, replies, strict=True) if r.get("policy")]
    if not scored:
        raise ValueError('no row has a gold "policy" field')
    tally = dict.fromkeys(("correct", "policy_acc", "greeting", "signoff"), 0)
    for row, reply in scored:
        text = reply.strip()
        ok = {
            "policy_acc": CITED.findall(text) == [row["policy"]],
            "greeting": text.startswith(f"Dear {row['name']},"),
            "signoff": text.endswith(SIGNOFF),
        }
        tally["correct"] += all(ok.values())
        for key, right in ok.items():
            tally[key] += right
    n = len(scored)
    return {k: v / n for k, v in tally.items()}
