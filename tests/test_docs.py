"""The manual's generated parts: the settings reference and the benchmark figures.

The settings reference is built from `Settings`' field descriptions and the benchmark
tables from bench/results/*.json by the MkDocs hooks in docs/hooks/; these tests hold the
sources to that (CI also builds the site with --strict, which fails on a broken link, a page
missing from the navigation or a figure whose file is not there).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest

from app.config import Settings
from bench.record import REQUIRED_KEYS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RESULTS = ROOT / "bench" / "results"


def _hook(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", DOCS / "hooks" / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_setting_has_a_description() -> None:
    missing = [n for n, f in Settings.model_fields.items() if not (f.description or "").strip()]
    assert missing == [], f"Settings fields without a description: {missing}"


def test_the_generated_reference_lists_every_setting() -> None:
    """One row per field, in the page that holds the marker, with its description."""
    hook = _hook("settings_ref.py")
    page = (DOCS / "settings.md").read_text(encoding="utf-8")
    assert hook.MARKER in page
    rendered = hook.on_page_markdown(page)
    assert hook.MARKER not in rendered
    rows = [line for line in rendered.splitlines() if line.startswith("| `TUNELOOP_")]
    assert len(rows) == len(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        row = next((r for r in rows if r.startswith(f"| `TUNELOOP_{name.upper()}` |")), None)
        assert row is not None, f"TUNELOOP_{name.upper()} is not in the settings reference"
        assert " ".join(str(field.description).split()).replace("|", "\\|") in row
    # defaults as an operator writes them: no absolute path of this checkout
    assert str(ROOT) not in rendered
    assert "| `TUNELOOP_DATA_DIR` | `./data` |" in rendered


def test_a_field_without_a_description_fails_the_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hook = _hook("settings_ref.py")
    field = Settings.model_fields["home"]
    monkeypatch.setattr(field, "description", "")
    with pytest.raises(ValueError, match="Settings.home has no description"):
        hook.render()


def _results() -> list[Path]:
    files = sorted(RESULTS.glob("*.json"))
    assert files, "bench/results/ holds no results"
    return files


@pytest.mark.parametrize("path", _results(), ids=lambda p: p.name)
def test_every_results_file_says_what_produced_it(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    missing = [k for k in REQUIRED_KEYS if k not in data]
    assert missing == [], f"{path.name} lacks {missing}"
    assert isinstance(data["settings"], dict) and isinstance(data["seeds"], list)
    assert data["command"] and data["machine"] and data["figures"]
    if data["commit"] is None:  # only a run from before results were files may lack it
        assert "transcribed" in data.get("provenance", "").lower(), path.name
        assert data.get("transcribed_from"), path.name
    else:
        assert re.fullmatch(r"[0-9a-f]{7,40}(\+dirty)?", data["commit"]), data["commit"]
    for name, table in data["figures"].get("tables", {}).items():
        width = len(table["columns"])
        assert all(len(row) == width for row in table["rows"]), f"{path.name}: {name}"


# A table row that quotes a measurement: a percentage, an interval, a ratio or a duration.
FIGURE = re.compile(r"\d%|\[[-+]?\d|\b\d+(\.\d+)?x\b|\b\d+(\.\d+)? ?(min|s|ms)\b")


def _hand_tables(markdown: str) -> list[str]:
    """Markdown table rows written in the page itself that quote a measured figure."""
    body = re.sub(r"```.*?```", "", markdown, flags=re.DOTALL)
    return [ln for ln in body.splitlines() if ln.lstrip().startswith("|") and FIGURE.search(ln)]


def test_the_figure_detector_sees_a_hand_copied_table() -> None:
    assert _hand_tables("| mode | round 1 |\n| --- | --- |\n| fresh | 39%, 7.3 min |\n")
    assert _hand_tables("| sigmoid | 75%, +6 [0, +13] |")
    assert _hand_tables("| fp32 | 3.4x |")
    assert not _hand_tables("| `TUNELOOP_LORA_R` | `16` | LoRA rank |\n<!-- bench-table a b -->")


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_docs_quote_benchmark_tables_only_from_results_files(page: Path) -> None:
    """No page holds a hand-written table of measured figures; each figure marker resolves."""
    markdown = page.read_text(encoding="utf-8")
    assert _hand_tables(markdown) == [], f"{page.name}: render these from bench/results/"
    hook = _hook("bench_tables.py")
    rendered = hook.render(markdown)  # raises on a file, table or figure that is not there
    assert not hook.TABLE.search(rendered) and not hook.FIGURE.search(rendered)


def test_the_benchmarks_page_renders_its_tables_from_files() -> None:
    markdown = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    markers = re.findall(r"<!-- bench-table (\S+\.json) ", markdown)
    assert len(markers) >= 4 and all((RESULTS / m).is_file() for m in markers)
    rendered = _hook("bench_tables.py").render(markdown)
    for name in markers:
        assert f"*Source: `bench/results/{name}`" in rendered


def test_a_figure_that_is_not_in_a_file_fails_the_build() -> None:
    hook = _hook("bench_tables.py")
    with pytest.raises(hook.BenchDocError, match="no such results file"):
        hook.render("<!-- bench-table no-such-run.json rounds -->")
    with pytest.raises(hook.BenchDocError, match="no 'figures.nope'"):
        hook.render("{{ bench round-time.json figures.nope }}")
