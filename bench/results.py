"""Benchmark results as committed JSON: the commit, the settings, the seeds, the domains and
the figures with their intervals, so that every figure in the README can be traced to a
file under `bench/results/` and re-derived from its per-item outcomes.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def commit() -> dict[str, Any]:
    """The checkout's commit and whether its tracked files had changes (None: not a repo)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": head, "dirty": bool(status) if status is not None else None}


def write_result(kind: str, payload: dict[str, Any], where: Path = RESULTS) -> Path:
    """`payload` with the commit and the time added, as `where/KIND-STAMP.json`."""
    where.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = where / f"{kind}-{stamp}.json"
    body = {"kind": kind, "written_utc": stamp, **commit(), **payload}
    path.write_text(json.dumps(body, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def mean_gain(per_domain: dict[str, list[float]], reps: int = 2000, seed: int = 0) -> dict:
    """The mean over domains of each domain's mean paired difference (every domain weighs
    the same), with a 95% stratified bootstrap interval: items are resampled within each
    domain, so the interval reflects the items measured, not a guess at other domains."""
    names = sorted(d for d, diffs in per_domain.items() if diffs)
    if not names:
        return {"diff": None, "low": None, "high": None, "domains": 0}

    def stat(samples: dict[str, list[float]]) -> float:
        return sum(sum(s) / len(s) for s in samples.values()) / len(samples)

    rng = random.Random(seed)
    draws = sorted(
        stat({d: rng.choices(per_domain[d], k=len(per_domain[d])) for d in names})
        for _ in range(reps)
    )
    return {
        "diff": stat({d: per_domain[d] for d in names}),
        "low": draws[int(0.025 * reps)],
        "high": draws[int(0.975 * reps) - 1],
        "domains": len(names),
    }
