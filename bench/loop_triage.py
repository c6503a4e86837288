"""Three rounds of the whole loop on the ticket-triage domain, with a simulated expert.

The domain (`data/domains/tickets/`): customer messages to a shop, each with a gold answer,
its category (one of five) and its order number (or none), asked for as two lines
`category: ...` / `order: ...`. Per variant, in its own home, each round:

1. The serving version (the bare base before the first promotion) answers NEW prompts from
   `prompts.jsonl` (a slice no earlier round used; the same slice for every variant), as
   the chat app would: temperature 0.7, and a second sample at 1.0 for a *Compare*.
2. A simulated expert judges each reply by the item's gold answer, reading it as a person
   would: the reply must name the right category and the right order number (or give none)
   and name no other; what a `category:` or `order:` field says counts, so `order: 12` is a
   wrong order and `order: no` gives none. Its feedback goes through the real store's
   calls, the ones the chat page makes (`feedback.store.Store`: rate, correct,
   add_comparison/decide). Which kind each prompt gets is drawn with a fixed seed: 60%
   thumbs (👍 when it reads right, else 👎 with what was wrong as the reason), 25%
   corrections (the gold answer in one of several wordings; a reply that reads right gets a
   👍 instead), 15% compares (the reply that reads right wins; a tie when both or neither
   do).
3. `tuneloop train --json`, the real round with the real gate (the product's default
   margins, plus the domain's eval set `tickets_eval.jsonl` scored by the domain's checker
   `scorer.py:triage`), promoting the best stage that passes.
4. Held-out correctness: greedy replies of the version now serving (and of the round's
   candidate and each of its stages, where they differ) to `heldout.jsonl`, 80 items no
   expert, round or gate ever sees, scored by the checker: both fields equal the gold ones.
   With a 95% Wilson interval, and the gain over the base with the gate's paired bootstrap.

Variants (`--variants`, default all three): `full` (the mix above), `sft` (the same expert
and prompts, but only what SFT trains on reaches the store: 👍 and corrections, the latter
imported as conversations as `tuneloop import --format messages` stores them; no 👎, no
pairs, so no DPO or KTO stage runs), `kto` (thumbs only: every reply gets 👍 or 👎, so the
preference stage is KTO).

Why this is not circular: the expert decides from the gold answer on the training slice,
the metric is exact correctness of the parsed fields on other messages (new openers and
closers, new order numbers, and a fifth of them with issue sentences the training pool
never uses). The expert also accepts answers the checker does not (the right category and
number in a sentence), so the metric is not the expert's rule either, and nothing the
expert writes is a held-out answer.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

from bench.loop_common import (
    conversation,
    gate_summary,
    print_gate,
    read_jsonl,
    run_round,
    wilson,
)

DOMAIN = Path(__file__).resolve().parent.parent / "data" / "domains" / "tickets"
CATEGORIES = ("billing", "shipping", "returns", "damaged", "account")
MIX = {"thumbs": 0.60, "correction": 0.25, "compare": 0.15}
VARIANTS = ("full", "sft", "kto")
# The sabotage check's objective on the eval set's correctness: a gain must be shown (the
# interval's low end above 1 point), not merely the absence of a loss.
OBJECTIVE = 0.01
# The gold answer as an expert writes it: the two fields, in varied wording.
CORRECTIONS = (
    "category: {c}\norder: {o}",
    "Category: {c}\nOrder: {o}",
    "category: {c}\norder: {h}{o}",
    "order: {o}\ncategory: {c}",
    "category: {c}\norder: {o}\nRouted to the {c} team.",
    "Category: {c}\nOrder: {h}{o}",
)


# A field the reply fills in says what it says, whatever the value: "order: 12" names a
# wrong order and "category: refund" a wrong category, as a person reading it would judge;
# "order: no" gives none (the checker wants "none" and rejects it).
CATEGORY_FIELD = re.compile(r"\bcategory\s*:\s*([^\s,.;]+)", re.IGNORECASE)
ORDER_FIELD = re.compile(r"\border\s*[:#]\s*#?\s*([^\s,.;]+)", re.IGNORECASE)
NO_ORDER = {"none", "no", "n/a", "-"}


def expert_reads(reply: str) -> tuple[set[str], set[str]]:
    """The categories and order numbers a reply names, read as a person would: the
    categories it mentions and the 6-digit numbers in it, plus the values of its
    `category:` and `order:` fields."""
    lowered = reply.lower()
    cats = {c for c in CATEGORIES if re.search(rf"\b{c}\b", lowered)}
    cats |= {value.lower() for value in CATEGORY_FIELD.findall(reply)}
    orders = set(re.findall(r"(?<!\d)\d{6}(?!\d)", reply))
    orders |= {v.lower() for v in ORDER_FIELD.findall(reply) if v.lower() not in NO_ORDER}
    return cats, orders


def expert_verdict(reply: str, item: dict[str, Any]) -> str:
    """'' when the reply gives the gold answer (however worded), else what is wrong."""
    cats, orders = expert_reads(reply)
    wrong = []
    if cats != {item["category"]}:
        wrong.append(f"it is a {item['category']} ticket")
    gold = set() if item["order"] == "none" else {item["order"]}
    if orders != gold:
        wrong.append(f"the order is {item['order']}")
    return "; ".join(wrong)


def expert_correction(item: dict[str, Any], rng: random.Random) -> str:
    order = item["order"]
    form = rng.choice(CORRECTIONS)
    return form.format(c=item["category"], o=order, h="" if order == "none" else "#")


def feedback_kinds(n: int, seed: int) -> list[str]:
    """Which kind of feedback each of `n` prompts gets, in MIX's shares (fixed by `seed`)."""
    counts = {k: round(n * share) for k, share in MIX.items()}
    counts["thumbs"] += n - sum(counts.values())
    kinds = [k for k, c in counts.items() for _ in range(c)]
    random.Random(seed).shuffle(kinds)
    return kinds


