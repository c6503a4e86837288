"""Batch generation benchmark: `tuneloop generate`'s batched path against one-at-a-time.

Both sides answer the same prompts (the demo eval set and seed questions, with the
deployment's system prompt) with the same model, greedy decoding and token budget, in one
run. The baseline is a plain `model.generate` per prompt; the batched side is
`training.eval.generate.generate_file` (what `tuneloop generate` runs), with the model already
loaded on both sides. Prints replies/s of each, their ratio, and the share of prompts whose
greedy replies are identical (padding can shift floating-point sums).

    .venv/bin/python -m bench.generate                     # embedded SmolLM2, CPU or GPU
    .venv/bin/python -m bench.generate --batch-sizes 4,8,16 --prompts 24 --max-new-tokens 64
    .venv/bin/python -m bench.generate --model PATH --json
    .venv/bin/python -m bench.generate --evaluate --prompts 8 --max-new-tokens 48
    .venv/bin/python -m bench.generate --precisions fp32,bf16 --batch-sizes 8,24 --prompts 48

`--precisions` runs the batched side once per dtype the model answers in (TUNELOOP_INFER_BF16
false / true); the baseline is always fp32 one at a time, and "identical" counts replies equal
to it (bf16 rounding changes some greedy replies by design).

`--evaluate` times a round's held-out evaluation instead (`training.eval.evaluate.evaluate_models`
on the demo domain: held-out SFT rows, pairs, general checks, rubric replies) of three
adapters (serving, SFT, DPO; random LoRA r=16 weights), twice: a first round with an empty
evaluation cache, then a next round whose serving version and base are the same but whose
stages are new (what the cache spares). Run it from an older checkout to time older code.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.record import write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent


def demo_rows(n: int) -> list[dict[str, Any]]:
    """`n` prompt rows: the demo eval set, then the seed conversations' questions, repeated."""
    rows = [json.loads(line) for line in (REPO / "data" / "eval_demo.jsonl").open()]
    for line in (REPO / "data" / "seed_sft.jsonl").open():
        messages = json.loads(line)["messages"]
        rows.append({"prompt": messages[0]["content"]})
    out = []
    for i in range(n):
        row = dict(rows[i % len(rows)])
        if i >= len(rows):  # keep rows distinct so resuming logic never merges them
            row["repeat"] = i // len(rows)
        out.append(row)
    return out


def one_at_a_time(model: Any, tok: Any, convs: list[list[dict]], max_new: int) -> list[str]:
    """The baseline: a plain greedy `model.generate` per prompt, no padding."""
    import torch

    from training.eval.generate import eos_token_ids

    eos = eos_token_ids(tok, model)
    replies = []
    for conv in convs:
        text = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]], device=model.device)
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                eos_token_id=eos,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos[0],
            )
        new = out[0, ids.shape[1] :].tolist()
        end = next((k for k, t in enumerate(new) if t in eos), len(new))
        replies.append(tok.decode(new[:end], skip_special_tokens=True))
    return replies


