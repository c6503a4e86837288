"""Two `bench.loop_quality` runs compared item by item: what a change of settings did.

    .venv/bin/python -m bench.loop_compare BASELINE.json CANDIDATE.json

Both files are results of `bench.loop_quality` on the same domains and seeds (the same seed
gives the same simulated feedback, so the runs differ only by what changed between them,
recorded in each file's `settings.env` and commit). Runs are paired by domain, seed, variant
and round; per pair the shipped version's test-set hits and each stage's are differenced
item by item. Per domain and over the suite (every domain weighing the same, its seeds
pooled): the candidate's mean gain over the baseline with a 95% stratified bootstrap
interval. Development and test runs are not mixed: a comparison of development runs is what
a default is chosen on; one of `--final` runs only reports.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.loop_domain import fmt_gain
from bench.record import write_result
from bench.stats import mean_gain

STAGES = ("sft", "dpo", "kto")


class CompareError(ValueError):
    """The two files cannot be compared item by item."""


def _runs(figures: dict[str, Any]) -> dict[tuple[str, int, str, int], dict[str, Any]]:
    out = {}
    for summary in figures["runs"]:
        for run in summary["runs"]:
            key = (summary["domain"], summary["seed"], run["variant"], run["round"])
            out[key] = run
    return out


def _diffs(a: list[int], b: list[int]) -> list[float]:
    return [float(y - x) for x, y in zip(a, b, strict=True)]


def compare(baseline: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any]:
    """Per domain and over the suite: the candidate's gain over the baseline, for the shipped
    version and for each stage, on the pairs of runs both files hold."""
    base_fig, cand_fig = baseline["figures"], candidate["figures"]
    if bool(base_fig["final"]) != bool(cand_fig["final"]):
        raise CompareError("one file is a --final run and the other is not: compare "
                           "development runs with development runs")  # fmt: skip
    base_runs, cand_runs = _runs(base_fig), _runs(cand_fig)
    pairs = sorted(set(base_runs) & set(cand_runs))
    if not pairs:
        raise CompareError("the files share no run (domain, seed, variant and round)")
    shipped: dict[str, list[float]] = {}
    stages: dict[str, dict[str, list[float]]] = {s: {} for s in STAGES}
    per_pair = []
    for key in pairs:
        b, c = base_runs[key], cand_runs[key]
        if len(b["hits"]) != len(c["hits"]):
            raise CompareError(f"{key}: the runs were scored on different test items")
        shipped.setdefault(key[0], []).extend(_diffs(b["hits"], c["hits"]))
        row = {"domain": key[0], "seed": key[1], "variant": key[2], "round": key[3],
               "stage": [b["stage"], c["stage"]],
               "correct": [b["heldout"]["correct"], c["heldout"]["correct"]],
               "round_minutes": [b.get("round_minutes"), c.get("round_minutes")]}  # fmt: skip
        for stage in STAGES:
            sb, sc = (b.get("stages") or {}).get(stage), (c.get("stages") or {}).get(stage)
            if sb and sc and sb.get("hits") and sc.get("hits"):
                stages[stage].setdefault(key[0], []).extend(_diffs(sb["hits"], sc["hits"]))
                row[stage] = [sb["correct"], sc["correct"]]
        per_pair.append(row)
    domains = sorted(shipped)
    minutes = [[p["round_minutes"][k] for p in per_pair if p["round_minutes"][k]] for k in (0, 1)]
    return {
        "final": bool(cand_fig["final"]),
        "pairs": per_pair,
        "shipped": {"suite": mean_gain(shipped),
                    "per_domain": {d: mean_gain({d: shipped[d]}) for d in domains}},
        "stages": {s: {"suite": mean_gain(v), "per_domain": {d: mean_gain({d: v[d]})
                                                            for d in sorted(v)}}
                   for s, v in stages.items() if v},
        "mean_round_minutes": [sum(m) / len(m) if m else None for m in minutes],
        "env": [baseline["settings"].get("env", {}), candidate["settings"].get("env", {})],
        "commits": [baseline.get("commit"), candidate.get("commit")],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", type=Path, help="a bench.loop_quality results file")
    parser.add_argument("candidate", type=Path, help="...the run with the change")
    args = parser.parse_args(argv)
    try:
        files = [json.loads(p.read_text(encoding="utf-8")) for p in (args.baseline, args.candidate)]
        if any(f.get("benchmark") != "bench.loop_quality" for f in files):
            raise CompareError("both files must be bench.loop_quality results")
        result = compare(*files)
    except (OSError, json.JSONDecodeError, CompareError) as err:
        parser.error(str(err))
    print(
        f"settings: baseline {result['env'][0] or '(defaults)'}; "
        f"candidate {result['env'][1] or '(defaults)'}"
    )
    print(f"{'domain':<14}{'seed':<6}{'shipped (base -> cand)':<28}stages sft, dpo, kto")
    for p in result["pairs"]:
        ship = f"{p['stage'][0]} {p['correct'][0]:.0%} -> {p['stage'][1]} {p['correct'][1]:.0%}"
        st = ", ".join(f"{p[s][0]:.0%}->{p[s][1]:.0%}" for s in STAGES if s in p)
        print(f"{p['domain']:<14}{p['seed']:<6}{ship:<28}{st}")
    print(f"\ngain of the candidate: shipped {fmt_gain(result['shipped']['suite'])} over the "
          "suite; " + ", ".join(f"{d} {fmt_gain(g)}"
                                for d, g in result["shipped"]["per_domain"].items()))  # fmt: skip
    for stage, figs in result["stages"].items():
        print(f"  {stage} stage: {fmt_gain(figs['suite'])}")
    if None not in result["mean_round_minutes"]:
        base_min, cand_min = result["mean_round_minutes"]
        print(f"mean round minutes: baseline {base_min:.1f}, candidate {cand_min:.1f}")
    write_result("bench.loop_compare", {"files": [args.baseline.name, args.candidate.name],
                                        **result}, name="loop_compare")  # fmt: skip


if __name__ == "__main__":
    main()
