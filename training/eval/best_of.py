"""On-policy pairs: sample N replies per prompt from one adapter, score each with the
configured scorers, and pair the best with the worst for annotators.

Preference training helps most on replies the serving model itself writes: a pair of two
of its own samples, one the scorers like and one they do not, shows annotators (and then
DPO) exactly where that model goes wrong. The scorers are the ones `tuneloop eval` and the
gate use (`TUNELOOP_EVAL_SCORER`: the rubric, the rows' `reference`, your own function),
run on one reply at a time; a reply's score is the mean of the metrics they return for it
(each higher-is-better, as the gate reads them). A prompt whose best and worst scores are
equal gives no pair: the scorers cannot tell its samples apart, and a pair they did not
rank would only ask annotators for a coin flip the scorers already made.

The pair goes into the same outbox as every other pair (`feedback.argilla.outbox`), best reply
first, with the scores in its metadata; Argilla shows the two in random order as always. Or,
where the operator trusts the checks to label (`pairs generate --to round`), it is stored
as a preference pair of source `best-of`, best over worst, that the next round trains on as
a source of its own (`keep_for_round`; the round's snapshot counts its pairs by source).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.eval.scorers import Scorer, ScorerError


@dataclass
class Picked:
    """One prompt's samples, their scores, and the pair chosen from them (if any)."""

    conversation: list[dict[str, str]]
    replies: list[str]
    scores: list[float | None]
    best: int | None = None
    worst: int | None = None
    queued: bool = False  # a new outbox row (False: a tie, unscored, or queued before)
    why_not: str | None = None  # "tie", "unscored", "identical" when no pair was queued
    metrics: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "replies": self.replies,
            "scores": self.scores,
            "best": self.best,
            "worst": self.worst,
            "best_score": None if self.best is None else self.scores[self.best],
            "worst_score": None if self.worst is None else self.scores[self.worst],
            "queued": self.queued,
            "skipped": self.why_not,
        }


def check_scorers(spec: str) -> None:
    """Refuse a scorer spec naming `pairwise`: it compares two adapters' replies, and
    best-of ranks the samples of one (checked before the judge model is looked for)."""
    if "pairwise" in {part.strip() for part in spec.split(",")}:
        raise ScorerError(
            "scorer 'pairwise' compares two adapters and cannot rank one adapter's samples; "
            "use exact, json, rubric or your own FILE.py:FUNCTION with --best-of"
        )


def reply_scores(
    scorers: list[Scorer], row: dict[str, Any], replies: list[str]
) -> tuple[list[float | None], list[dict[str, float]]]:
    """Each reply's score (the mean of its metrics; None when no scorer applies to the row)
    and its metrics. Every scorer sees one row and one reply, as in the gate."""
    scores: list[float | None] = []
    metrics: list[dict[str, float]] = []
    for reply in replies:
        found: dict[str, float] = {}
        for scorer in scorers:
            try:
                found.update(scorer([row], [reply]))
            except ScorerError:
                continue  # this scorer does not apply to this row (no reference, say)
        # A scorer's own interval bounds say nothing about one reply.
        values = [v for k, v in found.items() if not k.endswith(("_low", "_high"))]
        scores.append(sum(values) / len(values) if values else None)
        metrics.append(found)
    return scores, metrics


def choose(replies: list[str], scores: list[float | None]) -> tuple[int, int] | str:
    """(best, worst) positions, the first of equals; or why there is no pair: "unscored"
    (fewer than two scored replies), "tie" (best and worst score the same), "identical"."""
    scored = [i for i, s in enumerate(scores) if s is not None]
    if len(scored) < 2:
        return "unscored"
    best = max(scored, key=lambda i: (scores[i], -i))
    worst = min(scored, key=lambda i: (scores[i], i))
    if scores[best] == scores[worst]:
        return "tie"
    if replies[best].strip() == replies[worst].strip():
        return "identical"  # cannot happen with deterministic scorers; a custom one may not be
    return best, worst


def sample(
    model_dir: Path,
    adapter_dir: Path | None,
    conversations: list[list[dict[str, str]]],
    n: int,
    *,
    sampling: Any,
    batch_size: int | None = None,
    load_in_4bit: bool = False,
    bf16: bool | None = None,
) -> list[list[str]]:
    """`n` sampled replies to each conversation from the base plus `adapter_dir`, batched;
    `sampling`: how the chat samples (its max_new_tokens, temperature and top_p)."""
    from training.eval.generate import generate_replies, load_for_generation

    model, tokenizer = load_for_generation(
        model_dir, adapter_dir, load_in_4bit=load_in_4bit, bf16=bf16
    )
    try:
        flat = generate_replies(
            model,
            tokenizer,
            [c for c in conversations for _ in range(n)],
            max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            batch_size=batch_size,
        )
    finally:
        del model, tokenizer
        gc.collect()
    return [flat[i * n : (i + 1) * n] for i in range(len(conversations))]


def pick_pairs(
    rows: list[dict[str, Any]],
    conversations: list[list[dict[str, str]]],
    samples: list[list[str]],
    scorers: list[Scorer],
) -> list[Picked]:
    """Score every prompt's samples and choose its best and worst (see `choose`); empty
    replies take no part."""
    out = []
    for row, conversation, replies in zip(rows, conversations, samples, strict=True):
        scores, metrics = reply_scores(scorers, row, replies)
        # An empty reply cannot be shown for ranking (the outbox refuses it): left unscored.
        scores = [None if not r.strip() else s for r, s in zip(replies, scores, strict=True)]
        picked = Picked(conversation, replies, scores, metrics=metrics)
        chosen = choose(replies, scores)
        if isinstance(chosen, str):
            picked.why_not = chosen
        else:
            picked.best, picked.worst = chosen
        out.append(picked)
    return out


def queue(store: Any, picks: list[Picked], *, adapter: str, model: str, n: int) -> int:
    """Queue each chosen pair (best first) in the outbox in one transaction, with the scores
    and scorers' metrics in its metadata; returns how many were new."""
    from feedback.argilla.outbox import NewPair, queue_pairs

    chosen = [p for p in picks if p.best is not None and p.worst is not None]
    pairs = [
        NewPair(
            source="generated",
            prompt=p.conversation,
            first=p.replies[p.best],  # type: ignore[index]
            second=p.replies[p.worst],  # type: ignore[index]
            metadata={
                "model": model,
                "adapter_first": adapter,
                "adapter_second": adapter,
                "best_of": n,
                "score_first": p.scores[p.best],  # type: ignore[index]
                "score_second": p.scores[p.worst],  # type: ignore[index]
                "metrics_first": p.metrics[p.best],  # type: ignore[index]
                "metrics_second": p.metrics[p.worst],  # type: ignore[index]
            },
        )
        for p in chosen
    ]
    if not pairs:
        return 0
    results = queue_pairs(store, pairs)
    for picked, result in zip(chosen, results, strict=True):
        picked.queued = result.created
    return sum(r.created for r in results)


def keep_for_round(store: Any, picks: list[Picked]) -> int:
    """Store each chosen pair as a `best-of` preference (best chosen, worst rejected), without
    asking annotators; returns how many were new (a pair stored before is a duplicate)."""
    from feedback.records import NewPreference

    chosen = [p for p in picks if p.best is not None and p.worst is not None]
    if not chosen:
        return 0
    pairs = [
        NewPreference(
            prompt=p.conversation,
            chosen=p.replies[p.best],  # type: ignore[index]
            rejected=p.replies[p.worst],  # type: ignore[index]
        )
        for p in chosen
    ]
    return store.add_bulk(preferences=pairs, source="best-of").added
