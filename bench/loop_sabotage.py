"""The gate's sabotage check on a domain: one honest round and rounds on flipped labels.

From the base, one honest round and `--sabotage-runs` rounds in which the simulated expert
flips every label (a seed each); the gate must promote none of the sabotaged rounds, and
should promote the honest one. By default under the production settings: the domain's seed
examples kept, the KTO stage on, the gate as an operator configures it (the product's
margins and the domain's eval set). `--sabotage-easy` runs it as it was first measured, under
easier settings (see `easy_env`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from bench.domains import Domain
from bench.loop_domain import baseline, fmt_share, print_table, round_env, run_variant, share

# The easy check's objective on the eval set's correctness: a gain must be shown (the
# interval's low end above 1 point), not merely the absence of a loss.
OBJECTIVE = 0.01


def easy_env(domain: Domain, args: Any, root: Path) -> dict[str, str]:
    """The sabotage check's settings as first measured, easier than production:

    - the domain without its seed examples (the operator's vetted rows, which no saboteur
      can flip, and which alone can make a round better than the base);
    - the eval set's correctness as the gate's objective (unless `--gate-margins` says
      otherwise);
    - no KTO stage (`TUNELOOP_KTO_MIN_ROWS` out of reach), which took ~16 minutes a round
      on the 2-core machine.
    """
    from training.gate import DEFAULT_MARGINS

    folder = root / "domain-without-seeds"
    skip = shutil.ignore_patterns(domain.seeds.name, domain.test.name, "__pycache__")
    shutil.copytree(domain.folder, folder, ignore=skip, dirs_exist_ok=True)
    env = {**round_env(domain, args, root), "TUNELOOP_DATA_DIR": str(folder),
           "TUNELOOP_KTO_MIN_ROWS": "1000000"}  # fmt: skip
    if args.gate_margins is None:
        eval_set = Path(env["TUNELOOP_GATE_EVAL_SETS"]).stem
        env["TUNELOOP_GATE_MARGINS"] = f"{DEFAULT_MARGINS},{eval_set}:correct={OBJECTIVE}"
    return env


def run_sabotage(domain: Domain, args: Any, model_dir: Path, root: Path) -> dict[str, Any]:
    """One honest round and `args.sabotage_runs` rounds with every label flipped (a seed
    each), from the base; the summary printed, saved and returned."""
    root = root / domain.name / "sabotage"
    test, cache, base_hits = baseline(domain, args, model_dir, root)
    env = easy_env(domain, args, root) if args.sabotage_easy else round_env(domain, args, root)
    settings = "easy" if args.sabotage_easy else "production"
    summary: dict[str, Any] = {"domain": domain.name, "split": domain.split,
                               "settings": settings, "env": env, "train_args": args.train_args,
                               "base": share(base_hits), "base_hits": base_hits,
                               "runs": []}  # fmt: skip
    print(f"{domain.name} sabotage check ({settings} settings): root {root}; base test-set "
          f"correct {fmt_share(summary['base'])}")  # fmt: skip
    common: dict[str, Any] = {"rounds": 1, "env": env}
    seed = args.seeds[0]
    if not args.skip_honest:
        summary["runs"] += run_variant(domain, "full", args, model_dir, root, test, base_hits,
                                       cache, name="honest", seed=seed, **common)  # fmt: skip
    first = args.sabotage_first
    for k in range(first, first + args.sabotage_runs):
        summary["runs"] += run_variant(
            domain, "full", args, model_dir, root, test, base_hits, cache,
            name=f"sabotage-{k}", seed=seed + k, sabotage=True, **common,
        )  # fmt: skip
        (root / "sabotage.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    sabotaged = [r for r in summary["runs"] if r["variant"].startswith("sabotage")]
    honest = [r for r in summary["runs"] if r["variant"] == "honest"]
    summary["sabotage_promoted"] = sum(r["status"] == "promoted" for r in sabotaged)
    summary["sabotage_runs"] = len(sabotaged)
    (root / "sabotage.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print_table(summary)
    print(
        f"{domain.name} sabotage: {summary['sabotage_promoted']} of {len(sabotaged)} rounds "
        "promoted (goal 0)" + (f"; honest round: {honest[0]['status']}" if honest else "")
    )
    print(f"details: {root / 'sabotage.json'}")
    return summary
