"""Runs the real `tuneloop` entry point, in-process for tests that check its output, or as
its own process for a whole training round."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# For a test that runs a round for something other than the gate's verdict (its output, its
# processes, its schedule): only the rubric is gated and no replies are generated to grade,
# so no gated metric is measured and every stage is "inconclusive" whatever a step or two did
# to the tiny model's weights. The test can then name the one status it expects.
INCONCLUSIVE_GATE = {"TUNELOOP_EVAL_GENERATE": "false", "TUNELOOP_GATE_MARGINS": "rubric_pass=0.05"}


def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str
) -> tuple[int, str, str]:
    """`tuneloop ARGS...` through `app.cli.main.main`: (exit code, stdout, stderr)."""
    from app.cli.main import main

    monkeypatch.setattr(sys, "argv", ["tuneloop", *args])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def train_in_subprocess(
    model_dir: Path,
    *,
    launcher: list[str],
    tracker: str,
    max_steps: int,
    pairs: tuple[str, str, str],
) -> tuple[Any, dict]:
    """8 (prompt, chosen, rejected) pairs in the test home's store, then `LAUNCHER -m app.cli
    train --json --no-promote` on `model_dir` as its own process; (Settings, its result).
    `{i}` in a text is the pair's number: give each pair its own chosen reply, or the pairs
    repeating a held-out one are left out of training. The gate is INCONCLUSIVE_GATE."""
    from app.config import Settings
    from feedback.store import Store
    from tests.tiny import add_pairs

    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    prompt, chosen, rejected = pairs
    add_pairs(Store.open(settings.database), 8, prompt=prompt, chosen=chosen, rejected=rejected)
    env = {
        **os.environ,
        "TUNELOOP_MODEL": str(model_dir),
        "TUNELOOP_TRACKER": tracker,
        "TUNELOOP_TRAIN_MAX_STEPS": str(max_steps),
        **INCONCLUSIVE_GATE,
    }
    proc = subprocess.run(
        [*launcher, "-m", "app.cli", "train", "--json", "--no-promote"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    if not any("deepspeed" in part for part in launcher):  # its launcher guesses, unasked
        assert "Setting accelerator to CPU" not in proc.stdout  # DeepSpeed's guess, told
    return settings, json.loads(proc.stdout.strip().splitlines()[-1])
