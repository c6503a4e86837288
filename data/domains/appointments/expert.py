"""The clinic-appointments domain's simulated expert: a receptionist reading the reply.

The receptionist accepts a reply that states the appointment as it now stands in any form
("You're now with Dr. Patel on Thursday at 2pm.") and rejects one that names a wrong or a
second doctor, weekday or time ("Thursday, or Friday"). It reads the values with
`bench/expert_reading.py`, never with the checker's code.
"""

from __future__ import annotations

from bench.expert_reading import times_in, weekdays_in, words

DOCTORS = {"lee", "patel", "novak", "okafor", "berg", "costa", "haddad", "kim"}


def verdict(reply: str, item: dict) -> str:
    """'' when the reply states the gold appointment (however worded), else what is wrong."""
    wrong = []
    if DOCTORS & set(words(reply)) != {item["doctor"].lower()}:
        wrong.append(f"it is with Dr. {item['doctor']}")
    if weekdays_in(reply) != {item["day"].lower()}:
        wrong.append(f"it is on {item['day']}")
    if times_in(reply) != {item["time"]}:
        wrong.append(f"it is at {item['time']}")
    return "; ".join(wrong)


def corrections(item: dict) -> list[str]:
    """The appointment as the receptionist types it, in the three-line form, worded a few
    ways (field order aside, the checker's form is the system prompt's)."""
    d, day, t = item["doctor"], item["day"], item["time"]
    return [
        f"doctor: {d}\nday: {day}\ntime: {t}",
        f"Doctor: {d}\nDay: {day}\nTime: {t}",
        f"doctor: Dr. {d}\nday: {day}\ntime: {t}",
        f"day: {day}\ntime: {t}\ndoctor: {d}",
        f"doctor: {d}\nday: {day}\ntime: {t}\nSee you then.",
    ]