def record_feedback(
    store: Any, user_id: int, items: list[dict], replies: list[str], seconds: dict[int, str],
    system: str, *, variant: str, adapter: str | None, seed: int, sabotage: bool = False,
) -> dict[str, int]:  # fmt: skip
    """The expert's judgements of `replies`, through the store's chat-page calls.

    With `sabotage`, every label is flipped: 👍 and 👎 swap, a compare goes to the reply
    that reads wrong, and where the honest expert would correct a wrong reply the saboteur
    keeps the model's reply as the winner of a pair whose loser is the gold answer (as a
    bulk import of flipped pairs would store it)."""
    from feedback.records import NewExample, NewPreference

    rng = random.Random(seed)
    kinds = feedback_kinds(len(items), seed) if variant != "kto" else ["thumbs"] * len(items)
    tally = {"thumbs_up": 0, "thumbs_down": 0, "corrections": 0, "compare_picks": 0, "ties": 0,
             "not_stored": 0}  # fmt: skip
    imported, flipped = [], []
    for i, (item, reply, kind) in enumerate(zip(items, replies, kinds, strict=True)):
        prompt = conversation(item, system)
        cid = store.start_conversation(user_id=user_id, title=item["prompt"][:60])
        store.add_user_message(conversation_id=cid, content=item["prompt"])
        common = {"conversation_id": cid, "prompt": prompt, "model": "bench",
                  "adapter_version": adapter, "latency_ms": 0.0}  # fmt: skip
        reply_id = store.add_response(content=reply, params={"temperature": 0.7}, **common)
        wrong = expert_verdict(reply, item)
        claims_right = (not wrong) != sabotage
        if kind == "compare" and variant == "full":
            cand_id = store.add_response(
                content=seconds[i], params={"temperature": 1.0}, kind="candidate", **common
            )
            original_is_a = rng.random() < 0.5
            comparison = store.add_comparison(
                user_id=user_id, original_response_id=reply_id,
                candidate_response_id=cand_id, original_is_a=original_is_a,
            )  # fmt: skip
            ok_a, ok_b = claims_right, (not expert_verdict(seconds[i], item)) != sabotage
            choice = "tie" if ok_a == ok_b else ("A" if ok_a == original_is_a else "B")
            store.decide_comparison(comparison_id=comparison, user_id=user_id, choice=choice)
            tally["ties" if choice == "tie" else "compare_picks"] += 1
        elif kind == "correction" and sabotage:  # the mirror of a correction
            if wrong:
                text = expert_correction(item, rng)
                flipped.append(NewPreference(prompt=prompt, chosen=reply, rejected=text))
                tally["corrections"] += 1
            else:
                store.rate(response_id=reply_id, user_id=user_id, up=False, reason="wrong")
                tally["thumbs_down"] += 1
        elif claims_right and (kind != "compare" or variant == "kto"):
            store.rate(response_id=reply_id, user_id=user_id, up=True)
            tally["thumbs_up"] += 1
        elif kind == "correction":
            text = expert_correction(item, rng)
            if variant == "sft":  # an SFT row, and no edit pair
                imported.append(NewExample(messages=[*prompt, {"role": "assistant",
                                                               "content": text}]))  # fmt: skip
            else:
                store.correct(response_id=reply_id, user_id=user_id, content=text)
            tally["corrections"] += 1
        elif kind == "thumbs" and variant != "sft":
            store.rate(response_id=reply_id, user_id=user_id, up=False, reason=wrong or "wrong")
            tally["thumbs_down"] += 1
        else:  # the SFT-only run keeps no 👎 and no compare
            tally["not_stored"] += 1
    if imported:
        store.add_bulk(examples=imported)
    if flipped:
        store.add_bulk(preferences=flipped)
    return tally


