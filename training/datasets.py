"""Store rows -> the round's frozen training and held-out data (a snapshot), with its hash.

A snapshot is taken once per round: the store's train/held-out rows (TRL conversational
format) plus the seed examples in `data/`, each given the deployment's system prompt when
it has none (the chat app always sends one), curated (`training.curation`), hashed, and
written to the round's folder, so a resumed round trains on exactly the same rows even if
feedback kept arriving. Held-out rows are never curated into training: the split is the
stable prompt-hash split of `feedback.split` over the store's rows and the seeds (with its
minimum size; conversations continuing a held-out prompt held out with it; train rows
repeating a held-out answer left out), and train rows that nearly repeat a held-out prompt
are dropped as well, and so are train rows whose prompt is (nearly) a prompt of one of the
gate's eval sets: a round that trained on the gate's own questions would pass it by heart.
Held-out SFT rows keep where their answer came from (`source`: import, correction, reason, seed,
thumbs_up, argilla), so the gate can tell answers people wrote from approved samples.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feedback.atomic_write import write_atomic
from feedback.canonical import canonical_json, content_key
from feedback.pii import scrub_row
from training.curation import CurationReport, dedup, drop_near_heldout

Row = dict[str, Any]
PARTS = ("sft_train", "dpo_train", "sft_heldout", "dpo_heldout", "kto_train", "kto_heldout")


@dataclass
class Snapshot:
    """The rows one round trains and evaluates on, and what is known about them."""

    sft_train: list[Row]
    dpo_train: list[Row]
    sft_heldout: list[Row]
    dpo_heldout: list[Row]
    # Unpaired 👍/👎 replies (TRL's KTO rows: prompt, completion, label).
    kto_train: list[Row] = field(default_factory=list)
    kto_heldout: list[Row] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def eval_sft(self) -> list[Row]:
        """Held-out conversations to measure SFT loss on: held-out SFT rows plus each
        held-out pair's prompt with its chosen reply (duplicates once)."""
        rows = list(self.sft_heldout)
        seen = {canonical_json(r["messages"]) for r in rows}
        for pair in self.dpo_heldout:
            messages = [*pair["prompt"], *pair["chosen"]]
            if canonical_json(messages) not in seen:
                seen.add(canonical_json(messages))
                rows.append({"messages": messages})
        return rows


def with_system(messages: list[dict[str, Any]], system_prompt: str) -> list[dict[str, Any]]:
    """`messages` with the system prompt in front unless they already start with one."""
    if not system_prompt or (messages and messages[0].get("role") == "system"):
        return list(messages)
    return [{"role": "system", "content": system_prompt}, *messages]


def read_seed_rows(path: Path | None) -> list[Row]:
    """The `{"messages": [...]}` rows of a seed JSONL file (none when there is no file)."""
    if path is None or not Path(path).is_file():
        return []
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            if isinstance(row, dict) and row.get("messages"):
                rows.append({"messages": row["messages"]})
    return rows


REPLAY_RETRY_TOKENS = 512  # a reply cut off at the budget is generated once more with this


