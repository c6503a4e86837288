"""`bench.sweep_summary`: a setting's gain across development domains and seeds, recomputed
by hand on made-up sweep results; a sweep of a test domain is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.domains import SplitError, read_split
from bench.sweep_summary import setting_key, summarise

ROOT = Path(__file__).resolve().parent.parent


def sweep(domain: str, sft: list[int], results: dict[str, list[int]]) -> dict:
    return {"domain": domain, "stage": "dpo", "sft_hits": sft,
            "results": [{"setting": s, "hits": h} for s, h in results.items()]}  # fmt: skip


def test_setting_key_drops_the_seed() -> None:
    assert setting_key("lr=0.0001,seed=42,beta=0.1") == ("lr=0.0001,beta=0.1", "42")
    assert setting_key("seed=3") == ("(round's own)", "3")


def test_gain_is_the_mean_over_domains_of_pooled_seeds() -> None:
    dev = read_split()["development"]
    sweeps = []
    for k, domain in enumerate(dev):
        for seed in range(3):
            # domain k: lr=1 gains 1 item in 4 on every seed (+25 points); lr=2 loses k items
            sft = [0, 0, 1, 1]
            worse = [0, 0] + [1, 1][k:] + [0] * k
            sweeps.append(
                sweep(domain, sft, {f"lr=1,seed={seed}": [1, 0, 1, 1], f"lr=2,seed={seed}": worse})
            )
    rows = {r["setting"]: r for r in summarise(sweeps)}
    assert rows["lr=1"]["gain_over_sft"]["diff"] == pytest.approx(0.25)
    one = rows["lr=1"]["gain_over_sft"]
    assert 0.0 <= one["low"] < 0.25 < one["high"] <= 0.5 and one["domains"] == len(dev)
    mean_loss = sum(-min(k, 2) / 4 for k in range(len(dev))) / len(dev)
    assert rows["lr=2"]["gain_over_sft"]["diff"] == pytest.approx(mean_loss)
    assert rows["lr=1"]["seeds"] == dict.fromkeys(dev, 3) and rows["lr=1"]["enough"]
    fewer = summarise([s for s in sweeps if not s["results"][0]["setting"].endswith("=2")])
    assert not any(r["enough"] for r in fewer)


def test_a_test_domain_sweep_is_refused(tmp_path: Path) -> None:
    name = read_split()["test"][0]
    with pytest.raises(SplitError, match=f"{name} is a test domain"):
        summarise([sweep(name, [0], {"lr=1": [1]})])
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"figures": sweep(name, [0], {"lr=1": [1]})}))
    proc = subprocess.run([sys.executable, "-m", "bench.sweep_summary", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 2 and f"{name} is a test domain" in proc.stderr
