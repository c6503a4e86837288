"""The table-bookings domain's simulated expert: a host reading the reply as a person would.

The host accepts a reply that states the right booking in any understandable form (JSON with
"guests": "4" or "time": "7:30pm", or a sentence) and rejects one that states a wrong value
or two values for the same thing (two party sizes, two days), JSON or not. Never the
checker's code: `bench/expert_reading.py` reads the values.
"""

from __future__ import annotations

import json
import re

from bench.expert_reading import numbers_in, times_in, weekdays_in


def verdict(reply: str, item: dict) -> str:
    """'' when the reply gives the gold booking, else what is wrong, in words."""
    wrong = []
    if not re.search(rf"\b{re.escape(item['name'])}\b", reply, re.IGNORECASE):
        wrong.append(f"the booking is under {item['name']}")
    if weekdays_in(reply) != {item["day"].lower()}:
        wrong.append(f"it is for {item['day']}")
    if times_in(reply) != {item["time"]}:
        wrong.append(f"the time is {item['time']}")
    if numbers_in(reply) != {item["guests"]}:
        wrong.append(f"it is for {item['guests']} people")
    return "; ".join(wrong)


def corrections(item: dict) -> list[str]:
    """The gold booking as a host types it: the JSON object, keys in several orders and
    spacings (every one of them the exact form the system prompt asks for)."""
    fields = {k: item[k] for k in ("name", "guests", "day", "time")}
    orders = (("name", "guests", "day", "time"), ("day", "time", "guests", "name"),
              ("guests", "name", "time", "day"))  # fmt: skip
    out = [json.dumps({k: fields[k] for k in order}) for order in orders]
    out.append(json.dumps(fields, indent=2))
    out.append(json.dumps(fields, separators=(",", ":")))
    return out
