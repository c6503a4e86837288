"""Held-out evaluation of adapters against each other, and the gate that decides promotion.

Metrics per model (the bare base, the serving adapter, each stage of the round):
  - `pref_acc`: share of held-out pairs whose implicit DPO reward ranks chosen above
    rejected, reward = log p_model(reply | prompt) - log p_base(reply | prompt) (a tie,
    as for the bare base itself, counts half, so chance is 0.5);
  - `heldout_loss`: mean token NLL of the held-out reference replies (SFT rows and chosen);
  - `general_loss`: the same on a small fixed set of general instructions
    (`data/general_checks.jsonl`): the regression check that a round did not forget how
    to answer outside the domain;
  - `rubric_pass` (when a rubric is given and generation is on): share of greedy replies
    to held-out prompts that pass every rubric check that applies;
  - `general_pass` (generation on): share of general checks whose reply matches its
    `must_match` pattern.
Every model is evaluated on the same rows in the same process, so the gate compares like
with like; the base model is loaded once and adapters are switched by name.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Row = dict[str, Any]


class EvaluationError(Exception):
    """Held-out evaluation cannot run on this model (its chat template, say)."""


@dataclass(frozen=True)
class EvalSettings:
    """What to evaluate and how much of it."""

    batch_size: int = 8
    max_length: int = 1024
    generate: bool = True
    max_prompts: int = 24
    max_new_tokens: int = 96
    general_max_new_tokens: int = 32  # the general checks' answers are a few words
    rubric_file: Path | None = None
    general_file: Path | None = None
    system_prompt: str = ""  # given to the general checks, as the chat app serves them


@dataclass(frozen=True)
class GateMargins:
    """How much better a candidate must be than the serving version, and what counts as a
    regression."""

    min_pref_acc_gain: float = 0.02
    min_loss_decrease: float = 0.01
    min_rubric_gain: float = 0.05
    max_loss_increase: float = 0.05
    max_pref_acc_drop: float = 0.0
    max_rubric_drop: float = 0.0
    max_general_loss_increase: float = 0.25
    max_general_pass_drop: float = 0.0


def read_general_checks(path: Path | None) -> list[Row]:
    """General instructions: `{"messages": [user, assistant reference], "must_match"?}`."""
    if path is None or not Path(path).is_file():
        return []
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


# -- log-probabilities ------------------------------------------------------------------------
def _encode(tokenizer: Any, prompt: list[dict], reply: list[dict], max_length: int) -> tuple:
    p_ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*prompt, *reply], tokenize=True)
    p_ids, full = _ids(p_ids), _ids(full)
    if full[: len(p_ids)] != p_ids:
        raise EvaluationError("the chat template renders a prompt differently mid-conversation")
    cut = max(0, len(full) - max_length)  # keep the reply: drop the prompt's oldest tokens
    return full[cut:], max(1, len(p_ids) - cut)


def _ids(value: Any) -> list[int]:
    if isinstance(value, dict) or hasattr(value, "input_ids"):
        value = value["input_ids"]
    return list(value)


def reply_logps(
    model: Any,
    tokenizer: Any,
    items: list[tuple[list[dict], list[dict]]],
    *,
    batch_size: int = 8,
    max_length: int = 1024,
) -> list[tuple[float, int]]:
    """(sum of log p, token count) of each reply given its prompt, under `model` as it is."""
    import torch

    encoded = [_encode(tokenizer, p, r, max_length) for p, r in items]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = []
    model.eval()
    # Left padding puts every reply at the end of its row, so the output layer runs only on
    # the last positions (`logits_to_keep`): with a 49k vocabulary that is most of the work.
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start : start + batch_size]
            width = max(len(ids) for ids, _ in batch)
            keep = max(len(ids) - first for ids, first in batch) + 1
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.bool)
            for i, (ids, first) in enumerate(batch):
                input_ids[i, width - len(ids) :] = torch.tensor(ids)
                attention[i, width - len(ids) :] = 1
                mask[i, width - len(ids) + first :] = True
            positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
            logits = model(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                position_ids=positions.to(device),
                logits_to_keep=keep,
            ).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            target = input_ids[:, width - keep + 1 :].to(device)
            token_logp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            in_reply = mask[:, width - keep + 1 :].to(device)
            sums = (token_logp * in_reply).sum(dim=1)
            counts = in_reply.sum(dim=1)
            out.extend((float(s), int(n)) for s, n in zip(sums, counts, strict=True))
    return out


def _mean_nll(scores: list[tuple[float, int]]) -> float | None:
    tokens = sum(n for _, n in scores)
    return None if tokens == 0 else -sum(s for s, _ in scores) / tokens


def customer_of(prompt: list[dict]) -> str | None:
    """The customer's name if a user turn introduces it ("I'm Dana"), for the rubric."""
    from training.curation import find_names

    names = find_names(str(m.get("content", "")) for m in prompt if m.get("role") == "user")
    return names[0].split()[0] if names else None


