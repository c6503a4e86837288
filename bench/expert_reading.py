"""How a simulated expert reads a reply: the times, weekdays, numbers and prices it states,
in whatever form a person would understand ("7.30pm", "19:30", "half past seven" is not
one of them; "four", "€4.50", "4,50 euros").

The domains' experts (`data/domains/*/expert.py`) read replies with these, never with their
domain's checker: the checker wants one exact form, a person reads the meaning. Each helper
returns everything of its kind the text says, so an expert can reject a reply that states
two different values, as a person would ("Friday, or Saturday").
"""

from __future__ import annotations

import re

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
                "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}  # fmt: skip
_MERIDIEM = r"(a\.?m\.?|p\.?m\.?)"
_CLOCK = re.compile(rf"(?<![\d.,])(\d{{1,2}}):(\d{{2}})(?:\s*{_MERIDIEM}(?![a-z]))?", re.I)
_DOTTED = re.compile(rf"(?<![\d.,])(\d{{1,2}})\.(\d{{2}})\s*{_MERIDIEM}(?![a-z])", re.I)
_HOUR = re.compile(rf"(?<![\d.,:])(\d{{1,2}})\s*{_MERIDIEM}(?![a-z])", re.I)
_OCLOCK = re.compile(r"(?<![\d.,:])(\d{1,2}) o'clock( in the (?:afternoon|evening))?", re.I)
_NOON = re.compile(r"\b(noon|midday)\b", re.I)
_MONEY = re.compile(r"€\s*(\d+(?:[.,]\d{1,2})?)|(\d+(?:[.,]\d{1,2})?)\s*(?:€|euros?\b|eur\b)", re.I)


def _hhmm(hour: int, minute: int, meridiem: str | None) -> str | None:
    if meridiem:
        pm = meridiem.lower().startswith("p")
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if pm else 0)
    if hour > 23 or minute > 59:
        return None
    return f"{hour:02d}:{minute:02d}"


def times_in(text: str) -> set[str]:
    """Every clock time the text states, as HH:MM (24-hour)."""
    found: set[str | None] = set()
    for h, m, mer in _CLOCK.findall(text):
        found.add(_hhmm(int(h), int(m), mer or None))
    for h, m, mer in _DOTTED.findall(text):
        found.add(_hhmm(int(h), int(m), mer))
    for h, mer in _HOUR.findall(text):
        found.add(_hhmm(int(h), 0, mer))
    for h, later in _OCLOCK.findall(text):
        found.add(_hhmm(int(h), 0, "pm" if later else None))
    if _NOON.search(text):
        found.add("12:00")
    return {t for t in found if t}


def without_times(text: str) -> str:
    """The text with its clock times and prices blanked, so their digits are not counts."""
    for pattern in (_CLOCK, _DOTTED, _HOUR, _OCLOCK, _MONEY):
        text = pattern.sub(" ", text)
    return text


def weekdays_in(text: str) -> set[str]:
    """The weekdays the text names, lower-cased."""
    lowered = text.lower()
    return {d for d in WEEKDAYS if re.search(rf"\b{d}\b", lowered)}


def numbers_in(text: str) -> set[int]:
    """The whole numbers the text states (digits or one..twelve), times and prices left out."""
    rest = without_times(text)
    found = {int(n) for n in re.findall(r"(?<![\d.,])\d+(?![\d.,]\d)", rest)}
    lowered = rest.lower()
    found |= {v for w, v in NUMBER_WORDS.items() if re.search(rf"\b{w}\b", lowered)}
    return found


def money_in(text: str) -> set[int]:
    """The amounts of money the text states, in cents ("€4.50", "4,50 euros", "3 EUR")."""
    cents = set()
    for a, b in _MONEY.findall(text):
        value = (a or b).replace(",", ".")
        whole, _, frac = value.partition(".")
        cents.add(int(whole) * 100 + int((frac + "00")[:2]))
    return cents


def words(text: str) -> list[str]:
    """The text's words, lower-cased (letters, digits and apostrophes)."""
    return re.findall(r"[a-z0-9']+", text.lower())