def replay_rows(
    model_dir: Path,
    path: Path | None,
    *,
    system_prompt: str,
    max_new_tokens: int = 128,
    cache_dir: Path | None = None,
    bf16: bool | None = None,
) -> list[Row]:
    """The bare base model's own greedy answers to the general prompts in `path`.

    Training on them next to the domain's rows (replay, or self-distillation) holds the
    round to what the base model already did outside the domain: measured with
    bench/loop_quality.py, a round that learned the demo house style kept 7 of 10 general
    checks right with them and 0 of 10 without. Empty when there is no such file.

    Only finished answers are kept: one the token budget cut off is generated again with a
    larger budget, and dropped if it still does not end (trained on, a cut-off answer
    teaches the model to stop mid-sentence). Greedy answers depend only on the base model's
    files, the prompts and the system prompt, so with `cache_dir` they are generated once
    per combination (and answering precision, `bf16`: training/device/precision.py) and reused
    by every later round.
    """
    if path is None or not Path(path).is_file():
        return []
    from training.eval.generate import generate_replies, load_for_generation
    from training.eval.prompt_files import read_rows, row_conversation

    rows = read_rows(Path(path))
    if not rows:
        return []
    conversations = [row_conversation(r, system_prompt) for r in rows]
    cache = _replay_cache_file(cache_dir, model_dir, conversations, max_new_tokens, bf16)
    if cache is not None and cache.is_file():
        try:
            cached = json.loads(cache.read_text(encoding="utf-8"))["rows"]
            if isinstance(cached, list):
                return cached
        except (ValueError, KeyError, TypeError):
            pass  # unreadable: generate again and replace it
    model, tokenizer = load_for_generation(Path(model_dir), bf16=bf16)
    try:
        cut: set[int] = set()
        replies = generate_replies(
            model, tokenizer, conversations, max_new_tokens=max_new_tokens, cut_off=cut
        )
        budget = _retry_budget(model, tokenizer, [conversations[i] for i in cut], max_new_tokens)
        if cut and budget > max_new_tokens:
            again = sorted(cut)
            still: set[int] = set()
            longer = generate_replies(
                model,
                tokenizer,
                [conversations[i] for i in again],
                max_new_tokens=budget,
                cut_off=still,
            )
            for k, i in enumerate(again):
                replies[i] = longer[k]
            cut = {again[k] for k in still}
    finally:
        del model
    out = [
        {"messages": [*conv, {"role": "assistant", "content": reply.strip()}]}
        for i, (conv, reply) in enumerate(zip(conversations, replies, strict=True))
        if reply.strip() and i not in cut
    ]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, json.dumps({"rows": out, "cut_off": len(cut)}))
    return out


def _retry_budget(model: Any, tokenizer: Any, conversations: list[Any], first: int) -> int:
    """Tokens for a second try at cut-off replies: 4x the first budget, at most
    REPLAY_RETRY_TOKENS, and within the model's context after the longest prompt."""
    budget = min(REPLAY_RETRY_TOKENS, 4 * first)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit and conversations:
        from training.eval.generate import token_ids

        longest = max(
            len(
                token_ids(
                    tokenizer.apply_chat_template(c, tokenize=True, add_generation_prompt=True)
                )
            )
            for c in conversations
        )
        budget = min(budget, int(limit) - longest)
    return budget


def _replay_cache_file(
    cache_dir: Path | None,
    model_dir: Path,
    conversations: list[Any],
    max_new_tokens: int,
    bf16: bool | None,
) -> Path | None:
    """Where replay answers for exactly these inputs are kept (None: no cache)."""
    if cache_dir is None:
        return None
    from training.device.precision import inference_dtype
    from training.eval.evalsets import model_identity

    identity = [model_identity(Path(model_dir)), conversations, max_new_tokens, REPLAY_RETRY_TOKENS]
    dtype = inference_dtype(bf16)
    if dtype != "float32":  # fp32 keeps the key replies cached before bf16 answering had
        identity.append(dtype)
    key = json.dumps(identity, sort_keys=True)
    return Path(cache_dir) / f"{hashlib.sha256(key.encode()).hexdigest()}.json"


def final_turn_rows(rows: list[Row]) -> list[Row]:
    """`{"messages"}` rows as TRL prompt/completion rows: everything before the final
    assistant reply is context, the reply is the only thing trained on. A correction or a
    👍 vouches for that one reply; earlier model turns in the same chat were never vetted."""
    return [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]


def _replies(row: Row) -> tuple[str, str]:
    return str(row["chosen"][-1]["content"]), str(row["rejected"][-1]["content"])


def _count_sources(rows: list[Row]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["source"]] = counts.get(row["source"], 0) + 1
    return dict(sorted(counts.items()))


def _without_source(rows: list[Row]) -> list[Row]:
    return [{k: v for k, v in r.items() if k != "source"} for r in rows]


def _sft_prompt(row: Row) -> list[dict[str, Any]]:
    return list(row["messages"][:-1])


