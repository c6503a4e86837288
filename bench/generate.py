"""Batch generation benchmark: `tuneloop generate`'s batched path against one-at-a-time.

Both sides answer the same prompts (the demo eval set and seed questions, with the
deployment's system prompt) with the same model, greedy decoding and token budget, in one
run. The baseline is a plain `model.generate` per prompt; the batched side is
`training.generate.generate_file` (what `tuneloop generate` runs), with the model already
loaded on both sides. Prints replies/s of each, their ratio, and the share of prompts whose
greedy replies are identical (padding can shift floating-point sums).

    .venv/bin/python -m bench.generate                     # embedded SmolLM2, CPU or GPU
    .venv/bin/python -m bench.generate --batch-sizes 4,8,16 --prompts 24 --max-new-tokens 64
    .venv/bin/python -m bench.generate --model PATH --json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

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

    from training.generate import eos_token_ids

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="local HF model dir (default: embedded)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--batch-sizes", default=None, help="comma-separated (default: the machine's default)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from app.config import Settings
    from app.modelfiles import resolve_model_dir
    from training.generate import (
        default_batch_size,
        generate_file,
        load_for_generation,
        row_conversation,
    )

    settings = Settings()
    model_dir = resolve_model_dir(args.model, settings.models_dir, progress=True)
    system = settings.system_prompt()
    model, tok = load_for_generation(model_dir)
    sizes = [int(s) for s in (args.batch_sizes or str(default_batch_size(model))).split(",")]
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
    for size in sizes:
        out = tmp / f"out-{size}.jsonl"
        start = time.perf_counter()
        generate_file(
            lambda: (model, tok),
            src,
            out,
            adapter="base",
            system_prompt=system,
            max_new_tokens=args.max_new_tokens,
            batch_size=size,
        )
        seconds = time.perf_counter() - start
        replies = [json.loads(line)["reply"] for line in out.open()]
        same = sum(a == b for a, b in zip(replies, baseline, strict=True))
        results.append(
            {
                "batch_size": size,
                "seconds": seconds,
                "replies_per_s": len(rows) / seconds,
                "speedup": base_s / seconds,
                "identical": same / len(rows),
            }
        )

    report = {
        "model": str(model_dir),
        "device": str(model.device),
        "threads": torch.get_num_threads(),
        "prompts": len(rows),
        "max_new_tokens": args.max_new_tokens,
        "one_at_a_time": {"seconds": base_s, "replies_per_s": len(rows) / base_s},
        "batched": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"model: {model_dir}  device {report['device']}, {report['threads']} threads; "
        f"{len(rows)} prompts, {args.max_new_tokens} new tokens, greedy"
    )
    print(f"one at a time : {len(rows) / base_s:6.3f} replies/s   ({base_s:.1f} s)")
    for r in results:
        print(
            f"batch {r['batch_size']:>3}     : {r['replies_per_s']:6.3f} replies/s   "
            f"({r['seconds']:.1f} s)  = {r['speedup']:.2f}x one-at-a-time (goal >= 2.5); "
            f"identical replies {r['identical']:.0%} (goal >= 95%)"
        )


if __name__ == "__main__":
    main()
