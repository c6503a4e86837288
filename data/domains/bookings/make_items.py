"""Writes the table-bookings domain's item files from templates, with a fixed seed.

    .venv/bin/python data/domains/bookings/make_items.py     # rewrites the *.jsonl files here

Every item is a guest's message asking for a table, with the gold booking: `name`, `guests`
(2 to 8), `day` (a weekday) and `time` (HH:MM, 24-hour), and `reference`, the answer as the
system prompt asks for it (one JSON object). The party size and the time are written in
several ways ("four people", "a party of 6"; "7.30pm", "19:30"), and some messages carry a
distractor number (a birthday, a child's age). Files: `prompts.jsonl` (the training pool),
`bookings_eval.jsonl` (the gate's eval set), `heldout.jsonl` (the test set),
`seed_sft.jsonl` (answered examples). No message is in two files; the eval and test sets use
openers, closers, names and two sentence frames the training pool never uses.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20261206
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}
# Names: the training pool draws from the first list, the eval and test sets from both.
NAMES = (
    ["Olsen", "Garcia", "Novak", "Brennan", "Haddad", "Kowalski", "Moreau", "Tanaka", "Silva",
     "Fischer", "Okafor", "Lindqvist", "Rossi", "Nguyen", "Baker"],
    ["Duarte", "Sato", "Albers", "Mensah", "Quinn", "Varga"],
)  # fmt: skip
# Sentence frames; the last two are used only by the eval and test sets.
FRAMES = [
    "Could I book a table for {party} on {day} at {time}? The name is {name}.",
    "{name} here, we'd like to come on {day} at {time}, {party}.",
    "Table for {party}, {day} {time}, under {name} please.",
    "Reservation please: {day}, {time}, {party}. Name: {name}.",
    "Can you fit {party} in on {day} around {time}? It's {name}.",
    "Booking for {name}: {party} on {day}, {time}.",
    "We are {party} and would love a table on {day} at {time}. Surname {name}.",
    "My name is {name} and I'd like a table on {day} at {time} for {party}.",
    "{day} at {time} for {party}, is that possible? Booking name {name}.",
    "Please reserve {day}, {time}, {party}; the booking is under {name}.",
]
TRAIN_FRAMES = 8
PARTIES = ["{n} people", "{w} people", "{n} guests", "{w} guests", "a party of {n}",
           "a group of {w}"]  # fmt: skip
DISTRACTORS = ["It's for my mum's {k}0th birthday.", "One of us is {a} years old.",
               "We may be {m} minutes late.", "Could we sit by the window?"]  # fmt: skip
OPENERS = (["Hi,", "Hello,", "Good morning,", "Hey,", ""],
           ["Good evening,", "Hiya,", "Dear Olive Tree,"])  # fmt: skip
CLOSERS = (["Thanks!", "Thank you.", "Cheers.", ""], ["Many thanks.", "Looking forward to it."])


def time_phrase(rng: random.Random, hour: int, minute: int) -> str:
    """The time as a guest might write it."""
    h12 = hour - 12 if hour > 12 else hour
    forms = [f"{hour}:{minute:02d}", f"{h12}.{minute:02d}pm", f"{h12}:{minute:02d} pm"]
    if minute == 0:
        forms += [f"{h12}pm", f"{h12} pm"]
    return rng.choice(forms)


def reference(item: dict) -> str:
    keys = ("name", "guests", "day", "time")
    return json.dumps({k: item[k] for k in keys})


def make_item(rng: random.Random, frames: int, used: set[str]) -> dict:
    """One new message (never one in `used`) with its gold booking."""
    names = NAMES[0] + (NAMES[1] if frames else [])
    templates = FRAMES if frames else FRAMES[:TRAIN_FRAMES]
    while True:
        n = rng.randint(2, 8)
        hour, minute = rng.choice(range(12, 23)), rng.choice((0, 0, 15, 30, 30, 45))
        item = {"name": rng.choice(names), "guests": n, "day": rng.choice(DAYS),
                "time": f"{hour:02d}:{minute:02d}"}  # fmt: skip
        party = rng.choice(PARTIES).format(n=n, w=WORDS[n])
        text = rng.choice(templates).format(
            party=party, day=item["day"], time=time_phrase(rng, hour, minute), name=item["name"]
        )
        text = text[0].upper() + text[1:]
        extra = ""
        if rng.random() < 0.3:
            extra = rng.choice(DISTRACTORS).format(k=rng.randint(4, 9), a=rng.randint(9, 90),
                                                   m=rng.choice((10, 15, 20)))  # fmt: skip
        parts = [rng.choice(OPENERS[frames]), text, extra, rng.choice(CLOSERS[frames])]
        message = " ".join(p for p in parts if p)
        if message not in used:
            used.add(message)
            return {"prompt": message, **item, "reference": reference(item)}


def make_split(rng: random.Random, n: int, frames: int, used: set[str]) -> list[dict]:
    return [make_item(rng, frames, used) for _ in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def main(dest: Path = HERE) -> None:
    """Write the four files into `dest` (this folder by default)."""
    rng = random.Random(SEED)
    used: set[str] = set()
    test = make_split(rng, 100, 1, used)
    gate = make_split(rng, 120, 1, used)
    pool = make_split(rng, 480, 0, used)
    seeds = make_split(rng, 12, 0, used)
    write_jsonl(dest / "heldout.jsonl", test)
    write_jsonl(dest / "bookings_eval.jsonl", gate)
    write_jsonl(dest / "prompts.jsonl", pool)
    write_jsonl(
        dest / "seed_sft.jsonl",
        [
            {"messages": [{"role": "user", "content": s["prompt"]},
                          {"role": "assistant", "content": s["reference"]}]}
            for s in seeds
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