def take_snapshot(
    store: Any,
    *,
    seed_file: Path | None = None,
    system_prompt: str = "",
    dedup_threshold: float = 0.85,
    heldout_min_items: int = 0,
    pii_region: str = "US",
    replay: list[Row] | None = None,
    gate_eval_sets: tuple[Path, ...] = (),
) -> Snapshot:
    """Read, split, curate and hash the round's rows from `store` (and the seed file).

    `replay` rows (`replay_rows`) are train-only: they are the base model's own answers,
    never feedback, so they are not split and never measured as held-out. Train rows whose
    prompt is in one of `gate_eval_sets` are left out (`curation.in_gate_eval_set`).
    """
    from feedback.rows import dpo_prompt_answers, kto_prompt_answers, sft_prompt_answers

    seeds = read_seed_rows(seed_file)
    plan = store.heldout_split(min_items=heldout_min_items, extra=seeds)
    sft_all = [*seeds, *store.sft_rows("all")]
    # Each pair's source rides along until the rows are curated, then is counted and dropped.
    dpo_sources = store.dpo_row_sources()
    dpo_all = [
        {**r, "source": dpo_sources.get(content_key([r["prompt"], *_replies(r)]), "import")}
        for r in store.dpo_rows("all")
    ]
    sft_train = [r for r in sft_all if plan.in_split("train", *sft_prompt_answers(r))]
    sources = store.sft_row_sources()
    sft_heldout = [
        {**r, "source": sources.get(content_key(r["messages"]), "seed")}
        for r in sft_all
        if plan.in_split("heldout", *sft_prompt_answers(r))
    ]
    dpo_train = [r for r in dpo_all if plan.in_split("train", *dpo_prompt_answers(r))]
    dpo_heldout = [r for r in dpo_all if plan.in_split("heldout", *dpo_prompt_answers(r))]
    # The 👎 reasons stay in the store and its export: KTO trains on the label alone.
    kto_all = [
        {"prompt": r["prompt"], "completion": r["completion"], "label": r["label"]}
        for r in store.kto_rows("all")
    ]
    kto_train = [r for r in kto_all if plan.in_split("train", *kto_prompt_answers(r))]
    kto_heldout = [r for r in kto_all if plan.in_split("heldout", *kto_prompt_answers(r))]
    same_answer = (
        len(sft_all)
        + len(dpo_all)
        + len(kto_all)
        - sum(map(len, (sft_train, sft_heldout, dpo_train, dpo_heldout, kto_train, kto_heldout)))
    )

    def sys_sft(rows: list[Row]) -> list[Row]:
        return [{**r, "messages": with_system(r["messages"], system_prompt)} for r in rows]

    def sys_dpo(rows: list[Row]) -> list[Row]:
        return [{**r, "prompt": with_system(r["prompt"], system_prompt)} for r in rows]

    sft_train, sft_heldout = sys_sft([*sft_train, *(replay or [])]), sys_sft(sft_heldout)
    dpo_train, dpo_heldout = sys_dpo(dpo_train), sys_dpo(dpo_heldout)
    kto_train, kto_heldout = sys_dpo(kto_train), sys_dpo(kto_heldout)
    raw = {"sft_train": len(sft_train), "dpo_train": len(dpo_train), "kto_train": len(kto_train)}

    report = CurationReport()
    heldout = [*sft_heldout, *dpo_heldout, *kto_heldout]
    sft_train = drop_near_heldout(sft_train, heldout, threshold=dedup_threshold, report=report)
    dpo_train = drop_near_heldout(dpo_train, heldout, threshold=dedup_threshold, report=report)
    kto_train = drop_near_heldout(kto_train, heldout, threshold=dedup_threshold, report=report)
    gated = CurationReport()
    eval_prompts = gate_eval_prompts(gate_eval_sets)
    sft_train, dpo_train, kto_train = (
        drop_near_heldout(rows, eval_prompts, threshold=dedup_threshold, report=gated)
        for rows in (sft_train, dpo_train, kto_train)
    )
    sft_train = dedup(sft_train, threshold=dedup_threshold, report=report)
    dpo_train = dedup(dpo_train, threshold=dedup_threshold, report=report)
    kto_train = dedup(kto_train, threshold=dedup_threshold, report=report)
    train_sources = {"dpo": _count_sources(dpo_train)}
    dpo_train, dpo_heldout = _without_source(dpo_train), _without_source(dpo_heldout)
    sft_train = [scrub_row(r, report.pii, pii_region) for r in sft_train]
    dpo_train = [scrub_row(r, report.pii, pii_region) for r in dpo_train]
    kto_train = [scrub_row(r, report.pii, pii_region) for r in kto_train]
    sft_heldout = dedup(sft_heldout, near=False, report=CurationReport())
    dpo_heldout = dedup(dpo_heldout, near=False, report=CurationReport())
    kto_heldout = dedup(kto_heldout, near=False, report=CurationReport())

    snap = Snapshot(sft_train, dpo_train, sft_heldout, dpo_heldout, kto_train, kto_heldout)
    snap.info = {
        "hash": snapshot_hash(snap),
        "counts": {part: len(getattr(snap, part)) for part in PARTS},
        "raw_counts": raw,
        # DPO train rows by where their pairs came from (chat-compare, edit, import,
        # argilla, best-of, reason), after curation and before a continued round's share.
        "train_sources": train_sources,
        "seed_rows": len(seeds),
        "replay_rows": len(replay or []),
        "split": {
            "threshold": plan.threshold,
            "min_items": heldout_min_items,
            "heldout_prompts": len(
                {canonical_json(_sft_prompt(r)) for r in sft_heldout}
                | {canonical_json(r["prompt"]) for r in [*dpo_heldout, *kto_heldout]}
            ),
        },
        "curation": {
            "same_answer_as_heldout": same_answer,
            "exact_duplicates": report.exact_duplicates,
            "near_duplicates": report.near_duplicates,
            "near_heldout": report.near_heldout,
            "in_gate_eval_set": gated.near_heldout,
            "pii": report.pii,
        },
        **store.feedback_marks(plan),
    }
    return snap


