"""What the store hands to training (TRL rows) and to the status screen (counts).

SFT rows come from imported conversations, expert corrections, thumbs-up replies, the
answer a 👎 reason names (`feedback.reasons`) and the better reply of Argilla pairs its
annotators rated good (4 or 5 of 5); DPO rows come from non-tie preferences and from named
answers over the replies they reject; KTO rows (unpaired, one label each) from thumbs on
replies that have no partner. Each row's side of the train/heldout split is decided
by its prompt (`feedback.split`), so an edit's SFT row and its DPO pair always land on the
same side; a train-side row whose answer repeats a held-out answer is in neither split.
Rows with identical content are yielded once.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from feedback.canonical import content_key
from feedback.errors import FeedbackError
from feedback.models import (
    Comparison,
    Conversation,
    Correction,
    Example,
    Message,
    Preference,
    Rating,
    Response,
)
from feedback.models_external import ArgillaPair, ArgillaResponse
from feedback.reasons import named_answers
from feedback.split import SPLITS, HeldoutSplit, plan_split

# Argilla's optional "how good is the better reply (1-5)": a pair whose agreeing annotators
# rate the winner this well on the median also trains it as an SFT example. DPO learns from
# any decided pair (better than the other is enough); SFT imitates, so it takes only
# replies people called good, not merely the lesser of two poor ones.
ARGILLA_SFT_MIN_RATING = 4


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise FeedbackError(f"split {split!r} is unknown; use 'train', 'heldout' or 'all'")


def _latest_ratings(session: Session) -> list[tuple[int, bool]]:
    """(response_id, up) of each user's latest rating of each response."""
    latest = (
        select(func.max(Rating.id)).group_by(col(Rating.response_id), col(Rating.user_id))
    ).scalar_subquery()
    query = select(Rating.response_id, Rating.up).where(col(Rating.id).in_(latest))
    return [(response_id, up) for response_id, up in session.exec(query)]


