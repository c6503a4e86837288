"""Preference sweeps summed up across the development domains and seeds: which setting wins
on average, not on one round of one domain.

    .venv/bin/python -m bench.sweep_summary                       # every sweep in bench/results/
    .venv/bin/python -m bench.sweep_summary FILE.json FILE.json   # chosen sweeps

Reads `bench.preference_sweep` results (each a development domain's round, its stage
retrained under several settings). A setting is its keys without `seed`: the same setting
under several trainer seeds, and on several domains' rounds, is one row. Per setting: the
mean over domains of its gain over the round's SFT stage (each domain weighs the same, its
seeds pooled) with a 95% stratified bootstrap interval, and the seeds and domains behind it.
A default is chosen from settings measured with at least `MIN_SEEDS` seeds on every
development domain; the others are marked. A sweep of a test domain is refused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.domains import SplitError, development_only, read_split
from bench.loop_domain import fmt_gain
from bench.record import results_dir, write_result
from bench.stats import mean_gain

MIN_SEEDS = 3


def setting_key(label: str) -> tuple[str, str]:
    """("lr=1e-4,beta=0.1", "42") from "lr=1e-4,seed=42,beta=0.1" (seed "" when unset)."""
    parts = [p for p in label.split(",") if p]
    seed = next((p.partition("=")[2] for p in parts if p.startswith("seed=")), "")
    return ",".join(p for p in parts if not p.startswith("seed=")) or "(round's own)", seed


def summarise(sweeps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (stage, setting): its gain over the SFT stage across domains and seeds."""
    development_only(sorted({s["domain"] for s in sweeps}), "bench.sweep_summary")
    dev = read_split()["development"]
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for sweep in sweeps:
        for result in sweep["results"]:
            setting, seed = setting_key(result["setting"])
            row = rows.setdefault((sweep["stage"], setting), {"diffs": {}, "seeds": {}})
            diffs = [float(a - b) for a, b in zip(result["hits"], sweep["sft_hits"], strict=True)]
            row["diffs"].setdefault(sweep["domain"], []).extend(diffs)
            row["seeds"].setdefault(sweep["domain"], []).append(seed)
    out = []
    for (stage, setting), row in sorted(rows.items()):
        seeds = {d: len(v) for d, v in row["seeds"].items()}
        enough = all(seeds.get(d, 0) >= MIN_SEEDS for d in dev)
        out.append({"stage": stage, "setting": setting, "gain_over_sft": mean_gain(row["diffs"]),
                    "seeds": seeds, "enough": enough})  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="sweep results files (default: "
                        "every preference_sweep-*.json under bench/results/)")  # fmt: skip
    args = parser.parse_args(argv)
    # a run's own files (bench.record), not the transcribed preference-sweep-*.json of
    # runs made before the suite: those lack the per-item hits and the domain
    files = args.files or sorted(results_dir().glob("preference_sweep-*.json"))
    if not files:
        parser.error(f"no sweep results under {results_dir()}: run bench.preference_sweep first")
    sweeps = [json.loads(f.read_text(encoding="utf-8"))["figures"] for f in files]
    try:
        rows = summarise(sweeps)
    except SplitError as err:
        parser.error(str(err))
    print(f"{'stage':<6}{'setting':<40}{'gain over SFT stage':<24}seeds per domain")
    for r in rows:
        seeds = ", ".join(f"{d} {n}" for d, n in sorted(r["seeds"].items()))
        mark = "" if r["enough"] else f"  (fewer than {MIN_SEEDS} seeds on some domain)"
        print(f"{r['stage']:<6}{r['setting']:<40}{fmt_gain(r['gain_over_sft']):<24}{seeds}{mark}")
    labels = [setting_key(x["setting"])[1] for sweep in sweeps for x in sweep["results"]]
    write_result("bench.sweep_summary", {"files": [f.name for f in files], "rows": rows},
                 settings=vars(args), seeds=sorted({int(s) for s in labels if s}))  # fmt: skip


if __name__ == "__main__":
    main()
