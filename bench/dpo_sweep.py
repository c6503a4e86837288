"""The preference stage's settings by measurement: one finished triage round, DPO retrained
under each setting from that round's own SFT adapter and pairs, scored on held-out items.

    .venv/bin/python -m bench.dpo_sweep --round HOME/rounds/ROUND_ID --model DIR
    .venv/bin/python -m bench.dpo_sweep --round ... --model DIR \\
        --settings "lr=1e-4; lr=5e-4; lr=2e-5,loss=sigmoid; lr=1e-4,loss=robust,smoothing=0.1"

A round of `bench.loop_quality` (the ticket-triage domain) leaves what this needs in its
folder: `sft/adapter` and `data/dpo_train.jsonl`. Each setting trains DPO as the round did
(`training.stages.train_dpo`, the round's own hyperparameters from `report.json`) except
what the setting changes: `lr` (TUNELOOP_DPO_LEARNING_RATE), `beta`, `loss`
(TUNELOOP_DPO_LOSS_TYPE), `smoothing` (TUNELOOP_DPO_LABEL_SMOOTHING), `epochs`, `sft`
(TUNELOOP_DPO_SFT_WEIGHT: the chosen replies' NLL added, 0 for none), `seed`
(TUNELOOP_TRAIN_SEED: run one setting under several to see its spread). It reports
held-out correctness on the triage benchmark's 80 unseen items (`heldout.jsonl`, the
domain's checker, a 95% Wilson interval), the paired gains over the SFT stage alone and
over the first setting (the gate's bootstrap; put the current default first), the last
logged reward margin and accuracy, and the stage's seconds. One round's pairs and one
seed: a first measurement, not a law.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.loop_common import read_jsonl  # noqa: E402 - after the environment above
from bench.loop_triage import DOMAIN, correctness, gain, share  # noqa: E402

KEYS = {
    "lr": ("dpo_learning_rate", float),
    "beta": ("dpo_beta", float),
    "loss": ("dpo_loss_type", str),
    "smoothing": ("dpo_label_smoothing", float),
    "epochs": ("dpo_epochs", float),
    "sft": ("dpo_sft_weight", float),
    # the trainer's seed (the order it draws rows in): one setting under several seeds
    # shows how far a stage moves by chance alone
    "seed": ("seed", int),
}
DEFAULT_SETTINGS = "lr=1e-4; lr=5e-4; lr=2e-5,loss=sigmoid; lr=1e-4,loss=robust,smoothing=0.1"


def parse_settings(text: str) -> list[dict[str, Any]]:
    """`"lr=1e-4,loss=ipo; lr=5e-4"` -> [{"dpo_learning_rate": 1e-4, ...}, ...]."""
    out = []
    for part in text.split(";"):
        if not part.strip():
            continue
        setting: dict[str, Any] = {}
        for item in part.split(","):
            key, _, value = item.strip().partition("=")
            if key not in KEYS:
                raise SystemExit(f"unknown key {key!r} in {part.strip()!r}: use {sorted(KEYS)}")
            name, kind = KEYS[key]
            setting[name] = kind(value)
        out.append(setting)
    return out


def round_config(round_dir: Path) -> Any:
    """The round's training hyperparameters (report.json) as a RoundConfig."""
    from training.stages import RoundConfig

    saved = json.loads((round_dir / "report.json").read_text())["hyperparameters"]
    kinds = {f.name: f.type for f in dataclasses.fields(RoundConfig)}
    scalar: dict[str, Any] = {
        k: v for k, v in saved.items() if k in kinds and isinstance(v, int | float | str)
    }
    scalar.pop("system_prompt", None)
    for path_field in ("seed_file", "replay_file", "replay_cache_dir"):
        scalar.pop(path_field, None)
    return RoundConfig(**scalar)


def fmt(g: dict[str, float]) -> str:
    return f"{g['diff']:+.0%} [{g['low']:+.0%}, {g['high']:+.0%}]"


def label(setting: dict[str, Any]) -> str:
    short = {v[0]: k for k, v in KEYS.items()}
    return ",".join(f"{short[k]}={v}" for k, v in setting.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round", type=Path, required=True, help="a finished round's folder")
    parser.add_argument("--model", type=Path, required=True, help="the round's model dir")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS)
    parser.add_argument("--heldout-items", type=int, default=0, help="first N items (0: all)")
    parser.add_argument("--eval-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, help="where the JSON goes (default: beside)")
    args = parser.parse_args()

    from training.stages import train_dpo

    round_dir = args.round.resolve()
    base = round_config(round_dir)
    pairs = read_jsonl(round_dir / "data" / "dpo_train.jsonl")
    sft = round_dir / "sft" / "adapter"
    system = (DOMAIN / "system_prompt.md").read_text(encoding="utf-8").strip()
    items = read_jsonl(DOMAIN / "heldout.jsonl")[: args.heldout_items or None]
    cache: dict = {}
    sft_hits = correctness(args.model, sft, items, system, args.eval_tokens, cache)
    print(f"{len(pairs)} pairs; SFT stage alone: {share(sft_hits)['correct']:.0%} correct")
    # a folder per run: a stage resumes from checkpoints it finds in its folder
    work = round_dir.parent.parent / "dpo-sweep" / f"{round_dir.name}-{time.strftime('%H%M%S')}"
    results = []
    for i, setting in enumerate(parse_settings(args.settings)):
        config = dataclasses.replace(base, **setting)
        logged: dict[str, float] = {}

        def log(stage: str, step: int, total: int, metrics: dict, into: dict = logged) -> None:
            into.update(metrics)

        stage_dir = work / f"s{i}"
        t0 = time.perf_counter()
        adapter = train_dpo(args.model, pairs, sft, stage_dir, config, log)
        seconds = time.perf_counter() - t0
        hits = correctness(args.model, adapter, items, system, args.eval_tokens, cache)
        row: dict[str, Any] = {
            "setting": label(setting),
            "heldout": share(hits),
            "gain_over_sft": gain(hits, sft_hits),
            "last_reward_margin": logged.get("rewards/margins"),
            "last_reward_accuracy": logged.get("rewards/accuracies"),
            "seconds": round(seconds, 1),
            "hits": hits,
        }
        if results:  # against the first setting (put the current default first)
            row["gain_over_first"] = gain(hits, results[0]["hits"])
        g = row["gain_over_sft"]
        print(f"{row['setting']:<40} {row['heldout']['correct']:>4.0%} "
              f"[{row['heldout']['low']:.0%}, {row['heldout']['high']:.0%}]  vs SFT "
              f"{fmt(g)}  margin "
              f"{row['last_reward_margin']:.3g}  {seconds:.0f} s"
              + (f"  vs first {fmt(row['gain_over_first'])}" if results else ""),
              flush=True)  # fmt: skip
        results.append(row)
    out = args.out or work / "sweep.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"round": str(round_dir), "pairs": len(pairs), "sft": share(sft_hits),
               "results": results}  # fmt: skip
    out.write_text(json.dumps(summary, indent=1))
    print(f"details: {out}")


if __name__ == "__main__":
    main()
