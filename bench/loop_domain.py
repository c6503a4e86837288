"""Rounds of the whole loop on one benchmark domain, with its simulated expert.

A domain (`data/domains/NAME/`, see `bench/domains.py`) brings items with gold answers, its
checker and its expert. Per variant, in its own home, each round:

1. The serving version (the bare base before the first promotion) answers NEW prompts from
   the domain's training pool (a slice no earlier round used; the same slice for every
   variant), as the chat app would: temperature 0.7, and a second sample at 1.0 for a
   *Compare*.
2. The domain's simulated expert (`bench/experts.py`) judges each reply by the item's gold
   answer with its own reading, wrong on a configured share of its labels, and its feedback
   goes through the real store's chat-page calls (`bench/loop_feedback.py`).
3. `tuneloop train --json`, the real round with the real gate (the product's default
   margins, plus the domain's eval set scored by the domain's checker), promoting the best
   stage that passes.
4. Test-set correctness: greedy replies of the version now serving (and of the round's
   candidate and each of its stages, where they differ) to the domain's test set, items no
   expert, round or gate ever sees, scored by the checker's primary metric. With a 95% Wilson
   interval, and the gain over the base with the gate's paired bootstrap.

Variants: `full` (the mix), `sft` (only what SFT trains on reaches the store: 👍 and
corrections, the latter imported as conversations; no 👎, no pairs, so no DPO or KTO
stage), `kto` (thumbs only, so the preference stage is KTO).

Why this is not circular: the expert decides from the gold answer on the training slice with
its own reading, which accepts answers the checker rejects and the other way round; the
metric is the checker on other items (new openers, frames and values); nothing the expert
writes is a test answer.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from bench.domains import Domain
from bench.experts import SimulatedExpert
from bench.loop_common import conversation, gate_summary, print_gate, read_jsonl, run_round, wilson
from bench.loop_feedback import feedback_kinds, record_feedback

VARIANTS = ("full", "sft", "kto")


def correctness(domain: Domain, model_dir: Path, adapter: Path | None, items: list[dict],
                tokens: int, cache: dict) -> list[int]:  # fmt: skip
    """Per item, 1 when the checker scores the greedy reply of base+`adapter` right."""
    if adapter in cache:
        return cache[adapter]
    from training.eval.generate import generate_replies, load_for_generation
    from training.eval.scorers import load_scorer

    checker = load_scorer(domain.scorer)
    system = domain.system_prompt()
    model, tok = load_for_generation(model_dir, adapter)
    replies = generate_replies(model, tok, [conversation(r, system) for r in items],
                               max_new_tokens=tokens)  # fmt: skip
    del model
    pairs = zip(items, replies, strict=True)
    cache[adapter] = [int(checker([row], [reply])[domain.metric] >= 1.0) for row, reply in pairs]
    return cache[adapter]


def share(hits: list[int]) -> dict[str, float]:
    low, high = wilson(sum(hits), len(hits))
    return {"correct": sum(hits) / len(hits), "low": low, "high": high, "n": len(hits)}


def gain(after: list[int], before: list[int]) -> dict[str, float]:
    """Paired difference after - before with the gate's bootstrap interval (95%)."""
    from training.comparisons import paired_interval

    diffs = [float(a - b) for a, b in zip(after, before, strict=True)]
    low, high = paired_interval(diffs, bounded=True)
    return {"diff": sum(diffs) / len(diffs), "low": low, "high": high}


def round_env(domain: Domain, args: Any, root: Path) -> dict[str, str]:
    """The settings every round of `domain` runs with: the domain folder, its eval set in
    the gate (scored by its checker; none with `--no-gate-eval-set`), and the eval set's
    reply budget."""
    eval_set = domain.gate
    if args.eval_items:  # a smaller gate set (smoke runs): the first rows, same name
        small = root / "gate-set" / eval_set.name
        small.parent.mkdir(parents=True, exist_ok=True)
        rows = eval_set.read_text(encoding="utf-8").splitlines()[: args.eval_items]
        small.write_text("\n".join(rows) + "\n", encoding="utf-8")
        eval_set = small
    env = {
        "TUNELOOP_DATA_DIR": str(domain.folder),
        "TUNELOOP_GATE_EVAL_SETS": str(eval_set),
        "TUNELOOP_EVAL_SCORER": domain.scorer,
        "TUNELOOP_GENERATE_MAX_NEW_TOKENS": str(args.eval_tokens),
    }
    if args.no_gate_eval_set:  # as a new user runs it: the round's own default objective
        del env["TUNELOOP_GATE_EVAL_SETS"], env["TUNELOOP_EVAL_SCORER"]
    if args.gate_margins is not None:
        env["TUNELOOP_GATE_MARGINS"] = args.gate_margins
    return {**env, **args.extra_env}


