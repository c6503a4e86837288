"""A 👎 reason that names the right answer: read it as the rater's correction.

Experts often say what the answer should have been instead of rewriting the reply ("the
answer is 08:30", "Inaccurate — correct answer: Dr. Rossi, Tuesday"); Open WebUI joins its
reason tag and comment into one text the same way. Such a reason is a correction in the
rater's own words, so it trains as one (`feedback.rows`): the named answer as an SFT reply
and as the chosen side of a pair over the rejected reply. Any other reason stays what it
was, the 👎's explanation, kept with the KTO row and the export.

The forms read are deliberately few, so that an evaluation is not mistaken for an answer:
"answer: X", "the right/correct answer is X", "should be: X", and "the answer is X" unless
X starts like a judgement ("the answer is wrong", "… is not complete"). The answer runs
from the last such lead to the end of the reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from sqlalchemy import func
from sqlmodel import Session, col, select

from feedback.models import Correction, Rating, Response

# "answer:", "right answer is", "correct answer was", "should be:"; "answer is" alone is
# matched separately because what follows it is often a verdict, not an answer.
_NAMING = re.compile(
    r"(?:\b(?:right|correct|real)\s+answer\s*(?::|\bis\b|\bwas\b|\bwould\s+be\b)"
    r"|\banswer\s*:|\bshould\s+(?:be|say|read)\s*:)\s*",
    re.IGNORECASE,
)
_PLAIN = re.compile(r"\banswer\s+(?:is|was|should\s+be)\b\s*", re.IGNORECASE)
# The first words of a verdict, not an answer: "the answer is wrong / not right / too long".
_VERDICT = frozenset(
    "wrong incorrect incomplete inaccurate not too bad missing unclear partly partially off "
    "outdated false confusing misleading unhelpful irrelevant nonsense garbage empty "
    "fine ok okay good right correct".split()
)
_QUOTES = "\"'`“”‘’«»"


def named_answer(reason: str | None) -> str | None:
    """The answer a 👎 reason names, or None when it names none (see the module's forms)."""
    if not reason or not reason.strip():
        return None
    leads = [*_NAMING.finditer(reason)]
    plain = [m for m in _PLAIN.finditer(reason) if not _verdict(reason[m.end() :])]
    found = max([*leads, *plain], key=lambda m: m.end(), default=None)
    if found is None:
        return None
    answer = reason[found.end() :].strip().strip(_QUOTES).strip()
    return answer or None


def _verdict(rest: str) -> bool:
    first = re.match(r"\s*([^\W\d_]+)", rest)
    return bool(first) and first.group(1).lower() in _VERDICT  # type: ignore[union-attr]


@dataclass(frozen=True)
class NamedAnswer:
    """A reply some user 👎'd with a reason naming the right answer (`named_answer`)."""

    response_id: int
    prompt: list[dict[str, str]]
    reply: str
    answer: str


def named_answers(session: Session) -> list[NamedAnswer]:
    """Each user's latest 👎 whose reason names an answer, on replies nobody corrected (a
    rewrite says more than a reason) and that did not fail; one per answer and reply."""
    latest = (
        select(func.max(Rating.id)).group_by(col(Rating.response_id), col(Rating.user_id))
    ).scalar_subquery()
    corrected = select(Correction.response_id).distinct()
    query = (
        select(Rating.reason, Response.id, Response.prompt_json, Response.content)
        .join(Response, col(Response.id) == col(Rating.response_id))
        .where(col(Rating.id).in_(latest))
        .where(col(Rating.up).is_(False))
        .where(col(Rating.reason).is_not(None))
        .where(col(Response.error).is_(None))
        .where(col(Rating.response_id).not_in(corrected))
        .order_by(col(Rating.id))
    )
    out: list[NamedAnswer] = []
    seen: set[tuple[int, str]] = set()
    for reason, response_id, prompt_json, content in session.exec(query):
        answer = named_answer(reason)
        if answer is None or response_id is None or answer.strip() == content.strip():
            continue
        if (response_id, answer) not in seen:
            seen.add((response_id, answer))
            out.append(NamedAnswer(response_id, json.loads(prompt_json), content, answer))
    return out
