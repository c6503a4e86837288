"""The clinic-appointments domain's checker: is the reply the appointment as it now stands?

    tuneloop eval --set data/domains/appointments/appointments_eval.jsonl \
        --scorer data/domains/appointments/scorer.py:appointment

A reply gives three fields, `doctor:`, `day:` and `time:` (the form `system_prompt.md`
asks for). The checker reads the first of each field, in any case, "Dr." before the name
allowed, and compares the values with the row's gold ones; the time must be HH:MM.
"""

from __future__ import annotations

import re

DOCTOR = re.compile(r"\bdoctor\s*:\s*(?:dr\.?\s*)?([a-z]+)", re.IGNORECASE)
DAY = re.compile(r"\bday\s*:\s*([a-z]+)", re.IGNORECASE)
TIME = re.compile(r"\btime\s*:\s*(\d\d:\d\d)\b", re.IGNORECASE)


def appointment(rows: list[dict], replies: list[str]) -> dict[str, float]:
    """Shares of replies with all three fields right (`correct`) and with each right."""
    scored = [(r, reply) for r, reply in zip(rows, replies, strict=True) if r.get("doctor")]
    if not scored:
        raise ValueError('no row has a gold "doctor" field')
    tally = dict.fromkeys(("correct", "doctor_acc", "day_acc", "time_acc"), 0)
    for row, reply in scored:
        got = [m.group(1).lower() if m else None
               for m in (DOCTOR.search(reply), DAY.search(reply), TIME.search(reply))]  # fmt: skip
        ok = [got[0] == row["doctor"].lower(), got[1] == row["day"].lower(), got[2] == row["time"]]
        tally["correct"] += all(ok)
        for key, right in zip(("doctor_acc", "day_acc", "time_acc"), ok, strict=True):
            tally[key] += right
    n = len(scored)
    return {k: v / n for k, v in tally.items()}
