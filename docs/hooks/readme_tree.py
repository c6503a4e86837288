"""MkDocs hook: the README's file tree, shown in the development page.

The README keeps the one file tree (one line per module, checked against the folders by
tests/test_readme.py); the manual shows the same block instead of a copy that could drift.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- readme-file-tree -->"


def file_tree(readme: str) -> str:
    """The fenced block under the README's `## Files` heading, fences included."""
    found = re.search(r"^## Files\n.*?(^```\n.*?^```)$", readme, re.MULTILINE | re.DOTALL)
    if not found:
        raise ValueError("README.md has no fenced file tree under '## Files'")
    return found.group(1)


def on_page_markdown(markdown: str, **_: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, file_tree((ROOT / "README.md").read_text(encoding="utf-8")))
