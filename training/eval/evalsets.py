"""Evaluation sets: the operator's own JSONL of prompts, answered by adapter versions, scored.

An eval run answers every row of a set with each named adapter (`base`, or a registered
version), scores the replies with the chosen scorers (`training/eval/scorers.py`) and gives one
dict of metrics per adapter. Replies are cached under `cache_dir`, keyed by what decides
them: the base model's files, the adapter's checksummed files, the prompts exactly as sent
(system prompt included) and the generation parameters; so re-running an eval after adding
a version only generates for the new one, and re-scoring with another scorer generates
nothing.

Results are recorded with the versions: `Registry.info(version)["evals"][<set name>]`, and
for the bare base model (which has no registry entry) in `evals_dir/base/<set name>.json`.
Every metric is also kept per row (`EvalRun.items`): the promotion gate (`training/gate.py`)
pairs the serving version's rows with a candidate's and decides on the difference with its
interval; every scorer metric counts as higher-is-better.
"""

from __future__ import annotations

import gc
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feedback.atomic_write import write_atomic
from training.eval.generate import GenParams, generate_replies, load_for_generation
from training.eval.prompt_files import read_rows, row_conversation
from training.eval.scorers import Scorer, ScorerError, combined_metrics, resolve_scorers
from training.gate import GateConfig
from training.registry import MANIFEST, Registry, RegistryError

BASE = "base"
CURRENT = "CURRENT"


class EvalError(Exception):
    """A user-facing eval problem: unknown adapter, unusable set, bad gate setting."""


@dataclass(frozen=True)
class EvalSet:
    """The rows of one eval set file, with a digest of their content."""

    path: Path
    name: str
    rows: list[dict[str, Any]]
    digest: str


@dataclass(frozen=True)
class Target:
    """An adapter to evaluate: its label (`base` or a version), its dir and content identity."""

    label: str
    adapter_dir: Path | None
    identity: str


@dataclass
class EvalRun:
    """One eval's outcome: metrics per adapter label, in the order the adapters were named."""

    evalset: EvalSet
    labels: list[str]
    scorers: list[str]
    params: GenParams
    model: str
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    cached: dict[str, bool] = field(default_factory=dict)
    replies: dict[str, list[str]] = field(default_factory=dict)
    # Per-row values of each metric (None where it does not apply), for paired statistics.
    items: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)

    def intervals(self) -> dict[str, dict[str, list[float]]]:
        """Each later adapter's 95% interval of its per-row difference to the first adapter
        (paired bootstrap, as the promotion gate computes it), per metric."""
        from training.comparisons import ItemScores, compare

        first = self.items.get(self.labels[0], {})
        out: dict[str, dict[str, list[float]]] = {}
        for label in self.labels[1:]:
            out[label] = {}
            for metric, values in self.items.get(label, {}).items():
                pairs = [
                    (a, b)
                    for a, b in zip(first.get(metric, []), values, strict=False)
                    if a is not None and b is not None
                ]
                if not pairs:
                    continue
                comp = compare(
                    "eval", metric,
                    ItemScores([a for a, _ in pairs]), ItemScores([b for _, b in pairs]), None,
                )  # fmt: skip
                if comp.low is not None and comp.high is not None:
                    out[label][metric] = [comp.low, comp.high]
        return out

    def as_dict(self) -> dict[str, Any]:
        """The run as one JSON-ready object (what `tuneloop eval --json` prints)."""
        first = self.labels[0]
        return {
            "set": self.evalset.name,
            "path": str(self.evalset.path),
            "rows": len(self.evalset.rows),
            "set_digest": self.evalset.digest,
            "scorers": self.scorers,
            "adapters": self.labels,
            "metrics": self.metrics,
            "diff_vs_first": {
                label: {
                    k: v - self.metrics[first][k]
                    for k, v in self.metrics[label].items()
                    if k in self.metrics[first]
                }
                for label in self.labels[1:]
            },
            "interval_vs_first": self.intervals(),
            "cached": self.cached,
            "params": {
                "max_new_tokens": self.params.max_new_tokens,
                "temperature": self.params.temperature,
            },
        }


