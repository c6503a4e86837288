"""The gate's sabotage check on a domain: one honest round and rounds on flipped labels.

One honest round from the base, then `--sabotage-runs` rounds in which the simulated expert
flips every label (a seed each); the gate must promote none of the sabotaged rounds, and
should promote the honest one. By default under the production settings: the domain's seed
examples kept, the KTO stage on, the gate as an operator configures it (the product's
margins and the domain's eval set), and each sabotaged round goes on from where the honest
round left the team (`--sabotage-from tuned`: a copy of its home, its store and the version
it promoted serving), as a saboteur joining a working loop would. From the bare base instead
(`--sabotage-from base`) the seed examples, which no saboteur can flip, teach the answer's
form to a model that scores 0: a candidate can then be better than what is served although
every label it learnt from was backwards, and promoting it is the gate doing its job.
`--sabotage-easy` runs the check as it was first measured, from the base under easier
settings (see `easy_env`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from bench.domains import Domain
from bench.loop_domain import (
    baseline,
    correctness,
    fmt_gain,
    fmt_share,
    gain,
    print_table,
    round_env,
    run_variant,
    share,
)

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


def sabotage_start(args: Any) -> str:
    """Where the sabotaged rounds start: `tuned` (the honest round's home) or `base`; the
    easy settings were first measured from the base."""
    return args.sabotage_from or ("base" if args.sabotage_easy else "tuned")


def run_sabotage(domain: Domain, args: Any, model_dir: Path, root: Path) -> dict[str, Any]:
    """One honest round and `args.sabotage_runs` rounds with every label flipped (a seed
    each), from the honest round's version or the base; the summary printed, saved and
    returned."""
    from training.registry import Registry

    root = root / domain.name / "sabotage"
    test, cache, base_hits = baseline(domain, args, model_dir, root)
    env = easy_env(domain, args, root) if args.sabotage_easy else round_env(domain, args, root)
    settings = "easy" if args.sabotage_easy else "production"
    start = sabotage_start(args)
    summary: dict[str, Any] = {"domain": domain.name, "split": domain.split,
                               "settings": settings, "sabotage_from": start, "env": env,
                               "train_args": args.train_args, "base": share(base_hits),
                               "base_hits": base_hits, "runs": []}  # fmt: skip
    print(f"{domain.name} sabotage check ({settings} settings, from the {start} version): "
          f"root {root}; base test-set correct {fmt_share(summary['base'])}")  # fmt: skip
    common: dict[str, Any] = {"rounds": 1, "env": env}
    seed = args.seeds[0]
    honest_home = root / "honest"
    if not args.skip_honest:
        summary["runs"] += run_variant(domain, "full", args, model_dir, root, test, base_hits,
                                       cache, name="honest", seed=seed, **common)  # fmt: skip
    start_hits = base_hits
    if start == "tuned":
        if not (honest_home / "tuneloop.db").is_file():
            raise SystemExit(
                f"--sabotage-from tuned goes on from the honest round's home and {honest_home} "
                "has none: run the honest round (drop --skip-honest) or pass the --home of "
                "the run that made it"
            )
        registry = Registry(honest_home / "adapters")
        version = registry.current()
        adapter = registry.verify(version) if version else None
        start_hits = correctness(domain, model_dir, adapter, test, args.eval_tokens, cache)
        summary["start_version"] = version
        summary["start"], summary["start_hits"] = share(start_hits), start_hits
        print(f"sabotaged rounds start from {version or 'the bare base'} (the honest round's): "
              f"test-set correct {fmt_share(summary['start'])}")  # fmt: skip
    first = args.sabotage_first
    for k in range(first, first + args.sabotage_runs):
        name = f"sabotage-{k}"
        go_on: dict[str, Any] = {}
        if start == "tuned":  # its own copy: each run starts where the honest round ended
            shutil.rmtree(root / name, ignore_errors=True)
            shutil.copytree(honest_home, root / name, ignore=shutil.ignore_patterns("*.log"))
            go_on = {"first_round": 2}
        runs = run_variant(domain, "full", args, model_dir, root, test, base_hits, cache,
                           name=name, seed=seed + k, sabotage=True, **common, **go_on)  # fmt: skip
        for r in runs:
            r["gain_over_start"] = gain(r["hits"], start_hits)
            print(f"  against its start: {fmt_gain(r['gain_over_start'])}")
        summary["runs"] += runs
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
