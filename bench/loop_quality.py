"""The whole loop with a simulated expert: does feedback teach what is right, round after round?

Two benchmarks, one command:

- **Ticket triage** (`bench/loop_triage.py`, on by default): three rounds in a row on the
  demo domain `data/domains/tickets/`, whose items have a gold answer a checker verifies
  (category and order number). Each round's feedback is the simulated expert's judgement of
  the serving version's own replies to new prompts (60% thumbs, 25% corrections, 15%
  compares), stored through the store's chat-page calls; each round is the real `tuneloop
  train` with its gate. Per round: held-out correctness on 80 unseen items with a 95%
  interval, its gain over the base, the stage the gate chose and whether it promoted, and
  the round's minutes; for three variants: `full` (the mix), `sft` (only what SFT trains
  on) and `kto` (thumbs only). See that module's docstring for why the metric is not the
  expert's rule.
- **Sabotage** (`--sabotage-runs N`): one honest round on the triage domain and N rounds
  with every label of the simulated expert flipped (a seed each), from the base; the gate
  must promote none of the sabotaged rounds while the honest one is promoted (see
  `bench/loop_triage.py:sabotage_env` for the settings both use). `--house` runs the same
  check on the house-style demo (`data/`, `bench/loop_house.py`).

    .venv/bin/python -m bench.loop_quality                     # triage, all three variants
    .venv/bin/python -m bench.loop_quality --variants full,sft # fewer variants
    .venv/bin/python -m bench.loop_quality --variants none --sabotage-runs 5   # the gate's
                                                   # check: an honest round, 5 sabotaged ones
    .venv/bin/python -m bench.loop_quality --variants none --skip-honest \
        --sabotage-first 2 --sabotage-runs 4      # the rest of a check that stopped after one
    .venv/bin/python -m bench.loop_quality --smoke --model DIR # every code path, tiny sizes

Settings exported when it starts reach every round (e.g. TUNELOOP_ROUND_MODE). Triage
goals (2-core CPU, embedded model): after three rounds at least +30 points of held-out
correctness over the base, the interval's lower end above +15; every promoted round at
least as good as the one before; the preference stage at least +5 points over the SFT-only
run of the same round; a round under 10 minutes. Sabotage: 0 of 5 rounds promoted.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.record import write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).resolve().parent.parent / "data"
# Smoke runs gate on fewer paired items (2, not the default 8), so that a round of a tiny
# model can be promoted and the next round's replies come from an adapter: every code path.
SMOKE_ENV = {"TUNELOOP_GATE_MIN_ITEMS": "2"}
SMOKE = {"prompts_per_round": 6, "heldout_items": 5, "eval_items": 8, "eval_tokens": 8,
         "max_new_tokens": 8, "train_args": "--max-steps 1"}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--model", help="a local model dir (default: the embedded SmolLM2)")
    add("--home", type=Path, help="where the loops' homes go (default: a temp dir)")
    add(
        "--variants",
        default=",".join(("full", "sft", "kto")),
        help="triage variants to run, comma-separated: full, sft, kto ('none': skip triage)",
    )
    add("--rounds", type=int, default=3, help="triage rounds in a row per variant")
    add("--prompts-per-round", type=int, default=120, help="new expert prompts each round")
    add("--heldout-items", type=int, default=0, help="use the first N held-out items (0: all)")
    add(
        "--eval-items",
        type=int,
        default=0,
        help="gate on the first N rows of the domain's eval set (0: all 120)",
    )
    add(
        "--eval-tokens",
        type=int,
        default=48,
        help="reply budget for held-out and gate eval replies (an answer is ~15 tokens)",
    )
    add(
        "--max-new-tokens",
        type=int,
        default=None,
        help="reply budget of the served model's replies the expert judges "
        "(default: 64 triage, 128 house style)",
    )
    add("--seed", type=int, default=0, help="the expert's and the sampling's seed")
    add("--train-args", default="", help="extra `tuneloop train` arguments")
    add("--gate-margins", default=None, help="TUNELOOP_GATE_MARGINS for every round")
    add(
        "--smoke",
        action="store_true",
        help="tiny sizes to check every code path: " + json.dumps(SMOKE),
    )
    add(
        "--sabotage-runs",
        type=int,
        default=0,
        help="the gate's check: an honest round and N rounds on flipped labels (one seed "
        "each) on the triage domain (with --house: the house-style demo); none of the N may "
        "be promoted",
    )
    add("--house", action="store_true", help="the house-style demo's honest round and its "
        "sabotage runs instead of triage's")  # fmt: skip
    add("--skip-honest", action="store_true", help="only the sabotage runs")
    add("--sabotage-first", type=int, default=1, help="the first sabotage run's number (its "
        "seed is --seed plus it): go on with a check an earlier run stopped")  # fmt: skip
    add(
        "--sample-seed",
        type=int,
        default=None,
        help="house style: sample the served model's replies once with this seed for every "
        "run (runs then differ in the expert's and the trainer's seeds); default: per run",
    )
    add(
        "--house-gate-eval-sets",
        default=str(DATA / "eval_demo.jsonl"),
        help="house style: TUNELOOP_GATE_EVAL_SETS ('' = held-out metrics only)",
    )
    args = parser.parse_args(argv)  # fmt: skip
    args.extra_env = {}
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
        args.extra_env = dict(SMOKE_ENV)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    args.variants = [] if names == ["none"] else names
    unknown = set(args.variants) - {"full", "sft", "kto"}
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}: use full, sft, kto or none")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from app.config import Settings
    from app.serving.modelfiles import resolve_model_dir
    from bench.loop_house import run_house
    from bench.loop_triage import run_sabotage, run_triage

    settings = Settings()  # the operator's own home: where the converted model is cached
    model_dir = resolve_model_dir(args.model or settings.model, settings.models_dir)
    root = args.home or Path(tempfile.mkdtemp(prefix="tuneloop-loop-"))
    root.mkdir(parents=True, exist_ok=True)
    mode = os.environ.get("TUNELOOP_ROUND_MODE")
    print(f"model {model_dir}; root {root}; TUNELOOP_ROUND_MODE={mode or '(default)'}")
    figures: dict[str, Any] = {}
    if args.variants:
        figures["triage"] = run_triage(args, model_dir, root)
    if args.house:
        figures["house"] = run_house(args, model_dir, root)
    elif args.sabotage_runs:
        figures["sabotage"] = run_sabotage(args, model_dir, root)
    # a smoke run checks code paths on tiny sizes: its figures measure nothing
    if figures and not args.smoke:
        settings = {k: v for k, v in vars(args).items() if k != "extra_env"}
        write_result("bench.loop_quality", figures, settings=settings, seeds=[args.seed])


if __name__ == "__main__":
    main()
