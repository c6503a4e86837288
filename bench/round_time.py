"""A whole round's time on rows like a real deployment's, and where it goes.

Imports N SFT conversations and N preference pairs of ~370 tokens (a ~270-token system
prompt, a ticket, a short reply: `bench.train_throughput`'s long rows, each reply made its
own) into a fresh home with `tuneloop import`, then times `tuneloop train --json
--no-promote` as an operator runs it, with the settings' defaults and the demo domain
(replay, rubric and general checks on). The breakdown comes from the round's own records:
snapshot and replay (start to the first SFT step), each training stage, and evaluation
with the gate (the last training step to the end). `--unshared` runs a second round in
another home with TUNELOOP_SHARE_PREFIX=false and prints the ratio.

    .venv/bin/python -m bench.round_time --model DIR               # 120 + 120 rows
    .venv/bin/python -m bench.round_time --model DIR --rows 40 --unshared
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from bench.loop_common import read_jsonl, run_round
from bench.record import write_result
from bench.train_throughput import NAMES, REPO, count_tokens, long_system_prompt

NEXT_STEP = {
    "billing": "I have asked billing to check the charge; any refund shows within 5 working days.",
    "shipping": "I have asked the courier to trace the parcel and will update you within 2 days.",
    "returns": "A prepaid return label is on its way by email; the refund follows its scan.",
    "damaged": "Please send a photo of the damage; a replacement ships as soon as it arrives.",
    "account": "I have passed this to our account team, who reply within one working day.",
}


def unique_rows(n: int) -> tuple[list[dict], list[dict]]:
    """`n` SFT rows and `n` pairs like a real deployment's (~370 tokens): the ~270-token
    system prompt of `bench.train_throughput`'s long rows, a ticket and a short reply. The
    tickets are the triage domain's pool (`data/domains/tickets/prompts.jsonl`), each row
    its own: the round drops near-duplicate rows, and rows made from a handful of seeds
    would leave only a few dozen of each kind."""
    system = long_system_prompt()
    pool = read_jsonl(REPO / "data" / "domains" / "tickets" / "prompts.jsonl")
    if len(pool) < 2 * n:
        raise SystemExit(f"--rows {n}: the ticket pool has {len(pool)} tickets, not {2 * n}")
    rows = []
    for i, item in enumerate(pool[: 2 * n]):
        name = NAMES[i % len(NAMES)]
        user = (
            f"Ticket #{4100 + i} from {name} (account {52000 + 17 * i}, plan Fibre "
            f"{100 * (1 + i % 5)}, customer since {2015 + i % 9}). Channel: web chat.\n"
            f"Message: {item['prompt']} Please tell me what happens next."
        )
        order = "" if item["order"] == "none" else f" for order {item['order']}"
        reply = (
            f"Thanks, {name}. I have filed ticket #{4100 + i} under {item['category']}{order}. "
            f"{NEXT_STEP[item['category']]}"
        )
        prompt = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        rows.append((prompt, reply))
    sft = [{"messages": [*p, {"role": "assistant", "content": r}]} for p, r in rows[:n]]
    dpo = [
        {
            "prompt": p,
            "chosen": [{"role": "assistant", "content": r}],
            "rejected": [{"role": "assistant", "content": "Please call our hotline."}],
        }
        for p, r in rows[n:]
    ]
    return sft, dpo


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def breakdown(folder: Path) -> dict[str, float]:
    """Seconds per phase of a finished round, from its state.json and metrics.jsonl."""
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    start, end = _stamp(state["started_at"]), _stamp(state["finished_at"])
    spans: dict[str, list[float]] = {}
    for line in (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("time"):
            spans.setdefault(row["stage"], []).append(_stamp(row["time"]))
    phases: dict[str, float] = {}
    first = min(t for ts in spans.values() for t in ts) if spans else end
    phases["snapshot and replay"] = first - start
    last = start
    for stage, times in spans.items():  # a stage's span: its first record to its last
        phases[stage] = max(times) - min(times)
        last = max(last, max(times))
    phases["evaluation and gate"] = end - last
    phases["total"] = end - start
    return phases


def deployment_data(folder: Path) -> Path:
    """The demo domain's data folder with the rows' long system prompt as the deployment's:
    the round gives it to the seed and replay rows too, as a real deployment's round does,
    so every row of a batch starts alike."""
    shutil.copytree(REPO / "data", folder, dirs_exist_ok=True)
    (folder / "system_prompt.md").write_text(long_system_prompt() + "\n", encoding="utf-8")
    return folder


def timed_round(model_dir: Path, home: Path, rows: int, env_extra: dict[str, str]) -> dict:
    """Import the rows into `home`, run the round, return its result and breakdown."""
    home.mkdir(parents=True, exist_ok=True)
    env_extra = {"TUNELOOP_DATA_DIR": str(deployment_data(home / "data")), **env_extra}
    env = {**os.environ, "TUNELOOP_HOME": str(home), "TUNELOOP_MODEL": str(model_dir),
           "TUNELOOP_TRACKER": "none", **env_extra}  # fmt: skip
    sft, dpo = unique_rows(rows)
    for name, data, fmt in (("sft.jsonl", sft, "messages"), ("pairs.jsonl", dpo, "trl")):
        path = home / name
        path.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
        subprocess.run([sys.executable, "-m", "app.cli", "import", str(path), "--format", fmt],
                       env=env, check=True, cwd=REPO, capture_output=True)  # fmt: skip
    result, minutes = run_round(home, model_dir, "--no-promote", env_extra)
    folder = home / "rounds" / result["id"]
    return {"result": result, "wall_s": minutes * 60, "phases": breakdown(folder),
            "rows": json.loads((folder / "snapshot.json").read_text())["counts"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a local model dir")
    parser.add_argument("--rows", type=int, default=120, help="SFT rows and pairs")
    parser.add_argument("--home", help="where the homes go (default: a temp dir)")
    parser.add_argument("--unshared", action="store_true",
                        help="also a round with TUNELOOP_SHARE_PREFIX=false")  # fmt: skip
    args = parser.parse_args()
    model_dir = Path(args.model)
    root = Path(args.home or tempfile.mkdtemp(prefix="round-time-"))
    sft, dpo = unique_rows(args.rows)
    sft_tokens, dpo_tokens = count_tokens(model_dir, sft, dpo)
    side = dpo_tokens // (2 * args.rows)
    print(f"{args.rows} SFT rows ({sft_tokens // args.rows} tokens each on average) and "
          f"{args.rows} pairs ({side} tokens a side); root {root}")  # fmt: skip
    ways = {"shared": {}} | ({"unshared": {"TUNELOOP_SHARE_PREFIX": "false"}}
                             if args.unshared else {})  # fmt: skip
    runs = {}
    for way, env in ways.items():
        runs[way] = timed_round(model_dir, root / way, args.rows, env)
        r = runs[way]
        print(f"{way}: {r['result']['status']} in {r['wall_s'] / 60:.1f} min; snapshot rows "
              f"{r['rows']}")  # fmt: skip
        for phase, seconds in r["phases"].items():
            print(f"  {phase:<22}{seconds / 60:6.1f} min")
    if "unshared" in runs:
        a, b = runs["shared"]["phases"], runs["unshared"]["phases"]
        print("unshared/shared: " + ", ".join(
            f"{k} {b[k] / a[k]:.2f}x" for k in a if k in b and a[k] > 0))  # fmt: skip
    (root / "round_time.json").write_text(json.dumps(runs, indent=2), encoding="utf-8")
    # the round's own seed (TUNELOOP_TRAIN_SEED, default 42) is in settings.env when set
    write_result("bench.round_time", runs, settings=vars(args),
                 seeds=[int(os.environ.get("TUNELOOP_TRAIN_SEED", "42"))])  # fmt: skip


if __name__ == "__main__":
    main()
