"""Held-out evaluation of adapters against each other, item by item, for the gate.

Metrics per model (the bare base, the serving adapter, each stage of the round):
  - `pref_acc`: share of held-out pairs whose implicit DPO reward ranks chosen above
    rejected, reward = log p_model(reply | prompt) - log p_base(reply | prompt) (a tie,
    as for the bare base itself, counts half, so chance is 0.5);
  - `kto_acc`: the same for held-out unpaired 👍/👎 replies: share whose implicit reward
    has the label's sign (above 0 for 👍, below for 👎; 0 counts half). Reported, and gated
    only when TUNELOOP_GATE_MARGINS names it;
  - `heldout_loss`: mean token NLL of the held-out reference replies (`sft_rows`: the round
    passes the answers people wrote, not sampled replies someone approved);
  - `general_loss`: the same on a small fixed set of general instructions
    (`data/general_checks.jsonl`): the regression check that a round did not forget how
    to answer outside the domain;
  - `reply_match` (generation on, `approved` answers given): each held-out prompt's greedy
    reply scored against its approved answers (training/eval/reply_match.py), the gate's
    default objective;
  - `rubric_pass` (when a rubric is given and generation is on): share of greedy replies
    to held-out prompts that pass every rubric check that applies;
  - `general_pass` (generation on): share of general checks whose reply matches its
    `must_match` pattern.
Every model is evaluated on the same rows in the same process, so the gate compares like
with like; the base model is loaded once and adapters are switched by name. Each metric is
also kept per item (`metrics["items"]`), which `training/gate.py` pairs across models.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.eval.generate import token_ids

Row = dict[str, Any]


class EvaluationError(Exception):
    """Held-out evaluation cannot run on this model (its chat template, say)."""


@dataclass(frozen=True)
class EvalSettings:
    """What to evaluate and how much of it."""

    batch_size: int = 8
    max_length: int = 512  # rows are cut where training cuts them (TUNELOOP_TRAIN_MAX_LENGTH)
    generate: bool = True
    max_prompts: int = 24
    max_new_tokens: int = 96
    general_max_new_tokens: int = 32  # the general checks' answers are a few words
    rubric_file: Path | None = None
    general_file: Path | None = None
    system_prompt: str = ""  # given to the general checks, as the chat app serves them
    cache_dir: Path | None = None  # per-item results kept between rounds (eval/cache.py)


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
    p_ids, full = token_ids(p_ids), token_ids(full)
    if full[: len(p_ids)] != p_ids:
        raise EvaluationError("the chat template renders a prompt differently mid-conversation")
    cut = max(0, len(full) - max_length)  # keep the reply: drop the prompt's oldest tokens
    return full[cut:], max(1, len(p_ids) - cut)


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

    from training.eval.generate import pack_rows, prefix_cache

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
            prefix = _shared_start(batch)
            input_ids, attention = pack_rows([ids for ids, _ in batch], prefix, pad)
            width = input_ids.shape[1]
            keep = max(len(ids) - first for ids, first in batch) + 1
            mask = torch.zeros((len(batch), width), dtype=torch.bool)
            for i, (ids, first) in enumerate(batch):
                mask[i, width - len(ids) + first :] = True
            positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
            cache = prefix_cache(model, input_ids, prefix, device)
            extra = {} if cache is None else {"cache": cache, "use_cache": True}
            logits = model(
                input_ids=input_ids[:, prefix:].to(device),
                attention_mask=attention.to(device),
                position_ids=positions[:, prefix:].to(device),
                logits_to_keep=keep,
                **extra,
            ).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            target = input_ids[:, width - keep + 1 :].to(device)
            token_logp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            in_reply = mask[:, width - keep + 1 :].to(device)
            sums = (token_logp * in_reply).sum(dim=1)
            counts = in_reply.sum(dim=1)
            out.extend((float(s), int(n)) for s, n in zip(sums, counts, strict=True))
    return out


def _shared_start(batch: list[tuple[list[int], int]]) -> int:
    """How many leading tokens a batch's rows share and compute once (a deployment's system
    prompt, a pair's prompt): none below generation's threshold, and never a token whose
    output scores a reply (each row keeps the position before its reply as its own)."""
    from training.eval.generate import SHARED_PREFIX_MIN_TOKENS, shared_prefix

    if len(batch) < 2:
        return 0
    n = min(shared_prefix([ids for ids, _ in batch]), min(first for _, first in batch) - 1)
    return n if n >= SHARED_PREFIX_MIN_TOKENS else 0


def _mean_nll(scores: list[tuple[float, int]]) -> float | None:
    tokens = sum(n for _, n in scores)
    return None if tokens == 0 else -sum(s for s, _ in scores) / tokens


def customer_of(prompt: list[dict]) -> str | None:
    """The customer's name if a user turn introduces it ("I'm Dana"), for the rubric."""
    from feedback.pii import find_names

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
    kto_rows: list[Row] | None = None,
    load_in_4bit: bool = False,
    bf16: bool | None = None,
    on_model: Callable[[str], None] | None = None,
    approved: list[tuple[list[dict], list[str]]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Metrics for each named adapter (None = the bare base) on the same held-out rows
    (`kto_rows`: held-out unpaired 👍/👎 replies, for `kto_acc`; `approved`: held-out
    prompts with their approved answers, for `reply_match`). Per-item results are
    reused from `settings.cache_dir` when the same model met the same item before. The
    base loads as `serve` loads it (`load_in_4bit`, `bf16`: training/device/precision.py)."""
    from peft import PeftModel

    from training.datasets import with_system
    from training.eval.cache import ItemCache, adapter_identity
    from training.eval.evalsets import model_identity
    from training.eval.generate import generate_replies, load_for_generation
    from training.eval.reply_match import METRIC as REPLY_METRIC
    from training.eval.reply_match import best_score

    model, tokenizer = load_for_generation(model_dir, None, load_in_4bit=load_in_4bit, bf16=bf16)
    dtype = str(next(model.parameters()).dtype)
    general = [
        {**r, "messages": with_system(r["messages"], settings.system_prompt)}
        for r in read_general_checks(settings.general_file)
    ]
    rubric = None
    if settings.rubric_file is not None and Path(settings.rubric_file).is_file():
        from training.eval.rubric import load_rubric

        rubric = load_rubric(settings.rubric_file)

    loss_items = [(r["messages"][:-1], r["messages"][-1:]) for r in sft_rows]
    pair_items = [(p["prompt"], p["chosen"]) for p in pairs] + [
        (p["prompt"], p["rejected"]) for p in pairs
    ]
    kto_items = [(r["prompt"], r["completion"]) for r in kto_rows or []]
    kto_labels = [bool(r["label"]) for r in kto_rows or []]
    general_items = [(r["messages"][:-1], r["messages"][-1:]) for r in general]
    approved = approved or []
    # Prompts with an approved answer first: the cap must not crowd out the objective's items.
    prompts = [p for p, _ in approved] + [r["messages"][:-1] for r in sft_rows]
    prompts += [p["prompt"] for p in pairs]
    answers_for = {json.dumps(p, sort_keys=True): answers for p, answers in approved}
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
    base_identity = model_identity(Path(model_dir))

    def cache_for(adapter: Path | None) -> ItemCache:
        identity = {
            "model": base_identity,
            "adapter": adapter_identity(adapter),
            "load_in_4bit": load_in_4bit,
            "max_length": settings.max_length,
            "dtype": dtype,
        }
        return ItemCache(settings.cache_dir, identity)

    def logps(cache: ItemCache, items: list[tuple[list[dict], list[dict]]]) -> list[tuple]:
        keys = [cache.key("logp", p, r) for p, r in items]
        todo = {k: item for k, item in zip(keys, items, strict=True) if cache.get(k) is None}
        computed = reply_logps(model, tokenizer, list(todo.values()), **kw)
        for k, value in zip(todo, computed, strict=True):
            cache.put(k, list(value))
        return [tuple(cache.get(k)) for k in keys]

    def replies(cache: ItemCache, conversations: list[list[dict]], max_new: int) -> list[str]:
        keys = [cache.key("greedy", max_new, c) for c in conversations]
        todo = {k: c for k, c in zip(keys, conversations, strict=True) if cache.get(k) is None}
        computed = generate_replies(model, tokenizer, list(todo.values()), max_new_tokens=max_new)
        for k, value in zip(todo, computed, strict=True):
            cache.put(k, value)
        return [cache.get(k) for k in keys]

    def measure(cache: ItemCache, full: bool = True) -> dict[str, Any]:
        m: dict[str, Any] = {
            "pair_logps": [s for s, _ in logps(cache, pair_items)],
            "kto_logps": [s for s, _ in logps(cache, kto_items)],
        }
        if not full:  # the bare base as the reference of the implicit rewards only
            return m
        heldout = logps(cache, loss_items)
        general_scores = logps(cache, general_items)
        m.update(
            heldout_loss=_mean_nll(heldout),
            general_loss=_mean_nll(general_scores),
            items={"heldout_loss": _item_nll(heldout), "general_loss": _item_nll(general_scores)},
        )
        if settings.generate and gen_prompts and (rubric is not None or approved):
            answers = replies(cache, gen_prompts, settings.max_new_tokens)
            matched = [
                best_score(reply, answers_for[key])
                for reply, prompt in zip(answers, gen_prompts, strict=True)
                if (key := json.dumps(prompt, sort_keys=True)) in answers_for
            ]
            if matched:
                m[REPLY_METRIC] = sum(matched) / len(matched)
                m["items"][REPLY_METRIC] = {"values": matched}
                # the replies themselves, for a judge (training/eval/reply_match.py)
                m["replies"] = [
                    {"prompt": prompt, "reply": reply}
                    for reply, prompt in zip(answers, gen_prompts, strict=True)
                    if json.dumps(prompt, sort_keys=True) in answers_for
                ]
        if settings.generate and rubric is not None and gen_prompts:
            passed = [
                rubric.passes(reply, {"customer": customer_of(prompt)})
                for reply, prompt in zip(answers, gen_prompts, strict=True)
            ]
            m["rubric_pass"] = sum(passed) / len(passed)
            m["items"]["rubric_pass"] = {"values": [float(p) for p in passed]}
            m["samples"] = [
                {"prompt": p[-1]["content"], "reply": r, "passes": ok}
                for p, r, ok in list(zip(gen_prompts, answers, passed, strict=True))[:5]
            ]
        if settings.generate and general_gen:
            answers = replies(
                cache, [r["messages"][:-1] for r in general_gen], settings.general_max_new_tokens
            )
            ok = [
                re.search(r["must_match"], reply, re.IGNORECASE) is not None
                for r, reply in zip(general_gen, answers, strict=True)
            ]
            m["general_pass"] = sum(ok) / len(ok)
            m["items"]["general_pass"] = {"values": [float(v) for v in ok]}
        cache.save()
        return m

    results: dict[str, dict[str, Any]] = {}
    peft_model: Any = None
    if on_model:
        on_model("base")
    base_cache = cache_for(None)
    # The base's replies and losses count only when it is one of the models compared.
    base_metrics = measure(base_cache, full=None in adapters.values())
    base_cache.save()
    for name, adapter in adapters.items():
        if adapter is None:
            results[name] = {**base_metrics, "items": dict(base_metrics["items"])}
            continue
        if on_model:
            on_model(name)
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(model, str(adapter), adapter_name=name)
            model = peft_model
        else:
            peft_model.load_adapter(str(adapter), adapter_name=name)
        peft_model.set_adapter(name)
        results[name] = measure(cache_for(adapter))

    base_logps = base_metrics["pair_logps"]
    n = len(pairs)
    for metrics in results.values():
        pair_logps = metrics.pop("pair_logps")
        outcomes = _pref_outcomes(pair_logps, base_logps, n)
        metrics["pref_acc"] = sum(outcomes) / n if n else None
        if n:
            metrics["items"]["pref_acc"] = {"values": outcomes}
        metrics["heldout_pairs"] = n
        kto = _kto_outcomes(metrics.pop("kto_logps"), base_metrics["kto_logps"], kto_labels)
        metrics["kto_acc"] = sum(kto) / len(kto) if kto else None
        if kto:
            metrics["items"]["kto_acc"] = {"values": kto}
        metrics["heldout_kto_rows"] = len(kto)
        metrics["heldout_rows"] = len(sft_rows)
    return results


def _pref_outcomes(logps: list[float], base: list[float], n: int) -> list[float]:
    """Per pair: 1 when the implicit reward ranks chosen first, 0.5 for a tie, else 0."""
    out = []
    for i in range(n):
        chosen = logps[i] - base[i]
        rejected = logps[n + i] - base[n + i]
        margin = chosen - rejected
        out.append(1.0 if margin > 1e-6 else 0.5 if abs(margin) <= 1e-6 else 0.0)
    return out


def _kto_outcomes(logps: list[float], base: list[float], labels: list[bool]) -> list[float]:
    """Per unpaired reply: 1 when its implicit reward has the label's sign, 0.5 when it is
    0 (the base itself), else 0."""
    out = []
    for logp, ref, up in zip(logps, base, labels, strict=True):
        reward = (logp - ref) if up else (ref - logp)
        out.append(1.0 if reward > 1e-6 else 0.5 if abs(reward) <= 1e-6 else 0.0)
    return out


def _item_nll(scores: list[tuple[float, int]]) -> dict[str, list[float]]:
    """Per-item mean token NLL, weighted by tokens (their weighted mean is `_mean_nll`)."""
    kept = [(s, n) for s, n in scores if n > 0]
    return {"values": [-s / n for s, n in kept], "weights": [float(n) for _, n in kept]}