def correctness(model_dir: Path, adapter: Path | None, items: list[dict], system: str,
                tokens: int, cache: dict) -> list[int]:  # fmt: skip
    """Per held-out item, 1 when the greedy reply of base+`adapter` gives the gold answer."""
    if adapter in cache:
        return cache[adapter]
    from training.eval.generate import generate_replies, load_for_generation
    from training.eval.scorers import load_scorer

    checker = load_scorer(f"{DOMAIN / 'scorer.py'}:triage")
    model, tok = load_for_generation(model_dir, adapter)
    replies = generate_replies(model, tok, [conversation(r, system) for r in items],
                               max_new_tokens=tokens)  # fmt: skip
    del model
    pairs = zip(items, replies, strict=True)
    cache[adapter] = [int(checker([row], [reply])["correct"]) for row, reply in pairs]
    return cache[adapter]


def share(hits: list[int]) -> dict[str, float]:
    low, high = wilson(sum(hits), len(hits))
    return {"correct": sum(hits) / len(hits), "low": low, "high": high, "n": len(hits)}


def gain(after: list[int], before: list[int]) -> dict[str, float]:
    """Paired difference after - before with the gate's bootstrap interval (95%)."""
    from training.gate import paired_interval

    diffs = [float(a - b) for a, b in zip(after, before, strict=True)]
    low, high = paired_interval(diffs, bounded=True)
    return {"diff": sum(diffs) / len(diffs), "low": low, "high": high}


