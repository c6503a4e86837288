"""No outbound calls: a training round and `generate`, each its own `tuneloop` process on
the tiny model, started WITHOUT the offline variables the test suite itself sets, run under
a guard (tests/netguard/sitecustomize.py) that refuses and records every connection or name
lookup outside 127.0.0.1. tuneloop must switch the hub, telemetry and analytics off itself
(app/offline.py), in every process it starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from app.config import Settings
from app.offline import OFFLINE_ENV, go_offline
from feedback.store import Store
from tests.cli import INCONCLUSIVE_GATE
from tests.tiny import add_pairs

REPO = Path(__file__).resolve().parent.parent
GUARD = Path(__file__).resolve().parent / "netguard"


def _tuneloop(args: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_round_and_generate_make_no_connection_outside_the_machine(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    add_pairs(Store.open(settings.database), 8, prompt="How do I bake bread number {i}?")
    log = tmp_path / "netguard.log"
    # The test process has the offline variables (tests/conftest.py); the children start
    # without them, and without CI (TRL skips its usage ping on CI machines).
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_ENV and k != "CI"}
    env.update(
        PYTHONPATH=os.pathsep.join([str(GUARD), str(REPO), env.get("PYTHONPATH", "")]),
        NETGUARD_LOG=str(log),
        TUNELOOP_MODEL=str(tiny_model_dir),
        # a short round: what runs, not how well, is tested
        TUNELOOP_TRAIN_MAX_STEPS="1",
        TUNELOOP_REPLAY_MAX_NEW_TOKENS="4",
        **INCONCLUSIVE_GATE,
    )
    result = _tuneloop(["train"], env)
    assert result["status"] == "inconclusive", result  # INCONCLUSIVE_GATE
    prompts = tmp_path / "in.jsonl"
    prompts.write_text(json.dumps({"prompt": "How do I bake bread?"}) + "\n")
    out = tmp_path / "o.jsonl"
    summary = _tuneloop(
        ["generate", "--in", str(prompts), "--out", str(out), "--adapter", "base"], env
    )
    assert summary["generated"] == 1

    lines = log.read_text().splitlines()
    assert sum(line.endswith("guard loaded") for line in lines) >= 2  # both processes guarded
    assert [line for line in lines if "blocked" in line] == []
    expected = ",".join(f"{k}={v}" for k, v in OFFLINE_ENV.items())
    exits = [line.split("env at exit ")[1] for line in lines if "env at exit" in line]
    assert exits and all(e == expected for e in exits), exits


def test_go_offline_overrides_what_was_set() -> None:
    environ = {"HF_HUB_OFFLINE": "0", "PATH": "/bin"}
    go_offline(environ)
    assert environ == {**OFFLINE_ENV, "PATH": "/bin"}
