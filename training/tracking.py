"""Experiment tracking for training rounds, through TRL's own `report_to` (no logging code here).

The tracker is trackio: local-first (one SQLite file per project on disk), installs from PyPI
with a handful of small dependencies that Gradio already pulls in, never reaches the network
unless it is given a Space or a server URL, and transformers' `Trainer` already ships its
callback (`report_to="trackio"`). MLflow would do the same job but brings a large dependency
tree (Flask, SQLAlchemy pins, pandas, pyarrow, ...) for one feature.

All rounds log into one trackio project, `tuneloop`, one run per stage
(`<round id>-sft`, `<round id>-dpo`), stored under `<rounds_dir>/.trackio/`; browse it with
`tuneloop tracker`, which starts trackio's own dashboard on that store.

The round passes, for each stage's SFTConfig / DPOConfig:
    report_to=report_to(settings.tracker, run_dir), project=PROJECT,
    run_name=run_name(run_dir, "sft")
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TRACKERS = ("trackio", "none")
PROJECT = "tuneloop"
STORE_NAME = ".trackio"


class TrackingError(Exception):
    """A tracker setting or store that cannot be used."""


def store_dir(rounds_dir: Path) -> Path:
    """Where trackio keeps every round's curves: `<rounds_dir>/.trackio`."""
    return Path(rounds_dir) / STORE_NAME


def run_name(run_dir: Path, stage: str) -> str:
    """The tracker run of one stage of one round, e.g. `r0003-20261122T0930-dpo`."""
    return f"{Path(run_dir).name}-{stage}"


def report_to(value: str, run_dir: Path) -> list[str]:
    """The `report_to` for a round's trainer configs; points trackio at this home's store.

    `value` is the `TUNELOOP_TRACKER` setting, `run_dir` the round's own folder
    (`rounds_dir/<round id>`); the store is its parent's `.trackio/`. Returns `[]` for
    "none", which turns every reporting integration off (TRL's default would be "all
    installed integrations").
    """
    if value not in TRACKERS:
        raise TrackingError(f"unknown tracker {value!r}; use one of {', '.join(TRACKERS)}")
    if value == "none":
        return []
    use_store(store_dir(Path(run_dir).parent))
    return ["trackio"]


def use_store(path: Path) -> Path:
    """Make trackio (local mode) read and write `path`, creating it.

    trackio reads `TRACKIO_DIR` once, when it is first imported; set before that, the
    environment is enough. In a process that already imported it for another store (a
    test suite running several homes, a long-lived `watch`), its module-level paths are
    pointed at `path` as well, so no round ever logs into another home's store.
    """
    path = Path(path).resolve()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TRACKIO_DIR"] = str(path)
    utils = sys.modules.get("trackio.utils")
    if utils is not None and Path(utils.TRACKIO_DIR) != path:
        targets = {
            "TRACKIO_DIR": path,
            "MEDIA_DIR": path / "media",
            "ARTIFACTS_DIR": path / "artifacts",
        }
        for name, module in list(sys.modules.items()):
            if name == "trackio" or name.startswith("trackio."):
                for attr, value in targets.items():
                    if isinstance(getattr(module, attr, None), Path):
                        setattr(module, attr, value)
    return path


def runs(rounds_dir: Path) -> list[str]:
    """Names of the tracker runs in this home's store."""
    use_store(store_dir(rounds_dir))
    from trackio.sqlite_storage import SQLiteStorage

    return list(SQLiteStorage.get_runs(PROJECT))


def show(rounds_dir: Path, *, host: str = "127.0.0.1", port: int | None = None) -> None:
    """Serve trackio's dashboard on this home's store (blocks until interrupted)."""
    store = use_store(store_dir(rounds_dir))
    import trackio

    if not (store / f"{PROJECT}.db").exists():
        raise TrackingError(f"no tracked rounds yet in {store}: run `tuneloop train` first")
    trackio.show(
        project=PROJECT, open_browser=False, block_thread=True, host=host, server_port=port
    )