# -- evaluation -----------------------------------------------------------------------------
def evaluate_models(
    model_dir: Path,
    adapters: dict[str, Path | None],
    *,
    sft_rows: list[Row],
    pairs: list[Row],
    settings: EvalSettings,
    load_in_4bit: bool = False,
    on_model: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Metrics for each named adapter (None = the bare base) on the same held-out rows."""
    from peft import PeftModel

    from training.datasets import with_system
    from training.generate import generate_replies, load_for_generation

    model, tokenizer = load_for_generation(model_dir, None, load_in_4bit=load_in_4bit)
    general = [
        {**r, "messages": with_system(r["messages"], settings.system_prompt)}
        for r in read_general_checks(settings.general_file)
    ]
    rubric = None
    if settings.rubric_file is not None and Path(settings.rubric_file).is_file():
        from training.rubric import load_rubric

        rubric = load_rubric(settings.rubric_file)

    loss_items = [(r["messages"][:-1], r["messages"][-1:]) for r in sft_rows]
    pair_items = [(p["prompt"], p["chosen"]) for p in pairs] + [
        (p["prompt"], p["rejected"]) for p in pairs
    ]
    general_items = [(r["messages"][:-1], r["messages"][-1:]) for r in general]
    prompts = [r["messages"][:-1] for r in sft_rows] + [p["prompt"] for p in pairs]
    seen: set[str] = set()
    gen_prompts = []
    for prompt in prompts:
        key = json.dumps(prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            gen_prompts.append(prompt)
    gen_prompts = gen_prompts[: settings.max_prompts]
    general_gen = [r for r in general if r.get("must_match")]
    kw = {"batch_size": settings.batch_size, "max_length": settings.max_length}

    def measure() -> dict[str, Any]:
        m: dict[str, Any] = {
            "heldout_loss": _mean_nll(reply_logps(model, tokenizer, loss_items, **kw)),
            "general_loss": _mean_nll(reply_logps(model, tokenizer, general_items, **kw)),
            "pair_logps": [s for s, _ in reply_logps(model, tokenizer, pair_items, **kw)],
        }
        if settings.generate and rubric is not None and gen_prompts:
            replies = generate_replies(
                model, tokenizer, gen_prompts, max_new_tokens=settings.max_new_tokens
            )
            passed = [
                rubric.passes(reply, {"customer": customer_of(prompt)})
                for reply, prompt in zip(replies, gen_prompts, strict=True)
            ]
            m["rubric_pass"] = sum(passed) / len(passed)
            m["samples"] = [
                {"prompt": p[-1]["content"], "reply": r, "passes": ok}
                for p, r, ok in list(zip(gen_prompts, replies, passed, strict=True))[:5]
            ]
        if settings.generate and general_gen:
            replies = generate_replies(
                model,
                tokenizer,
                [r["messages"][:-1] for r in general_gen],
                max_new_tokens=settings.general_max_new_tokens,
            )
            ok = [
                re.search(r["must_match"], reply, re.IGNORECASE) is not None
                for r, reply in zip(general_gen, replies, strict=True)
            ]
            m["general_pass"] = sum(ok) / len(ok)
        return m

    results: dict[str, dict[str, Any]] = {}
    peft_model: Any = None
    if on_model:
        on_model("base")
    base_metrics = measure()
    for name, adapter in adapters.items():
        if adapter is None:
            results[name] = dict(base_metrics)
            continue
        if on_model:
            on_model(name)
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(model, str(adapter), adapter_name=name)
            model = peft_model
        else:
            peft_model.load_adapter(str(adapter), adapter_name=name)
        peft_model.set_adapter(name)
        results[name] = measure()

    base_logps = base_metrics["pair_logps"]
    n = len(pairs)
    for metrics in results.values():
        logps = metrics.pop("pair_logps")
        metrics["pref_acc"] = _pref_acc(logps, base_logps, n) if n else None
        metrics["heldout_pairs"] = n
        metrics["heldout_rows"] = len(sft_rows)
    return results


def _pref_acc(logps: list[float], base: list[float], n: int) -> float:
    """Share of pairs whose implicit reward ranks chosen first; ties count half."""
    score = 0.0
    for i in range(n):
        chosen = logps[i] - base[i]
        rejected = logps[n + i] - base[n + i]
        margin = chosen - rejected
        score += 1.0 if margin > 1e-6 else 0.5 if abs(margin) <= 1e-6 else 0.0
    return score / n


# -- choosing and gating ----------------------------------------------------------------------
def _num(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def rank_key(metrics: dict[str, Any]) -> tuple[float, float, float]:
    """Sort key (higher is better): rubric pass rate, then preference accuracy, then -loss."""
    rubric = _num(metrics, "rubric_pass")
    pref = _num(metrics, "pref_acc")
    loss = _num(metrics, "heldout_loss")
    return (
        rubric if rubric is not None else 0.0,
        pref if pref is not None else 0.0,
        -loss if loss is not None else -math.inf,
    )


def choose_candidate(stages: dict[str, dict[str, Any]]) -> str:
    """The best stage by `rank_key` (the earlier stage wins a tie: DPO must earn its place)."""
    names = list(stages)
    return max(names, key=lambda s: (rank_key(stages[s]), -names.index(s)))


def gate(candidate: dict[str, Any], serving: dict[str, Any], margins: GateMargins) -> list[str]:
    """Reasons the candidate may not replace the serving version ([] = promote)."""
    reasons: list[str] = []
    for key in ("heldout_loss", "pref_acc", "general_loss", "rubric_pass"):
        value = candidate.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            reasons.append(f"{key} is not a finite number ({value})")
    if reasons:
        return reasons

    def delta(key: str) -> float | None:
        a, b = _num(candidate, key), _num(serving, key)
        return None if a is None or b is None else a - b

    d_loss, d_pref = delta("heldout_loss"), delta("pref_acc")
    d_rubric, d_gen_loss, d_gen_pass = (
        delta("rubric_pass"),
        delta("general_loss"),
        delta("general_pass"),
    )
    if d_loss is not None and d_loss > margins.max_loss_increase:
        reasons.append(f"held-out loss rose by {d_loss:.4f} (> {margins.max_loss_increase})")
    if d_pref is not None and d_pref < -margins.max_pref_acc_drop:
        reasons.append(f"preference accuracy fell by {-d_pref:.3f}")
    if d_rubric is not None and d_rubric < -margins.max_rubric_drop:
        reasons.append(f"rubric pass rate fell by {-d_rubric:.3f}")
    if d_gen_loss is not None and d_gen_loss > margins.max_general_loss_increase:
        reasons.append(
            f"general-instruction loss rose by {d_gen_loss:.4f} "
            f"(> {margins.max_general_loss_increase}): a regression outside the domain"
        )
    if d_gen_pass is not None and d_gen_pass < -margins.max_general_pass_drop:
        reasons.append(f"general-instruction pass rate fell by {-d_gen_pass:.3f}")
    better = (
        (d_pref is not None and d_pref >= margins.min_pref_acc_gain)
        or (d_loss is not None and -d_loss >= margins.min_loss_decrease)
        or (d_rubric is not None and d_rubric >= margins.min_rubric_gain)
    )
    if not better:
        reasons.append(
            "not better than the serving version by the configured margins "
            f"(preference accuracy +{margins.min_pref_acc_gain}, held-out loss "
            f"-{margins.min_loss_decrease} or rubric pass rate +{margins.min_rubric_gain})"
        )
    return reasons
