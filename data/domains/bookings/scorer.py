"""The table-bookings domain's checker: is the reply exactly the JSON booking asked for?

    tuneloop eval --set data/domains/bookings/bookings_eval.jsonl \
        --scorer data/domains/bookings/scorer.py:booking

The whole reply (spaces around it aside) must parse as one JSON object with exactly the keys
name, guests, day and time; `guests` a JSON number, `time` the form HH:MM. A value is right
when it equals the row's gold one (name and day in any case). Strict JSON is the point of
this domain: a program reads these replies, so prose around the object fails.
"""

from __future__ import annotations

import json
import re
from typing import Any

KEYS = {"name", "guests", "day", "time"}
HHMM = re.compile(r"\d\d:\d\d")


def parse(reply: str) -> dict[str, Any] | None:
    """The reply's booking object, or None when the reply is not one JSON object with the keys."""
    try:
        value = json.loads(reply.strip())
    except ValueError:
        return None
    return value if isinstance(value, dict) and set(value) == KEYS else None


def booking(rows: list[dict], replies: list[str]) -> dict[str, float]:
    """Shares of replies with every field right (`correct`), that are the JSON object asked
    for (`json_valid`), and with each field right; higher is better for each."""
    scored = [(r, reply) for r, reply in zip(rows, replies, strict=True) if r.get("name")]
    if not scored:
        raise ValueError('no row has a gold "name" field')
    tally = dict.fromkeys(("correct", "json_valid", "name", "guests", "day", "time"), 0)
    for row, reply in scored:
        got = parse(reply)
        if got is None:
            continue
        ok = {
            "name": str(got["name"]).strip().lower() == row["name"].lower(),
            "guests": type(got["guests"]) is int and got["guests"] == row["guests"],
            "day": str(got["day"]).strip().lower() == row["day"].lower(),
            "time": isinstance(got["time"], str) and bool(HHMM.fullmatch(got["time"]))
            and got["time"] == row["time"],
        }  # fmt: skip
        tally["json_valid"] += 1
        tally["correct"] += all(ok.values())
        for key, right in ok.items():
            tally[key] += right
    n = len(scored)
    names = {"correct": "correct", "json_valid": "json_valid"}
    return {names.get(k, f"{k}_acc"): v / n for k, v in tally.items()}
