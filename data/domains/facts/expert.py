"""The leisure-centre facts domain's simulated expert: a receptionist reading the reply.

The receptionist accepts any reply that states the right value ("Adults pay €4.50 a swim.",
"No, the sauna is for adults only.") and rejects one that states a wrong value, or a second
value of the same kind beside the right one ("4.50, or €5 at weekends"). It reads values
with `bench/expert_reading.py`, never with the checker's code or the row's `answers` list.
"""

from __future__ import annotations

import re

from bench.expert_reading import money_in, numbers_in, times_in, words

YES = {"yes", "yep", "yeah", "correct", "sure"}
DECIMAL = re.compile(r"(?<![\d.,])(\d+)[.,](\d{2})(?![\d:])")
NO = {"no", "nope", "not", "cannot", "can't", "isn't", "aren't", "don't", "won't"}


def _gold_number(answer: str) -> int:
    return int(re.findall(r"\d+", answer)[0])


def verdict(reply: str, item: dict) -> str:
    """'' when the reply states the gold answer (however worded), else what is wrong."""
    answer, kind = item["answer"], item["kind"]
    if kind == "time":
        ok = times_in(reply) == {answer}
    elif kind == "price":
        decimals = {int(a) * 100 + int(b) for a, b in DECIMAL.findall(reply)}
        stated = money_in(reply) or decimals or {100 * n for n in numbers_in(reply)}
        ok = stated == {_gold_number(answer) * 100 + int(answer.partition(".")[2] or 0)}
    elif kind == "quantity":
        stated = numbers_in(reply)
        if "week" in words(reply) or "weeks" in words(reply):  # "two weeks", "a week"
            stated = {7 * max(stated or {1})}
        ok = stated == {_gold_number(answer)}
    else:
        said = set(words(reply)[:6])
        ok = bool(said & (YES if answer == "yes" else NO)) and not said & (
            NO if answer == "yes" else YES
        )
    return "" if ok else f"the answer is {answer}"


def corrections(item: dict) -> list[str]:
    """The gold answer as a receptionist types it: the answer alone, in the forms a person
    writes it (with a full stop, a capital, no leading zero, no euro sign)."""
    answer = item["answer"]
    out = [answer, answer + ".", answer.capitalize() + "."]
    if item["kind"] == "time":
        out.append(answer.lstrip("0"))
    if item["kind"] == "price":
        out.append(answer.removeprefix("€"))
    return list(dict.fromkeys(out))
