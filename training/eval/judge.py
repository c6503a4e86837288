"""The `pairwise` scorer: a local judge model says which of two replies is better.

For each eval row the judge reads the conversation and two replies, the candidate's and the
reference adapter's (the first adapter of the eval, in the gate the serving version), and is
asked to answer with "1" or "2". Its verdict is read from the log-probabilities of those two
tokens at the first position of its answer, not from generated text: every row gets a
verdict (no unparsable "Both are good, but..."), the same inputs always give the same one,
and nothing depends on the judge following an output format beyond its first token.

Each row is judged twice, with the replies in both orders, because judges favour a position
(small ones heavily): in each order the reply with the higher log-probability wins (1),
loses (0) or ties (0.5, equal log-probabilities); the row's score is the mean of its two
orders, so a judge that always says "1" scores every row 0.5 (a tie). Identical replies are
a tie without asking the judge.

Metrics (higher is better for the candidate, as the gate expects):
  - `pairwise_win`: mean row score, the candidate's win rate against the reference with
    ties counted half (0.5 = no difference; the reference against itself is exactly 0.5);
  - `pairwise_win_low`, `pairwise_win_high`: its 95% Wilson score interval over rows.
Wilson rather than a bootstrap: with the few dozen rows an operator writes, a percentile
bootstrap collapses to a zero-width interval at 0 or 1 win rates, and Wilson does not;
counting ties as half a success makes it wider (more cautious) than the rows' real spread,
never narrower.

The judge is any local Hugging Face chat model (TUNELOOP_JUDGE_MODEL); it should be a
stronger model than the one being trained. The embedded SmolLM2 works as a judge only as
plumbing: its verdicts are close to chance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The judge's instructions. {conversation} is the eval row's conversation as the adapters
# saw it (system prompt included, so the judge knows the deployment's rules).
JUDGE_PROMPT = """You are judging two replies an assistant could give in the conversation below.
Decide which reply is better: more correct, more helpful, and closer to the instructions the
assistant was given. Ignore which reply comes first.

Conversation:
{conversation}

Reply 1:
{first}

Reply 2:
{second}

Which reply is better? Answer with one character: 1 or 2."""
LABELS = ("1", "2")
MAX_CHARS = 4000  # per reply and for the conversation: the judge sees the end of longer ones
Z95 = 1.959963984540054


class JudgeError(Exception):
    """The judge model cannot give verdicts (no distinct tokens for its answer labels)."""


def judge_prompt(conversation: list[dict[str, str]], first: str, second: str) -> str:
    """The judge's one user message for `conversation` and two replies in this order."""
    lines = [f"{m['role'].capitalize()}: {m['content'].strip()}" for m in conversation]
    return JUDGE_PROMPT.format(
        conversation=_tail("\n".join(lines)), first=_tail(first.strip()), second=_tail(second)
    )


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_CHARS else "..." + text[-MAX_CHARS:]


def label_token_ids(tokenizer: Any) -> list[list[int]]:
    """For each answer label, the single tokens that spell it ("1" and " 1", say)."""
    found: list[list[int]] = []
    for label in LABELS:
        ids = set()
        for text in (label, " " + label):
            enc = tokenizer.encode(text, add_special_tokens=False)
            if len(enc) == 1 and enc[0] != tokenizer.unk_token_id:
                ids.add(int(enc[0]))
        found.append(sorted(ids))
    if not all(found) or set(found[0]) & set(found[1]):
        raise JudgeError(
            f"the judge's tokenizer has no distinct single tokens for {' and '.join(LABELS)}"
        )
    return found


def first_label_margins(
    model: Any, tokenizer: Any, prompts: list[str], *, batch_size: int = 8
) -> list[float]:
    """log p("1") - log p("2") of the judge's first answer token, for each user prompt."""
    import torch

    labels = label_token_ids(tokenizer)
    encoded = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=True, add_generation_prompt=True
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        encoded.append(list(ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    margins: list[float] = []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start : start + batch_size]
            width = max(len(ids) for ids in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for i, ids in enumerate(batch):  # left padding: every prompt ends at the last column
                input_ids[i, width - len(ids) :] = torch.tensor(ids)
                attention[i, width - len(ids) :] = 1
            positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
            logits = (
                model(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    position_ids=positions.to(device),
                    logits_to_keep=1,
                )
                .logits[:, -1]
                .float()
            )
            logp = torch.log_softmax(logits, dim=-1)
            one = torch.logsumexp(logp[:, labels[0]], dim=-1)
            two = torch.logsumexp(logp[:, labels[1]], dim=-1)
            margins.extend(float(x) for x in (one - two))
    return margins


def outcome(margin: float) -> float:
    """1 when the judge prefers reply 1, 0 when reply 2, 0.5 when it cannot tell them apart."""
    return 1.0 if margin > 0 else 0.0 if margin < 0 else 0.5


def pairwise_scores(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    replies: list[str],
    reference: list[str],
    *,
    batch_size: int = 8,
) -> list[float]:
    """Each row's score for `replies` against `reference` (both orders averaged): 0 to 1."""
    todo = [i for i, (a, b) in enumerate(zip(replies, reference, strict=True)) if a != b]
    scores = [0.5] * len(replies)
    if not todo:
        return scores
    prompts = []
    for i in todo:  # the candidate first, then the reference first
        prompts.append(judge_prompt(conversations[i], replies[i], reference[i]))
        prompts.append(judge_prompt(conversations[i], reference[i], replies[i]))
    margins = first_label_margins(model, tokenizer, prompts, batch_size=batch_size)
    for k, i in enumerate(todo):
        scores[i] = (outcome(margins[2 * k]) + (1.0 - outcome(margins[2 * k + 1]))) / 2
    return scores


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (successes may be fractional: ties)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def pairwise_metrics(scores: list[float]) -> dict[str, float]:
    """Win rate (ties half) and its 95% Wilson interval from per-row scores."""
    n = len(scores)
    low, high = wilson_interval(sum(scores), n)
    return {"pairwise_win": sum(scores) / n, "pairwise_win_low": low, "pairwise_win_high": high}


def pairwise_scorer(
    judge_dir: Path, *, system_prompt: str = "", batch_size: int = 8, bf16: bool | None = None
) -> Callable[[list[dict[str, Any]], list[str], list[str]], dict[str, float]]:
    """A scorer `(rows, replies, reference) -> metrics` judged by the model in `judge_dir`.

    The judge is loaded on first use (only if some reply differs from the reference) and
    kept for the rest of the eval.
    """
    from training.eval.prompt_files import row_conversation

    loaded: list[Any] = []

    def score(rows: list[dict[str, Any]], replies: list[str], reference: list[str]) -> dict:
        if not replies:
            raise JudgeError("no replies to judge")
        if not loaded and replies != reference:
            from training.eval.generate import load_for_generation

            loaded.extend(load_for_generation(Path(judge_dir), bf16=bf16))
        conversations = [row_conversation(row, system_prompt) for row in rows]
        model, tokenizer = loaded if loaded else (None, None)
        scores = pairwise_scores(
            model, tokenizer, conversations, replies, reference, batch_size=batch_size
        )
        return pairwise_metrics(scores)

    return score