def load_set(path: Path) -> EvalSet:
    """Read and check an eval set (same row shapes as `tuneloop generate` takes)."""
    rows = read_rows(Path(path))
    digest = hashlib.sha256(
        "\n".join(json.dumps(r, sort_keys=True, ensure_ascii=False) for r in rows).encode()
    ).hexdigest()
    return EvalSet(path=Path(path), name=Path(path).stem, rows=rows, digest=digest)


def resolve_targets(names: list[str], registry: Registry) -> list[Target]:
    """`base`, `CURRENT` (the version it names now; `base` when unset) or versions, verified.

    A name given twice (or CURRENT naming a version also listed) is evaluated once.
    """
    targets: dict[str, Target] = {}
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        label = (registry.current() or BASE) if name == CURRENT else name
        if label in targets:
            continue
        if label == BASE:
            targets[label] = Target(BASE, None, BASE)
            continue
        try:
            where = registry.verify(label)
        except RegistryError as err:
            raise EvalError(str(err)) from err
        manifest = json.loads((where / MANIFEST).read_text(encoding="utf-8"))
        files = json.dumps(manifest.get("files", {}), sort_keys=True)
        targets[label] = Target(label, where, hashlib.sha256(files.encode()).hexdigest())
    if not targets:
        raise EvalError("no adapter named: use base, CURRENT or a version name")
    return list(targets.values())


def model_identity(model_dir: Path) -> str:
    """A digest of the base model's config and weight files (names, sizes, mtimes)."""
    digest = hashlib.sha256()
    for path in sorted(Path(model_dir).iterdir()):
        if path.is_file() and (path.suffix in {".safetensors", ".bin", ".json", ".gguf"}):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def run_eval(
    evalset: EvalSet,
    targets: list[Target],
    scorers: list[Scorer],
    *,
    model_dir: Path,
    system_prompt: str,
    cache_dir: Path,
    params: GenParams | None = None,
    load_in_4bit: bool = False,
    bf16: bool | None = None,
    progress: bool = False,
) -> EvalRun:
    """Answer the set with each target (cached replies reused), then score every target.

    Scorers that compare two adapters (`needs_reference`, e.g. pairwise) score each target
    against the first one, so the first target scores itself (a tie: win rate 0.5).

    Scoring happens only after all replies exist, and a scorer failure raises before
    anything is returned, so a failed eval records nothing.
    """
    params = params or GenParams()
    comparing = [s.name for s in scorers if s.needs_reference]
    if comparing and len(targets) < 2:
        raise EvalError(
            f"scorer {comparing[0]!r} compares adapters: name at least two in --adapters "
            "(the first is the reference the others are judged against)"
        )
    conversations = [row_conversation(row, system_prompt) for row in evalset.rows]
    model = model_identity(model_dir)
    run = EvalRun(
        evalset=evalset,
        labels=[t.label for t in targets],
        scorers=[s.name for s in scorers],
        params=params,
        model=model,
    )
    for target in targets:
        key = _cache_key(model, target, conversations, params, load_in_4bit, bf16)
        cache_file = Path(cache_dir) / f"{key}.json"
        replies = _read_cache(cache_file, len(conversations))
        run.cached[target.label] = replies is not None
        if replies is None:
            replies = _generate(
                model_dir,
                target,
                conversations,
                params,
                progress,
                load_in_4bit=load_in_4bit,
                bf16=bf16,
            )
            write_json(
                cache_file, {"adapter": target.label, "set": evalset.name, "replies": replies}
            )
        run.replies[target.label] = replies
    reference = run.replies[run.labels[0]]  # what comparing scorers (pairwise) judge against
    for label in run.labels:
        run.metrics[label] = combined_metrics(scorers, evalset.rows, run.replies[label], reference)
        run.items[label] = item_metrics(scorers, evalset.rows, run.replies[label], reference)
    return run