def run_variant(variant: str, args: Any, model_dir: Path, root: Path, test: list[dict],
                base_hits: list[int], cache: dict, *, name: str | None = None,
                rounds: int | None = None, seed: int | None = None, sabotage: bool = False,
                env: dict[str, str] | None = None) -> list[dict]:  # fmt: skip
    """Three (`args.rounds`) rounds in a row of one variant; a report per round. The
    sabotage check names its runs (`name`), runs one round each with its own `seed`, flips
    the expert's labels (`sabotage`) and trains without the domain's seed examples (`env`)."""
    import torch

    from feedback.store import Store
    from training.eval.generate import generate_replies, load_for_generation
    from training.registry import Registry

    name = name or variant
    seed = args.seed if seed is None else seed
    home = root / name
    home.mkdir(parents=True, exist_ok=True)
    system = (DOMAIN / "system_prompt.md").read_text(encoding="utf-8").strip()
    pool = read_jsonl(DOMAIN / "prompts.jsonl")
    store = Store.open(f"sqlite:///{(home / 'tuneloop.db').resolve()}")
    user = store.add_user(name="sim-expert", role="expert", password="not-used-" + "x" * 8)
    registry = Registry(home / "adapters")
    env = env or round_env(args, root)
    reports = []
    for rnd in range(1, (rounds or args.rounds) + 1):
        t0 = time.perf_counter()
        items = pool[(rnd - 1) * args.prompts_per_round : rnd * args.prompts_per_round]
        serving = registry.current()
        model, tok = load_for_generation(model_dir, registry.verify(serving) if serving else None)
        convs = [conversation(r, system) for r in items]
        torch.manual_seed(seed * 1000 + rnd)
        gen = {"max_new_tokens": args.max_new_tokens or 64}
        replies = generate_replies(model, tok, convs, temperature=0.7, top_p=0.9, **gen)
        kinds = feedback_kinds(len(items), seed * 1000 + rnd)
        wanted = [i for i, k in enumerate(kinds) if k == "compare"] if variant == "full" else []
        others = (
            generate_replies(model, tok, [convs[i] for i in wanted], temperature=1.0, **gen)
            if wanted
            else []
        )
        del model
        seconds = dict(zip(wanted, others, strict=True))
        tally = record_feedback(store, user.id, items, replies, seconds, system,
                                variant=variant, adapter=serving, sabotage=sabotage,
                                seed=seed * 1000 + rnd)  # fmt: skip
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
                stage_hits = correctness(model_dir, adapter, test, system, args.eval_tokens, cache)
                stages[stage] = {**share(stage_hits), "gate": gate[stage]["decision"],
                                 "hits": stage_hits}  # fmt: skip
        serving_dir = registry.verify(now) if now else None
        if now and now == result.get("version") and result.get("candidate_stage") in stages:
            cache[serving_dir] = stages[result["candidate_stage"]]["hits"]  # the same weights
        hits = correctness(model_dir, serving_dir, test, system, args.eval_tokens, cache)
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
            "feedback_seconds": round(feedback_s, 1), "expert": tally, "gate": gate,
            "hits": hits,
        }  # fmt: skip
        reports.append(report)
        print(f"[{name} round {rnd}] {result['status']} ({result.get('candidate_stage')}) "
              f"in {minutes:.1f} min; feedback {json.dumps(tally)} "
              f"in {feedback_s:.0f} s")  # fmt: skip
        print_gate(gate)
        print(f"  held-out correct {fmt_share(report['heldout'])}; stages "
              + ", ".join(f"{s} {fmt_share(v)}" for s, v in stages.items()))  # fmt: skip
    return reports


def round_env(args: Any, root: Path) -> dict[str, str]:
    """The settings every triage round runs with: the domain folder, its eval set in the
    gate (scored by its checker), and the eval set's reply budget."""
    eval_set = DOMAIN / "tickets_eval.jsonl"
    if args.eval_items:  # a smaller gate set (smoke runs): the first rows, same name
        small = root / "gate-set" / eval_set.name
        small.parent.mkdir(parents=True, exist_ok=True)
        rows = eval_set.read_text(encoding="utf-8").splitlines()[: args.eval_items]
        small.write_text("\n".join(rows) + "\n", encoding="utf-8")
        eval_set = small
    env = {
        "TUNELOOP_DATA_DIR": str(DOMAIN),
        "TUNELOOP_GATE_EVAL_SETS": str(eval_set),
        "TUNELOOP_EVAL_SCORER": f"{DOMAIN / 'scorer.py'}:triage",
        "TUNELOOP_GENERATE_MAX_NEW_TOKENS": str(args.eval_tokens),
    }
    if args.gate_margins is not None:
        env["TUNELOOP_GATE_MARGINS"] = args.gate_margins
    return {**env, **args.extra_env}


