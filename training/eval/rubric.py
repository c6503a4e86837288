"""A rubric: a domain's house style written as checks a program can run on a reply.

A rubric file (JSON) names its checks; each check is one of
  - `must_match`: a regular expression that must be found in the reply,
  - `must_not_match`: a regular expression that must not be found,
  - `max_words`: the reply has at most this many whitespace-separated words,
with an optional `"ignore_case": true`. A pattern may name row fields in braces
(`{customer}`): the field's value is filled in (regex-escaped) from the row being scored, and a
check whose field the row lacks (or leaves empty) does not apply to that row. Literal braces
in a pattern are written doubled, as in `str.format` (`\\d{{2}}`).

The demo domain's rubric is `data/rubric.json`; training rounds (issue 4) and `tuneloop eval`
(issue 5) both score with it.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("must_match", "must_not_match", "max_words")


class RubricError(Exception):
    """A rubric file that cannot be used, with the reason."""


@dataclass(frozen=True)
class Check:
    """One named check of a rubric."""

    name: str
    kind: str
    value: str | int
    ignore_case: bool = False

    @property
    def fields(self) -> tuple[str, ...]:
        """Row fields this check's pattern refers to."""
        if self.kind == "max_words":
            return ()
        names = [f for _, f, _, _ in string.Formatter().parse(str(self.value)) if f]
        return tuple(dict.fromkeys(names))

    def applies(self, row: dict[str, Any]) -> bool:
        """False when a field the pattern needs is missing or empty in `row`."""
        return all(str(row.get(f) or "").strip() for f in self.fields)

    def passes(self, reply: str, row: dict[str, Any]) -> bool:
        """Whether `reply` satisfies this check (call only when `applies(row)`)."""
        if self.kind == "max_words":
            return len(reply.split()) <= int(self.value)
        values = {f: re.escape(str(row[f]).strip()) for f in self.fields}
        pattern = str(self.value).format(**values)
        flags = re.MULTILINE | (re.IGNORECASE if self.ignore_case else 0)
        found = re.search(pattern, reply.strip(), flags) is not None
        return found if self.kind == "must_match" else not found


@dataclass(frozen=True)
class Rubric:
    """A named list of checks; `score` tells which pass, `passes` whether all that apply pass."""

    name: str
    checks: tuple[Check, ...]

    def score(self, reply: str, row: dict[str, Any] | None = None) -> dict[str, bool | None]:
        """Each check's result; None for a check that does not apply to `row`."""
        row = row or {}
        return {c.name: (c.passes(reply, row) if c.applies(row) else None) for c in self.checks}

    def passes(self, reply: str, row: dict[str, Any] | None = None) -> bool:
        """True when every check that applies to `row` passes."""
        return all(v is not False for v in self.score(reply, row).values())


def load_rubric(path: Path) -> Rubric:
    """Read and validate a rubric file; every problem is a RubricError naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise RubricError(f"cannot read rubric {path}: {err.strerror or err}") from err
    except ValueError as err:
        raise RubricError(f"rubric {path} is not valid JSON: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("checks"), list) or not data["checks"]:
        raise RubricError(f'rubric {path} needs a non-empty "checks" list')
    checks = []
    for i, raw in enumerate(data["checks"], 1):
        where = f"rubric {path}, check {i}"
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
            raise RubricError(f'{where}: needs a "name"')
        kinds = [k for k in KINDS if k in raw]
        if len(kinds) != 1:
            raise RubricError(f"{where} ({raw['name']}): needs exactly one of {', '.join(KINDS)}")
        kind, value = kinds[0], raw[kinds[0]]
        if kind == "max_words":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise RubricError(f"{where} ({raw['name']}): max_words must be a positive integer")
        else:
            if not isinstance(value, str):
                raise RubricError(f"{where} ({raw['name']}): {kind} must be a string")
            check = Check(raw["name"], kind, value)
            try:
                re.compile(value.format(**{f: "x" for f in check.fields}))
            except (re.error, ValueError, IndexError, KeyError) as err:
                raise RubricError(f"{where} ({raw['name']}): bad pattern: {err}") from err
        checks.append(Check(raw["name"], kind, value, bool(raw.get("ignore_case", False))))
    names = [c.name for c in checks]
    if len(set(names)) != len(names):
        raise RubricError(f"rubric {path}: check names must be unique")
    return Rubric(name=str(data.get("name") or Path(path).stem), checks=tuple(checks))