def item_metrics(
    scorers: list[Scorer],
    rows: list[dict[str, Any]],
    replies: list[str],
    reference: list[str] | None = None,
) -> dict[str, list[float | None]]:
    """Each metric per row (None where it does not apply to that row), for paired statistics:
    each scorer runs on one row at a time, so a row a scorer cannot score is simply absent."""
    per_row: list[dict[str, float]] = []
    for i, (row, reply) in enumerate(zip(rows, replies, strict=True)):
        metrics: dict[str, float] = {}
        theirs = None if reference is None else [reference[i]]
        for scorer in scorers:
            try:
                metrics.update(scorer([row], [reply], theirs))
            except ScorerError:
                continue  # this scorer does not apply to this row (no reference, say)
        per_row.append(metrics)
    # A scorer's own interval bounds (pairwise_win_low/_high) say nothing about one row.
    names = sorted({n for metrics in per_row for n in metrics if not n.endswith(("_low", "_high"))})
    return {name: [metrics.get(name) for metrics in per_row] for name in names}


def target_for_dir(label: str, adapter_dir: Path) -> Target:
    """A not-yet-registered adapter (a round's stage) as an eval target, keyed by content."""
    digest = hashlib.sha256()
    for path in sorted(Path(adapter_dir).rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(adapter_dir).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return Target(label, Path(adapter_dir), digest.hexdigest())


def gate_runs(
    gate: GateConfig,
    *,
    registry: Registry,
    model_dir: Path,
    system_prompt: str,
    serving: str | None,
    stages: dict[str, Path],
) -> list[EvalRun]:
    """Answer each of the gate's eval sets with the serving version (or the bare base) and
    every stage of a round, scored per row, so the gate can pair them item by item."""
    runs = []
    cache_dir = Path(gate.evals_dir or ".") / "cache"
    params = GenParams(
        max_new_tokens=gate.eval_max_new_tokens,
        temperature=gate.eval_temperature,
        batch_size=gate.eval_batch_size,
    )
    for path in gate.eval_sets:
        evalset = load_set(path)
        scorers = resolve_scorers(
            gate.eval_scorer, evalset.rows, rubric_path=gate.rubric_file, judge=gate.judge
        )
        targets = resolve_targets([serving or BASE], registry) + [
            target_for_dir(name, adapter) for name, adapter in stages.items()
        ]
        runs.append(
            run_eval(
                evalset,
                targets,
                scorers,
                model_dir=model_dir,
                system_prompt=system_prompt,
                cache_dir=cache_dir,
                params=params,
                load_in_4bit=gate.load_in_4bit,
                bf16=gate.bf16,
            )
        )
    return runs


# -- helpers -------------------------------------------------------------------------------
def _generate(
    model_dir: Path,
    target: Target,
    conversations: list[list[dict[str, str]]],
    params: GenParams,
    progress: bool,
    *,
    load_in_4bit: bool,
    bf16: bool | None,
) -> list[str]:
    model, tokenizer = load_for_generation(
        model_dir, target.adapter_dir, load_in_4bit=load_in_4bit, bf16=bf16
    )
    try:
        return generate_replies(
            model,
            tokenizer,
            conversations,
            max_new_tokens=params.max_new_tokens,
            temperature=params.temperature,
            batch_size=params.batch_size,
            progress=progress,
        )
    finally:
        del model, tokenizer
        gc.collect()


def _cache_key(
    model: str,
    target: Target,
    conversations: list[list[dict[str, str]]],
    params: GenParams,
    load_in_4bit: bool,
    bf16: bool | None,
) -> str:
    from training.device.precision import inference_dtype

    decided_by = {
        "model": model,
        "adapter": target.identity,
        "conversations": conversations,
        "max_new_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "load_in_4bit": load_in_4bit,
        "dtype": inference_dtype(bf16),
    }
    return hashlib.sha256(json.dumps(decided_by, sort_keys=True).encode()).hexdigest()


def _read_cache(path: Path, n: int) -> list[str] | None:
    try:
        replies = json.loads(path.read_text(encoding="utf-8"))["replies"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ok = (
        isinstance(replies, list) and len(replies) == n and all(isinstance(r, str) for r in replies)
    )
    return replies if ok else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` to `path` atomically (`feedback.atomic_write`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
