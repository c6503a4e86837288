"""Writes the bank-replies domain's item files from templates, with a fixed seed.

    .venv/bin/python data/domains/policy/make_items.py     # rewrites the *.jsonl files here

House-style replies that must cite the right policy: every item is a customer's message
with the gold `policy` (P1..P6, the one of `system_prompt.md` that applies) and `name` (the
first name the customer signs with), and `reference`, a reply in the house style. A message
is an opener, an issue sentence of its policy and a sign-off with the name. Files:
`prompts.jsonl` (training pool), `policy_eval.jsonl` (the gate's eval set), `heldout.jsonl`
(test set), `seed_sft.jsonl` (answered examples). No message is in two files; the eval and
test sets use openers, sign-offs, names and two issue sentences per policy that the pool
never uses.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20261208
POLICIES = ("P1", "P2", "P3", "P4", "P5", "P6")
ISSUES: dict[str, list[str]] = {
    "P1": [
        "I lost my debit card on the train yesterday.",
        "My wallet was stolen with my card in it.",
        "I can't find my card anywhere, I think I dropped it.",
        "Someone took my bag and my bank card.",
        "My card is gone, what do I do?",
        "I left my card in a taxi last night.",
        "I think my credit card was stolen at the market.",
        "My card went missing on holiday.",
        "My card fell out of my pocket somewhere in town.",
        "A pickpocket got my card this morning.",
    ],
    "P2": [
        "I was charged a late fee, I paid one day late by mistake.",
        "Can you remove the late payment fee from my statement?",
        "I got a late fee this month, it's the first time ever.",
        "Please waive the late charge, my salary came in late.",
        "Why was I charged for paying late? Can it be dropped?",
        "There's a late fee on my account I'd like refunded.",
        "I missed the due date by two days and got a fee.",
        "Could you cancel the late fee on my card bill?",
        "A late-payment charge appeared, can you take it off?",
        "I paid a bit late and now there's a penalty fee.",
    ],
    "P3": [
        "There's a payment on my account I don't recognise.",
        "I want to dispute a charge from an online shop.",
        "A shop charged me twice and won't refund me.",
        "I never received the goods but the payment went through.",
        "How do I challenge a payment I didn't make?",
        "A subscription took money after I cancelled it.",
        "I'd like to contest a card payment from last week.",
        "There's a strange payment to a company I've never heard of.",
        "A hotel charged my card for a night I didn't stay.",
        "I was billed for a flight that was cancelled.",
    ],
    "P4": [
        "I've moved house, please update my address.",
        "Can you change my address to my new flat?",
        "I'm sending my new address by email, please update it.",
        "My postal address is out of date.",
        "How do I change the address on my account?",
        "Please put my new address on file, I moved last month.",
        "Can I give you my new address here?",
        "Statements still go to my old address.",
        "We relocated, how do I update where my letters go?",
        "My address changed after the move, can you fix it?",
    ],
    "P5": [
        "Can I get an overdraft on my current account?",
        "I'd like some overdraft, how much can I have?",
        "Is it possible to go below zero on my account?",
        "I need an overdraft for a few weeks.",
        "How do I apply for an overdraft?",
        "Can you give me a small overdraft?",
        "I want a safety net of a few hundred euros on my account.",
        "What's the overdraft limit I can ask for?",
        "Could my account have an arranged overdraft?",
        "I'd like to be able to spend a little more than my balance.",
    ],
    "P6": [
        "I want to close my account.",
        "Please shut down my savings account.",
        "How do I close my account with you?",
        "I'm moving banks, can you close my account?",
        "I'd like to end my account, what do I need to do?",
        "Can you cancel my current account?",
        "I no longer need my account, please close it.",
        "How long does it take to close an account?",
        "I'm leaving the country and want my account closed.",
        "Please terminate my joint account.",
    ],
}
TRAIN_ISSUES = 8
# The policy's answer in two wordings each; a reply is "Dear NAME, ANSWER [Pn]\n— Harbor Bank".
ANSWERS: dict[str, list[str]] = {
    "P1": [
        "We have blocked your card and a new one will reach you within 5 working days.",
        "Your card is blocked now, and we are sending a new card within 5 working days.",
    ],
    "P2": [
        "We can waive one late fee per calendar year, so this one is removed.",
        "As this is your first late fee this year, we have waived it.",
    ],
    "P3": [
        "You can dispute the payment within 60 days of it, and we will look into it.",
        "We can open a dispute as long as the payment is less than 60 days old.",
    ],
    "P4": [
        "Please update your address in the app under Profile; we never change it by email.",
        "You can change your address yourself in the app under Profile.",
    ],
    "P5": [
        "You can request an arranged overdraft of up to €500 in the app.",
        "An arranged overdraft of up to €500 can be requested in the app.",
    ],
    "P6": [
        "Once your balance is zero, we close your account within 10 days.",
        "We will close the account within 10 days, as soon as the balance is zero.",
    ],
}
NAMES = (["Maria", "Tom", "Priya", "Jonas", "Aisha", "Lena", "Omar", "Sofia", "Ben", "Yuki",
          "Carlos", "Ines"], ["Nadia", "Pavel", "Grace", "Tariq"])  # fmt: skip
OPENERS = (["Hi,", "Hello,", "Good morning,", "Hello there,", ""], ["Dear Harbor Bank,", "Hiya,"])
SIGNOFFS = (["Thanks, {n}", "Regards, {n}", "{n}", "Best, {n}", "Cheers, {n}"],
            ["Many thanks, {n}", "Kind regards, {n}"])  # fmt: skip


def reply(name: str, policy: str, wording: int = 0) -> str:
    """A reply in the house style."""
    return f"Dear {name}, {ANSWERS[policy][wording]} [{policy}]\n— Harbor Bank"


def make_item(rng: random.Random, policy: str, frames: int, used: set[str]) -> dict:
    """One new message (never one in `used`) about `policy`, with its gold fields."""
    issues = ISSUES[policy] if frames else ISSUES[policy][:TRAIN_ISSUES]
    names = NAMES[0] + (NAMES[1] if frames else [])
    while True:
        name = rng.choice(names)
        parts = [rng.choice(OPENERS[frames]), rng.choice(issues),
                 rng.choice(SIGNOFFS[frames]).format(n=name)]  # fmt: skip
        message = " ".join(p for p in parts if p)
        if message not in used:
            used.add(message)
            return {"prompt": message, "policy": policy, "name": name,
                    "reference": reply(name, policy)}  # fmt: skip


def make_split(rng: random.Random, n: int, frames: int, used: set[str]) -> list[dict]:
    """`n` items, the policies in turn (so every split is balanced), then shuffled."""
    items = [make_item(rng, POLICIES[i % len(POLICIES)], frames, used) for i in range(n)]
    rng.shuffle(items)
    return items


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")  # fmt: skip


def main(dest: Path = HERE) -> None:
    """Write the four files into `dest` (this folder by default)."""
    rng = random.Random(SEED)
    used: set[str] = set()
    test = make_split(rng, 102, 1, used)
    gate = make_split(rng, 120, 1, used)
    pool = make_split(rng, 480, 0, used)
    seeds = make_split(rng, 12, 0, used)
    write_jsonl(dest / "heldout.jsonl", test)
    write_jsonl(dest / "policy_eval.jsonl", gate)
    write_jsonl(dest / "prompts.jsonl", pool)
    write_jsonl(
        dest / "seed_sft.jsonl",
        [
            {"messages": [{"role": "user", "content": s["prompt"]},
                          {"role": "assistant", "content": reply(s["name"], s["policy"], i % 2)}]}
            for i, s in enumerate(seeds)
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
