"""A stage's settings by measurement: one finished round of a development domain, its DPO
(or KTO) stage retrained under each setting from that round's own SFT adapter and rows, or
its SFT stage (`--stage sft`) retrained from the bare base on the round's SFT rows, scored
on the domain's test set.

    .venv/bin/python -m bench.preference_sweep --round HOME/rounds/ROUND_ID --model DIR
    .venv/bin/python -m bench.preference_sweep --domain bookings --round ... --model DIR
    .venv/bin/python -m bench.preference_sweep --round ... --model DIR \\
        --settings "lr=1e-4; lr=5e-4; lr=2e-5,loss=sigmoid; lr=1e-4,loss=robust,smoothing=0.1"
    .venv/bin/python -m bench.preference_sweep --stage kto --round ... --model DIR \\
        --settings "lr=2e-5,seed=42; lr=1e-4,seed=42; lr=2e-5,seed=1; lr=1e-4,seed=1"

It tunes, so it refuses a test domain (`data/domains/split.json`), named with `--domain` or
read from the round's own seed file: defaults are chosen on development domains and reported
on test domains. A round of `bench.loop_quality` leaves what this needs in its
folder: `sft/adapter` and `data/dpo_train.jsonl` (`data/kto_train.jsonl` for KTO), all of
them, also where a continued round trained on a share. Each setting trains the stage as the
round did (`training.stages.train_dpo` / `train_kto`, the round's own hyperparameters from
`report.json`) except what the setting changes: `lr` (TUNELOOP_DPO_LEARNING_RATE or
TUNELOOP_KTO_LEARNING_RATE), `beta`, `epochs`, `seed` (TUNELOOP_TRAIN_SEED: run one setting
under several to see its spread), for SFT `lr`, `epochs` and `min_steps` (the data-size
rule, TUNELOOP_SFT_MIN_STEPS; its gain "over SFT" is over the round's own SFT stage), and
for DPO `loss` (TUNELOOP_DPO_LOSS_TYPE), `smoothing`
(TUNELOOP_DPO_LABEL_SMOOTHING), `sft` (TUNELOOP_DPO_SFT_WEIGHT: the chosen replies' NLL
added, 0 for none). It reports correctness on the domain's test set (its checker's primary
metric, a 95% Wilson interval), the paired gains over the SFT stage alone and over the
first setting (the gate's bootstrap; put the current default first), the last
logged reward margin and accuracy (where the trainer logs them), and the stage's seconds.
One round's rows and one seed: a first measurement, not a law; `bench.sweep_summary` sums
sweeps up across the development domains and seeds.
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

from bench.domains import SplitError, development_only, domain_of_path  # noqa: E402
from bench.loop_common import read_jsonl  # noqa: E402 - after the environment above
from bench.loop_domain import correctness, gain, share  # noqa: E402
from bench.record import write_result  # noqa: E402

KEYS = {
    # SFT retrained from the bare base on the round's own SFT rows: `gain_over_sft` is then
    # the gain over the round's own SFT stage, i.e. over the settings the round ran with.
    "sft": {
        "lr": ("sft_learning_rate", float),
        "epochs": ("sft_epochs", float),
        "min_steps": ("sft_min_steps", int),
        "seed": ("seed", int),
    },
    "dpo": {
        "lr": ("dpo_learning_rate", float),
        "beta": ("dpo_beta", float),
        "loss": ("dpo_loss_type", str),
        "smoothing": ("dpo_label_smoothing", float),
        "epochs": ("dpo_epochs", float),
        "sft": ("dpo_sft_weight", float),
        # the trainer's seed (the order it draws rows in): one setting under several seeds
        # shows how far a stage moves by chance alone
        "seed": ("seed", int),
    },
    "kto": {
        "lr": ("kto_learning_rate", float),
        "beta": ("kto_beta", float),
        "epochs": ("kto_epochs", float),
        "seed": ("seed", int),
    },
}
DEFAULT_SETTINGS = {
    "sft": "epochs=2; epochs=4",
    "dpo": "lr=1e-4; lr=5e-4; lr=2e-5,loss=sigmoid; lr=1e-4,loss=robust,smoothing=0.1",
    "kto": "lr=2e-5; lr=1e-4; lr=5e-4",
}


def parse_settings(text: str, stage: str = "dpo") -> list[dict[str, Any]]:
    """`"lr=1e-4,loss=ipo; lr=5e-4"` -> [{"dpo_learning_rate": 1e-4, ...}, ...]."""
    keys = KEYS[stage]
    out = []
    for part in text.split(";"):
        if not part.strip():
            continue
        setting: dict[str, Any] = {}
        for item in part.split(","):
            key, _, value = item.strip().partition("=")
            if key not in keys:
                raise SystemExit(
                    f"unknown {stage} key {key!r} in {part.strip()!r}: use {sorted(keys)}"
                )
            name, kind = keys[key]
            setting[name] = kind(value)
        out.append(setting)
    return out


def round_config(round_dir: Path) -> Any:
    """The round's training hyperparameters (report.json) as a RoundConfig."""
    from app.config import Settings
    from training.round_config import RoundConfig

    saved = json.loads((round_dir / "report.json").read_text())["hyperparameters"]
    kinds = {f.name: f.type for f in dataclasses.fields(RoundConfig)}
    scalar: dict[str, Any] = {
        k: v for k, v in saved.items() if k in kinds and isinstance(v, int | float | str)
    }
    scalar.pop("system_prompt", None)
    for path_field in ("seed_file", "replay_file", "replay_cache_dir"):
        scalar.pop(path_field, None)
    return dataclasses.replace(RoundConfig.from_settings(Settings()), **scalar)