def baseline(domain: Domain, args: Any, model_dir: Path, root: Path) -> tuple[list, dict, list]:
    """`root` created; the domain's test items, the reply cache its correctness checks
    share, and the bare base's hits on those items."""
    root.mkdir(parents=True, exist_ok=True)
    test = read_jsonl(domain.test)[: args.heldout_items or None]
    cache: dict = {}
    return test, cache, correctness(domain, model_dir, None, test, args.eval_tokens, cache)


def run_variant(domain: Domain, variant: str, args: Any, model_dir: Path, root: Path,
                test: list[dict], base_hits: list[int], cache: dict, *, seed: int,
                name: str | None = None, rounds: int | None = None, sabotage: bool = False,
                env: dict[str, str] | None = None, first_round: int = 1) -> list[dict]:  # fmt: skip
    """`args.rounds` rounds in a row of one variant; a report per round. The sabotage check
    names its runs (`name`), runs one round each with its own `seed`, flips the expert's
    labels (`sabotage`) and brings its own settings (`env`); a run that goes on in a home
    an earlier run left (its store, its registry) starts at `first_round`, so that its
    prompts are new ones."""
    import torch

    from feedback.store import Store
    from training.eval.generate import generate_replies, load_for_generation
    from training.registry import Registry

    name = name or variant
    home = root / name
    home.mkdir(parents=True, exist_ok=True)
    system = domain.system_prompt()
    pool = read_jsonl(domain.pool)
    # a saboteur flips every label, so its own reading stays honest underneath
    expert = SimulatedExpert(domain.expert, mistakes=0.0 if sabotage else args.expert_mistakes,
                             seed=seed, names_answer=args.expert_reasons == "answer")  # fmt: skip
    store = Store.open(f"sqlite:///{(home / 'tuneloop.db').resolve()}")
    user = store.get_user("sim-expert") or store.add_user(
        name="sim-expert", role="expert", password="not-used-" + "x" * 8
    )
    registry = Registry(home / "adapters")
    env = env or round_env(domain, args, root)
    reports = []
    for rnd in range(first_round, first_round + (rounds or args.rounds)):
        t0 = time.perf_counter()
        items = pool[(rnd - 1) * args.prompts_per_round : rnd * args.prompts_per_round]
        serving = registry.current()
        model, tok = load_for_generation(model_dir, registry.verify(serving) if serving else None)
        convs = [conversation(r, system) for r in items]
        torch.manual_seed(seed * 1000 + rnd)
        budget: int = args.max_new_tokens or 64
        replies = generate_replies(
            model, tok, convs, temperature=0.7, top_p=0.9, max_new_tokens=budget
        )
        kinds = feedback_kinds(len(items), seed * 1000 + rnd)
        wanted = [i for i, k in enumerate(kinds) if k == "compare"] if variant == "full" else []
        others = (
            generate_replies(
                model, tok, [convs[i] for i in wanted], temperature=1.0, max_new_tokens=budget
            )
            if wanted
            else []
        )
        del model
        seconds = dict(zip(wanted, others, strict=True))
        judgements = expert.judge(replies, items, batch=seed * 1000 + rnd)
        tally = record_feedback(store, user.id, items, replies, seconds, system, expert=expert,
                                judgements=judgements, variant=variant, adapter=serving,
                                sabotage=sabotage, seed=seed * 1000 + rnd)  # fmt: skip
        feedback_s = time.perf_counter() - t0
        result, minutes = run_round(
            home, model_dir, args.train_args, {**env, "TUNELOOP_TRAIN_SEED": str(seed + rnd)}
        )
        gate = gate_summary(result)
        now = registry.current()
        stages = {}
        folder = home / "rounds" / result["id"]
        for stage in gate:
            adapter = folder / stage / "adapter"
            if (adapter / "adapter_config.json").is_file():
                stage_hits = correctness(domain, model_dir, adapter, test, args.eval_tokens, cache)
                stages[stage] = {**share(stage_hits), "gate": gate[stage]["decision"],
                                 "hits": stage_hits}  # fmt: skip
        serving_dir = registry.verify(now) if now else None
        if now and now == result.get("version") and result.get("candidate_stage") in stages:
            cache[serving_dir] = stages[result["candidate_stage"]]["hits"]  # the same weights
        hits = correctness(domain, model_dir, serving_dir, test, args.eval_tokens, cache)
        for stage in ("dpo", "kto"):  # each preference stage against this round's SFT stage
            if stage in stages and "sft" in stages:
                stages[stage]["gain_over_sft_stage"] = gain(
                    stages[stage]["hits"], stages["sft"]["hits"]
                )
        report = {
            "variant": name, "round": rnd, "status": result["status"],
            "stage": result.get("candidate_stage"), "decision": result.get("decision"),
            "serving_after": now, "heldout": share(hits), "gain_over_base": gain(hits, base_hits),
            "stages": stages, "round_minutes": round(minutes, 2),
            "feedback_seconds": round(feedback_s, 1), "expert": tally,
            "expert_mistakes": sum(j.mistaken for j in judgements), "gate": gate, "hits": hits,
        }  # fmt: skip
        reports.append(report)
        print(f"[{domain.name} {name} round {rnd}] {result['status']} "
              f"({result.get('candidate_stage')}) in {minutes:.1f} min; feedback "
              f"{json.dumps(tally)} ({report['expert_mistakes']} labels wrong) "
              f"in {feedback_s:.0f} s")  # fmt: skip
        print_gate(gate)
        print(f"  test-set correct {fmt_share(report['heldout'])}; stages "
              + ", ".join(f"{s} {fmt_share(v)}" for s, v in stages.items()))  # fmt: skip
    store.engine.dispose()  # the database whole in its file: a later run may copy this home
    return reports


