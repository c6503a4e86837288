"""The whole loop on the demo domain, with a simulated expert: does one round teach house style?

1. The served model (no adapter yet) answers the demo customers' questions
   (`data/demo_prompts.jsonl`) twice, as the chat app would: a reply (temperature 0.7) and a
   second sample for *Compare* (temperature 1.0).
2. A simulated expert judges them by the domain's rubric (`data/rubric.json`: greet the
   customer by name, cite the policy id, end with "— Brightwater Support", no markup, at most
   80 words). Through the real preference store, exactly as the chat app records them:
   - *Compare*: picks the reply that passes more rubric checks (a tie when equal);
   - 👍 / 👎 on the reply, 👎 with the failed checks as the reason;
   - *Edit*: where the reply fails, writes the answer it wanted from a template for the
     question's policy (two wordings per policy, the customer's name filled in). The store
     keeps it as a corrected answer and a preference pair (correction over the reply).
   The expert never sees the held-out prompts (`data/demo_heldout.jsonl`).
3. One round runs exactly as an operator starts one: `tuneloop train --json`, defaults.
4. The rubric pass rate of greedy replies to the held-out prompts, before (bare base) and
   after (the round's candidate adapter, promoted or not), and the held-out preference
   accuracy: the share of held-out pairs (the expert's template answer against the base
   model's own reply) in which the model gives the expert's answer the higher mean token
   log-probability.

    .venv/bin/python -m bench.loop_quality                   # embedded SmolLM2, temp home
    .venv/bin/python -m bench.loop_quality --home /tmp/loop --train-args "--max-steps 4"

Goal (issue 4): at least +30 percentage points of rubric pass rate after one round, with the
round under 15 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def conversation(row: dict[str, Any], system: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": row["prompt"]}]


def rubric_rates(rubric: Any, replies: list[str], rows: list[dict[str, Any]]) -> dict[str, float]:
    """Share of replies passing the whole rubric, and each check."""
    scores = [rubric.score(reply, row) for reply, row in zip(replies, rows, strict=True)]
    rates = {"all": sum(rubric.passes(r, row) for r, row in zip(replies, rows, strict=True))}
    for check in rubric.checks:
        rates[check.name] = sum(s[check.name] is not False for s in scores)
    return {k: v / len(rows) for k, v in rates.items()}


def pref_accuracy(model: Any, tok: Any, pairs: list[tuple[list, str, str]]) -> float:
    """Share of (prompt, chosen, rejected) where chosen has the higher mean token log-prob."""
    from training.evaluate import reply_logps

    items = [(p, [{"role": "assistant", "content": c}]) for p, c, _ in pairs]
    items += [(p, [{"role": "assistant", "content": r}]) for p, _, r in pairs]
    scores = reply_logps(model, tok, items, batch_size=8)
    n = len(pairs)
    mean = [s / max(1, k) for s, k in scores]
    return sum(mean[i] > mean[n + i] for i in range(n)) / n


def simulate_expert(
    store: Any, rubric: Any, rows: list[dict], replies: list[str], seconds: list[str], system: str
) -> dict[str, int]:
    """Record the expert's judgements through the real store, as the chat app does."""
    user = store.add_user(name="sim-expert", role="expert", password="not-used-" + "x" * 8)
    rng = random.Random(0)
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
            original_wins = score_a > score_b
            choice = "A" if original_wins == original_is_a else "B"
            tally["compare_picks"] += 1
        store.decide_comparison(comparison_id=comparison, user_id=user.id, choice=choice)
        # Thumbs, and an edit wherever the reply is not what the expert would send
        failed = [k for k, v in rubric.score(a, row).items() if v is False]
        store.rate(response_id=reply_id, user_id=user.id, up=not failed,
                   reason=", ".join(failed) or None)  # fmt: skip
        tally["thumbs_down" if failed else "thumbs_up"] += 1
        if failed:
            store.correct(response_id=reply_id, user_id=user.id, content=expert_answer(row, i))
            tally["corrections"] += 1
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a local model dir (default: the embedded SmolLM2)")
    parser.add_argument("--home", type=Path, help="home for the loop (default: a temp dir)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--train-args", default="", help="extra `tuneloop train` arguments")
    args = parser.parse_args()

    import torch

    from app.config import Settings
    from app.modelfiles import resolve_model_dir
    from feedback.store import Store
    from training.generate import generate_replies, load_for_generation
    from training.registry import Registry
    from training.rubric import load_rubric

    torch.manual_seed(0)
    settings = Settings()  # the operator's own home: where the converted model is cached
    model_dir = resolve_model_dir(args.model or settings.model, settings.models_dir)
    home = args.home or Path(tempfile.mkdtemp(prefix="tuneloop-loop-"))
    home.mkdir(parents=True, exist_ok=True)
    system = (DATA / "system_prompt.md").read_text(encoding="utf-8").strip()
    rubric = load_rubric(DATA / "rubric.json")
    train_rows = read_jsonl(DATA / "demo_prompts.jsonl")
    held_rows = read_jsonl(DATA / "demo_heldout.jsonl")
    print(f"model {model_dir}; home {home}; {len(train_rows)} expert prompts, "
          f"{len(held_rows)} held-out prompts")  # fmt: skip

    t0 = time.perf_counter()
    model, tok = load_for_generation(model_dir)
    held_convs = [conversation(r, system) for r in held_rows]
    gen = {"max_new_tokens": args.max_new_tokens}
    before = generate_replies(model, tok, held_convs, **gen)
    train_convs = [conversation(r, system) for r in train_rows]
    replies = generate_replies(model, tok, train_convs, temperature=0.7, top_p=0.9, **gen)
    seconds = generate_replies(model, tok, train_convs, temperature=1.0, **gen)
    held_pairs = [
        (c, expert_answer(r, i), reply)
        for i, (c, r, reply) in enumerate(zip(held_convs, held_rows, before, strict=True))
    ]
    acc_before = pref_accuracy(model, tok, held_pairs)
    del model
    print(f"generated before/pairs in {time.perf_counter() - t0:.0f} s")

    store = Store.open(f"sqlite:///{(home / 'tuneloop.db').resolve()}")
    tally = simulate_expert(store, rubric, train_rows, replies, seconds, system)
    counts = store.counts()
    print("simulated expert:", json.dumps(tally))
    print("store:", json.dumps({k: counts[k] for k in ("responses", "corrections",
          "comparisons_decided", "preferences_total", "preferences_by_source")}))  # fmt: skip

    env = {**os.environ, "TUNELOOP_HOME": str(home), "TUNELOOP_MODEL": str(model_dir),
           "TUNELOOP_TRACKER": os.environ.get("TUNELOOP_TRACKER", "none")}  # fmt: skip
    command = [sys.executable, "-m", "app.cli", "train", "--json", *args.train_args.split()]
    t1 = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    round_seconds = time.perf_counter() - t1
    (home / "train.log").write_text(proc.stderr + proc.stdout, encoding="utf-8")
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if not lines:
        print(proc.stderr[-3000:])
        raise SystemExit(f"the round printed no result (exit {proc.returncode})")
    result = json.loads(lines[-1])
    print(f"round {result['id']}: {result['status']} in {round_seconds / 60:.1f} min; "
          f"candidate {result.get('version')} ({result.get('candidate_stage')})")  # fmt: skip
    for reason in result.get("reasons") or []:
        print(f"  gate: {reason}")
    if not result.get("version"):
        raise SystemExit("the round produced no adapter; see " + str(home / "train.log"))

    adapter_dir = Registry(home / "adapters").verify(result["version"])
    model, tok = load_for_generation(model_dir, adapter_dir)
    after = generate_replies(model, tok, held_convs, **gen)
    acc_after = pref_accuracy(model, tok, held_pairs)
    del model

    rb, ra = rubric_rates(rubric, before, held_rows), rubric_rates(rubric, after, held_rows)
    report = {
        "rubric_pass_before": rb["all"],
        "rubric_pass_after": ra["all"],
        "rubric_gain_pp": round(100 * (ra["all"] - rb["all"]), 1),
        "checks_before": rb,
        "checks_after": ra,
        "heldout_pref_acc_before": acc_before,
        "heldout_pref_acc_after": acc_after,
        "round_minutes": round(round_seconds / 60, 2),
        "round_status": result["status"],
        "round_metrics": {
            k: {m: v.get(m) for m in ("rubric_pass", "pref_acc", "heldout_loss", "general_loss")}
            for k, v in (result.get("metrics") or {}).items()
        },
        "expert": tally,
    }
    (home / "loop_quality.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (home / "samples.jsonl").write_text(
        "".join(
            json.dumps({"prompt": r["prompt"], "before": b, "after": a}) + "\n"
            for r, b, a in zip(held_rows, before, after, strict=True)
        ),
        encoding="utf-8",
    )
    print()
    print(f"held-out rubric pass rate: before {rb['all']:.0%}, after {ra['all']:.0%} "
          f"({report['rubric_gain_pp']:+.1f} pp; goal +30 pp)")  # fmt: skip
    for check in rubric.checks:
        print(f"  {check.name:<16} {rb[check.name]:.0%} -> {ra[check.name]:.0%}")
    print(f"held-out preference accuracy: before {acc_before:.0%}, after {acc_after:.0%}")
    print(f"round: {result['status']}, {round_seconds / 60:.1f} min (goal < 15 min on 2 cores)")
    print(f"round's own gate metrics: {json.dumps(report['round_metrics'])}")
    print(f"details: {home / 'loop_quality.json'}, {home / 'samples.jsonl'}")


if __name__ == "__main__":
    main()
