"""Writes the clinic-appointments domain's item files from templates, with a fixed seed.

    .venv/bin/python data/domains/appointments/make_items.py   # rewrites the *.jsonl files here

A multi-turn task whose last turn depends on the earlier ones: a patient states their
appointment (doctor, weekday, time), the assistant confirms it in the three-line form, and
the patient then changes one or two things in one or two more turns ("same time", "keep
the day"). The answer is the appointment as it stands after the last turn, so the doctor,
day or time usually comes from an earlier turn. Every item is `{"messages": [...]}` ending
with a user turn, with the gold `doctor`, `day` and `time` and `reference` (the answer).
Files: `prompts.jsonl` (training pool), `appointments_eval.jsonl` (the gate's eval set),
`heldout.jsonl` (test set), `seed_sft.jsonl` (answered examples). No conversation is in two
files; the eval and test sets use change sentences and openers the pool never uses.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20261209
DOCTORS = ("Lee", "Patel", "Novak", "Okafor", "Berg", "Costa", "Haddad", "Kim")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
STARTS = [
    "Hi, I have an appointment with Dr. {doctor} on {day} at {time}.",
    "I'm booked in with Dr. {doctor}, {day} at {time}.",
    "My appointment is on {day} at {time} with Dr. {doctor}.",
    "Hello, I'm seeing Dr. {doctor} on {day}, {time}.",
    "Good morning, I've got Dr. {doctor} at {time} on {day}.",
    "I have a booking on {day} at {time}, it's with Dr. {doctor}.",
]
# Change sentences by what they change; the last of each list only in the eval and test sets.
CHANGES: dict[str, list[str]] = {
    "day": ["Can we move it to {day}? Same time.", "Could I come on {day} instead, same time?",
            "Please make it {day}, keep the time.", "Is {day} possible at the same time?"],
    "time": ["Could I come at {time} instead, same day?", "Can we make it {time}? Same day.",
             "Please change the time to {time}.", "Would {time} on the same day work instead?"],
    "doctor": ["Can I see Dr. {doctor} instead? Keep the day and time.",
               "I'd rather see Dr. {doctor}, same slot.",
               "Please switch me to Dr. {doctor}, same day and time.",
               "Could Dr. {doctor} see me instead, at the same time?"],
    "day+time": ["Please make it {day} at {time}.", "Can we move it to {day}, {time}?",
                 "Let's change it to {time} on {day}.", "Could it be {day} at {time} instead?"],
}  # fmt: skip
TRAIN_CHANGES = 3
OPENERS = (["", "Thanks.", "Actually,", "Sorry,"], ["Hmm,", "On second thought,"])
SECOND_TURN = 0.4  # share of conversations with a second change


def time_phrase(rng: random.Random, hhmm: str) -> str:
    """The time as a patient might write it."""
    hour, minute = int(hhmm[:2]), int(hhmm[3:])
    h12 = hour - 12 if hour > 12 else hour
    suffix = "pm" if hour >= 12 else "am"
    forms = [hhmm, f"{h12}.{minute:02d}{suffix}", f"{h12}:{minute:02d} {suffix}"]
    if minute == 0:
        forms.append(f"{h12}{suffix}")
    return rng.choice(forms)


def answer(state: dict) -> str:
    return f"doctor: {state['doctor']}\nday: {state['day']}\ntime: {state['time']}"


def new_time(rng: random.Random) -> str:
    return f"{rng.randint(8, 17):02d}:{rng.choice((0, 15, 30, 45)):02d}"


def change(rng: random.Random, state: dict, frames: int) -> tuple[str, dict]:
    """A change message to `state` and the state after it (always a real change)."""
    kind = rng.choice(sorted(CHANGES))
    new = dict(state)
    if "day" in kind:
        new["day"] = rng.choice([d for d in DAYS if d != state["day"]])
    if "time" in kind:
        new["time"] = rng.choice([t for t in (new_time(rng) for _ in range(4))
                                  if t != state["time"]] or ["12:30"])  # fmt: skip
    if kind == "doctor":
        new["doctor"] = rng.choice([d for d in DOCTORS if d != state["doctor"]])
    sentences = CHANGES[kind] if frames else CHANGES[kind][:TRAIN_CHANGES]
    text = rng.choice(sentences).format(day=new["day"], doctor=new["doctor"],
                                        time=time_phrase(rng, new["time"]))  # fmt: skip
    opener = rng.choice(OPENERS[frames])
    if opener.endswith(","):
        text = text[0].lower() + text[1:]
    return (f"{opener} {text}" if opener else text), new


def make_item(rng: random.Random, frames: int, used: set[str]) -> dict:
    """One new conversation (never one in `used`) with its gold final appointment."""
    while True:
        state = {"doctor": rng.choice(DOCTORS), "day": rng.choice(DAYS), "time": new_time(rng)}
        first = rng.choice(STARTS).format(time=time_phrase(rng, state["time"]), **{
            k: v for k, v in state.items() if k != "time"})  # fmt: skip
        messages = [{"role": "user", "content": first},
                    {"role": "assistant", "content": answer(state)}]  # fmt: skip
        turns = 2 if rng.random() < SECOND_TURN else 1
        for turn in range(turns):
            text, state = change(rng, state, frames)
            messages.append({"role": "user", "content": text})
            if turn < turns - 1:
                messages.append({"role": "assistant", "content": answer(state)})
        key = json.dumps(messages)
        if key not in used:
            used.add(key)
            return {"messages": messages, **state, "reference": answer(state)}


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
    write_jsonl(dest / "appointments_eval.jsonl", gate)
    write_jsonl(dest / "prompts.jsonl", pool)
    write_jsonl(
        dest / "seed_sft.jsonl",
        [{"messages": [*s["messages"], {"role": "assistant", "content": s["reference"]}]}
         for s in seeds],
    )  # fmt: skip


if __name__ == "__main__":
    main()