def sft_rows(
    session: Session,
    split: str,
    plan: HeldoutSplit | None = None,
    sources: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """`{"messages": [...]}` rows (each ending in an assistant turn) for TRL's SFTTrainer.
    `sources`, when given, receives each row's source by its messages' `content_key`:
    `import`, `correction`, `reason`, `thumbs_up` or `argilla` (the first that yields the row).

    From, in order:
    (a) imported conversations;
    (b) corrections: the response's prompt plus the corrected reply (each user's latest
        correction of a response);
    (c) the answer a user's latest 👎 reason names (`named_answer`), for responses without
        a correction: the rater's correction in their own words;
    (d) responses without a correction or error whose latest rating is thumbs-up for at
        least one user and thumbs-down for none;
    (e) the better reply of a decided Argilla pair (not a tie, not flagged) whose annotators
        who voted for it rated it `ARGILLA_SFT_MIN_RATING` or more on the median, unless
        one of them wrote a corrected answer instead (that one is trained, from (a)).
    """
    _check_split(split)
    if split != "all":
        plan = plan or split_plan(session)
        rows = sft_rows(session, "all")
        return [r for r in rows if plan.in_split(split, *sft_prompt_answers(r))]
    out: list[dict[str, Any]] = []
    seen: set[str] = set()

    def emit(messages: list[dict[str, str]], source: str) -> None:
        key = content_key(messages)
        if key not in seen:
            seen.add(key)
            out.append({"messages": messages})
            if sources is not None:
                sources[key] = source

    for messages_json in session.exec(select(Example.messages_json).order_by(col(Example.id))):
        emit(json.loads(messages_json), "import")

    latest_corrections = (
        select(func.max(Correction.id)).group_by(
            col(Correction.response_id), col(Correction.user_id)
        )
    ).scalar_subquery()
    corrections = session.exec(
        select(Correction.content, Response.prompt_json)
        .join(Response, col(Response.id) == col(Correction.response_id))
        .where(col(Correction.id).in_(latest_corrections))
        .order_by(col(Correction.id))
    )
    for content, prompt_json in corrections:
        emit([*json.loads(prompt_json), {"role": "assistant", "content": content}], "correction")
    for named in named_answers(session):
        emit([*named.prompt, {"role": "assistant", "content": named.answer}], "reason")

    ups: set[int] = set()
    downs: set[int] = set()
    for response_id, up in _latest_ratings(session):
        (ups if up else downs).add(response_id)
    corrected = set(session.exec(select(Correction.response_id).distinct()).all())
    liked = sorted(ups - downs - corrected)
    for start in range(0, len(liked), 500):
        responses = session.exec(
            select(Response.prompt_json, Response.content)
            .where(col(Response.id).in_(liked[start : start + 500]))
            .where(col(Response.error).is_(None))
            .order_by(col(Response.id))
        )
        for prompt_json, content in responses:
            if content.strip():
                reply = {"role": "assistant", "content": content}
                emit([*json.loads(prompt_json), reply], "thumbs_up")
    for prompt_json, chosen in _well_rated_argilla_winners(session):
        emit([*json.loads(prompt_json), {"role": "assistant", "content": chosen}], "argilla")
    return out


def _well_rated_argilla_winners(session: Session) -> list[tuple[str, str]]:
    """(prompt_json, chosen) of decided Argilla pairs rated good by the annotators who
    voted for the winner (see `ARGILLA_SFT_MIN_RATING`)."""
    votes = session.exec(
        select(ArgillaPair, ArgillaResponse, Preference)
        .join(ArgillaResponse, col(ArgillaResponse.pair_id) == col(ArgillaPair.id))
        .join(Preference, col(Preference.id) == col(ArgillaPair.preference_id))
        .where(col(ArgillaPair.decision).in_(["A", "B"]))
        .where(col(ArgillaPair.flagged).is_(False))
        .where(col(ArgillaResponse.status) == "submitted")
        .order_by(col(ArgillaPair.id))
    )
    ratings: dict[int, list[int]] = {}
    corrected: set[int] = set()
    texts: dict[int, tuple[str, str]] = {}
    for pair, vote, preference in votes:
        if vote.choice != pair.decision or pair.id is None:
            continue
        texts[pair.id] = (preference.prompt_json, preference.chosen)
        if vote.corrected and vote.corrected.strip():
            corrected.add(pair.id)
        if vote.rating is not None:
            ratings.setdefault(pair.id, []).append(vote.rating)
    return [
        texts[pair_id]
        for pair_id, given in ratings.items()
        if pair_id not in corrected and statistics.median(given) >= ARGILLA_SFT_MIN_RATING
    ]


def dpo_rows(
    session: Session,
    split: str,
    plan: HeldoutSplit | None = None,
    sources: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """TRL conversational preference rows from every non-tie preference, then from each
    answer a 👎 reason names over the reply it rejects (`feedback.reasons.named_answers`).

    `{"prompt": [...messages], "chosen": [{"role": "assistant", "content": ...}],
    "rejected": [{"role": "assistant", "content": ...}]}`, oldest first. `sources`, when
    given, receives each row's source by `content_key([prompt, chosen, rejected])`: the
    preference's (`chat-compare`, `edit`, `import`, `argilla`, `best-of`) or `reason`.
    """
    _check_split(split)
    if split != "all":
        plan = plan or split_plan(session)
        rows = dpo_rows(session, "all")
        return [r for r in rows if plan.in_split(split, *dpo_prompt_answers(r))]
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    query = (
        select(Preference.prompt_json, Preference.chosen, Preference.rejected, Preference.source)
        .where(col(Preference.tie).is_(False))
        .order_by(col(Preference.id))
    )
    pairs = [
        (json.loads(p), chosen, rejected, src) for p, chosen, rejected, src in session.exec(query)
    ]
    pairs += [
        (n.prompt, n.answer, n.reply, "reason") for n in named_answers(session) if n.reply.strip()
    ]
    for prompt, chosen, rejected, source in pairs:
        key = content_key([prompt, chosen, rejected])
        if key in seen:
            continue
        seen.add(key)
        if sources is not None:
            sources[key] = source
        out.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        )
    return out


def _partnered(session: Session) -> set[int]:
    """Responses whose feedback already trains as a pair: corrected ones (the edit pair),
    those a 👎 reason named the answer for, and either side of a non-tie preference (a
    compare pick, an Argilla ranking)."""
    partnered = set(session.exec(select(Correction.response_id).distinct()).all())
    partnered.update(n.response_id for n in named_answers(session))
    sides = session.exec(
        select(Preference.chosen_response_id, Preference.rejected_response_id).where(
            col(Preference.tie).is_(False)
        )
    )
    for chosen_id, rejected_id in sides:
        partnered.update(i for i in (chosen_id, rejected_id) if i is not None)
    return partnered


def _latest_reasons(session: Session, response_ids: list[int]) -> dict[int, list[str]]:
    """The 👎 reasons of each user's latest rating of these responses, oldest first."""
    latest = (
        select(func.max(Rating.id)).group_by(col(Rating.response_id), col(Rating.user_id))
    ).scalar_subquery()
    out: dict[int, list[str]] = {}
    for start in range(0, len(response_ids), 500):
        query = (
            select(Rating.response_id, Rating.reason)
            .where(col(Rating.id).in_(latest))
            .where(col(Rating.response_id).in_(response_ids[start : start + 500]))
            .where(col(Rating.up).is_(False))
            .where(col(Rating.reason).is_not(None))
            .order_by(col(Rating.id))
        )
        for response_id, reason in session.exec(query):
            out.setdefault(response_id, []).append(str(reason))
    return out


def kto_rows(
    session: Session, split: str, plan: HeldoutSplit | None = None
) -> list[dict[str, Any]]:
    """TRL unpaired preference rows from thumbs on replies that have no partner.

    `{"prompt": [...messages], "completion": [{"role": "assistant", "content": ...}],
    "label": true|false}`, plus `"reasons": [...]` on a 👎 row whose raters wrote why
    (TRL ignores the extra key; an annotator or a later correction can use it).

    Each user's latest rating of a response counts; a reply some rated 👍 and others 👎 is
    left out (its label is a disagreement, not a signal). Replies that already train as a
    pair are left out too: corrected ones, and either side of a decided, non-tie compare or
    Argilla ranking (the pair says more than the thumb). A tie or an undecided compare has
    no pair, so its thumbs count here. Replies that errored or are empty are skipped.
    """
    _check_split(split)
    if split != "all":
        plan = plan or split_plan(session)
        rows = kto_rows(session, "all")
        return [r for r in rows if plan.in_split(split, *kto_prompt_answers(r))]
    ups: set[int] = set()
    downs: set[int] = set()
    for response_id, up in _latest_ratings(session):
        (ups if up else downs).add(response_id)
    partnered = _partnered(session)
    labels = {i: True for i in ups - downs} | {i: False for i in downs - ups}
    wanted = sorted(i for i in labels if i not in partnered)
    reasons = _latest_reasons(session, [i for i in wanted if not labels[i]])
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for start in range(0, len(wanted), 500):
        responses = session.exec(
            select(Response.id, Response.prompt_json, Response.content)
            .where(col(Response.id).in_(wanted[start : start + 500]))
            .where(col(Response.error).is_(None))
            .order_by(col(Response.id))
        )
        for rid, prompt_json, content in responses:
            if rid is None or not content.strip():
                continue
            prompt = json.loads(prompt_json)
            label = labels[rid]
            key = content_key([prompt, content, label])
            if key in seen:
                continue
            seen.add(key)
            row: dict[str, Any] = {
                "prompt": prompt,
                "completion": [{"role": "assistant", "content": content}],
                "label": label,
            }
            if reasons.get(rid):
                row["reasons"] = reasons[rid]
            out.append(row)
    return out


def sft_prompt_answers(row: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """An SFT row's prompt and the answer it trains towards (for the split)."""
    return row["messages"][:-1], [str(row["messages"][-1].get("content", ""))]


def dpo_prompt_answers(row: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """A DPO row's prompt and the answer it trains towards: its chosen reply.

    The rejected reply does not count: one stock bad answer under many prompts ("I don't
    know") would otherwise keep every pair out of training once one of them is held out.
    """
    return row["prompt"], [str(m.get("content", "")) for m in row["chosen"]]


def kto_prompt_answers(row: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """A KTO row's prompt and the answer it trains towards: its reply when the label is 👍,
    nothing when 👎 (a stock bad answer must not keep other rows out, as for DPO)."""
    answers = [str(m.get("content", "")) for m in row["completion"]] if row["label"] else []
    return row["prompt"], answers


def split_plan(
    session: Session, *, min_items: int = 0, extra: list[dict[str, Any]] | None = None
) -> HeldoutSplit:
    """The held-out split over every SFT, DPO and KTO row (plus `extra` SFT rows, e.g. seeds)."""
    items = [sft_prompt_answers(r) for r in [*(extra or []), *sft_rows(session, "all")]]
    items += [dpo_prompt_answers(r) for r in dpo_rows(session, "all")]
    items += [kto_prompt_answers(r) for r in kto_rows(session, "all")]
    return plan_split(items, min_items=min_items)


def counts(session: Session) -> dict[str, Any]:
    """Row counts for the status screen and the CLI's `status`.

    ratings_up / ratings_down count each user's latest click per response, not every click.
    """

    def count(model: Any, *where: Any) -> int:
        return int(session.exec(select(func.count()).select_from(model).where(*where)).one())

    latest = _latest_ratings(session)
    by_source = {
        source: int(n)
        for source, n in session.exec(
            select(Preference.source, func.count()).group_by(col(Preference.source))
        )
    }
    return {
        "conversations": count(Conversation),
        "messages": count(Message),
        "responses": count(Response),
        "ratings_up": sum(1 for _, up in latest if up),
        "ratings_down": sum(1 for _, up in latest if not up),
        "corrections": count(Correction),
        "comparisons": count(Comparison),
        "comparisons_decided": count(Comparison, col(Comparison.choice).is_not(None)),
        "examples": count(Example),
        "preferences_by_source": by_source,
        "preferences_total": sum(by_source.values()),
    }
