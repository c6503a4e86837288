"""The whole loop with simulated experts: does feedback teach what is right, on domains
nobody tuned to?

Rounds on the benchmark domains (`data/domains/`, split into development and test in
`data/domains/split.json`), one domain after another, `bench/loop_domain.py` per domain:
each round's feedback is the domain's simulated expert's judgement (its own reading of the
gold answer, 10% of labels wrong by default) of the serving version's own replies to new
prompts (60% thumbs, 25% corrections, 15% compares), stored through the store's chat-page
calls; each round is the real `tuneloop train` with its gate. Per domain and round: test-set
correctness with a 95% interval, its gain over the base, the stage the gate chose and
whether it promoted, and the round's minutes; over the domains, the mean of each with a
stratified bootstrap interval. Variants: `full` (the mix), `sft` (only what SFT trains on)
and `kto` (thumbs only).

Development domains by default; `--final` runs the test domains instead (and only those),
once per change of defaults, and measures them on their test sets. Nothing else reads a test
domain: tuning on it would make its figures worthless. Every run writes a JSON under
`bench/results/` (`bench/record.py`) with the commit, the settings, the seeds, the domains
and the figures with their intervals; a smoke run's go only where TUNELOOP_BENCH_RESULTS
points.

    .venv/bin/python -m bench.loop_quality                      # development domains
    .venv/bin/python -m bench.loop_quality --domain tickets --variants full,sft
    .venv/bin/python -m bench.loop_quality --seeds 0,1,2        # three seeds per domain
    .venv/bin/python -m bench.loop_quality --final              # the test domains' report
    .venv/bin/python -m bench.loop_quality --final --variants none --sabotage-runs 5
                                         # the gate's check on every test domain (production
                                         # settings: seed examples kept, KTO on; each flipped
                                         # round goes on from the honest round's version)
    .venv/bin/python -m bench.loop_quality --smoke --model DIR  # every code path, tiny sizes

`--house` runs the sabotage check on the house-style demo (`data/`, `bench/loop_house.py`).
Settings exported when it starts reach every round (e.g. TUNELOOP_ROUND_MODE). Goals (test
domains, 2-core CPU, embedded model): one round at least +50 points over the base on
average, every domain's interval above +25; after three rounds at least 80% on average, no
domain below its SFT-only run; 0 of 5 sabotaged rounds promoted per domain.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.domains import (  # noqa: E402 - after the environment above
    Domain,
    SplitError,
    development_only,
    load_domain,
    read_split,
)
from bench.experts import DEFAULT_MISTAKES  # noqa: E402
from bench.loop_domain import VARIANTS  # noqa: E402
from bench.loop_suite import goals, print_goals, print_suite, suite_figures  # noqa: E402
from bench.record import write_result  # noqa: E402

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
    add("--domain", default=None, help="domains to run, comma-separated (default: every "
        "development domain; with --final: every test domain)")  # fmt: skip
    add("--final", action="store_true", help="the report on the test domains (only them, on "
        "their test sets): once per change of defaults, never to tune on")  # fmt: skip
    add(
        "--variants",
        default=",".join(("full", "sft", "kto")),
        help="variants to run, comma-separated: full, sft, kto ('none': only --sabotage-runs)",
    )
    add("--rounds", type=int, default=3, help="rounds in a row per variant")
    add("--prompts-per-round", type=int, default=120, help="new expert prompts each round")
    add("--heldout-items", type=int, default=0, help="use the first N test items (0: all)")
    add(
        "--eval-items",
        type=int,
        default=0,
        help="gate on the first N rows of the domain's eval set (0: all)",
    )
    add(
        "--eval-tokens",
        type=int,
        default=48,
        help="reply budget for test-set and gate eval replies (an answer is ~15-40 tokens)",
    )
    add(
        "--max-new-tokens",
        type=int,
        default=None,
        help="reply budget of the served model's replies the expert judges "
        "(default: 64 on the domains, 128 house style)",
    )
    add("--seeds", default="0", help="seeds, comma-separated: each domain runs once per seed "
        "(the expert's labels and mistakes, the sampling, the trainer)")  # fmt: skip
    add("--expert-mistakes", type=float, default=DEFAULT_MISTAKES, help="share of the "
        "simulated expert's labels that are wrong (exactly, per round)")  # fmt: skip
    add("--expert-reasons", choices=("own", "answer"), default="own", help="what an honest 👎's "
        "reason says: what is wrong (own: the domain expert's reading) or the answer "
        "(answer: 'the answer is …' in one of the expert's wordings)")  # fmt: skip
    add("--train-args", default="", help="extra `tuneloop train` arguments")
    add("--gate-margins", default=None, help="TUNELOOP_GATE_MARGINS for every round")
    add("--no-gate-eval-set", action="store_true", help="name no eval set to the gate, as a new "
        "user runs a round: the gate's own default objective decides")  # fmt: skip
    add(
        "--smoke",
        action="store_true",
        help="tiny sizes to check every code path: " + json.dumps(SMOKE),
    )
    add(
        "--sabotage-runs",
        type=int,
        default=0,
        help="the gate's check on each domain: an honest round and N rounds on flipped labels "
        "(one seed each); none of the N may be promoted",
    )
    add("--sabotage-from", choices=("tuned", "base"), default=None, help="where the sabotaged "
        "rounds start: the version the honest round promoted, with its store (tuned: the "
        "default) or the bare base (the default with --sabotage-easy)")  # fmt: skip
    add("--sabotage-easy", action="store_true", help="the sabotage check under its first, "
        "easier settings (no seed examples, no KTO, an eval objective added)")  # fmt: skip
    add("--house", action="store_true", help="the house-style demo's honest round and its "
        "sabotage runs instead of the domains' sabotage check")  # fmt: skip
    add("--skip-honest", action="store_true", help="only the sabotage runs")
    add("--sabotage-first", type=int, default=1, help="the first sabotage run's number (its "
        "seed is the first seed plus it): go on with a check an earlier run stopped")  # fmt: skip
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
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}: use full, sft, kto or none")
    try:
        args.seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--seeds takes whole numbers separated by commas, not {args.seeds!r}")
    if not args.seeds:
        parser.error("--seeds names no seed")
    args.seed = args.seeds[0]  # the house-style demo's one seed
    if args.sabotage_from == "tuned" and args.sabotage_easy:
        parser.error("--sabotage-easy is the check as first measured, from the base: drop "
                     "--sabotage-from tuned")  # fmt: skip
    if args.sabotage_easy and args.no_gate_eval_set:
        parser.error("--sabotage-easy gates on the domain's eval set: drop --no-gate-eval-set")
    if not 0.0 <= args.expert_mistakes <= 1.0:
        parser.error(f"--expert-mistakes must be between 0 and 1, not {args.expert_mistakes}")
    try:
        args.domains = pick_domains(args.domain, final=args.final)
    except SplitError as err:
        parser.error(str(err))
    return args


def pick_domains(names: str | None, *, final: bool) -> list[Domain]:
    """The domains a run may read: development ones, or with `final` test ones only."""
    split = read_split()
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names else None
    if not final:
        return development_only(wanted or split["development"], "bench.loop_quality")
    chosen = [load_domain(n, allow_test=True) for n in (wanted or split["test"])]
    dev = [d.name for d in chosen if d.split != "test"]
    if dev:
        raise SplitError(f"--final reports on test domains only; {', '.join(dev)} "
                         "is for development: run it without --final")  # fmt: skip
    return chosen


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from app.config import Settings
    from app.serving.modelfiles import resolve_model_dir
    from bench.loop_domain import run_domain
    from bench.loop_house import run_house
    from bench.loop_sabotage import run_sabotage

    settings = Settings()  # the operator's own home: where the converted model is cached
    model_dir = resolve_model_dir(args.model or settings.model, settings.models_dir)
    root = args.home or Path(tempfile.mkdtemp(prefix="tuneloop-loop-"))
    root.mkdir(parents=True, exist_ok=True)
    mode = os.environ.get("TUNELOOP_ROUND_MODE")
    print(f"model {model_dir}; root {root}; TUNELOOP_ROUND_MODE={mode or '(default)'}; "
          f"domains {', '.join(d.name for d in args.domains)}"
          + (" (final: test domains)" if args.final else ""))  # fmt: skip
    summaries = [run_domain(d, args, model_dir, root, seed)
                 for d in args.domains for seed in args.seeds if args.variants]  # fmt: skip
    sabotage = []
    if args.house:
        run_house(args, model_dir, root)
    elif args.sabotage_runs:
        sabotage = [run_sabotage(d, args, model_dir, root) for d in args.domains]
    figures: dict[str, Any] = {
        "final": args.final, "domains": [d.name for d in args.domains],
        "split": {d.name: d.split for d in args.domains}, "runs": summaries,
        "sabotage": sabotage,
    }  # fmt: skip
    if summaries:
        figures["suite"] = suite_figures(summaries)
        figures["goals"] = goals(figures["suite"])
        print_suite(figures["suite"])
        print_goals(figures["goals"])
    # a smoke run checks code paths on tiny sizes: its figures measure nothing, so they go
    # only where TUNELOOP_BENCH_RESULTS points (a test's folder), never into bench/results/
    if (summaries or sabotage) and (not args.smoke or os.environ.get("TUNELOOP_BENCH_RESULTS")):
        settings = {k: v for k, v in vars(args).items() if k not in {"domains", "extra_env"}}
        settings["domains"] = [d.name for d in args.domains]
        kind = "final" if args.final else "dev"
        write_result("bench.loop_quality", figures, settings={**settings, "model": model_dir,
                     "extra_env": args.extra_env}, seeds=args.seeds,
                     name=f"loop_quality-{kind}")  # fmt: skip


if __name__ == "__main__":
    main()
