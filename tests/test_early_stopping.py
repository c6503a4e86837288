"""Early stopping on a validation split of each stage's own train rows: through
`tuneloop train --json` on the tiny model (a stage that overfits stops before its planned
steps and keeps its best checkpoint; with patience 0 or too few rows nothing is held out and
every planned step runs), and the split itself (seeded, sized, KTO's labels kept)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_cli
from tests.configs import round_config
from training.early_stopping import split_rows, validation_size, why_off
from training.round_config import RoundConfig
from training.trainer_args import rows_seen


def _round(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    model_dir: Path,
    *,
    examples: int,
    pairs: int,
    env: dict[str, str],
) -> tuple[dict[str, Any], Path]:
    """`tuneloop train --json` on `examples` corrections and `pairs` preference pairs, each
    prompt and reply a random string of the tiny tokenizer's tokens: the random model
    already predicts them about as well as anything can, so whatever a stage learns beyond
    the end of a reply is memorising its train rows, and the validation loss soon rises.
    Returns (the result, the round's folder)."""
    from transformers import AutoTokenizer

    from app.config import Settings
    from feedback.records import NewExample, NewPreference
    from feedback.store import Store

    domain = tmp_path / "domain"  # a system prompt only: no seeds, no replay
    domain.mkdir()
    (domain / "system_prompt.md").write_text("You help with gardens and kitchens.\n")
    base = {
        "TUNELOOP_DATA_DIR": str(domain),
        "TUNELOOP_MODEL": str(model_dir),
        "TUNELOOP_TRACKER": "none",
        "TUNELOOP_EVAL_GENERATE": "false",
        "TUNELOOP_HELDOUT_MIN_ITEMS": "0",  # the plain 10% split: most rows train
        "TUNELOOP_TRAIN_BATCH_SIZE": "4",
    }
    for key, value in {**base, **env}.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pieces = [
        tokenizer.decode([i]) for i in range(len(tokenizer)) if i not in tokenizer.all_special_ids
    ]

    def reply() -> str:
        return "".join(rng.choice(pieces) for _ in range(30))

    store = Store.open(settings.database)
    store.add_bulk(
        examples=[
            NewExample(
                messages=[
                    {"role": "user", "content": reply()},
                    {"role": "assistant", "content": reply()},
                ]
            )
            for i in range(examples)
        ],
        preferences=[
            NewPreference(
                prompt=[{"role": "user", "content": reply()}],
                chosen=reply(),
                rejected=reply(),
            )
            for i in range(pairs)
        ],
    )
    code, out, err = run_cli(monkeypatch, capsys, "train", "--json", "--no-promote")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    return result, settings.rounds_dir / result["id"]


def _logged(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]


def test_an_overfitting_stage_stops_early_and_keeps_its_best_checkpoint(
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """SFT on random replies for 12 epochs (a validation split from 20 rows on, so that
    the tiny model can memorise its few train rows within seconds): the validation loss
    turns up, and with patience 1 the stage stops at the first evaluation that does not
    improve; the saved adapter is the best step's. DPO validates too (its own split)."""
    from safetensors.torch import load_file

    result, folder = _round(
        tmp_path, monkeypatch, capsys, tiny_model_dir,
        examples=30, pairs=30,
        env={
            "TUNELOOP_TRAIN_EARLY_STOPPING_MIN_ROWS": "20",
            "TUNELOOP_SFT_EPOCHS": "12",
            "TUNELOOP_SFT_LEARNING_RATE": "2e-2",
            "TUNELOOP_DPO_STEPS": "2",
            "TUNELOOP_TRAIN_EARLY_STOPPING_PATIENCE": "1",
        },
    )  # fmt: skip
    sft = result["training"]["sft"]
    counts = json.loads((folder / "snapshot.json").read_text())["counts"]
    # the validation rows are the stage's own train rows, not the gate's held-out items
    assert sft["train_rows"] + sft["validation_rows"] == counts["sft_train"] >= 20
    assert sft["validation_rows"] == validation_size(counts["sft_train"], 0.1)
    assert sft["off"] is None and sft["stopped_early"], (sft, _logged(folder))
    assert sft["steps_run"] < sft["planned_steps"] == 12 * -(-sft["train_rows"] // 4)

    logged = _logged(folder)
    sft_logged = [m for m in logged if m["stage"] == "sft"]
    evals = [(m["step"], m["eval_loss"]) for m in sft_logged if "eval_loss" in m]
    assert len(evals) >= 2 and evals[-1][0] == sft["steps_run"]
    best_step, best_loss = min(evals, key=lambda e: e[1])
    assert (sft["best_step"], sft["best_validation_loss"]) == (best_step, pytest.approx(best_loss))
    assert best_step < sft["steps_run"]  # the last evaluation was worse: not what is kept
    assert max(m["step"] for m in sft_logged) == sft["steps_run"]

    # The stage's adapter holds the best checkpoint's LoRA weights, not the last step's.
    saved = load_file(str(folder / "sft" / "adapter" / "adapter_model.safetensors"))
    best = load_file(str(folder / "sft" / "checkpoints" / f"checkpoint-{best_step}"
                         / "adapter_model.safetensors"))  # fmt: skip
    last = load_file(str(folder / "sft" / "checkpoints" / f"checkpoint-{sft['steps_run']}"
                         / "adapter_model.safetensors"))  # fmt: skip
    assert saved.keys() == best.keys() and all(saved[k].equal(best[k]) for k in saved)
    assert any(not saved[k].equal(last[k]) for k in saved)

    dpo = result["training"]["dpo"]
    assert dpo["off"] is None and dpo["validation_rows"] >= 4 and dpo["steps_run"] == 2
    assert dpo["train_rows"] == 8  # 2 steps of 4 pairs, sampled after the split
    assert any(m["stage"] == "dpo" and "eval_loss" in m for m in logged)
    report = (folder / "report.md").read_text()
    assert f"- sft: stopped early at step {sft['steps_run']} of {sft['planned_steps']}" in report


@pytest.mark.parametrize(
    ("env", "off"),
    [
        (
            {
                "TUNELOOP_TRAIN_EARLY_STOPPING_PATIENCE": "0",
                "TUNELOOP_TRAIN_EARLY_STOPPING_MIN_ROWS": "20",
            },
            "early stopping is off (patience 0)",
        ),
        ({"TUNELOOP_TRAIN_EARLY_STOPPING_MIN_ROWS": "500"}, "rows < 500"),
    ],
)
def test_without_a_validation_split_every_planned_step_runs(
    env: dict[str, str],
    off: str,
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    result, folder = _round(
        tmp_path, monkeypatch, capsys, tiny_model_dir,
        examples=30, pairs=0,
        # epochs alone plan the steps here (the small-data step rule has its own test)
        env={"TUNELOOP_SFT_EPOCHS": "2", "TUNELOOP_SFT_MIN_STEPS": "0",
             "TUNELOOP_SFT_LEARNING_RATE": "2e-2", **env},
    )  # fmt: skip
    sft = result["training"]["sft"]
    counts = json.loads((folder / "snapshot.json").read_text())["counts"]
    assert sft["train_rows"] == counts["sft_train"] and sft["validation_rows"] == 0
    assert off in sft["off"] and sft["off"].startswith("no validation split")
    assert not sft["stopped_early"] and sft["best_step"] is None
    assert sft["steps_run"] == sft["planned_steps"] == 2 * -(-sft["train_rows"] // 4)
    assert not any("eval_loss" in m for m in _logged(folder))
    assert (
        f"- sft: ran {sft['steps_run']} of {sft['steps_run']} steps; no validation split"
        in (folder / "report.md").read_text()
    )


def test_the_validation_split_is_seeded_sized_and_keeps_both_kto_labels() -> None:
    rows = [{"i": i, "label": i % 5 == 0} for i in range(200)]  # 40 👍, 160 👎
    config = round_config()
    split = split_rows(rows, config)
    assert len(split.validation) == 20 and len(split.train) == 180 and split.off is None
    assert sorted(r["i"] for r in split.train + split.validation) == list(range(200))
    assert [r["i"] for r in split.validation] == sorted(r["i"] for r in split.validation)
    assert split_rows(rows, config) == split  # the same rows when the round resumes
    assert split_rows(rows, round_config(seed=1)).validation != split.validation

    # sizes: the share, at least 4, at most 64, never more than half the rows
    assert [validation_size(n, 0.1) for n in (40, 41, 100, 900)] == [4, 4, 10, 64]
    assert validation_size(6, 0.1) == 3 and validation_size(400, 0.5) == 64
    assert len(split_rows(rows[:159], config).validation) == 0
    assert split_rows(rows[:159], config).off == "no validation split: 159 rows < 160"
    assert len(split_rows(rows[:160], config).validation) == 16
    assert split_rows(rows, round_config(early_stopping_patience=0)).validation == []

    # KTO: both labels in the validation rows, in the training rows' proportion
    label = lambda r: r["label"]  # noqa: E731
    kto = split_rows(rows, config, group=label)
    assert sum(r["label"] for r in kto.validation) == 4 and len(kto.validation) == 20
    few_up = [{"i": i, "label": i == 0} for i in range(40)] + [{"i": 40, "label": True}]
    kto = split_rows(few_up, round_config(early_stopping_min_rows=40), group=label)
    both = {True, False}
    assert {r["label"] for r in kto.validation} == {r["label"] for r in kto.train} == both
    # a short stage then samples what it trains on from the train rows only
    sample = rows_seen(kto.train, 1, round_config(batch_size=4), group=label)
    assert len(sample) == 4 and not {r["i"] for r in sample} & {r["i"] for r in kto.validation}


def test_early_stopping_is_off_under_fsdp_and_zero3(monkeypatch: pytest.MonkeyPatch) -> None:
    config = round_config()
    assert why_off(200, config) is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert "off under FSDP" in str(why_off(200, config))
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert "off under DeepSpeed ZeRO-3" in str(why_off(200, config))


def test_validating_configs_are_valid_for_installed_trl(tmp_path: Path) -> None:
    """The TRL configs of a stage with a validation split: evaluations and saves together
    about six times a stage, the lowest validation loss kept (transformers checks that
    saves line up with evaluations when it loads the best checkpoint)."""
    from app.config import Settings
    from training.device.machine import on_cuda
    from training.round_config import NO_GRAD_BATCH_SIZE
    from training.trainer_args import dpo_config, kto_config, sft_config

    config = RoundConfig.from_settings(Settings())
    assert (config.validation_share, config.early_stopping_patience) == (0.1, 2)
    assert config.early_stopping_min_rows == 160
    rows = [{"label": i % 2 == 0} for i in range(8)]
    for args in (
        sft_config(config, tmp_path, 30, tmp_path, validate=True),
        dpo_config(config, tmp_path, 30, tmp_path, validate=True),
        kto_config(config, tmp_path, 30, tmp_path, rows, validate=True),
    ):
        assert args.eval_strategy == "steps" and args.eval_steps == args.save_steps == 5
        assert args.load_best_model_at_end and args.metric_for_best_model == "eval_loss"
        assert not args.greater_is_better
        # no gradients, no activations kept: validation takes more rows a batch than training
        no_grad = max(config.batch_size, NO_GRAD_BATCH_SIZE)  # a CPU trains 2 rows a step
        assert args.per_device_eval_batch_size == no_grad > config.batch_size or on_cuda()
        if hasattr(args, "precompute_ref_batch_size"):  # DPO and KTO: the reference pass too
            assert args.precompute_ref_batch_size == no_grad
    plain = sft_config(config, tmp_path, 30, tmp_path)
    assert plain.eval_strategy == "no" and plain.save_steps == config.save_steps
    assert sft_config(config, tmp_path, 3, tmp_path, validate=True).eval_steps == 1


def test_a_validating_stage_resumes_from_its_checkpoint(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round that fails mid-SFT resumes from the checkpoint its last evaluation saved,
    on the same validation rows, and records the stage as one run of its planned steps."""
    from app.config import Settings
    from feedback.store import Store
    from tests.test_round import _config, add_topic_rows
    from training.registry import Registry
    from training.round import run_round

    monkeypatch.setenv("TUNELOOP_MODEL", str(tiny_model_dir))
    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    store = Store.open(settings.database)
    add_topic_rows(store)
    config = _config(early_stopping_min_rows=12, sft_steps=6, dpo_steps=1)

    def crash(state: dict) -> None:
        if state["stage"] == "sft" and state["step"] == 4:
            raise RuntimeError("power cut")

    kwargs: dict[str, Any] = {
        "store": store,
        "registry": Registry(settings.adapters_dir),
        "model_dir": tiny_model_dir,
        "rounds_dir": settings.rounds_dir,
        "promote": False,
    }
    first = run_round(config=config, on_progress=crash, **kwargs)
    assert first.status == "failed" and "power cut" in first.reasons[0]
    folder = settings.rounds_dir / first.id
    assert (folder / "sft" / "checkpoints" / "checkpoint-3").is_dir()  # evaluated and saved
    again = run_round(config=config, resume=True, **kwargs)
    assert again.id == first.id and again.status != "failed", again.reasons
    sft = again.training["sft"]
    assert sft["off"] is None and sft["validation_rows"] == 4
    assert sft["steps_run"] == sft["planned_steps"] == 6 and sft["best_step"] in range(1, 7)
    logged = _logged(folder)
    steps = [m["step"] for m in logged if m["stage"] == "sft" and "loss" in m]
    assert steps == [1, 2, 3, 4, 4, 5, 6]  # step 4 again: it went on from checkpoint-3
    evals = [m["step"] for m in logged if m["stage"] == "sft" and "eval_loss" in m]
    assert evals == [1, 2, 3, 4, 5, 6]  # the crash came before step 4's evaluation
