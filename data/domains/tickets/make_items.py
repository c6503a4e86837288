"""Writes the ticket-triage demo domain's item files from templates, with a fixed seed.

    .venv/bin/python data/domains/tickets/make_items.py     # rewrites the *.jsonl files here

Every item is a customer message to an online shop with a gold answer: its `category` (one
of CATEGORIES) and its `order` (the 6-digit order number the message gives, or "none").
Messages are an opener, one or two issue sentences of the category and a closer; the order
number is written in several ways, and some messages carry small distractor numbers
(amounts, days). Files:

- `prompts.jsonl`: the training pool, answered by the served model and judged by the
  simulated expert in `bench/loop_quality.py` (a new slice each round);
- `tickets_eval.jsonl`: the eval set the promotion gate scores (`TUNELOOP_GATE_EVAL_SETS`);
- `heldout.jsonl`: the benchmark's test items, never seen by the expert, a round or the gate;
- `seed_sft.jsonl`: a few answered examples, trained on in every round.

The sets never share a message. `heldout.jsonl` and `tickets_eval.jsonl` use openers and
closers the training pool never uses, and two issue sentences per category that it never
uses either (about a fifth of their items), so a model has to read the issue and find the
number rather than recognise a message it has seen.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20261202
CATEGORIES = ("billing", "shipping", "returns", "damaged", "account")

# Issue sentences per category; {ref} is where the order reference goes.
ISSUES: dict[str, list[str]] = {
    "billing": [
        "I was charged twice for {ref}.",
        "My card was billed {amount} euros more than the total of {ref}.",
        "The invoice for {ref} shows the wrong VAT number.",
        "I paid for {ref} but the payment still shows as pending after {days} days.",
        "You charged me for express delivery on {ref} and I chose standard.",
        "The discount code was not applied to {ref}, I paid full price.",
        "There is a charge on my bank statement for {ref} that I don't recognise.",
        "I need a corrected invoice for {ref} with my company name on it.",
        "The refund for {ref} was {amount} euros short.",
        "My card was charged but {ref} says payment failed.",
    ],
    "shipping": [
        "{ref} still hasn't arrived and it's been {days} days.",
        "The tracking for {ref} hasn't moved since Monday.",
        "Where is {ref}? It was supposed to arrive yesterday.",
        "The courier says {ref} was delivered but there's nothing at my door.",
        "Can you change the delivery address for {ref} before it ships?",
        "{ref} was sent to my old address.",
        "I've been waiting {days} days for {ref}, can you check on it?",
        "The delivery slot for {ref} was missed and nobody called.",
        "Tracking says {ref} is stuck at the depot.",
        "Could you tell me when {ref} will be dispatched?",
    ],
    "returns": [
        "I'd like to return {ref}, the shoes are a size too small.",
        "How do I send back {ref}? I changed my mind.",
        "Can I exchange {ref} for a different colour?",
        "I returned {ref} {days} days ago and haven't heard anything.",
        "I need a return label for {ref}.",
        "The jacket in {ref} doesn't fit, can I swap it for a larger one?",
        "Is it too late to return {ref}? I bought it {days} days ago.",
        "I want to send {ref} back for a refund, it's not what I expected.",
        "Please arrange a pickup to return {ref}.",
        "Can I return just one of the {amount} items in {ref}?",
    ],
    "damaged": [
        "{ref} arrived with the screen cracked.",
        "The box for {ref} was crushed and the mug inside is broken.",
        "The blender from {ref} stopped working after {days} days.",
        "{ref} came with a torn seam on the sleeve.",
        "The lamp in {ref} arrived in pieces.",
        "One of the glasses in {ref} was shattered when I opened it.",
        "The kettle from {ref} leaks from the bottom.",
        "{ref} arrived scratched all over the front.",
        "The headphones in {ref} only play on one side.",
        "The chair from {ref} is missing a leg and one is bent.",
    ],
    "account": [
        "I can't log in, the password reset email never comes.",
        "Please change the email address on my account.",
        "My account got locked after I typed the wrong password {amount} times.",
        "How do I delete my account and my data?",
        "I want to stop getting your newsletter.",
        "Someone else seems to have logged into my account.",
        "I can't update the phone number in my profile.",
        "Please merge my two accounts, I signed up twice by mistake.",
        "The site keeps logging me out every few minutes.",
        "I never received the verification code for my new account.",
    ],
}
# What a message calls its order: with the number, or without one.
REFS_WITH = ["order {n}", "order #{n}", "order number {n}", "my order {n}", "order no. {n}",
             "my order (#{n})", "order ref {n}"]  # fmt: skip
REFS_WITHOUT = ["my order", "my last order", "the order", "my parcel"]
# Openers and closers: the training pool uses the first set, the eval and test sets the second.
OPENERS = (
    ["Hi,", "Hello,", "Hi there,", "Good morning,", "Hey,", "Hello team,", "Dear support,",
     "Hi, quick question.", "Hello, I hope you can help.", ""],
    ["Good afternoon,", "Hiya,", "To whom it may concern,", "Hello support team,",
     "Evening,", "Hi folks,"],
)  # fmt: skip
CLOSERS = (
    ["Thanks.", "Thank you!", "Please help.", "Thanks in advance.", "Regards, Sam",
     "Cheers, Alex", "Best, Jordan", "Kind regards, Priya", "", "Thanks, Maria"],
    ["Many thanks, Chris", "Appreciate it.", "Waiting for your reply.", "Best wishes, Noor",
     "Thanks so much, Ken", "Sincerely, Ola"],
)  # fmt: skip
TRAIN_ISSUES = 8  # the training pool uses the first 8 issue sentences; eval and test all 10
ACCOUNT_WITH_ORDER = 0.2  # share of account messages that also mention an order
ORDER_SHARE = 0.8  # share of other messages that give the order number


def answer(category: str, order: str) -> str:
    """The answer in the form the system prompt asks for."""
    return f"category: {category}\norder: {order}"


def make_item(rng: random.Random, category: str, frames: int, used: set[str]) -> dict:
    """One new message (never one in `used`) of `category`, with its gold fields."""
    issues = ISSUES[category] if frames else ISSUES[category][:TRAIN_ISSUES]
    while True:
        issue = rng.choice(issues)
        share = ACCOUNT_WITH_ORDER if category == "account" else ORDER_SHARE
        order = "none"
        if "{ref}" in issue or rng.random() < share:
            if rng.random() < share:
                order = str(rng.randint(100000, 999999))
                ref = rng.choice(REFS_WITH).format(n=order)
            else:
                ref = rng.choice(REFS_WITHOUT)
        else:
            ref = ""
        text = issue.format(ref=ref, amount=rng.randint(2, 60), days=rng.randint(2, 20))
        if "{ref}" not in issue and order != "none":
            text += f" It's about {ref}."
        text = text[0].upper() + text[1:]
        parts = [rng.choice(OPENERS[frames]), text, rng.choice(CLOSERS[frames])]
        message = " ".join(p for p in parts if p)
        if message not in used:
            used.add(message)
            return {"prompt": message, "category": category, "order": order}


def make_split(rng: random.Random, n: int, frames: int, used: set[str]) -> list[dict]:
    """`n` items, the categories in turn (so every split is balanced), then shuffled."""
    items = [make_item(rng, CATEGORIES[i % len(CATEGORIES)], frames, used) for i in range(n)]
    rng.shuffle(items)
    return items


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def main(dest: Path = HERE) -> None:
    """Write the four files into `dest` (this folder by default)."""
    rng = random.Random(SEED)
    used: set[str] = set()
    test = make_split(rng, 80, 1, used)
    gate = make_split(rng, 40, 1, used)
    pool = make_split(rng, 600, 0, used)
    seeds = make_split(rng, 10, 0, used)
    # 80 more gate items, drawn last so that every other file stays as it was: with 40 the
    # gate could not tell a 95% serving version from a 100% candidate
    gate += make_split(rng, 80, 1, used)
    write_jsonl(dest / "heldout.jsonl", test)
    write_jsonl(dest / "tickets_eval.jsonl", gate)
    write_jsonl(dest / "prompts.jsonl", pool)
    write_jsonl(
        dest / "seed_sft.jsonl",
        [
            {"messages": [{"role": "user", "content": s["prompt"]},
                          {"role": "assistant", "content": answer(s["category"], s["order"])}]}
            for s in seeds
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
