"""Every benchmark's figures as one JSON file under bench/results/, with what produced them.

A figure the docs quote must be traceable to the run that measured it: the file records the
commit (and whether the tree had uncommitted changes), the command line, the settings and
seeds that shaped the run, the machine, and the figures themselves. `docs/hooks/bench.py`
renders the docs' benchmark tables from these files, and `tests/test_docs.py` checks their
keys. `TUNELOOP_BENCH_RESULTS` points the files elsewhere (e.g. a device machine's $OUT).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
# The keys every results file carries; tests/test_docs.py holds the committed files to them.
REQUIRED_KEYS = ("benchmark", "command", "commit", "settings", "seeds", "machine", "figures")


def results_dir() -> Path:
    """Where result files go: TUNELOOP_BENCH_RESULTS, else bench/results/."""
    return Path(os.environ.get("TUNELOOP_BENCH_RESULTS") or RESULTS_DIR)


def _git(*args: str) -> str:
    try:
        proc = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def commit() -> str | None:
    """The checked-out commit, with `+dirty` when tracked files differ from it."""
    head = _git("rev-parse", "HEAD")
    if not head:
        return None
    return head + ("+dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU model and cores, memory, GPUs if any."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        if found:
            info["cpu"] = found.group(1).strip()
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        found = re.search(r"^MemTotal:\s*(\d+) kB", meminfo.read_text(), re.MULTILINE)
        if found:
            info["memory_gib"] = round(int(found.group(1)) / 2**20, 1)
    if shutil.which("nvidia-smi"):
        try:
            gpus = subprocess.run(
                ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False
            ).stdout.split("\n")
            info["gpus"] = [g.strip() for g in gpus if g.strip()]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return info


def tuneloop_settings() -> dict[str, str]:
    """The TUNELOOP_* variables set for this run (secrets left out): they reach every round."""
    secret = ("DATABASE_URL", "API_KEY")
    return {
        k: v
        for k, v in sorted(os.environ.items())
        if k.startswith("TUNELOOP_") and not k.endswith(secret)
    }


def write_result(
    benchmark: str,
    figures: Any,
    *,
    settings: dict[str, Any] | None = None,
    seeds: list[int] | None = None,
    name: str | None = None,
) -> Path:
    """Write one run's figures to `<results>/<name or benchmark>-<UTC time>.json`; say where.

    `settings` are the run's own options (its argparse namespace, as a dict); the TUNELOOP_*
    environment is added under `settings.env`.
    """
    now = dt.datetime.now(dt.UTC)
    record = {
        "benchmark": benchmark,
        "command": " ".join(["python", "-m", benchmark, *sys.argv[1:]]),
        "commit": commit(),
        "date": now.isoformat(timespec="seconds"),
        "settings": {**_plain(settings or {}), "env": tuneloop_settings()},
        "seeds": list(seeds or []),
        "machine": machine(),
        "figures": _plain(figures),
    }
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    stem = (name or benchmark.removeprefix("bench.")).replace("/", "-")
    path = folder / f"{stem}-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"results: {path}", file=sys.stderr)
    return path


def _plain(value: Any) -> Any:
    """JSON-safe: paths and other objects as strings, containers walked."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
