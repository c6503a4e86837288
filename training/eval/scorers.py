"""Scorers: functions that turn an eval set's rows and one adapter's replies into metrics.

A scorer is any callable `scorer(rows, replies) -> dict[str, float]`: `rows` are the eval
set's rows (dicts, as read from the JSONL file), `replies` the reply text for each row, in
the same order. It returns metric name -> number, higher is better (the promotion gate
treats every metric that way: return `-words` rather than `words`).

Built-in scorers, named on the command line by a word:
  - `exact`:  share of rows with a `"reference"` whose reply equals it (`exact`), and the
              same after folding case and whitespace (`exact_normalized`);
  - `json`:   share of replies that parse as JSON (`json_valid`);
  - `rubric`: the rubric file's checks (`training/eval/rubric.py`, by default `data/rubric.json`):
              share of rows passing every check that applies (`rubric_pass`) and each
              check's pass rate over the rows it applies to (`rubric.<check>`);
  - `pairwise`: a local judge model compares each reply with the reference adapter's reply
              to the same row (`training/eval/judge.py`): win rate, ties half (`pairwise_win`),
              and its 95% interval. It needs the reference's replies, so it is a scorer
              with `needs_reference`: called as `scorer(rows, replies, reference)`.
Anything else is `FILE.py:FUNCTION` or `module:FUNCTION`, loaded as is.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ScoreFn = Callable[..., dict[str, float]]
BUILTINS = ("exact", "json", "rubric", "pairwise")


class ScorerError(Exception):
    """A scorer that cannot be loaded, raised, or returned something other than metrics."""


@dataclass(frozen=True)
class Scorer:
    """A scoring function with the name the operator gave it (used in every message)."""

    name: str
    fn: ScoreFn
    needs_reference: bool = False  # scores replies against the first adapter's replies

    def __call__(
        self, rows: list[dict[str, Any]], replies: list[str], reference: list[str] | None = None
    ) -> dict[str, float]:
        """Run the scorer and check its result; every failure is a ScorerError naming it."""
        if self.needs_reference and reference is None:
            raise ScorerError(f"scorer {self.name!r} needs a reference adapter's replies")
        try:
            result = (
                self.fn(rows, replies, reference)
                if self.needs_reference
                else self.fn(rows, replies)
            )
        except ScorerError as err:
            raise ScorerError(f"scorer {self.name!r}: {err}") from err
        except Exception as err:
            raise ScorerError(
                f"scorer {self.name!r} raised {type(err).__name__}: {err}".splitlines()[0]
            ) from err
        return check_metrics(self.name, result)


def check_metrics(name: str, result: object) -> dict[str, float]:
    """`result` as a dict of metric name -> finite number, or a ScorerError saying why not."""
    if not isinstance(result, dict):
        raise ScorerError(
            f"scorer {name!r} returned {type(result).__name__}, not a dict of metric name -> number"
        )
    if not result:
        raise ScorerError(f"scorer {name!r} returned no metrics (an empty dict)")
    metrics: dict[str, float] = {}
    for key, value in result.items():
        if not isinstance(key, str) or not key:
            raise ScorerError(f"scorer {name!r} returned a metric name {key!r}: names are strings")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ScorerError(
                f"scorer {name!r} returned {type(value).__name__} for metric {key!r}: "
                "metrics are numbers"
            )
        if not math.isfinite(value):
            raise ScorerError(f"scorer {name!r} returned {value} for metric {key!r}")
        metrics[key] = float(value)
    return metrics


@dataclass(frozen=True)
class Judge:
    """What the `pairwise` scorer needs: its judge model's directory (a callable, so that a
    model to convert is only converted when pairwise is asked for) and how the eval's rows
    were prompted."""

    model_dir: Callable[[], Path]
    system_prompt: str = ""
    batch_size: int = 8
    bf16: bool | None = None  # the judge answers in the precision the models do


def load_scorers(
    spec: str, *, rubric_path: Path | None = None, judge: Judge | None = None
) -> list[Scorer]:
    """The scorers a comma-separated `spec` names (built-in words, FILE.py:FN, module:FN)."""
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise ScorerError(
            "no scorer named: use exact, json, rubric, pairwise, FILE.py:FUNCTION or module:FN"
        )
    return [load_scorer(name, rubric_path=rubric_path, judge=judge) for name in names]


def resolve_scorers(
    spec: str,
    rows: list[dict[str, Any]],
    *,
    rubric_path: Path | None = None,
    judge: Judge | None = None,
) -> list[Scorer]:
    """The scorers `spec` names; `auto` = exact when a row has a "reference", plus rubric
    when `rubric_path` exists. Fails when auto finds nothing to score with.
    """
    if spec.strip() != "auto":
        return load_scorers(spec, rubric_path=rubric_path, judge=judge)
    names = []
    if any(row.get("reference") is not None for row in rows):
        names.append("exact")
    if rubric_path is not None and Path(rubric_path).is_file():
        names.append("rubric")
    if not names:
        raise ScorerError(
            'no scorer applies on its own (no row has a "reference" and there is no rubric '
            "file): pass --scorer exact|json|rubric|FILE.py:FUNCTION|module:FUNCTION"
        )
    return load_scorers(",".join(names), rubric_path=rubric_path)


def load_scorer(
    name: str, *, rubric_path: Path | None = None, judge: Judge | None = None
) -> Scorer:
    """One scorer by its command-line name."""
    if name == "exact":
        return Scorer(name, exact_match)
    if name == "json":
        return Scorer(name, json_valid)
    if name == "rubric":
        if rubric_path is None:
            raise ScorerError("scorer 'rubric' needs a rubric file (--rubric FILE)")
        return Scorer("rubric", rubric_scorer(rubric_path))
    if name == "pairwise":
        return Scorer("pairwise", _pairwise(judge), needs_reference=True)
    target, sep, attr = name.rpartition(":")
    if not sep or not target or not attr:
        raise ScorerError(
            f"unknown scorer {name!r}: use {', '.join(BUILTINS)}, FILE.py:FUNCTION or "
            "module:FUNCTION"
        )
    module = _load_file(name, Path(target)) if target.endswith(".py") else _import(name, target)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ScorerError(f"scorer {name!r}: {target} has no function {attr!r}")
    return Scorer(name, fn)


def combined_metrics(
    scorers: list[Scorer],
    rows: list[dict[str, Any]],
    replies: list[str],
    reference: list[str] | None = None,
) -> dict[str, float]:
    """Every scorer's metrics in one dict; two scorers naming the same metric is an error.

    `reference`: the reference adapter's replies, for scorers that compare against them.
    """
    merged: dict[str, float] = {}
    for scorer in scorers:
        for key, value in scorer(rows, replies, reference).items():
            if key in merged:
                raise ScorerError(f"scorer {scorer.name!r} returns {key!r}, as another one does")
            merged[key] = value
    return merged


# -- built-ins -----------------------------------------------------------------------------
def exact_match(rows: list[dict[str, Any]], replies: list[str]) -> dict[str, float]:
    """Share of rows (with a "reference") whose reply equals it, exactly and normalised."""
    pairs = [
        (str(r["reference"]), reply)
        for r, reply in zip(rows, replies, strict=True)
        if r.get("reference") is not None
    ]
    if not pairs:
        raise ScorerError('no row has a "reference" field to compare the replies with')
    exact = sum(ref.strip() == reply.strip() for ref, reply in pairs)
    loose = sum(_normalise(ref) == _normalise(reply) for ref, reply in pairs)
    return {"exact": exact / len(pairs), "exact_normalized": loose / len(pairs)}


def json_valid(rows: list[dict[str, Any]], replies: list[str]) -> dict[str, float]:
    """Share of replies that are one valid JSON value (surrounding whitespace allowed)."""
    if not replies:
        raise ScorerError("no replies to score")
    ok = 0
    for reply in replies:
        try:
            json.loads(reply)
        except ValueError:
            continue
        ok += 1
    return {"json_valid": ok / len(replies)}


def rubric_scorer(path: Path) -> ScoreFn:
    """A scorer running the rubric file at `path` (read and checked now, not at scoring)."""
    from training.eval.rubric import RubricError, load_rubric

    try:
        rubric = load_rubric(path)
    except RubricError as err:
        raise ScorerError(str(err)) from err

    def score(rows: list[dict[str, Any]], replies: list[str]) -> dict[str, float]:
        if not replies:
            raise ScorerError("no replies to score")
        passed = 0
        counts = {c.name: [0, 0] for c in rubric.checks}  # name -> [passed, applied]
        for row, reply in zip(rows, replies, strict=True):
            results = rubric.score(reply, row)
            passed += all(v is not False for v in results.values())
            for check, value in results.items():
                if value is not None:
                    counts[check][0] += int(value)
                    counts[check][1] += 1
        metrics = {"rubric_pass": passed / len(replies)}
        for check, (ok, applied) in counts.items():
            if applied:
                metrics[f"rubric.{check}"] = ok / applied
        return metrics

    return score


def _pairwise(judge: Judge | None) -> ScoreFn:
    """The pairwise scorer with its judge model located now (a missing one fails here)."""
    from training.eval.judge import JudgeError, pairwise_scorer

    if judge is None:
        raise ScorerError(
            "scorer 'pairwise' needs a judge model: set TUNELOOP_JUDGE_MODEL to a local Hugging "
            "Face model directory (a stronger model than the one being trained), or 'embedded' "
            "for the built-in SmolLM2 (plumbing only: its verdicts are near chance)"
        )
    fn = pairwise_scorer(
        judge.model_dir(),
        system_prompt=judge.system_prompt,
        batch_size=judge.batch_size,
        bf16=judge.bf16,
    )

    def score(rows: list[dict[str, Any]], replies: list[str], reference: list[str]) -> dict:
        try:
            return fn(rows, replies, reference)
        except JudgeError as err:
            raise ScorerError(str(err)) from err

    return score


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


# -- custom scorers ------------------------------------------------------------------------
def _load_file(name: str, path: Path) -> Any:
    if not path.is_file():
        raise ScorerError(f"scorer {name!r}: no file {path}")
    module_name = f"tuneloop_scorer_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ScorerError(f"scorer {name!r}: cannot load {path} as Python")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise ScorerError(
            f"scorer {name!r}: loading {path} raised {type(err).__name__}: {err}".splitlines()[0]
        ) from err
    return module


def _import(name: str, module: str) -> Any:
    try:
        return importlib.import_module(module)
    except Exception as err:
        raise ScorerError(
            f"scorer {name!r}: cannot import {module} ({type(err).__name__}: {err})".splitlines()[0]
        ) from err