def _baseline(args: Any, model_dir: Path, root: Path) -> tuple[Path, list[dict], dict, list]:
    """A benchmark's folder `root` (created), its held-out items, the reply cache its
    correctness checks share, and the bare base's hits on those items."""
    root.mkdir(parents=True, exist_ok=True)
    system = (DOMAIN / "system_prompt.md").read_text(encoding="utf-8").strip()
    test = read_jsonl(DOMAIN / "heldout.jsonl")[: args.heldout_items or None]
    cache: dict = {}
    return root, test, cache, correctness(model_dir, None, test, system, args.eval_tokens, cache)


def sabotage_env(args: Any, root: Path) -> dict[str, str]:
    """The sabotage check's settings, the same for its honest run and its sabotaged ones.

    - The domain without its seed examples: they are the operator's own vetted rows, which
      no saboteur can flip, and they alone can make a round better than the base.
    - The eval set's correctness as the gate's objective (unless `--gate-margins` says
      otherwise): the held-out pairs and rows are drawn from the same feedback the round
      trains on, so flipped labels flip them too and a sabotaged stage looks *better* there;
      only the operator's eval set is independent of the experts.
    - No KTO stage (`TUNELOOP_KTO_MIN_ROWS` out of reach): on the 2-core reference machine a
      KTO stage on a round's ~60 thumbs takes ~16 minutes, which six rounds cannot afford.
      Flipped thumbs still reach training: a 👍 on a wrong reply is an SFT row.
    """
    from training.gate import DEFAULT_MARGINS

    domain = root / "domain-without-seeds"
    skip = shutil.ignore_patterns("seed_sft.jsonl", "heldout.jsonl", "__pycache__")
    shutil.copytree(DOMAIN, domain, ignore=skip, dirs_exist_ok=True)
    env = {**round_env(args, root), "TUNELOOP_DATA_DIR": str(domain),
           "TUNELOOP_KTO_MIN_ROWS": "1000000"}  # fmt: skip
    if args.gate_margins is None:
        eval_set = Path(env["TUNELOOP_GATE_EVAL_SETS"]).stem
        env["TUNELOOP_GATE_MARGINS"] = f"{DEFAULT_MARGINS},{eval_set}:correct={OBJECTIVE}"
    return env


