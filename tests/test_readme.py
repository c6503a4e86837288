"""The README is the entry: a short door with a file tree that matches the folders.

Every product module (app/, feedback/, training/; not package `__init__`/`__main__` files
or numbered migrations) has its line in the README's tree, and the tree names nothing that
is not there, so a newcomer reaches any behaviour in one hop from it.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
PRODUCT = ("app", "feedback", "training")


def tree_lines(readme: str) -> list[str]:
    """The lines inside the fenced block under `## Files`."""
    found = re.search(r"^## Files\n.*?^```\n(.*?)^```$", readme, re.MULTILINE | re.DOTALL)
    assert found, "README.md has no fenced file tree under '## Files'"
    return [line for line in found.group(1).splitlines() if line.strip()]


def tree_paths(lines: list[str]) -> dict[str, str]:
    """Each entry's path from the repository root (folders end with `/`) -> its comment.

    A line's indentation puts it under the nearest less-indented folder line above it.
    """
    folders: list[tuple[int, str]] = []
    entries: dict[str, str] = {}
    for line in lines:
        indent = len(line) - len(line.lstrip(" "))
        name, _, comment = line.strip().partition(" ")
        while folders and folders[-1][0] >= indent:
            folders.pop()
        path = (folders[-1][1] if folders else "") + name
        assert path not in entries, f"the tree names {path} twice"
        entries[path] = comment.strip()
        if name.endswith("/"):
            folders.append((indent, path))
    return entries


def product_modules() -> set[str]:
    modules = set()
    for package in PRODUCT:
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if path.name in ("__init__.py", "__main__.py") or "/migrations/versions/" in rel:
                continue
            modules.add(rel)
    return modules


def test_the_tree_parser_nests_by_indentation() -> None:
    lines = ["app/                  a", "  cli/                b", "    main.py           c",
             "  config.py           d", "bench/                e"]  # fmt: skip
    assert list(tree_paths(lines)) == ["app/", "app/cli/", "app/cli/main.py", "app/config.py",
                                       "bench/"]  # fmt: skip


def test_every_product_module_is_in_the_readme_tree() -> None:
    named = tree_paths(tree_lines(README))
    missing = sorted(product_modules() - set(named))
    assert missing == [], f"modules missing from the README's file tree: {missing}"


def test_the_readme_tree_names_only_what_exists() -> None:
    for path, comment in tree_paths(tree_lines(README)).items():
        target = ROOT / path.rstrip("/")
        assert target.exists(), f"the README's file tree names {path}, which does not exist"
        assert target.is_dir() == path.endswith("/"), f"{path}: a folder ends with /, a file not"
        assert comment, f"{path}: every line of the tree says what it is for"


def test_the_readme_is_a_door() -> None:
    """Short, with the two quick-start commands in one block and links that resolve."""
    assert len(README.splitlines()) <= 260, "the README grew past an entry: move it to docs/"
    assert (
        "```bash\n"
        "bash .ci/setup app    # set everything up, then serve the chat app on http://127.0.0.1:7860\n"
        "bash .ci/setup test   # set everything up, then run every test tier that can run here\n"
        "```"
    ) in README
    assert ".venv/bin/python -m mkdocs serve" in README
    links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", README)
    assert links and all((ROOT / link).is_file() for link in links), links
