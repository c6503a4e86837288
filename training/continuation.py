"""Rounds that build on each other: which rows a round trains on, and from which adapter.

`TUNELOOP_ROUND_MODE=fresh` trains a new adapter on every train row of the snapshot.
`continue` (the default, by measurement) starts the SFT stage from the promoted
version's weights (the registry's CURRENT) and trains on the rows that are new since that
version's round plus a sampled share (`TUNELOOP_ROUND_REPLAY_SHARE`) of the older rows:
the adapter already learned those, and replaying a share of them keeps it from forgetting
them while the round spends its steps on what is new. DPO and KTO continue the SFT adapter
(or, when the round has no SFT rows, the promoted one), and the gate compares against the
serving version, in both modes.

"New" is decided by content: a train row of this snapshot that is not among the train rows
of the snapshot the promoted version's round took (its folder keeps them). Rows are
compared after the same curation, so a store row, a seed or a replay answer that was in
that round is older, whatever its database id; a row that was held out then and is on the
train side now is new (that adapter never trained on it). The sample is drawn with a fixed
seed per round and part, and the choice is saved in the round's `continuation.json`, so a
resumed round trains on the same rows from the same parent.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path
from typing import Any

from feedback.canonical import canonical_json
from training.datasets import Snapshot

TRAIN_PARTS = ("sft_train", "dpo_train", "kto_train")
PLAN_FILE = "continuation.json"
MODES = ("fresh", "continue")


class ContinuationError(Exception):
    """A continue-mode round with nothing new to continue on."""


def plan(
    snap: Snapshot,
    *,
    mode: str,
    share: float,
    seed: str,
    registry: Any,
    rounds_dir: Path,
) -> dict[str, Any]:
    """Which train rows (indices per part) the round trains on, from which parent version.

    Returns `{"requested", "mode", "parent", "parent_round", "fallback", "replay_share",
    "rows": {part: {"new", "older", "replayed"}}, "selected": {part: [indices]}}`. A
    continue request without a promoted version, or whose version's round snapshot is gone,
    falls back to fresh and says why in `fallback`.
    """
    if mode not in MODES:
        raise ContinuationError(f"round mode {mode!r} is unknown; use one of {MODES}")
    current = registry.current()
    parent_round = registry.info(current).get("round") if current else None
    older_keys = _train_keys(Path(rounds_dir) / parent_round) if parent_round else None
    fallback = None
    if mode == "continue":
        if current is None:
            fallback = "no promoted version (CURRENT is unset): trained a fresh adapter"
        elif older_keys is None:
            fallback = (
                f"the promoted version {current} has no round snapshot to tell new rows "
                "from older ones: trained a fresh adapter"
            )
        else:
            registry.verify(current)  # a corrupted parent fails the round, never trains on
    continuing = mode == "continue" and fallback is None
    rows: dict[str, dict[str, int]] = {}
    selected: dict[str, list[int]] = {}
    for part in TRAIN_PARTS:
        keys = [canonical_json(r) for r in getattr(snap, part)]
        older = [i for i, k in enumerate(keys) if older_keys is not None and k in older_keys]
        new = [i for i, k in enumerate(keys) if older_keys is None or k not in older_keys]
        replayed = _sample(older, share, f"{seed}:{part}") if continuing else older
        selected[part] = sorted([*new, *replayed])
        rows[part] = {"new": len(new), "older": len(older), "replayed": len(replayed)}
    if continuing and not any(rows[p]["new"] for p in TRAIN_PARTS):
        raise ContinuationError(
            f"nothing new to continue on: every train row was already in round {parent_round} "
            f"of the promoted version {current}; wait for more feedback, or set "
            "TUNELOOP_ROUND_MODE=fresh to train on all rows again"
        )
    return {
        "requested": mode,
        "mode": "continue" if continuing else "fresh",
        "parent": current if continuing else None,
        "parent_round": parent_round if continuing else None,
        "compared_with_round": parent_round,
        "fallback": fallback,
        "replay_share": share if continuing else 1.0,
        "rows": rows,
        "selected": selected,
    }


def apply(
    snap: Snapshot,
    folder: Path,
    *,
    mode: str,
    share: float,
    seed: int,
    registry: Any,
) -> Snapshot:
    """The snapshot a round trains on: `snap` (the full, saved one) cut down to the rows its
    plan selects, with `info["continuation"]` (the plan's summary) and `info["counts"]` the
    rows trained on. The plan is made once per round and kept in `folder/continuation.json`;
    a resumed round reads it back instead of planning again."""
    path = Path(folder) / PLAN_FILE
    if path.is_file():
        chosen = json.loads(path.read_text(encoding="utf-8"))
    else:
        chosen = plan(
            snap,
            mode=mode,
            share=share,
            seed=f"{seed}:{Path(folder).name}",
            registry=registry,
            rounds_dir=Path(folder).parent,
        )
        path.write_text(json.dumps(chosen, indent=2) + "\n", encoding="utf-8")
    parts: dict[str, Any] = {
        part: [getattr(snap, part)[i] for i in chosen["selected"][part]] for part in TRAIN_PARTS
    }
    out = dataclasses.replace(snap, **parts)
    counts = {**(snap.info.get("counts") or {}), **{p: len(rows) for p, rows in parts.items()}}
    out.info = {**snap.info, "counts": counts, "continuation": summary(chosen)}
    return out


def summary(chosen: dict[str, Any]) -> dict[str, Any]:
    """What a report, the registry and `tuneloop rounds` show of a plan: the mode, the
    parent, why it fell back, and the row counts (totals and per part)."""
    rows = chosen["rows"]
    return {
        **{k: v for k, v in chosen.items() if k != "selected"},
        "new": sum(r["new"] for r in rows.values()),
        "older": sum(r["older"] for r in rows.values()),
        "replayed": sum(r["replayed"] for r in rows.values()),
    }


def describe(info: dict[str, Any] | None) -> str:
    """One line for people: `continue from v3: 12 new + 6 of 24 older rows`."""
    if not info:
        return "fresh"
    head = f"continue from {info['parent']}" if info.get("mode") == "continue" else "fresh"
    counts = f"{info['new']} new + {info['replayed']} of {info['older']} older rows"
    tail = f" ({info['fallback']})" if info.get("fallback") else ""
    return f"{head}: {counts}{tail}"


def _sample(indices: list[int], share: float, seed: str) -> list[int]:
    """`share` of `indices` (rounded up, so a positive share replays at least one), drawn
    with a fixed seed, in their original order."""
    if share <= 0 or not indices:
        return []
    k = min(len(indices), math.ceil(share * len(indices)))
    return sorted(random.Random(seed).sample(indices, k))


def _train_keys(round_folder: Path) -> set[str] | None:
    """Canonical keys of every train row a round's saved snapshot holds (None: no snapshot)."""
    data = round_folder / "data"
    if not (round_folder / "snapshot.json").is_file() or not data.is_dir():
        return None
    keys: set[str] = set()
    for part in TRAIN_PARTS:
        file = data / f"{part}.jsonl"
        if file.is_file():
            for line in file.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    keys.add(canonical_json(json.loads(line)))
    return keys