def random_adapter(model_dir: Path, dest: Path, seed: int) -> Path:
    """A LoRA adapter of the round's shape (r=16, all linear layers) with random weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    torch.manual_seed(seed)
    model = get_peft_model(base, config)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # small, so replies stay language-like
            param.data.mul_(0.01)
    model.save_pretrained(str(dest))
    return dest


def evaluation_timing(model_dir: Path, n: int, max_new: int, long_rows: bool) -> dict:
    """Seconds of a cold and a warm (next-round) held-out evaluation of three adapters."""
    import dataclasses

    from app.config import Settings
    from bench.train_throughput import demo_rows as training_rows
    from training.eval.evaluate import EvalSettings, evaluate_models

    settings = Settings()
    sft, dpo = training_rows(2 * n, long_rows=long_rows)
    pairs = dpo[n:]  # held-out pairs, other prompts than the SFT rows
    eval_sft = sft[:n] + [{"messages": [*p["prompt"], *p["chosen"]]} for p in pairs]
    tmp = Path(tempfile.mkdtemp(prefix="tuneloop-bench-eval-"))
    names = ("serving", "sft", "dpo", "sft2", "dpo2")
    adapters = {k: random_adapter(model_dir, tmp / k, seed) for seed, k in enumerate(names)}
    config = EvalSettings(
        max_prompts=n, max_new_tokens=max_new, rubric_file=settings.rubric_file,
        general_file=settings.data_dir / "general_checks.jsonl",
        system_prompt=settings.system_prompt(),
    )  # fmt: skip
    if "cache_dir" in {f.name for f in dataclasses.fields(EvalSettings)}:
        config = dataclasses.replace(config, cache_dir=tmp / "cache")
    out = {}
    for label, stages in (("first_round_s", ("sft", "dpo")), ("next_round_s", ("sft2", "dpo2"))):
        chosen = {"serving": adapters["serving"], **{k[:3]: adapters[k] for k in stages}}
        start = time.perf_counter()
        evaluate_models(model_dir, chosen, sft_rows=eval_sft, pairs=pairs, settings=config)
        out[label] = round(time.perf_counter() - start, 1)
    return {"heldout_sft": len(eval_sft), "heldout_pairs": len(pairs), **out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="local HF model dir (default: embedded)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--batch-sizes", default=None, help="comma-separated (default: the machine's default)"
    )
    parser.add_argument(
        "--precisions", default=None, help="fp32,bf16 (default: what this machine answers in)"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--evaluate", action="store_true", help="time a round's evaluation")
    parser.add_argument("--long-rows", action="store_true", help="--evaluate on ~370-token rows")
    args = parser.parse_args()
    if args.evaluate:
        from app.config import Settings
        from app.serving.modelfiles import resolve_model_dir

        model_dir = resolve_model_dir(args.model, Settings().models_dir, progress=True)
        timing = evaluation_timing(model_dir, args.prompts, args.max_new_tokens, args.long_rows)
        print(json.dumps(timing))
        write_result("bench.generate", timing, settings=vars(args), name="generate-evaluate")
        return

    import torch

    from app.config import Settings
    from app.serving.modelfiles import resolve_model_dir
    from training.device.precision import inference_dtype
    from training.eval.generate import default_batch_size, load_for_generation
    from training.eval.prompt_files import row_conversation

    settings = Settings()
    model_dir = resolve_model_dir(args.model, settings.models_dir, progress=True)
    system = settings.system_prompt()
    model, tok = load_for_generation(model_dir, bf16=False)
    sizes = [int(s) for s in (args.batch_sizes or str(default_batch_size(model))).split(",")]
    answering = {"fp32": False, "bf16": True}
    precisions = (args.precisions or "").split(",") if args.precisions else [None]
    if any(p is not None and p not in answering for p in precisions):
        parser.error("--precisions takes fp32 and/or bf16")
    rows = demo_rows(args.prompts)
    convs = [row_conversation(r, system) for r in rows]

    one_at_a_time(model, tok, convs[:1], 4)  # warm-up
    start = time.perf_counter()
    baseline = one_at_a_time(model, tok, convs, args.max_new_tokens)
    base_s = time.perf_counter() - start

    tmp = Path(tempfile.mkdtemp(prefix="tuneloop-bench-"))
    src = tmp / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    results = []
    for precision in precisions:
        bf16 = None if precision is None else answering[precision]
        # the baseline's fp32 model serves the fp32 batched side too: one load, same weights
        fp32 = inference_dtype(bf16) == "float32"
        loaded = (model, tok) if fp32 else load_for_generation(model_dir, bf16=bf16)
        name = str(next(loaded[0].parameters()).dtype).removeprefix("torch.")
        for size in sizes:
            results.append(
                _batched(loaded, name, size, rows, src, tmp, system, args, base_s, baseline)
            )
        del loaded

    report = {
        "model": str(model_dir),
        "device": str(model.device),
        "threads": torch.get_num_threads(),
        "prompts": len(rows),
        "max_new_tokens": args.max_new_tokens,
        "one_at_a_time": {"seconds": base_s, "replies_per_s": len(rows) / base_s},
        "batched": results,
    }
    write_result("bench.generate", report, settings=vars(args))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"model: {model_dir}  device {report['device']}, {report['threads']} threads; "
        f"{len(rows)} prompts, {args.max_new_tokens} new tokens, greedy"
    )
    print(f"one at a time (float32): {len(rows) / base_s:6.3f} replies/s   ({base_s:.1f} s)")
    for r in results:
        print(
            f"batch {r['batch_size']:>3} {r['dtype']:<8}: {r['replies_per_s']:6.3f} replies/s   "
            f"({r['seconds']:.1f} s)  = {r['speedup']:.2f}x one-at-a-time (goal >= 2.5); "
            f"identical replies {r['identical']:.0%}"
        )


def _batched(
    loaded: tuple[Any, Any],
    dtype: str,
    size: int,
    rows: list[dict],
    src: Path,
    tmp: Path,
    system: str,
    args: Any,
    base_s: float,
    baseline: list[str],
) -> dict[str, Any]:
    """`tuneloop generate`'s path at one batch size with a loaded model, timed."""
    from training.eval.generate import GenParams
    from training.eval.prompt_files import generate_file

    out = tmp / f"out-{dtype}-{size}.jsonl"
    start = time.perf_counter()
    generate_file(
        lambda: loaded,
        src,
        out,
        adapter="base",
        system_prompt=system,
        params=GenParams(max_new_tokens=args.max_new_tokens, batch_size=size),
    )
    seconds = time.perf_counter() - start
    replies = [json.loads(line)["reply"] for line in out.open()]
    same = sum(a == b for a, b in zip(replies, baseline, strict=True))
    return {
        "batch_size": size,
        "dtype": dtype,
        "seconds": seconds,
        "replies_per_s": len(rows) / seconds,
        "speedup": base_s / seconds,
        "identical": same / len(rows),
    }


if __name__ == "__main__":
    main()
