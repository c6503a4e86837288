"""MkDocs hook: benchmark tables and figures rendered from bench/results/*.json at build time.

Every benchmark figure the manual quotes comes from a committed results file (bench/record.py
writes them; older runs were transcribed, and say so in `provenance`). A page asks for one:

- `<!-- bench-table FILE TABLE -->`: the table `figures.tables.TABLE` of
  bench/results/FILE (`{"columns": [...], "rows": [[...], ...]}`), with a line naming its
  source file, command and machine under it.
- `<!-- bench-table FILE rows=PATH cols=KEY,KEY:pct,... -->`: a table built from the list
  of objects at the dotted PATH of the file (e.g. `figures.triage.runs`), one column per
  dotted KEY (`:pct` shows a share as a percentage, `:1f` one decimal).
- `{{ bench FILE PATH }}`: one value in running text (e.g. `figures.minutes.total`);
  `{{ bench FILE PATH:2f }}` with two decimals, `:pct` as a percentage.

A missing file, table or key fails the build: a figure is either in a file or not quoted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
TABLE = re.compile(r"<!-- bench-table (\S+\.json) (.+?) -->")
FIGURE = re.compile(r"\{\{ *bench (\S+\.json) ([^\s:]+)(?::(\S+))? *\}\}")


class BenchDocError(ValueError):
    """A page names a results file, table or key that does not exist."""


def load(name: str) -> dict[str, Any]:
    path = RESULTS / name
    if not path.is_file():
        raise BenchDocError(f"bench/results/{name}: no such results file")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def pick(data: Any, dotted: str, name: str) -> Any:
    for part in dotted.split("."):
        if isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            raise BenchDocError(f"bench/results/{name}: no {dotted!r}")
    return data


def show(value: Any, fmt: str = "") -> str:
    if value is None:
        return ""
    if fmt == "pct" and isinstance(value, int | float):
        return f"{value:.0%}"
    if fmt.endswith("f") and isinstance(value, int | float):
        return f"{value:.{fmt[:-1]}f}"
    return str(value)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def source_line(name: str, data: dict[str, Any]) -> str:
    machine = data.get("machine")
    if isinstance(machine, dict):
        machine = ", ".join(f"{k} {v}" for k, v in machine.items() if k in ("cpu", "cpus", "gpus"))
    if data.get("transcribed_from"):  # a run from before results were files
        run = f"transcribed from {data['transcribed_from']} (see its provenance)"
    else:
        run = f"commit {data.get('commit') or 'not recorded'}"
    return f"*Source: `bench/results/{name}`; `{data['command']}`; {run}; {machine}.*"


def table(name: str, spec: str) -> str:
    data = load(name)
    if spec.startswith("rows="):
        parts = dict(p.split("=", 1) for p in spec.split())
        items = pick(data, parts["rows"], name)
        cols = [c.split(":", 1) + [""] for c in parts["cols"].split(",")]
        header = [c[0] for c in cols]
        body = [[show(pick(item, key, name), fmt) for key, fmt, *_ in cols] for item in items]
    else:
        found = pick(data, f"figures.tables.{spec.strip()}", name)
        header, body = found["columns"], found["rows"]
    lines = ["| " + " | ".join(_cell(str(h)) for h in header) + " |"]
    lines.append("| " + " | ".join("---" for _ in header) + " |")
    for row in body:
        if len(row) != len(header):
            raise BenchDocError(f"bench/results/{name}: a row of {spec!r} has {len(row)} cells")
        lines.append("| " + " | ".join(_cell(show(c)) for c in row) + " |")
    return "\n".join(lines) + "\n\n" + source_line(name, data)


def render(markdown: str) -> str:
    """The page with every bench marker replaced by what its file holds."""
    markdown = TABLE.sub(lambda m: table(m.group(1), m.group(2)), markdown)
    return FIGURE.sub(
        lambda m: show(pick(load(m.group(1)), m.group(2), m.group(1)), m.group(3) or ""), markdown
    )


def on_page_markdown(markdown: str, **_: Any) -> str:
    return render(markdown)