def run_domain(domain: Domain, args: Any, model_dir: Path, root: Path, seed: int) -> dict:
    """Every selected variant's rounds on `domain` under `seed`; the summary printed, saved
    beside the homes and returned."""
    root = root / domain.name / f"seed-{seed}"
    test, cache, base_hits = baseline(domain, args, model_dir, root)
    summary: dict[str, Any] = {
        "domain": domain.name, "split": domain.split, "shape": domain.shape, "seed": seed,
        "metric": domain.metric, "env": round_env(domain, args, root),
        "train_args": args.train_args, "prompts_per_round": args.prompts_per_round,
        "expert_mistakes": args.expert_mistakes, "base": share(base_hits),
        "base_hits": base_hits, "runs": [], "round_mode": os.environ.get("TUNELOOP_ROUND_MODE"),
    }  # fmt: skip
    print(f"{domain.name} (seed {seed}): root {root}; base test-set correct "
          f"{fmt_share(summary['base'])}")  # fmt: skip
    for variant in args.variants:
        summary["runs"] += run_variant(domain, variant, args, model_dir, root, test, base_hits,
                                       cache, seed=seed)  # fmt: skip
        (root / "loop_quality.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    by_key = {(r["variant"], r["round"]): r for r in summary["runs"]}
    for r in summary["runs"]:  # the preference stages against the SFT-only run, same round
        sft = by_key.get(("sft", r["round"]))
        if sft is not None and r["variant"] != "sft":
            r["gain_over_sft_run"] = gain(r["hits"], sft["hits"])
    (root / "loop_quality.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print_table(summary)
    print(f"details: {root / 'loop_quality.json'}")
    return summary


def fmt_share(s: dict[str, float]) -> str:
    return f"{s['correct']:.0%} [{s['low']:.0%}, {s['high']:.0%}]"


def fmt_gain(g: dict[str, float] | None) -> str:
    if not g or g.get("diff") is None:
        return "-"
    return f"{g['diff']:+.0%} [{g['low']:+.0%}, {g['high']:+.0%}]"


def print_table(summary: dict[str, Any]) -> None:
    """One line per variant and round; the stages of each round measured on the same items."""
    print(f"\n{summary.get('domain', '')} base: test-set correct {fmt_share(summary['base'])}")
    print(f"{'variant':<11}{'round':<6}{'status':<13}{'stage':<6}{'test-set correct':<19}"
          f"{'gain over base':<20}{'vs sft run':<20}{'min':>5}  "
          "stages (test-set correct)")  # fmt: skip
    for r in summary["runs"]:
        stages = ", ".join(
            f"{name} {v['correct']:.0%}"
            + (f" ({fmt_gain(v['gain_over_sft_stage'])} vs sft)" if "gain_over_sft_stage" in v
               else "")
            for name, v in r["stages"].items()
        )  # fmt: skip
        print(f"{r['variant']:<11}{r['round']:<6}{r['status']:<13}{r['stage'] or '-':<6}"
              f"{fmt_share(r['heldout']):<19}{fmt_gain(r['gain_over_base']):<20}"
              f"{fmt_gain(r.get('gain_over_sft_run')):<20}{r['round_minutes']:>5.1f}  "
              f"{stages}")  # fmt: skip
