"""The house-style demo loop, one round, and its sabotage runs: the gate's check.

1. The served model (no adapter yet) answers the demo customers' questions
   (`data/demo_prompts.jsonl`) twice, as the chat app would: a reply (temperature 0.7) and a
   second sample for *Compare* (temperature 1.0).
2. A simulated expert judges them by the domain's rubric (`data/rubric.json`) through the
   real preference store, exactly as the chat app records them: compare picks (more rubric
   checks passed wins), 👍/👎, and corrections from a template per policy.
3. One round runs exactly as an operator starts one: `tuneloop train --json`, defaults.
4. The honest run reports the rubric pass rate of greedy replies to the held-out prompts
   (`data/demo_heldout.jsonl`) before and after, and the held-out preference accuracy.
   The expert picks and edits by the same rubric that measures success here, so this run
   shows the house style was learnt, not that feedback generalises: the ticket-triage loop
   in `bench/loop_domain.py` is the benchmark of that.
5. Sabotage runs (one seed each): the same loop with every label of the simulated expert
   flipped (picks, thumbs, and correction pairs with the expert's answer as the rejected
   side). The gate (the product's defaults, plus the demo eval set `data/eval_demo.jsonl`,
   whose rubric checks the expected policy) must promote none of them while the honest run
   is still promoted. Each run prints the gate's decision per stage with every gated
   metric's difference and 95% interval, and the round's time.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from bench.loop_common import conversation, gate_summary, print_gate, read_jsonl, run_round

DATA = Path(__file__).resolve().parent.parent / "data"
SIGN_OFF = "— Brightwater Support"
# What the simulated expert writes for each policy: two wordings, the name filled in.
TEMPLATES: dict[str, tuple[str, str]] = {
    "POL-3": (
        "sorry about the outage. Please check status.brightwater.example for your area; if it "
        "lasts more than 4 hours, a credit is added to your bill automatically (POL-3).",
        "sorry you are offline. Our status page, status.brightwater.example, shows outages in "
        "your area, and any outage over 4 hours is credited automatically (POL-3).",
    ),
    "POL-7": (
        "please unplug the router for 30 seconds, plug it back in and wait 2 minutes for the "
        "lights to settle (POL-7). If they stay red, reply here and we will open a fault.",
        "a restart usually fixes this: unplug the router, wait 30 seconds, plug it in again "
        "and give it 2 minutes to come back (POL-7).",
    ),
    "POL-12": (
        "sorry about that. You can dispute a bill within 60 days of the invoice date, and an "
        "approved refund arrives within 5 working days (POL-12).",
        "we can look into this charge. Billing disputes are accepted up to 60 days after the "
        "invoice date; refunds take 5 working days once approved (POL-12).",
    ),
    "POL-15": (
        "we can move your line with at least 14 days' notice, and the first move each year is "
        "free (POL-15).",
        "just give us 14 days' notice before the move; moving your line is free once a year "
        "(POL-15).",
    ),
    "POL-21": (
        "we need 30 days' notice to cancel, and there is no fee once you are past the first 12 "
        "months of your contract (POL-21).",
        "you can cancel with 30 days' notice; cancelling is free after the first 12 months of "
        "the contract (POL-21).",
    ),
    "POL-30": (
        "please run the line test from your account page. If your speed stays below half of "
        "your plan's speed for 3 days, we open a fault for you (POL-30).",
        "sorry about the slow speed. Run the line test; below 50% of your plan speed for 3 "
        "days counts as a fault and we will fix it (POL-30).",
    ),
}


def expert_answer(row: dict[str, Any], variant: int) -> str:
    """The answer the simulated expert writes for a demo row (it passes the rubric)."""
    body = TEMPLATES[row["policy"]][variant % 2]
    return f"Hi {row['customer']}, {body}\n\n{SIGN_OFF}"


def rubric_rates(rubric: Any, replies: list[str], rows: list[dict[str, Any]]) -> dict[str, float]:
    """Share of replies passing the whole rubric, and each check."""
    scores = [rubric.score(reply, row) for reply, row in zip(replies, rows, strict=True)]
    rates = {"all": sum(rubric.passes(r, row) for r, row in zip(replies, rows, strict=True))}
    for check in rubric.checks:
        rates[check.name] = sum(s[check.name] is not False for s in scores)
    return {k: v / len(rows) for k, v in rates.items()}


def pref_accuracy(model: Any, tok: Any, pairs: list[tuple[list, str, str]]) -> float:
    """Share of (prompt, chosen, rejected) where chosen has the higher mean token log-prob."""
    from training.eval.evaluate import reply_logps

    items = [(p, [{"role": "assistant", "content": c}]) for p, c, _ in pairs]
    items += [(p, [{"role": "assistant", "content": r}]) for p, _, r in pairs]
    scores = reply_logps(model, tok, items, batch_size=8)
    n = len(pairs)
    mean = [s / max(1, k) for s, k in scores]
    return sum(mean[i] > mean[n + i] for i in range(n)) / n


def simulate_expert(
    store: Any,
    rubric: Any,
    rows: list[dict],
    replies: list[str],
    seconds: list[str],
    system: str,
    *,
    sabotage: bool = False,
    seed: int = 0,
) -> dict[str, int]:
    """Record the expert's judgements through the real store, as the chat app does.

    With `sabotage`, every label is flipped: the compare pick goes to the reply that passes
    fewer checks, 👍 and 👎 swap, and where the honest expert would write a correction the
    saboteur keeps the model's reply as the winner of the pair (the expert's answer
    becomes the rejected side, as a bulk import of flipped pairs would store it).
    """
    from feedback.records import NewPreference

    user = store.add_user(name="sim-expert", role="expert", password="not-used-" + "x" * 8)
    rng = random.Random(seed)
    flipped: list[Any] = []
    tally = {"compare_picks": 0, "ties": 0, "thumbs_up": 0, "thumbs_down": 0, "corrections": 0}
    for i, (row, a, b) in enumerate(zip(rows, replies, seconds, strict=True)):
        prompt = conversation(row, system)
        cid = store.start_conversation(user_id=user.id, title=row["prompt"][:60])
        store.add_user_message(conversation_id=cid, content=row["prompt"])
        common = {"conversation_id": cid, "prompt": prompt, "model": "SmolLM2-135M-Instruct",
                  "adapter_version": None, "latency_ms": 0.0}  # fmt: skip
        reply_id = store.add_response(content=a, params={"temperature": 0.7}, **common)
        cand_id = store.add_response(
            content=b, params={"temperature": 1.0}, kind="candidate", **common
        )
        # Compare: more rubric checks passed wins
        score_a = sum(v is True for v in rubric.score(a, row).values())
        score_b = sum(v is True for v in rubric.score(b, row).values())
        original_is_a = rng.random() < 0.5
        comparison = store.add_comparison(
            user_id=user.id,
            original_response_id=reply_id,
            candidate_response_id=cand_id,
            original_is_a=original_is_a,
        )
        if score_a == score_b:
            choice = "tie"
            tally["ties"] += 1
        else:
            original_wins = (score_a > score_b) != sabotage
            choice = "A" if original_wins == original_is_a else "B"
            tally["compare_picks"] += 1
        store.decide_comparison(comparison_id=comparison, user_id=user.id, choice=choice)
        # Thumbs, and an edit wherever the reply is not what the expert would send
        failed = [k for k, v in rubric.score(a, row).items() if v is False]
        up = (not failed) != sabotage
        store.rate(response_id=reply_id, user_id=user.id, up=up,
                   reason=None if up else ", ".join(failed) or "no")  # fmt: skip
        tally["thumbs_up" if up else "thumbs_down"] += 1
        if failed and not sabotage:
            store.correct(response_id=reply_id, user_id=user.id, content=expert_answer(row, i))
            tally["corrections"] += 1
        elif failed:
            flipped.append(NewPreference(prompt=prompt, chosen=a, rejected=expert_answer(row, i)))
            tally["corrections"] += 1
    if flipped:
        store.add_bulk(preferences=flipped)
    return tally


_SAMPLED: dict[int, tuple[list[str], list[str]]] = {}


def expert_store(
    home: Path, model_dir: Path, rows: list[dict], system: str, rubric: Any, *,
    sabotage: bool, seed: int, max_new_tokens: int, sample_seed: int | None = None,
) -> dict[str, int]:  # fmt: skip
    """The served model (bare base) answers the expert prompts; the expert judges them.

    The replies are sampled with `sample_seed` (default: `seed`); runs that share a sample
    seed reuse one sampling, so they differ only in the expert's and the trainer's seeds.
    """
    import torch

    from feedback.store import Store
    from training.eval.generate import generate_replies, load_for_generation

    sample_seed = seed if sample_seed is None else sample_seed
    if sample_seed not in _SAMPLED:
        torch.manual_seed(sample_seed)
        model, tok = load_for_generation(model_dir)
        convs = [conversation(r, system) for r in rows]
        gen = {"max_new_tokens": max_new_tokens}
        replies = generate_replies(model, tok, convs, temperature=0.7, top_p=0.9, **gen)
        seconds = generate_replies(model, tok, convs, temperature=1.0, **gen)
        del model
        _SAMPLED[sample_seed] = (replies, seconds)
    replies, seconds = _SAMPLED[sample_seed]
    store = Store.open(f"sqlite:///{(home / 'tuneloop.db').resolve()}")
    return simulate_expert(
        store, rubric, rows, replies, seconds, system, sabotage=sabotage, seed=seed
    )


def run_house(args: Any, model_dir: Path, root: Path) -> dict[str, Any]:
    """The honest house-style round (unless `args.skip_honest`) and `args.sabotage_runs`
    sabotage rounds, each in its own home under `root`; the summary saved and returned."""
    from training.eval.generate import generate_replies, load_for_generation
    from training.eval.rubric import load_rubric
    from training.registry import Registry

    root = root / "house"
    root.mkdir(parents=True, exist_ok=True)
    gen_tokens = args.max_new_tokens or 128
    system = (DATA / "system_prompt.md").read_text(encoding="utf-8").strip()
    rubric = load_rubric(DATA / "rubric.json")
    train_rows = read_jsonl(DATA / "demo_prompts.jsonl")
    held_rows = read_jsonl(DATA / "demo_heldout.jsonl")
    gate_env = {"TUNELOOP_GATE_EVAL_SETS": args.house_gate_eval_sets,
                "TUNELOOP_DATA_DIR": str(DATA)}  # fmt: skip
    if args.gate_margins is not None:
        gate_env["TUNELOOP_GATE_MARGINS"] = args.gate_margins
    print(f"house style: root {root}; {len(train_rows)} expert prompts, "
          f"{len(held_rows)} held-out prompts; gate {json.dumps(gate_env)}")  # fmt: skip
    summary: dict[str, Any] = {"gate_env": gate_env, "runs": []}

    if not args.skip_honest:
        home = root / "honest"
        home.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        model, tok = load_for_generation(model_dir)
        held_convs = [conversation(r, system) for r in held_rows]
        gen = {"max_new_tokens": gen_tokens}
        before = generate_replies(model, tok, held_convs, **gen)
        held_pairs = [
            (c, expert_answer(r, i), reply)
            for i, (c, r, reply) in enumerate(zip(held_convs, held_rows, before, strict=True))
        ]
        acc_before = pref_accuracy(model, tok, held_pairs)
        del model
        tally = expert_store(home, model_dir, train_rows, system, rubric, sabotage=False,
                             seed=0, max_new_tokens=gen_tokens,
                             sample_seed=args.sample_seed)  # fmt: skip
        print(f"honest expert: {json.dumps(tally)} ({time.perf_counter() - t0:.0f} s)")
        result, minutes = run_round(home, model_dir, args.train_args, gate_env)
        print(f"honest round {result['id']}: {result['status']} in {minutes:.1f} min; "
              f"candidate {result.get('version')} ({result.get('candidate_stage')})")  # fmt: skip
        gate = gate_summary(result)
        print_gate(gate)
        if not result.get("version"):
            raise SystemExit("the round produced no adapter; see " + str(home / "train.log"))
        adapter_dir = Registry(home / "adapters").verify(result["version"])
        model, tok = load_for_generation(model_dir, adapter_dir)
        after = generate_replies(model, tok, held_convs, **gen)
        acc_after = pref_accuracy(model, tok, held_pairs)
        del model
        rb, ra = rubric_rates(rubric, before, held_rows), rubric_rates(rubric, after, held_rows)
        report = {
            "run": "honest",
            "rubric_pass_before": rb["all"],
            "rubric_pass_after": ra["all"],
            "rubric_gain_pp": round(100 * (ra["all"] - rb["all"]), 1),
            "checks_before": rb,
            "checks_after": ra,
            "heldout_pref_acc_before": acc_before,
            "heldout_pref_acc_after": acc_after,
            "round_minutes": round(minutes, 2),
            "round_status": result["status"],
            "decision": result.get("decision"),
            "stage": result.get("candidate_stage"),
            "gate": gate,
            "expert": tally,
        }
        summary["runs"].append(report)
        (home / "samples.jsonl").write_text(
            "".join(
                json.dumps({"prompt": r["prompt"], "before": b, "after": a}) + "\n"
                for r, b, a in zip(held_rows, before, after, strict=True)
            ),
            encoding="utf-8",
        )
        print(f"held-out rubric pass rate: before {rb['all']:.0%}, after {ra['all']:.0%} "
              f"({report['rubric_gain_pp']:+.1f} pp)")  # fmt: skip
        for check in rubric.checks:
            print(f"  {check.name:<16} {rb[check.name]:.0%} -> {ra[check.name]:.0%}")
        print(f"held-out preference accuracy: before {acc_before:.0%}, after {acc_after:.0%}")

    for seed in range(1, args.sabotage_runs + 1):
        home = root / f"sabotage-{seed}"
        home.mkdir(parents=True, exist_ok=True)
        tally = expert_store(home, model_dir, train_rows, system, rubric, sabotage=True,
                             seed=seed, max_new_tokens=gen_tokens,
                             sample_seed=args.sample_seed)  # fmt: skip
        result, minutes = run_round(
            home, model_dir, args.train_args, {**gate_env, "TUNELOOP_TRAIN_SEED": str(seed)}
        )
        gate = gate_summary(result)
        print(f"sabotage seed {seed}: {result['status']} in {minutes:.1f} min; stage "
              f"{result.get('candidate_stage')}; expert {json.dumps(tally)}")  # fmt: skip
        print_gate(gate)
        summary["runs"].append({
            "run": f"sabotage-{seed}", "round_status": result["status"],
            "decision": result.get("decision"), "stage": result.get("candidate_stage"),
            "round_minutes": round(minutes, 2), "gate": gate, "expert": tally,
        })  # fmt: skip
        (root / "loop_quality.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")

    (root / "loop_quality.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    sabotaged = [r for r in summary["runs"] if r["run"].startswith("sabotage")]
    promoted = sum(r["round_status"] == "promoted" for r in sabotaged)
    print()
    for r in summary["runs"]:
        print(f"{r['run']:<12} {r['round_status']:<12} stage {r['stage'] or '-':<4} "
              f"{r['round_minutes']:.1f} min")  # fmt: skip
    if sabotaged:
        print(f"sabotage: {promoted} of {len(sabotaged)} rounds promoted (goal 0)")
    print(f"details: {root / 'loop_quality.json'}")
    return summary