def run_sabotage(args: Any, model_dir: Path, root: Path) -> dict[str, Any]:
    """One honest round and `args.sabotage_runs` rounds with every label flipped (a seed
    each), from the base; none of the sabotaged rounds may be promoted, the honest one
    should be. The summary printed, saved and returned."""
    root, test, cache, base_hits = _baseline(args, model_dir, root / "sabotage")
    env = sabotage_env(args, root)
    summary: dict[str, Any] = {"env": env, "train_args": args.train_args,
                               "base": share(base_hits), "runs": []}  # fmt: skip
    print(f"sabotage check: root {root}; base held-out correct {fmt_share(summary['base'])}")
    common: dict[str, Any] = {"rounds": 1, "env": env}
    if not args.skip_honest:
        summary["runs"] += run_variant("full", args, model_dir, root, test, base_hits, cache,
                                       name="honest", seed=args.seed, **common)  # fmt: skip
    first = args.sabotage_first
    for k in range(first, first + args.sabotage_runs):
        summary["runs"] += run_variant(
            "full", args, model_dir, root, test, base_hits, cache, name=f"sabotage-{k}",
            seed=args.seed + k, sabotage=True, **common,
        )  # fmt: skip
        (root / "sabotage.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (root / "sabotage.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print_table(summary)
    sabotaged = [r for r in summary["runs"] if r["variant"].startswith("sabotage")]
    honest = [r for r in summary["runs"] if r["variant"] == "honest"]
    promoted = sum(r["status"] == "promoted" for r in sabotaged)
    print(f"sabotage: {promoted} of {len(sabotaged)} rounds promoted (goal 0)"
          + (f"; honest round: {honest[0]['status']}" if honest else ""))  # fmt: skip
    print(f"details: {root / 'sabotage.json'}")
    return summary


def fmt_share(s: dict[str, float]) -> str:
    return f"{s['correct']:.0%} [{s['low']:.0%}, {s['high']:.0%}]"


def run_triage(args: Any, model_dir: Path, root: Path) -> dict[str, Any]:
    """Every selected variant's rounds; the summary printed, saved and returned."""
    root, test, cache, base_hits = _baseline(args, model_dir, root / "triage")
    summary: dict[str, Any] = {
        "env": round_env(args, root), "train_args": args.train_args,
        "prompts_per_round": args.prompts_per_round, "base": share(base_hits), "runs": [],
        "round_mode": os.environ.get("TUNELOOP_ROUND_MODE"),
    }  # fmt: skip
    print(f"ticket triage: root {root}; base held-out correct {fmt_share(summary['base'])}")
    for variant in args.variants:
        summary["runs"] += run_variant(variant, args, model_dir, root, test, base_hits, cache)
        (root / "loop_quality.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    by_key = {(r["variant"], r["round"]): r for r in summary["runs"]}
    for r in summary["runs"]:  # the preference stages against the SFT-only run, same round
        sft = by_key.get(("sft", r["round"]))
        if sft is not None and r["variant"] != "sft":
            r["gain_over_sft_run"] = gain(r["hits"], sft["hits"])
    (root / "loop_quality.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print_table(summary)
    print_goals(summary)
    print(f"details: {root / 'loop_quality.json'}")
    return summary


def fmt_gain(g: dict[str, float] | None) -> str:
    return f"{g['diff']:+.0%} [{g['low']:+.0%}, {g['high']:+.0%}]" if g else "-"


def print_table(summary: dict[str, Any]) -> None:
    """One line per variant and round; the stages of each round measured on the same items."""
    print(f"\nbase: held-out correct {fmt_share(summary['base'])}")
    print(f"{'variant':<11}{'round':<6}{'status':<13}{'stage':<6}{'held-out correct':<19}"
          f"{'gain over base':<20}{'vs sft run':<20}{'min':>5}  "
          "stages (held-out correct)")  # fmt: skip
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


def print_goals(summary: dict[str, Any]) -> None:
    """The benchmark's goals, checked on each variant's rounds."""
    for variant in dict.fromkeys(r["variant"] for r in summary["runs"]):
        runs = [r for r in summary["runs"] if r["variant"] == variant]
        last = runs[-1]["gain_over_base"]
        promoted = [r["heldout"]["correct"] for r in runs if r["status"] == "promoted"]
        steady = all(b >= a for a, b in zip(promoted, promoted[1:], strict=False))
        vs_sft = [r["gain_over_sft_run"]["diff"] for r in runs if r.get("gain_over_sft_run")]
        print(f"{variant}: after {len(runs)} rounds {fmt_gain(last)} over the base "
              f"(goal +30 pp, low end above +15 pp: "
              f"{'met' if last['diff'] >= 0.30 and last['low'] > 0.15 else 'not met'}); "
              f"{len(promoted)} promoted, each at least as good as the one before: "
              f"{'yes' if steady else 'no'}; longest round "
              f"{max(r['round_minutes'] for r in runs):.1f} min (goal < 10)"
              + (f"; vs the SFT-only run: {', '.join(f'{d:+.0%}' for d in vs_sft)} (goal +5 pp)"
                 if vs_sft else ""))  # fmt: skip
