"""An eval's results kept and shown: recorded with each version (its registry info) or, for the
bare base model, in a file under the evals folder; read back; and printed as a table."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from training.eval.evalsets import BASE, EvalRun, write_json
from training.registry import Registry


def record(
    run: EvalRun, registry: Registry, evals_dir: Path, names: dict[str, str] | None = None
) -> None:
    """Store each adapter's result for this set: registry info for versions, a file for base.

    `names` maps run labels to the names to record them under (a round's stage label to
    the version it became); labels it leaves out are not recorded.
    """
    for run_label in run.labels:
        if names is not None and run_label not in names:
            continue
        label = names[run_label] if names is not None else run_label
        result = {
            "set": run.evalset.name,
            "path": str(run.evalset.path.resolve()),
            "set_digest": run.evalset.digest,
            "rows": len(run.evalset.rows),
            "scorers": run.scorers,
            "metrics": run.metrics[run_label],
            "params": {
                "max_new_tokens": run.params.max_new_tokens,
                "temperature": run.params.temperature,
            },
            "model": run.model,
            "at": datetime.now(UTC).isoformat(),
        }
        if label == BASE:
            write_json(Path(evals_dir) / BASE / f"{run.evalset.name}.json", result)
        else:
            evals = dict(registry.info(label).get("evals") or {})
            evals[run.evalset.name] = result
            registry.update_info(label, evals=evals)


def recorded(registry: Registry, evals_dir: Path) -> dict[str, dict[str, Any]]:
    """Every recorded eval result: {adapter label: {set name: result}}, base first."""
    found: dict[str, dict[str, Any]] = {}
    base_dir = Path(evals_dir) / BASE
    if base_dir.is_dir():
        for file in sorted(base_dir.glob("*.json")):
            try:
                found.setdefault(BASE, {})[file.stem] = json.loads(file.read_text("utf-8"))
            except ValueError:
                continue
    for version in registry.versions():
        evals = registry.info(version).get("evals")
        if isinstance(evals, dict) and evals:
            found[version] = evals
    return found


def format_table(run: EvalRun) -> str:
    """A metric per row, an adapter per column, and each column's difference to the first
    with its 95% interval (paired over rows)."""
    first = run.labels[0]
    names = list(run.metrics[first])
    for label in run.labels[1:]:
        names += [k for k in run.metrics[label] if k not in names]
    header = ["metric", *run.labels]
    lines = [header]
    intervals = run.intervals()
    for name in names:
        cells = [name]
        base_value = run.metrics[first].get(name)
        for label in run.labels:
            value = run.metrics[label].get(name)
            if value is None:
                cells.append("-")
            elif label == first or base_value is None:
                cells.append(f"{value:.3f}")
            else:
                low_high = intervals.get(label, {}).get(name)
                ci = f" [{low_high[0]:+.3f}, {low_high[1]:+.3f}]" if low_high else ""
                cells.append(f"{value:.3f} ({value - base_value:+.3f}{ci})")
        lines.append(cells)
    widths = [max(len(row[c]) for row in lines) for c in range(len(header))]
    cached = [label for label in run.labels if run.cached.get(label)]
    title = (
        f"{run.evalset.name}: {len(run.evalset.rows)} rows, scorers {', '.join(run.scorers)}"
        + (f"; cached replies for {', '.join(cached)}" if cached else "")
    )
    body = [
        "  ".join(
            cell.ljust(w) if c == 0 else cell.rjust(w)
            for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in lines
    ]
    return "\n".join([title, *body])
