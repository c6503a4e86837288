"""Experiment tracking: a real TRL run reports through `report_to` into trackio's local store."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from training import tracking


def logged_metrics(rounds_dir: Path, run: str) -> list[dict]:
    """Every logged point of one tracker run (step, timestamp and the metrics), oldest first,
    read back from the home's trackio store."""
    tracking.use_store(tracking.store_dir(rounds_dir))
    from trackio.sqlite_storage import SQLiteStorage

    return list(SQLiteStorage.get_logs(tracking.PROJECT, run))


def _sft_run(model_dir: Path, run_dir: Path, tracker: str, steps: int = 3) -> None:
    """A few real SFT steps on the tiny model, configured the way a round configures them."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = [
        {
            "messages": [
                {"role": "user", "content": f"How do I water tomatoes {i}?"},
                {"role": "assistant", "content": "Deep water twice a week and a little mulch."},
            ]
        }
        for i in range(8)
    ]
    config = SFTConfig(
        output_dir=str(run_dir / "sft"),
        max_steps=steps,
        per_device_train_batch_size=2,
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        max_length=64,
        gradient_checkpointing=False,
        report_to=tracking.report_to(tracker, run_dir),
        project=tracking.PROJECT,
        run_name=tracking.run_name(run_dir, "sft"),
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
    )
    trainer.train()


def test_a_rounds_training_curve_lands_in_the_local_tracker(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    rounds = tmp_path / "rounds"
    run_dir = rounds / "r0001-20261122T0930"
    run_dir.mkdir(parents=True)
    _sft_run(tiny_model_dir, run_dir, "trackio", steps=3)

    assert (rounds / ".trackio" / "tuneloop.db").is_file()
    assert tracking.runs(rounds) == ["r0001-20261122T0930-sft"]
    points = logged_metrics(rounds, "r0001-20261122T0930-sft")
    losses = [p["train/loss"] for p in points if "train/loss" in p]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)

    # a second home in the same process gets its own store, not the first one's
    other = tmp_path / "other" / "rounds"
    (other / "r0001-x").mkdir(parents=True)
    _sft_run(tiny_model_dir, other / "r0001-x", "trackio", steps=1)
    assert tracking.runs(other) == ["r0001-x-sft"]
    assert tracking.runs(rounds) == ["r0001-20261122T0930-sft"]


def test_tracker_none_reports_nowhere(tmp_path: Path) -> None:
    assert tracking.report_to("none", tmp_path / "rounds" / "r1") == []
    assert not (tmp_path / "rounds" / ".trackio").exists()
    with pytest.raises(tracking.TrackingError, match="unknown tracker"):
        tracking.report_to("wandb", tmp_path / "rounds" / "r1")


def test_the_tracker_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from app.config import Settings

    assert Settings().tracker == "trackio"
    monkeypatch.setenv("TUNELOOP_TRACKER", "mlflow")
    with pytest.raises(ValidationError):
        Settings()
