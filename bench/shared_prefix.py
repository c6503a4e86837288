"""A training step with the batch's shared start run once, against every row run whole.

The rows are `bench.train_throughput`'s long rows (~370 tokens, a ~270-token system prompt);
the model is the round's (the base with a fresh LoRA on every linear layer, as
`training.stages` builds it). Each measured step is a forward and backward pass of the
completion loss: an SFT batch of B rows, or a DPO batch of B pairs (2B rows: each prompt
with its chosen and its rejected reply, as TRL concatenates them). The two ways alternate
step by step, so a busy machine slows both alike; the median step time of each and their
ratio are printed, with the largest difference in the loss.

    .venv/bin/python -m bench.shared_prefix --model DIR
    .venv/bin/python -m bench.shared_prefix --model DIR --batch 4 --steps 8
    .venv/bin/python -m bench.shared_prefix --model DIR --ways shared,shared-bf16
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench.record import write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _batch(tok: Any, convs: list[list[dict]], prompts: list[list[dict]]) -> tuple:
    """Right-padded ids, attention mask and completion labels for `convs` (prompt: the
    matching entry of `prompts`)."""
    import torch

    ids, starts = [], []
    for conv, prompt in zip(convs, prompts, strict=True):
        ids.append(tok.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"])
        starts.append(
            len(
                tok.apply_chat_template(
                    prompt, tokenize=True, add_generation_prompt=True, return_dict=True
                )["input_ids"]
            )
        )
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), tok.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    labels = input_ids.masked_fill(mask == 0, -100)
    for i, start in enumerate(starts):
        labels[i, :start] = -100
    return input_ids, mask, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a local model dir")
    parser.add_argument("--batch", type=int, default=2, help="rows (SFT) or pairs (DPO) a step")
    parser.add_argument("--steps", type=int, default=6, help="measured steps of each way")
    parser.add_argument(
        "--ways",
        default="whole,shared",
        help="what to compare, the first the baseline: whole, shared, and either with -bf16 "
        "(matmuls in bf16 under autocast, as a round on a CPU with bf16 instructions trains)",
    )
    args = parser.parse_args()
    ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    unknown = set(ways) - {"whole", "shared", "whole-bf16", "shared-bf16"}
    if unknown or len(ways) < 2:
        parser.error(f"--ways: two or more of whole, shared, whole-bf16, shared-bf16 ({args.ways})")

    import torch
    from peft import get_peft_model
    from transformers import AutoTokenizer

    from app.config import Settings
    from bench.train_throughput import demo_rows
    from training.device import shared_prefix
    from training.lora import lora_config
    from training.models import load_base
    from training.round_config import RoundConfig

    model_dir = Path(args.model)
    tok = AutoTokenizer.from_pretrained(model_dir)
    sft, dpo = demo_rows(args.batch * (args.steps + 1), long_rows=True)
    config = RoundConfig.from_settings(Settings())  # the round users get
    models = {}
    for way in ways:
        torch.manual_seed(0)
        base = load_base(model_dir, config)
        if way.startswith("shared"):
            shared_prefix.share_prefix(base)
        lora = lora_config(r=config.lora_r, alpha=config.lora_alpha, dropout=0.0)
        models[way] = get_peft_model(base, lora).train()
    kinds: dict[str, list[tuple]] = {"sft": [], "dpo": []}
    for s in range(args.steps + 1):
        rows = sft[s * args.batch : (s + 1) * args.batch]
        prompts = [r["messages"][:-1] for r in rows]
        kinds["sft"].append(_batch(tok, [r["messages"] for r in rows], prompts))
        pairs = dpo[s * args.batch : (s + 1) * args.batch]
        convs = [p["prompt"] + p["chosen"] for p in pairs] + [
            p["prompt"] + p["rejected"] for p in pairs
        ]
        kinds["dpo"].append(_batch(tok, convs, [p["prompt"] for p in pairs] * 2))
    print(
        f"model {model_dir.name}; batch {args.batch} (SFT rows, DPO pairs); {args.steps} "
        f"measured steps each way, alternating; threads {torch.get_num_threads()}"
    )
    figures: dict[str, dict] = {}
    for kind, batches in kinds.items():
        times: dict[str, list[float]] = {way: [] for way in ways}
        losses: dict[str, list[float]] = {way: [] for way in ways}
        shared = shared_prefix.shared_length(batches[0][0], batches[0][1])
        for step, (ids, mask, labels) in enumerate(batches):
            for way, model in models.items():
                model.zero_grad(set_to_none=True)
                t = time.perf_counter()
                with torch.autocast("cpu", torch.bfloat16, enabled=way.endswith("-bf16")):
                    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                loss.backward()
                if step:  # the first step of each way warms up
                    times[way].append(time.perf_counter() - t)
                    losses[way].append(loss.item())
        tokens = int(batches[0][1].sum())
        print(
            f"{kind}: {batches[0][0].shape[0]} rows of ~{tokens // batches[0][0].shape[0]} "
            f"tokens, {shared} shared"
        )
        first = ways[0]
        base_time = statistics.median(times[first])
        for way in ways:
            step_time = statistics.median(times[way])
            gap = max(abs(a - b) for a, b in zip(losses[first], losses[way], strict=True))
            print(
                f"  {way:<12} step {step_time:.2f} s: {base_time / step_time:.2f}x {first}; "
                f"largest loss difference {gap:.1e}"
            )
            figures.setdefault(
                kind,
                {"rows": int(batches[0][0].shape[0]), "tokens": tokens, "shared_tokens": shared},
            )[way] = {  # fmt: skip
                "median_step_s": step_time,
                "speedup_vs_first": base_time / step_time,
                "largest_loss_difference": gap,
            }
    write_result("bench.shared_prefix", figures, settings=vars(args), seeds=[0])


if __name__ == "__main__":
    main()
