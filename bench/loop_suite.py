"""The loop benchmark across domains: figures over the suite, and its goals checked.

Each domain weighs the same in a suite figure; seeds of one domain are pooled (their items
are resampled together). Intervals are 95% stratified bootstraps (`bench.stats.mean_gain`).
"""

from __future__ import annotations

from typing import Any

from bench.loop_domain import fmt_gain
from bench.stats import mean_gain

# The suite's goals on the test domains (issue "learning that holds"): one round's mean gain
# over the base, each domain's interval above a floor, and the mean after the last round.
ONE_ROUND_GAIN, ONE_ROUND_FLOOR, LAST_ROUND_CORRECT = 0.50, 0.25, 0.80


def suite_figures(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant and round: the mean over domains of test-set correctness and of the gain
    over the base, each with its interval, and every domain's own figures."""
    keys = sorted({(r["variant"], r["round"]) for s in summaries for r in s["runs"]},
                  key=lambda k: (k[0], k[1]))  # fmt: skip
    out = []
    for variant, rnd in keys:
        hits: dict[str, list[float]] = {}
        diffs: dict[str, list[float]] = {}
        for s in summaries:
            for r in s["runs"]:
                if (r["variant"], r["round"]) == (variant, rnd):
                    hits.setdefault(s["domain"], []).extend(map(float, r["hits"]))
                    diffs.setdefault(s["domain"], []).extend(
                        float(a - b) for a, b in zip(r["hits"], s["base_hits"], strict=True)
                    )
        out.append({
            "variant": variant, "round": rnd, "correct": mean_gain(hits),
            "gain_over_base": mean_gain(diffs),
            "per_domain": {d: {"correct": mean_gain({d: hits[d]}),
                               "gain_over_base": mean_gain({d: diffs[d]})} for d in sorted(hits)},
        })  # fmt: skip
    return out


def print_suite(figures: list[dict[str, Any]]) -> None:
    print(f"\n{'variant':<11}{'round':<6}{'mean correct':<22}{'mean gain over base':<22}"
          "per domain (gain over base)")  # fmt: skip
    for f in figures:
        per = ", ".join(f"{d} {fmt_gain(v['gain_over_base'])}" for d, v in f["per_domain"].items())
        c = f["correct"]
        print(f"{f['variant']:<11}{f['round']:<6}"
              f"{c['diff']:.0%} [{c['low']:.0%}, {c['high']:.0%}]".ljust(39)
              + f"{fmt_gain(f['gain_over_base']):<22}{per}")  # fmt: skip


def goals(figures: list[dict[str, Any]]) -> dict[str, Any]:
    """The suite's goals, checked on the `full` variant (and the `sft` run where it ran)."""
    full = {f["round"]: f for f in figures if f["variant"] == "full"}
    sft = {f["round"]: f for f in figures if f["variant"] == "sft"}
    out: dict[str, Any] = {}
    if 1 in full:
        g = full[1]["gain_over_base"]
        floors = {d: v["gain_over_base"]["low"] for d, v in full[1]["per_domain"].items()}
        met = g["diff"] >= ONE_ROUND_GAIN and all(x > ONE_ROUND_FLOOR for x in floors.values())
        out["one_round"] = {"mean_gain": g, "domain_lows": floors, "met": met}
    if full:
        last = max(full)
        mean = full[last]["correct"]
        below = []
        if last in sft:
            sft_run = sft[last]["per_domain"]
            below = [
                d
                for d, v in full[last]["per_domain"].items()
                if d in sft_run and v["correct"]["diff"] < sft_run[d]["correct"]["diff"]
            ]
        out["last_round"] = {"round": last, "mean_correct": mean, "below_sft_run": below,
                             "sft_run_compared": last in sft,
                             "met": mean["diff"] >= LAST_ROUND_CORRECT and not below}  # fmt: skip
    return out


def print_goals(checked: dict[str, Any]) -> None:
    if "one_round" in checked:
        o = checked["one_round"]
        print(f"one round: mean gain {fmt_gain(o['mean_gain'])} (goal +{ONE_ROUND_GAIN:.0%}, "
              f"every domain's low end above +{ONE_ROUND_FLOOR:.0%}: "
              + ", ".join(f"{d} {x:+.0%}" for d, x in o["domain_lows"].items())
              + f"): {'met' if o['met'] else 'not met'}")  # fmt: skip
    if "last_round" in checked:
        o = checked["last_round"]
        m = o["mean_correct"]
        print(f"after {o['round']} rounds: mean correct {m['diff']:.0%} "
              f"[{m['low']:.0%}, {m['high']:.0%}] (goal {LAST_ROUND_CORRECT:.0%}, no domain "
              f"below its SFT-only run: "
              + ("not compared" if not o["sft_run_compared"] else
                 (", ".join(o["below_sft_run"]) or "none below"))
              + f"): {'met' if o['met'] else 'not met'}")  # fmt: skip
