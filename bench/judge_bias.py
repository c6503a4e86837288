"""Pairwise judge benchmark: how much of a judge's verdict is the position of the replies.

The judge compares, for each row of the demo eval set, an ideal reply (greets by name,
cites the expected policy, signs off) with "I don't know.", in both orders. Prints the
share of verdicts answering "1", the ideal reply's win rate in each single order, the
both-orders win rate `tuneloop eval --scorer pairwise` reports (with its Wilson interval),
and verdicts per second. A judge without position bias wins about equally in both orders;
one that always answers "1" wins 100% in one order, 0% in the other, and ties overall.

    .venv/bin/python -m bench.judge_bias                  # the embedded SmolLM2 as judge
    .venv/bin/python -m bench.judge_bias --judge PATH     # a local model directory
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench.record import write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DATA = Path(__file__).resolve().parent.parent / "data"


def main() -> None:
    from app.config import Settings
    from app.serving.modelfiles import resolve_model_dir
    from training.eval import judge
    from training.eval.generate import load_for_generation
    from training.eval.prompt_files import row_conversation

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judge", default=None, help="judge model dir (default: embedded)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    settings = Settings()
    model, tok = load_for_generation(resolve_model_dir(args.judge, settings.models_dir))
    rows = [json.loads(line) for line in (DATA / "eval_demo.jsonl").open()]
    system = (DATA / "system_prompt.md").read_text(encoding="utf-8").strip()
    convs = [row_conversation(r, system) for r in rows]
    ideal = [
        (f"Hi {r['customer']}, " if r.get("customer") else "Hello, ")
        + f"we will sort this out for you ({r['policy']}).\n\n— Brightwater Support"
        for r in rows
    ]
    bad = ["I don't know."] * len(rows)
    prompts = []
    for conv, good, poor in zip(convs, ideal, bad, strict=True):
        prompts += [judge.judge_prompt(conv, good, poor), judge.judge_prompt(conv, poor, good)]
    start = time.perf_counter()
    margins = judge.first_label_margins(model, tok, prompts, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    both = [
        (judge.outcome(a) + 1 - judge.outcome(b)) / 2
        for a, b in zip(margins[0::2], margins[1::2], strict=True)
    ]
    result = {
        "rows": len(rows),
        "share_answering_1": sum(m > 0 for m in margins) / len(margins),
        "ideal_wins_when_first": sum(m > 0 for m in margins[0::2]) / len(rows),
        "ideal_wins_when_second": sum(m < 0 for m in margins[1::2]) / len(rows),
        "both_orders": judge.pairwise_metrics(both),
        "verdicts_per_s": len(margins) / seconds,
    }
    print(json.dumps(result, indent=1))
    write_result("bench.judge_bias", result, settings=vars(args))


if __name__ == "__main__":
    main()
