"""The benchmark suite's domains (`data/domains/*/`) and their development/test split.

Each domain folder holds `domain.json` (its shape, its checker `FILE.py:FUNCTION` and the
checker's primary metric, and its item files: the training pool, seed conversations, the
gate's eval set and the test set), `system_prompt.md`, `expert.py` (the simulated expert:
`verdict(reply, item)` and `corrections(item)`), `make_items.py` and a README.

`data/domains/split.json` says which domains are for development (tuning, sweeps) and
which for test (reported once per change of defaults). It was written before any tuning on
the new domains, and every tool that tunes asks `load_domain` for development domains only:
a default chosen by looking at the test domains would make their figures worthless.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any

DOMAINS = Path(__file__).resolve().parent.parent / "data" / "domains"
SPLIT_FILE = DOMAINS / "split.json"
SPLITS = ("development", "test")
MANIFEST_KEYS = ("shape", "scorer", "metric", "pool", "gate", "test", "seeds")


class SplitError(ValueError):
    """A domain that does not exist, or a test domain asked for where only development
    domains may be used; the message is one line saying what to do instead."""


@dataclass(frozen=True)
class Domain:
    """One benchmark domain, read from its folder's `domain.json`."""

    name: str
    folder: Path
    split: str
    shape: str
    scorer: str  # "/abs/path/scorer.py:function", as `load_scorer` takes it
    metric: str  # the checker's primary metric: 1 per right reply, 0 per wrong one
    pool: Path
    gate: Path
    test: Path
    seeds: Path

    def system_prompt(self) -> str:
        return (self.folder / "system_prompt.md").read_text(encoding="utf-8").strip()

    @cached_property
    def expert(self) -> ModuleType:
        """The domain's `expert.py`, loaded from its file."""
        path = self.folder / "expert.py"
        spec = importlib.util.spec_from_file_location(f"domain_expert_{self.name}", path)
        if spec is None or spec.loader is None:
            raise SplitError(f"{path}: cannot be loaded")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def read_split(path: Path = SPLIT_FILE) -> dict[str, list[str]]:
    """{"development": [...], "test": [...]} from the split file, checked: every domain
    folder in exactly one list, and no name that is not a folder."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    split = {s: list(data.get(s, [])) for s in SPLITS}
    named = split["development"] + split["test"]
    folders = folder_names(path.parent)
    twice = sorted({n for n in named if named.count(n) > 1})
    if twice or set(named) != set(folders):
        raise SplitError(
            f"{path} must list every domain folder once: twice {twice}, missing "
            f"{sorted(set(folders) - set(named))}, not a folder {sorted(set(named) - set(folders))}"
        )
    return split


def folder_names(root: Path = DOMAINS) -> list[str]:
    """The domain folders under `root` (those with a system prompt)."""
    return sorted(p.parent.name for p in root.glob("*/system_prompt.md"))


def load_domain(name: str, *, allow_test: bool = False, tool: str = "this tool") -> Domain:
    """The domain `name`; a test domain only with `allow_test` (the final report)."""
    split = read_split()
    which = next((s for s in SPLITS if name in split[s]), None)
    if which is None:
        raise SplitError(f"unknown domain {name!r}: use one of {', '.join(folder_names())}")
    if which == "test" and not allow_test:
        raise SplitError(
            f"{name} is a test domain ({SPLIT_FILE.name}): {tool} may use development domains "
            f"only ({', '.join(split['development'])}); test domains are read by "
            "`python -m bench.loop_quality --final` alone"
        )
    folder = DOMAINS / name
    manifest = json.loads((folder / "domain.json").read_text(encoding="utf-8"))
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise SplitError(f"{folder / 'domain.json'}: missing {', '.join(missing)}")
    file, _, function = manifest["scorer"].partition(":")
    return Domain(
        name=name, folder=folder, split=which, shape=manifest["shape"],
        scorer=f"{folder / file}:{function}", metric=manifest["metric"],
        pool=folder / manifest["pool"], gate=folder / manifest["gate"],
        test=folder / manifest["test"], seeds=folder / manifest["seeds"],
    )  # fmt: skip


def domain_of_path(path: Path) -> str | None:
    """The domain whose folder holds `path`, if any (to refuse a test domain's round)."""
    try:
        relative = Path(path).resolve().relative_to(DOMAINS)
    except ValueError:
        return None
    return relative.parts[0] if relative.parts else None


def development_only(names: list[str], tool: str) -> list[Domain]:
    """The domains `names` for a tool that tunes: a test domain among them is refused."""
    return [load_domain(n, tool=tool) for n in names]
