"""Writes the leisure-centre facts domain's item files from templates, with a fixed seed.

    .venv/bin/python data/domains/facts/make_items.py     # rewrites the *.jsonl files here

Short-answer questions about the facts in `system_prompt.md`: every item is a visitor's
question with its gold `answer` (the short form the system prompt asks for), the answer's
`kind` (time, price, quantity, yesno), the forms a checker accepts (`answers`) and
`reference` (the answer itself). Each question has eight wordings: the training pool uses
the first five, the eval and test sets all eight, and those sets use openers and closers
the pool never uses. Files: `prompts.jsonl` (training pool), `facts_eval.jsonl` (the gate's
eval set), `heldout.jsonl` (test set), `seed_sft.jsonl` (answered examples).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20261207
# (answer, kind, forms a checker accepts besides the answer, wordings).
QUESTIONS: list[tuple[str, str, list[str], list[str]]] = [
    (
        "06:30",
        "time",
        ["6:30", "6:30am", "6.30", "6.30am"],
        [
            "What time do you open on weekdays?",
            "When does the centre open on a Tuesday?",
            "How early can I come in on a weekday?",
            "What's the weekday opening time?",
            "When do the doors open Monday to Friday?",
            "From what time are you open on Wednesdays?",
            "What's the earliest I can get in on a Thursday?",
            "Opening time on weekdays, please?",
        ],
    ),
    (
        "22:00",
        "time",
        ["10pm", "10:00pm", "22.00"],
        [
            "When do you close on weekdays?",
            "What time does the centre shut on a Monday?",
            "How late are you open on weekdays?",
            "What's the weekday closing time?",
            "Until when can I stay on a Friday?",
            "When do the doors close Monday to Friday?",
            "What's the latest I can be there on a Wednesday?",
            "Closing time on weekdays?",
        ],
    ),
    (
        "08:00",
        "time",
        ["8:00", "8am", "8:00am", "8.00"],
        [
            "What time do you open on Saturdays?",
            "When does the centre open at the weekend?",
            "How early can I come in on a Sunday?",
            "What's the weekend opening time?",
            "From when are you open on Saturday morning?",
            "When do the doors open on Sundays?",
            "What's the earliest I can swim at the weekend?",
            "Opening time on Sunday, please?",
        ],
    ),
    (
        "20:00",
        "time",
        ["8pm", "8:00pm", "20.00"],
        [
            "When do you close on Sundays?",
            "What time does the centre shut at the weekend?",
            "How late are you open on Saturday?",
            "What's the weekend closing time?",
            "Until when can I stay on a Sunday?",
            "When do the doors close on Saturdays?",
            "What's the latest I can be there at the weekend?",
            "Closing time on Saturday?",
        ],
    ),
    (
        "€4.50",
        "price",
        ["4.50", "4.5", "4,50", "€4,50", "4.50 euros"],
        [
            "How much is a swim for an adult?",
            "What does an adult pay for a swim?",
            "What's the price of one adult swim?",
            "How much do grown-ups pay to swim?",
            "What's the adult swimming fee?",
            "How much is a single swim for me, an adult?",
            "What does one swim cost for adults?",
            "Adult swim price?",
        ],
    ),
    (
        "€2.50",
        "price",
        ["2.50", "2.5", "2,50", "€2,50", "2.50 euros"],
        [
            "How much is a swim for a child?",
            "What does my 10-year-old pay for a swim?",
            "What's the price of a swim for kids?",
            "How much do children pay to swim?",
            "What's the children's swimming fee?",
            "How much is a swim for my 12-year-old son?",
            "What does a swim cost for under-16s?",
            "Child swim price?",
        ],
    ),
    (
        "€39",
        "price",
        ["39", "€39.00", "39 euros"],
        [
            "How much is the monthly membership?",
            "What does a membership cost per month?",
            "What's the price of membership?",
            "How much do members pay each month?",
            "What's the monthly fee?",
            "How much is it to join, per month?",
            "What does a regular membership cost a month?",
            "Membership price?",
        ],
    ),
    (
        "€29",
        "price",
        ["29", "€29.00", "29 euros"],
        [
            "How much is membership for students?",
            "What do students pay per month?",
            "Is there a student price for membership? How much?",
            "What's the student monthly fee?",
            "How much does a student membership cost?",
            "I'm at university, what's my monthly fee?",
            "What does a student pay each month to be a member?",
            "Student membership price?",
        ],
    ),
    (
        "30 days",
        "quantity",
        ["30", "30 days' notice", "30 days notice"],
        [
            "How much notice do I need to give to cancel?",
            "How long before cancelling must I tell you?",
            "What's the notice period for cancelling a membership?",
            "How far ahead must I cancel?",
            "If I want to quit, how much notice do you need?",
            "What notice is needed to end my membership?",
            "How many days' notice to stop my membership?",
            "Cancellation notice period?",
        ],
    ),
    (
        "25 metres",
        "quantity",
        ["25", "25m", "25 m", "25 meters"],
        [
            "How long is the pool?",
            "What length is the swimming pool?",
            "How many metres is one length of the pool?",
            "What's the pool's length?",
            "Is the pool long? How many metres?",
            "How far is one length?",
            "What distance is a single length of the pool?",
            "Pool length?",
        ],
    ),
    (
        "6 lanes",
        "quantity",
        ["6", "six", "six lanes"],
        [
            "How many lanes does the pool have?",
            "How many swimming lanes are there?",
            "What's the number of lanes in the pool?",
            "How many lanes can people swim in?",
            "How many lanes are in your pool?",
            "Count of lanes in the pool?",
            "How many lanes does the swimming pool offer?",
            "Number of lanes?",
        ],
    ),
    (
        "€1",
        "price",
        ["1", "€1 coin", "a €1 coin", "1 euro"],
        [
            "What coin do the lockers take?",
            "How much do I need for a locker?",
            "What does a locker cost?",
            "Do I need a coin for the lockers? Which one?",
            "What's the locker deposit?",
            "How much money goes in the locker?",
            "What deposit does a locker need?",
            "Locker coin?",
        ],
    ),
    (
        "2 hours",
        "quantity",
        ["2", "two hours", "2h"],
        [
            "How long is parking free?",
            "For how many hours can I park for free?",
            "How long can I park without paying?",
            "What's the free parking time?",
            "How many free hours of parking do I get?",
            "Is parking free? For how long?",
            "How long before I have to pay for parking?",
            "Free parking time?",
        ],
    ),
    (
        "16:00",
        "time",
        ["4pm", "4:00pm", "16.00"],
        [
            "When does the sauna open?",
            "What time can I use the sauna from?",
            "From what time is the sauna open?",
            "What's the sauna's opening time?",
            "When can adults go in the sauna?",
            "What time does the sauna start?",
            "How early does the sauna open in the day?",
            "Sauna opening time?",
        ],
    ),
    (
        "€3",
        "price",
        ["3", "€3.00", "3 euros"],
        [
            "How much is it to hire a towel?",
            "What does towel hire cost?",
            "Can I rent a towel? How much?",
            "What's the price of a towel?",
            "How much do you charge for a towel?",
            "I forgot my towel, what does one cost?",
            "What's the fee for borrowing a towel?",
            "Towel hire price?",
        ],
    ),
    (
        "14 days",
        "quantity",
        ["14", "two weeks", "2 weeks", "fourteen days"],
        [
            "How long do you keep lost property?",
            "For how many days is lost property kept?",
            "I lost my goggles, how long will you hold them?",
            "How long is lost property stored?",
            "How many days before lost items are thrown out?",
            "How long do you hold on to lost things?",
            "How long does reception keep lost property?",
            "Lost property kept for how long?",
        ],
    ),
    (
        "8",
        "quantity",
        ["8 years", "8 years old", "eight", "under 8"],
        [
            "Until what age must a child swim with an adult?",
            "Below what age do kids need an adult in the pool?",
            "From what age can children swim alone?",
            "What age can kids swim without a grown-up?",
            "At what age may a child swim on their own?",
            "How old must my daughter be to swim without me?",
            "Under what age must children have an adult with them?",
            "Age to swim alone?",
        ],
    ),
    (
        "7 days",
        "quantity",
        ["7", "a week", "one week", "seven days"],
        [
            "How far ahead can I book a class?",
            "How many days in advance can classes be booked?",
            "How early can I book a class in the app?",
            "What's the booking window for classes?",
            "Can I book a class two weeks ahead? How far ahead can I?",
            "How long before a class can I reserve it?",
            "How many days ahead does the app let me book?",
            "Class booking window?",
        ],
    ),
    (
        "no",
        "yesno",
        ["no."],
        [
            "Can children use the sauna?",
            "Is my 12-year-old allowed in the sauna?",
            "Can kids go in the sauna?",
            "May teenagers use the sauna?",
            "Is the sauna open to children?",
            "Can I bring my son into the sauna?",
            "Are under-18s allowed in the sauna?",
            "Kids in the sauna?",
        ],
    ),
    (
        "yes",
        "yesno",
        ["yes."],
        [
            "Do I get my locker coin back?",
            "Is the locker coin returned?",
            "Will I get the locker money back?",
            "Do lockers give the coin back?",
            "Is the coin refunded when I unlock?",
            "Will the locker give me my coin back?",
            "Does the locker return my €1 when I open it?",
            "Locker coin returned?",
        ],
    ),
]
TRAIN_WORDINGS = 5
OPENERS = (["Hi!", "Hello,", "Quick question:", "Hey,", "Sorry to bother you,", ""],
           ["Good afternoon,", "Hiya,", "One question:"])  # fmt: skip
CLOSERS = (["Thanks.", "Thank you!", "Cheers.", ""], ["Much appreciated.", "Ta."])


def make_item(rng: random.Random, q: int, frames: int, used: set[str]) -> dict:
    """One new question (never one in `used`) about fact `q`, with its gold answer."""
    answer, kind, forms, wordings = QUESTIONS[q]
    choices = wordings if frames else wordings[:TRAIN_WORDINGS]
    for _ in range(200):
        parts = [rng.choice(OPENERS[frames]), rng.choice(choices), rng.choice(CLOSERS[frames])]
        message = " ".join(p for p in parts if p)
        if message not in used:
            used.add(message)
            return {"prompt": message, "answer": answer, "kind": kind,
                    "answers": [answer, *forms], "reference": answer}  # fmt: skip
    raise RuntimeError(f"no new wording left for question {q}")


def make_split(rng: random.Random, n: int, frames: int, used: set[str]) -> list[dict]:
    """`n` items, the questions in turn (every split covers them all), then shuffled."""
    items = [make_item(rng, i % len(QUESTIONS), frames, used) for i in range(n)]
    rng.shuffle(items)
    return items


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")  # fmt: skip


def main(dest: Path = HERE) -> None:
    """Write the four files into `dest` (this folder by default)."""
    rng = random.Random(SEED)
    used: set[str] = set()
    test = make_split(rng, 100, 1, used)
    gate = make_split(rng, 120, 1, used)
    pool = make_split(rng, 400, 0, used)
    seeds = make_split(rng, 20, 0, used)
    write_jsonl(dest / "heldout.jsonl", test)
    write_jsonl(dest / "facts_eval.jsonl", gate)
    write_jsonl(dest / "prompts.jsonl", pool)
    write_jsonl(
        dest / "seed_sft.jsonl",
        [
            {"messages": [{"role": "user", "content": s["prompt"]},
                          {"role": "assistant", "content": s["answer"]}]}
            for s in seeds
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
