"""What both loop benchmarks share: rounds run as an operator runs them, the gate's
decisions as printed, and a 95% interval for a share."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def conversation(row: dict[str, Any], system: str) -> list[dict[str, str]]:
    """The messages a row asks to answer: its earlier turns (`messages`) or its `prompt`."""
    turns = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
    return [{"role": "system", "content": system}, *turns]


def last_user_turn(row: dict[str, Any]) -> str:
    """What the user said last in a row (its prompt, or the last user turn of its messages)."""
    if "messages" in row:
        return next(m["content"] for m in reversed(row["messages"]) if m["role"] == "user")
    return str(row["prompt"])


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a share (sensible at 0% and 100%, unlike Wald's)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def run_round(home: Path, model_dir: Path, train_args: str, env_extra: dict[str, str]) -> tuple:
    """`tuneloop train --json` as an operator runs it, as its own process; (result, minutes).

    The process inherits this one's environment (so TUNELOOP_ROUND_MODE and any other
    setting the caller exported reach the round), with the loop's home and model on top.
    """
    env = {**os.environ, "TUNELOOP_HOME": str(home), "TUNELOOP_MODEL": str(model_dir),
           "TUNELOOP_TRACKER": os.environ.get("TUNELOOP_TRACKER", "none"), **env_extra}  # fmt: skip
    command = [sys.executable, "-m", "app.cli", "train", "--json", *train_args.split()]
    t1 = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    minutes = (time.perf_counter() - t1) / 60
    with (home / "train.log").open("a", encoding="utf-8") as log:
        log.write(proc.stderr + proc.stdout)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if not lines:
        print(proc.stderr[-3000:])
        raise SystemExit(f"the round printed no result (exit {proc.returncode})")
    result = json.loads(lines[-1])
    if "error" in result:
        print(proc.stderr[-3000:])
        raise SystemExit(f"the round failed: {result['error']} (see {home / 'train.log'})")
    return result, minutes


def gate_summary(result: dict[str, Any]) -> dict[str, Any]:
    """Each stage's decision and its gated comparisons, as printed and saved."""
    out: dict[str, Any] = {}
    for stage, decision in (result.get("gate") or {}).items():
        out[stage] = {
            "decision": decision["decision"],
            "comparisons": [
                {k: c[k] for k in ("name", "n", "serving", "candidate", "diff", "low", "high",
                                   "margin", "verdict")}
                for c in decision["comparisons"]
                if c["margin"] is not None
            ],
        }  # fmt: skip
    return out


def print_gate(summary: dict[str, Any]) -> None:
    for stage, decision in summary.items():
        print(f"  {stage}: {decision['decision']}")
        for c in decision["comparisons"]:
            if c["diff"] is None:
                print(f"    {c['name']:<24} not measured")
                continue
            print(f"    {c['name']:<24} {c['serving']:.3f} -> {c['candidate']:.3f}  "
                  f"diff {c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] n={c['n']} "
                  f"margin {c['margin']:+g}: {c['verdict']}")  # fmt: skip
