"""`bench.loop_compare`: two loop benchmark runs paired item by item, recomputed by hand on
made-up results; a development run is not compared with a --final one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.loop_compare import CompareError, compare

ROOT = Path(__file__).resolve().parent.parent


def run_file(final: bool, hits: dict[tuple[str, int], list[int]], stage: str = "sft") -> dict:
    runs = []
    for (domain, seed), h in hits.items():
        share = sum(h) / len(h)
        stages = {stage: {"correct": share, "hits": h}}
        runs.append({"domain": domain, "seed": seed, "runs": [{
            "variant": "full", "round": 1, "stage": stage, "hits": h, "stages": stages,
            "heldout": {"correct": share}, "round_minutes": 2.0 + seed}]})  # fmt: skip
    return {"benchmark": "bench.loop_quality", "commit": "c", "settings": {"env": {}},
            "figures": {"final": final, "runs": runs}}  # fmt: skip


def test_gain_is_paired_per_item_and_each_domain_weighs_the_same() -> None:
    base = run_file(False, {("a", 0): [0, 0, 1, 1], ("a", 1): [0, 0, 1, 1], ("b", 0): [1, 1]})
    # domain a: +1 item of 4 on both seeds (+25 points); domain b: -1 of 2 (-50 points)
    cand = run_file(False, {("a", 0): [1, 0, 1, 1], ("a", 1): [0, 1, 1, 1], ("b", 0): [1, 0],
                            ("c", 0): [1]})  # fmt: skip
    out = compare(base, cand)
    assert out["shipped"]["per_domain"]["a"]["diff"] == pytest.approx(0.25)
    assert out["shipped"]["per_domain"]["b"]["diff"] == pytest.approx(-0.5)
    assert out["shipped"]["suite"]["diff"] == pytest.approx((0.25 - 0.5) / 2)
    assert out["shipped"]["suite"]["domains"] == 2  # c: in one file only, not paired
    assert out["stages"]["sft"]["suite"]["diff"] == pytest.approx((0.25 - 0.5) / 2)
    assert [(p["domain"], p["seed"]) for p in out["pairs"]] == [("a", 0), ("a", 1), ("b", 0)]
    assert out["mean_round_minutes"] == pytest.approx([(2 + 3 + 2) / 3] * 2)


def test_runs_of_different_kinds_or_items_are_refused(tmp_path: Path) -> None:
    dev = run_file(False, {("a", 0): [0, 1]})
    with pytest.raises(CompareError, match="--final"):
        compare(dev, run_file(True, {("a", 0): [0, 1]}))
    with pytest.raises(CompareError, match="different test items"):
        compare(dev, run_file(False, {("a", 0): [0, 1, 1]}))
    with pytest.raises(CompareError, match="share no run"):
        compare(dev, run_file(False, {("z", 0): [0, 1]}))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(dev))
    b.write_text(json.dumps(run_file(True, {("a", 0): [1, 1]})))
    proc = subprocess.run([sys.executable, "-m", "bench.loop_compare", str(a), str(b)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip
    assert proc.returncode == 2 and "--final" in proc.stderr


def test_the_command_prints_and_records_the_comparison(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(run_file(False, {("a", 0): [0, 0]})))
    b.write_text(json.dumps(run_file(False, {("a", 0): [1, 1]}, stage="dpo")))
    env = {"PATH": "/usr/bin:/bin", "TUNELOOP_BENCH_RESULTS": str(tmp_path / "out")}
    proc = subprocess.run([sys.executable, "-m", "bench.loop_compare", str(a), str(b)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "sft 0% -> dpo 100%" in proc.stdout
    (written,) = (tmp_path / "out").glob("loop_compare-*.json")
    figures = json.loads(written.read_text())["figures"]
    assert figures["files"] == ["a.json", "b.json"]
    assert figures["shipped"]["suite"]["diff"] == pytest.approx(1.0)