def fmt(g: dict[str, float]) -> str:
    return f"{g['diff']:+.0%} [{g['low']:+.0%}, {g['high']:+.0%}]"


def label(setting: dict[str, Any], stage: str) -> str:
    short = {v[0]: k for k, v in KEYS[stage].items()}
    return ",".join(f"{short[k]}={v}" for k, v in setting.items())


def round_domain(round_dir: Path, name: str) -> Any:
    """The development domain `name`, checked against the round's own seed file: a round
    trained on a test domain's folder is refused whatever `--domain` says."""
    report = round_dir / "report.json"
    used = None
    if report.is_file():
        seed_file = json.loads(report.read_text()).get("hyperparameters", {}).get("seed_file")
        used = domain_of_path(Path(seed_file)) if seed_file else None
    domain = development_only([name, *([used] if used and used != name else [])],
                              "bench.preference_sweep")  # fmt: skip
    if used and used != name:
        raise SplitError(f"{round_dir} is a round on {used}, not {name}: pass --domain {used}")
    return domain[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domain", default="tickets", help="the round's domain (development "
                        "domains only; default tickets)")  # fmt: skip
    parser.add_argument("--round", type=Path, required=True, help="a finished round's folder")
    parser.add_argument("--model", type=Path, required=True, help="the round's model dir")
    parser.add_argument("--stage", choices=sorted(KEYS), default="dpo")
    parser.add_argument("--settings", help="';'-separated settings (default: a few rates)")
    parser.add_argument("--heldout-items", type=int, default=0, help="first N items (0: all)")
    parser.add_argument("--eval-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, help="where the JSON goes (default: beside)")
    args = parser.parse_args(argv)
    try:
        domain = round_domain(args.round.resolve(), args.domain)
    except SplitError as err:
        parser.error(str(err))

    from training.stages import train_dpo, train_kto, train_sft

    def sft_from_base(model: Path, rows: list, _sft: Path, stage_dir: Path, config: Any,
                      log: Any) -> Path:  # fmt: skip
        return train_sft(model, rows, stage_dir, config, log)

    train = {"sft": sft_from_base, "dpo": train_dpo, "kto": train_kto}[args.stage]
    round_dir = args.round.resolve()
    base = round_config(round_dir)
    rows = read_jsonl(round_dir / "data" / f"{args.stage}_train.jsonl")
    sft = round_dir / "sft" / "adapter"
    items = read_jsonl(domain.test)[: args.heldout_items or None]
    cache: dict = {}
    sft_hits = correctness(domain, args.model, sft, items, args.eval_tokens, cache)
    alone = share(sft_hits)["correct"]
    print(f"{len(rows)} {args.stage} rows; SFT stage alone: {alone:.0%} correct")
    # a folder per run: a stage resumes from checkpoints it finds in its folder
    stamp = time.strftime("%H%M%S")
    work = round_dir.parent.parent / f"{args.stage}-sweep" / f"{round_dir.name}-{stamp}"
    results: list[dict[str, Any]] = []
    settings = parse_settings(args.settings or DEFAULT_SETTINGS[args.stage], args.stage)
    for i, setting in enumerate(settings):
        config = dataclasses.replace(base, **setting)
        logged: dict[str, float] = {}

        def log(stage: str, step: int, total: int, metrics: dict, into: dict = logged) -> None:
            into.update(metrics)

        stage_dir = work / f"s{i}"
        t0 = time.perf_counter()
        adapter = train(args.model, rows, sft, stage_dir, config, log)
        seconds = time.perf_counter() - t0
        hits = correctness(domain, args.model, adapter, items, args.eval_tokens, cache)
        row: dict[str, Any] = {
            "setting": label(setting, args.stage),
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
        margin = "n/a" if row["last_reward_margin"] is None else f"{row['last_reward_margin']:.3g}"
        print(f"{row['setting']:<40} {row['heldout']['correct']:>4.0%} "
              f"[{row['heldout']['low']:.0%}, {row['heldout']['high']:.0%}]  vs SFT "
              f"{fmt(g)}  margin {margin}  {seconds:.0f} s"
              + (f"  vs first {fmt(row['gain_over_first'])}" if results else ""),
              flush=True)  # fmt: skip
        results.append(row)
    out = args.out or work / "sweep.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"domain": domain.name, "round": str(round_dir), "stage": args.stage,
               "settings": [r["setting"] for r in results], "rows": len(rows),
               "sft": share(sft_hits), "sft_hits": sft_hits, "results": results}  # fmt: skip
    out.write_text(json.dumps(summary, indent=1))
    print(f"details: {out}")
    seeds = sorted({int(s.get("seed", base.seed)) for s in settings})
    write_result("bench.preference_sweep", summary, settings=vars(args), seeds=seeds,
                 name=f"preference_sweep-{args.stage}")  # fmt: skip


if __name__ == "__main__":
    main()