def gate_eval_prompts(paths: tuple[Path, ...]) -> list[Row]:
    """The prompts of the gate's eval sets as `{"prompt": [...]}` rows, for leaving them out
    of training. A set that cannot be read adds none: the gate itself then fails on it and
    blocks the round's promotion, saying why."""
    from training.eval.generate import GenerationError
    from training.eval.prompt_files import read_rows, row_conversation

    prompts: list[Row] = []
    for path in paths:
        try:
            rows = read_rows(Path(path))
        except GenerationError:
            continue
        prompts += [{"prompt": row_conversation(row, "")} for row in rows]
    return prompts


def snapshot_hash(snap: Snapshot) -> str:
    """sha256 over the row lists in canonical JSON: same rows, same hash. The KTO lists
    count only when they hold rows, so a snapshot without any hashes as before them."""
    payload = canonical_json(
        {p: getattr(snap, p) for p in PARTS if getattr(snap, p) or not p.startswith("kto")}
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def save_snapshot(snap: Snapshot, folder: Path) -> None:
    """Write the rows (`data/<part>.jsonl`) and `snapshot.json` under `folder`."""
    data = Path(folder) / "data"
    data.mkdir(parents=True, exist_ok=True)
    for part in PARTS:
        lines = [json.dumps(r, ensure_ascii=False) for r in getattr(snap, part)]
        (data / f"{part}.jsonl").write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
    (Path(folder) / "snapshot.json").write_text(
        json.dumps(snap.info, indent=2) + "\n", encoding="utf-8"
    )


def load_snapshot(folder: Path) -> Snapshot:
    """The snapshot `save_snapshot` wrote (a resumed round trains on exactly these rows)."""
    data = Path(folder) / "data"
    parts: dict[str, list[Row]] = {}
    for part in PARTS:
        if not (data / f"{part}.jsonl").is_file() and part.startswith("kto"):
            parts[part] = []  # a snapshot saved before KTO rows existed
            continue
        text = (data / f"{part}.jsonl").read_text(encoding="utf-8")
        parts[part] = [json.loads(line) for line in text.splitlines() if line.strip()]
    info = json.loads((Path(folder) / "snapshot.json").read_text(encoding="utf-8"))
    return Snapshot(info=info, **parts)
