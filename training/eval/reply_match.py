"""The gate's generated-reply metric: how close a model's greedy reply is to an approved answer.

Every round answers its held-out prompts that have an approved answer (an expert's
correction, an imported or seed conversation, a 👍 reply, the chosen reply of a pair) with
the serving version and with every stage, and scores each reply against that answer. The
score of one reply is a number from 0 to 1, by one rule, decided by the approved answer:

1. the answer is a JSON object or array: the reply must parse as JSON too (0 if not), and
   its score is the F1 of their (field path, value) leaves: every field right is 1, a
   missing or extra field costs precision or recall;
2. the answer is short (at most SHORT_ANSWER_WORDS words once normalised: lower case,
   punctuation as spaces, whitespace collapsed): 1 when the reply normalises to the same
   words, else 0. A short answer is a fact, a label or a number: half of it is wrong;
3. otherwise: the token F1 of the normalised words (as SQuAD scores free text), so a reply
   that says the same in other words still earns most of the credit.

A prompt with several approved answers (a correction and a 👍 reply, say) scores the
best of them. The metric is `reply_match`: the mean over prompts, kept per prompt for the
gate's paired comparison.

With a judge model (TUNELOOP_JUDGE_MODEL) the same replies are also judged pairwise against
the serving version's reply to the same prompt (training/eval/judge.py, both orders): a
stage's per-prompt score is 1 (its reply wins), 0 (loses) or 0.5, and serving's is 0.5.
That is `reply_judge`, which the gate then takes as the objective in place of `reply_match`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from feedback.canonical import canonical_json

Row = dict[str, Any]
METRIC = "reply_match"
JUDGE_METRIC = "reply_judge"
# Answers of up to this many normalised words are compared whole (rule 2 above).
SHORT_ANSWER_WORDS = 10
# Where an approved answer came from (training/datasets.py tags held-out SFT rows). People
# wrote these; the others are model replies that someone approved.
HUMAN_SOURCES = frozenset({"import", "correction", "reason", "seed"})


def words(text: str) -> list[str]:
    """Lower case, punctuation as spaces, split on whitespace: "Hi, Dana!" -> [hi, dana]."""
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


def token_f1(reply: str, answer: str) -> float:
    """F1 of the two texts' word multisets (1 when both are empty)."""
    got, want = Counter(words(reply)), Counter(words(answer))
    return _f1(got, want)


def _f1(got: Counter, want: Counter) -> float:
    if not got and not want:
        return 1.0
    common = sum((got & want).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(got.values()), common / sum(want.values())
    return 2 * precision * recall / (precision + recall)


def _leaves(value: Any, path: str = "") -> Counter:
    """(path, value) pairs of a JSON value's leaves, as canonical strings."""
    if isinstance(value, dict):
        out: Counter = Counter()
        for key, item in value.items():
            out += _leaves(item, f"{path}/{key}")
        return out or Counter({f"{path}={{}}": 1})
    if isinstance(value, list):
        out = Counter()
        for i, item in enumerate(value):
            out += _leaves(item, f"{path}[{i}]")
        return out or Counter({f"{path}=[]": 1})
    return Counter({f"{path}={canonical_json(value)}": 1})


def _json_container(text: str) -> Any:
    """The parsed JSON object or array `text` holds, else None."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict | list) else None


def score(reply: str, answer: str) -> float:
    """One reply against one approved answer, 0 to 1 (the rule in the module docstring)."""
    wanted = _json_container(answer.strip())
    if wanted is not None:
        got = _json_container(reply.strip())
        return 0.0 if got is None else _f1(_leaves(got), _leaves(wanted))
    if len(words(answer)) <= SHORT_ANSWER_WORDS:
        return float(words(reply) == words(answer))
    return token_f1(reply, answer)


def best_score(reply: str, answers: list[str]) -> float:
    """The reply's score against the closest of a prompt's approved answers."""
    return max((score(reply, a) for a in answers), default=0.0)


def approved_answers(
    sft_rows: list[Row], pairs: list[Row], kto_rows: list[Row]
) -> list[tuple[list[dict], list[str]]]:
    """(prompt, approved answers) per distinct held-out prompt, in first-seen order: the
    final reply of SFT rows (corrections, imported, seed and 👍 conversations), the chosen
    reply of pairs and the 👍 replies of unpaired thumbs. 👎 replies approve nothing."""
    found: dict[str, tuple[list[dict], list[str]]] = {}

    def add(prompt: list[dict], reply: list[dict]) -> None:
        text = str(reply[-1].get("content", "")) if reply else ""
        if not text.strip():
            return
        entry = found.setdefault(canonical_json(prompt), (prompt, []))
        if text not in entry[1]:
            entry[1].append(text)

    for row in sft_rows:
        add(row["messages"][:-1], row["messages"][-1:])
    for pair in pairs:
        add(pair["prompt"], pair["chosen"])
    for row in kto_rows:
        if row.get("label"):
            add(row["prompt"], row["completion"])
    return list(found.values())


def human_written(sft_rows: list[Row]) -> list[Row]:
    """The held-out SFT rows whose answer a person wrote (HUMAN_SOURCES): what the held-out
    loss measures. A row with no source (a snapshot taken before sources were kept) counts."""
    return [r for r in sft_rows if r.get("source", "import") in HUMAN_SOURCES]


def judge_replies(judge: Any, metrics: dict[str, dict[str, Any]], reference: str) -> None:
    """Add `reply_judge` to every model's metrics: each reply judged against `reference`'s
    reply to the same prompt (the reference itself scores 0.5 on each). Nothing when the
    models have no replies to compare."""
    from training.eval.generate import load_for_generation
    from training.eval.judge import pairwise_scores

    theirs = [r["reply"] for r in metrics[reference].get("replies") or []]
    if not theirs:
        return
    conversations = [r["prompt"] for r in metrics[reference]["replies"]]
    model, tokenizer = load_for_generation(judge.model_dir(), bf16=judge.bf16)
    try:
        for m in metrics.values():
            ours = [r["reply"] for r in m.get("replies") or []]
            if len(ours) != len(theirs):
                continue
            scores = pairwise_scores(
                model, tokenizer, conversations, ours, theirs, batch_size=judge.batch_size
            )
            m[JUDGE_METRIC] = sum(scores) / len(scores)
            m["items"][JUDGE_METRIC] = {"values": scores}
    finally:
        del model, tokenizer
