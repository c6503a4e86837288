"""Structural guard beside the behaviour tests: one way into the store, one way to replace a
file, one kind of lock. A new module that opens its own database session, hand-rolls an
atomic write or an `fcntl` lock fails here, before it drifts from the shared behaviour
(the Store's retry on a busy database, private 0600 files with fsync, locks a dead process
releases)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("app", "feedback", "training")


def _product_modules() -> list[tuple[str, ast.Module]]:
    found = []
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            found.append((rel, ast.parse(path.read_text(encoding="utf-8"), filename=rel)))
    return found


def _called_name(call: ast.Call) -> str:
    """`Session`, `os.replace`, `tempfile.mkstemp`: the called name as written."""
    parts = []
    node: ast.expr = call.func
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _uses(tree: ast.Module) -> set[str]:
    """What a module calls or imports, of the names this guard watches."""
    watched = {"Session", "sessionmaker", "os.replace", "tempfile.mkstemp", "mkstemp"}
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _called_name(node) in watched:
            used.add(_called_name(node))
        elif isinstance(node, ast.Import) and any(a.name == "fcntl" for a in node.names):
            used.add("fcntl")
        elif isinstance(node, ast.ImportFrom) and node.module == "fcntl":
            used.add("fcntl")
    return used


def test_the_guard_sees_what_it_guards() -> None:
    code = "import fcntl, os\nfrom sqlmodel import Session\nSession(e)\nos.replace(a, b)\n"
    assert _uses(ast.parse(code)) == {"fcntl", "Session", "os.replace"}


def test_only_the_store_opens_sessions_only_atomic_write_replaces_and_no_fcntl() -> None:
    allowed = {
        "Session": {"feedback/store/base.py"},
        "sessionmaker": set(),
        "os.replace": {"feedback/atomic_write.py"},
        "tempfile.mkstemp": {"feedback/atomic_write.py"},
        "mkstemp": set(),
        # Locks are filelock's, except the store's write gate: it needs a shared lock that
        # clicks hold while they wait, which a bulk import probes without blocking.
        "fcntl": {"feedback/writegate.py"},
    }
    modules = _product_modules()
    assert len(modules) > 50  # the walk found the product code
    strays = sorted(
        f"{rel}: {name}"
        for rel, tree in modules
        for name in _uses(tree)
        if rel not in allowed[name]
    )
    assert not strays, strays
