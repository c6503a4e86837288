"""One training round: snapshot -> SFT -> DPO -> KTO -> evaluate -> gate every stage ->
register (and promote the best stage that passes).

Everything a round does lands under `rounds_dir/<round id>/`:
    state.json     live progress, replaced atomically (other processes read it)
    metrics.jsonl  one line per logged training step
    snapshot.json  + data/*.jsonl: the frozen, curated rows and their hash
    sft/, dpo/, kto/  checkpoints and each stage's adapter
    report.json, report.md, *.png
One round at a time: an exclusive lock (`filelock`) on `rounds_dir/.lock`, which the OS releases
when a crashed round's process dies. A round launched as several processes (torchrun,
`accelerate launch`) trains on all of them; the lock, the snapshot, evaluation, the gate,
the registry and every file above belong to the main process (training/device/ranks.py), and the
others return the main process's result. A failed round records its reason and leaves the
serving version (the registry's CURRENT) untouched; `resume=True` continues the newest
unfinished round from its snapshot and last checkpoints.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from feedback.atomic_write import write_atomic
from training.device import ranks
from training.registry import Registry
from training.schedule import LOCK_NAME, lock_held
from training.stages import NonFiniteLossError, RoundConfig

__all__ = [
    "NonFiniteLossError",
    "RoundBusyError",
    "RoundConfig",
    "RoundError",
    "RoundResult",
    "list_rounds",
    "new_feedback_since_last_round",
    "run_round",
]

log = logging.getLogger(__name__)
_ROUND_RE = re.compile(r"r(\d{4,})-\d{8}T\d{4,6}")
FINISHED = ("done", "rejected", "inconclusive", "promoted")


class RoundError(Exception):
    """A round that cannot start or continue (nothing to train on, nothing to resume)."""


class RoundBusyError(RoundError):
    """Another round holds the lock."""


@dataclass
class RoundResult:
    """How a round ended."""

    id: str
    status: str  # done | failed | rejected | inconclusive | promoted
    version: str | None = None
    candidate_stage: str | None = None
    decision: str | None = None  # the gate's: promote | reject | inconclusive
    reasons: list[str] = field(default_factory=list)
    serving_before: str | None = None
    serving_after: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)  # each stage's decision and comparisons
    report: str | None = None
    # fresh or continue (from which version), and the rows new vs replayed older
    continuation: dict[str, Any] = field(default_factory=dict)
    # per stage: steps planned and run, whether it stopped early, its best step and that
    # step's validation loss, or why it had no validation split (training/early_stopping.py)
    training: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` atomically, so a reader sees the old or the new state, never half."""
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


@contextmanager
def _exclusive(rounds_dir: Path) -> Iterator[None]:
    from filelock import FileLock, Timeout

    rounds_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(rounds_dir / LOCK_NAME, blocking=False)
    try:
        lock.acquire()
    except Timeout:
        raise RoundBusyError("another training round is running; wait for it") from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def _round_lock(rounds_dir: Path) -> Iterator[None]:
    """The round lock, held by the main process alone; the other processes of a launched
    round learn whether it got it (RoundBusyError there, MainProcessError here when not)."""
    with ExitStack() as held:
        ranks.on_main(lambda: held.enter_context(_exclusive(rounds_dir)))
        yield


def _lock_is_free(rounds_dir: Path) -> bool:
    try:
        return not lock_held(rounds_dir)
    except OSError:  # an unreadable lock file: not known to be free
        return False


def list_rounds(rounds_dir: Path) -> list[dict[str, Any]]:
    """Every round's state.json, oldest first.

    A round whose state still says "running" while no process holds the round lock was
    killed mid-way; it is reported as "failed" (interrupted) so that nobody waits for it.
    """
    rounds_dir = Path(rounds_dir)
    if not rounds_dir.is_dir():
        return []
    out = []
    for entry in sorted(rounds_dir.iterdir()):
        state = entry / "state.json"
        if entry.is_dir() and _ROUND_RE.fullmatch(entry.name) and state.is_file():
            try:
                out.append(json.loads(state.read_text(encoding="utf-8")))
            except ValueError:
                continue
    if out and out[-1].get("status") == "running" and _lock_is_free(rounds_dir):
        out[-1].update(
            status="failed",
            reason="interrupted: its process ended mid-round (tuneloop train --resume)",
        )
    return out


def new_feedback_since_last_round(store: Any, rounds_dir: Path) -> dict[str, int]:
    """Preferences / corrections / ratings added after the last finished round's snapshot."""
    marks = None
    for state in reversed(list_rounds(rounds_dir)):
        snap = Path(rounds_dir) / state["id"] / "snapshot.json"
        if state.get("status") in FINISHED and snap.is_file():
            marks = json.loads(snap.read_text(encoding="utf-8")).get("max_ids")
            break
    return store.new_feedback_since(marks)


def _new_round_id(rounds_dir: Path) -> str:
    numbers = [int(m.group(1)) for e in rounds_dir.iterdir() if (m := _ROUND_RE.fullmatch(e.name))]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"r{max(numbers, default=0) + 1:04d}-{stamp}"


def _code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("tuneloop")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        found = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{found}+g{commit}" if commit else found


class _Round:
    """The state of one round on disk, and the steps that move it on."""

    def __init__(self, folder: Path, on_progress: Callable[[dict], None] | None) -> None:
        self.folder = folder
        self.on_progress = on_progress
        self.state: dict[str, Any] = {}

    def update(self, *, quiet: bool = False, **fields: Any) -> None:
        """Merge `fields` into state.json; tell `on_progress` (errors swallowed if `quiet`).
        Only the main process writes: the others keep their state in memory."""
        self.state.update(fields)
        if not ranks.is_main():
            return
        _write_json(self.folder / "state.json", self.state)
        if self.on_progress is not None:
            try:
                self.on_progress(dict(self.state))
            except Exception:
                if not quiet:
                    raise

    def log(self, stage: str, step: int, max_steps: int, numbers: dict[str, float]) -> None:
        if not ranks.is_main():
            return
        line = {"stage": stage, "step": step, "time": _now(), **numbers}
        with open(self.folder / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        loss = numbers.get("loss", self.state.get("loss"))
        self.update(stage=stage, step=step, max_steps=max_steps, loss=loss)


def _resumable(rounds_dir: Path) -> str:
    for state in reversed(list_rounds(rounds_dir)):
        if state.get("status") in ("running", "failed"):
            return str(state["id"])
        break
    raise RoundError("there is no failed or interrupted round to resume; start a new one")


def run_round(
    *,
    store: Any,
    registry: Registry,
    model_dir: Path,
    config: RoundConfig,
    rounds_dir: Path,
    resume: bool = False,
    promote: bool = True,
    on_progress: Callable[[dict], None] | None = None,
) -> RoundResult:
    """Run (or resume) one round; returns how it ended. Raises only RoundBusyError (another
    round runs) and RoundError (nothing to resume); a failure inside the round is recorded
    in its state and returned as status "failed", with CURRENT unchanged. In a round
    launched as several processes every process returns the main process's result; the
    others need no `store` (the main process takes the snapshot)."""
    result = _run_round(
        store=store, registry=registry, model_dir=model_dir, config=config,
        rounds_dir=rounds_dir, resume=resume, promote=promote,
        on_progress=on_progress,
    )  # fmt: skip
    return ranks.share(result)


def _run_round(
    *,
    store: Any,
    registry: Registry,
    model_dir: Path,
    config: RoundConfig,
    rounds_dir: Path,
    resume: bool,
    promote: bool,
    on_progress: Callable[[dict], None] | None,
) -> RoundResult:
    from training.datasets import load_snapshot, replay_rows, save_snapshot, take_snapshot

    rounds_dir = Path(rounds_dir)
    with _round_lock(rounds_dir):
        round_id = ranks.on_main(
            lambda: _resumable(rounds_dir) if resume else _new_round_id(rounds_dir)
        )
        folder = rounds_dir / round_id
        folder.mkdir(parents=True, exist_ok=True)
        rnd = _Round(folder, on_progress)
        serving = registry.current()
        if resume:
            rnd.state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
            rnd.update(status="running", reason=None, finished_at=None, resumed_at=_now())
        else:
            rnd.update(
                id=round_id,
                status="running",
                stage="snapshot",
                step=0,
                max_steps=0,
                loss=None,
                started_at=_now(),
                finished_at=None,
                reason=None,
                version=None,
            )

        def full_snapshot() -> Any:
            if resume and (folder / "snapshot.json").is_file():
                return load_snapshot(folder)
            rnd.update(stage="replay")
            replay = replay_rows(
                Path(model_dir),
                config.replay_file,
                system_prompt=config.system_prompt,
                max_new_tokens=config.replay_max_new_tokens,
                cache_dir=config.replay_cache_dir,
                bf16=config.infer_bf16,
            )
            snap = take_snapshot(
                store,
                replay=replay,
                seed_file=config.seed_file,
                system_prompt=config.system_prompt,
                dedup_threshold=config.dedup_threshold,
                heldout_min_items=config.heldout_min_items,
                pii_region=config.pii_region,
            )
            save_snapshot(snap, folder)
            return snap

        def snapshot() -> Any:
            """The rows this round trains on: all of them, or (continue mode) what is new
            since the promoted version's round plus a share of the older ones."""
            from training.continuation import apply

            snap = apply(
                full_snapshot(),
                folder,
                mode=config.round_mode,
                share=config.round_replay_share,
                seed=config.seed,
                registry=registry,
            )
            rnd.update(continuation=snap.info["continuation"])
            return snap

        try:
            snap = ranks.on_main(snapshot)  # the others train on the main process's rows
            return _train_and_gate(rnd, snap, registry, Path(model_dir), config, serving, promote)
        except BaseException as err:
            reason = f"{type(err).__name__}: {err}".splitlines()[0]
            if isinstance(err, KeyboardInterrupt):
                reason = "interrupted"
            if not ranks.is_main() and not isinstance(
                err, ranks.MainProcessError | NonFiniteLossError
            ):  # this process alone failed: end it, and its launcher ends the others
                raise
            rnd.update(status="failed", reason=reason, finished_at=_now(), quiet=True)
            if isinstance(err, Exception):  # where it failed, for whoever reads the log
                log.error("round %s failed: %s", round_id, reason, exc_info=err)
            if ranks.is_main() and rnd.state.get("version"):
                registry.update_info(rnd.state["version"], status="failed", reasons=[reason])
            if not isinstance(err, Exception) or _others_mid_training(rnd, err):
                raise
            return RoundResult(
                id=round_id, status="failed", reasons=[reason], serving_before=serving,
                serving_after=registry.current(),
            )  # fmt: skip


def _others_mid_training(rnd: _Round, err: BaseException) -> bool:
    """Whether the main process failed alone while the others of a launched round are inside
    a training step: it then ends (its failure recorded), and the launcher ends them. A
    non-finite loss is seen by every process at the same step, so they all return."""
    return (
        ranks.launched()
        and ranks.is_main()
        and rnd.state.get("stage") in ("sft", "dpo")
        and not isinstance(err, NonFiniteLossError)
    )


def _train_and_gate(
    rnd: _Round,
    snap: Any,
    registry: Registry,
    model_dir: Path,
    config: RoundConfig,
    serving: str | None,
    promote: bool,
) -> RoundResult:
    from training.eval.evaluate import evaluate_models
    from training.eval.report import write_report
    from training.stages import train_dpo, train_kto, train_sft

    folder = rnd.folder
    kto = kto_ready(snap.kto_train, config.kto_min_rows)
    if not snap.sft_train and not snap.dpo_train and not kto:
        raise RoundError("nothing to train on: the store and the seed file have no train rows")
    stages: dict[str, Path] = {}
    # continue mode: SFT starts from the promoted version, and DPO/KTO from it when no SFT ran
    parent = (snap.info.get("continuation") or {}).get("parent")
    start = registry.path(parent) if parent else None
    if snap.sft_train:
        rnd.update(stage="sft", step=0)
        done = folder / "sft" / "adapter"
        stages["sft"] = (
            done
            if (done / "adapter_config.json").is_file()
            else train_sft(model_dir, snap.sft_train, folder / "sft", config, rnd.log, start)
        )
    if snap.dpo_train:
        rnd.update(stage="dpo", step=0)
        done = folder / "dpo" / "adapter"
        stages["dpo"] = (
            done
            if (done / "adapter_config.json").is_file()
            else train_dpo(
                model_dir,
                snap.dpo_train,
                stages.get("sft") or start,
                folder / "dpo",
                config,
                rnd.log,
            )
        )
    if kto:
        rnd.update(stage="kto", step=0)
        done = folder / "kto" / "adapter"
        stages["kto"] = (
            done
            if (done / "adapter_config.json").is_file()
            else train_kto(
                model_dir,
                snap.kto_train,
                stages.get("sft") or start,
                folder / "kto",
                config,
                rnd.log,
            )
        )
    if not ranks.is_main():  # the main process evaluates, gates and registers: run_round
        return RoundResult(id=folder.name, status="trained")  # returns its result here too
    training = _training_summaries(folder, list(stages))
    rnd.update(training=training)
    ranks.load_alone()
    rnd.update(stage="evaluate", step=0)
    serving_dir = registry.verify(serving) if serving else None
    metrics = evaluate_models(
        model_dir,
        {"serving": serving_dir, **stages},
        sft_rows=snap.eval_sft(),
        pairs=snap.dpo_heldout,
        kto_rows=snap.kto_heldout,
        settings=config.eval,
        load_in_4bit=config.serve_in_4bit,  # the precision `serve` runs, not training's
        bf16=config.infer_bf16,
    )
    runs, eval_error = _eval_set_runs(config, registry, model_dir, serving, stages)
    rnd.update(stage="gate")
    decisions = _decide_stages(config, metrics, runs, list(stages), eval_error)
    candidate, reasons = _pick(decisions, list(stages))
    decision = decisions[candidate].decision

    version = f"{folder.name}-{candidate}"
    registry.register(version, stages[candidate])
    rnd.update(version=version)
    public = {name: _public(m) for name, m in metrics.items()}
    registry.update_info(
        version,
        status="candidate",
        round=folder.name,
        stage=candidate,
        created_at=_now(),
        base_model=str(model_dir),
        code_version=_code_version(),
        snapshot_hash=snap.info.get("hash"),
        row_counts=snap.info.get("counts"),
        continuation=snap.info.get("continuation"),
        hyperparameters=_hyperparameters(config),
        metrics=public[candidate],
        serving_metrics=public["serving"],
        compared_with=serving,
        decision=decision,
        gate={name: d.as_dict() for name, d in decisions.items()},
    )
    if config.gate.evals_dir is not None:
        from training.eval.evalsets import record

        for run in runs:  # the serving version (or base) under its own label
            names = {run.labels[0]: run.labels[0], candidate: version}
            record(run, registry, config.gate.evals_dir, names)

    if decision != "promote":
        status = "rejected" if decision == "reject" else "inconclusive"
    elif promote:
        registry.promote(version, by=f"round {folder.name}")
        status = "promoted"
    else:
        status = "done"
    info_status = {"promoted": "promoted", "done": "passed"}.get(status, status)
    registry.update_info(version, status=info_status, reasons=reasons)
    result = RoundResult(
        id=folder.name,
        status=status,
        version=version,
        candidate_stage=candidate,
        decision=decision,
        reasons=reasons,
        serving_before=serving,
        serving_after=registry.current(),
        metrics=public,
        gate={name: d.as_dict() for name, d in decisions.items()},
        report=str(folder / "report.md"),
        continuation=snap.info.get("continuation") or {},
        training=training,
    )
    write_report(
        folder, result=result.to_dict(), snapshot=snap.info, config=_hyperparameters(config)
    )
    rnd.update(stage="done", status=status, reason="; ".join(reasons) or None, finished_at=_now())
    return result


def _training_summaries(folder: Path, stages: list[str]) -> dict[str, Any]:
    """What early stopping did in each trained stage, from the stage folders (a resumed
    round reads those of stages it trained before)."""
    from training import early_stopping

    found = {stage: early_stopping.read(folder / stage) for stage in stages}
    return {stage: summary for stage, summary in found.items() if summary is not None}


def kto_ready(rows: list[dict[str, Any]], min_rows: int) -> bool:
    """Whether the unpaired 👍/👎 rows can carry a KTO stage: at least `min_rows` of them,
    with both labels present (one label alone has no contrast to learn)."""
    labels = {bool(r["label"]) for r in rows}
    return len(rows) >= max(min_rows, 1) and labels == {True, False}


def _eval_set_runs(
    config: RoundConfig,
    registry: Registry,
    model_dir: Path,
    serving: str | None,
    stages: dict[str, Path],
) -> tuple[list[Any], str | None]:
    """The gate's eval sets answered by serving and every stage; (runs, why they failed)."""
    if not config.gate.eval_sets:
        return [], None
    from training.eval.evalsets import EvalError, gate_runs
    from training.eval.generate import GenerationError
    from training.eval.scorers import ScorerError
    from training.registry import RegistryError

    try:
        runs = gate_runs(
            config.gate,
            registry=registry,
            model_dir=model_dir,
            system_prompt=config.system_prompt,
            serving=serving,
            stages=stages,
        )
    except (EvalError, GenerationError, RegistryError, ScorerError, OSError, ValueError) as err:
        return [], f"the eval gate could not run: {err}".splitlines()[0]
    return runs, None


def _decide_stages(
    config: RoundConfig,
    metrics: dict[str, dict[str, Any]],
    runs: list[Any],
    stages: list[str],
    eval_error: str | None,
) -> dict[str, Any]:
    """Every stage's decision against the serving version, on held-out items and eval sets."""
    from training.gate import HELDOUT, ItemScores, StageDecision, compare, decide

    gate = config.gate
    decisions: dict[str, StageDecision] = {}
    for stage in stages:
        comparisons = []
        serving_items = metrics["serving"].get("items", {})
        for metric, items in metrics[stage].get("items", {}).items():
            ref = serving_items.get(metric)
            comparisons.append(
                compare(
                    HELDOUT,
                    metric,
                    ItemScores(**ref) if ref else None,
                    ItemScores(**items),
                    gate.margin(HELDOUT, metric),
                    min_items=gate.min_items,
                    resamples=gate.resamples,
                )
            )
        for run in runs:
            reference = run.items[run.labels[0]]
            for metric, values in run.items[stage].items():
                pairs = [
                    (a, b)
                    for a, b in zip(reference.get(metric, []), values, strict=False)
                    if a is not None and b is not None
                ]
                comparisons.append(
                    compare(
                        run.evalset.name,
                        metric,
                        ItemScores([a for a, _ in pairs]),
                        ItemScores([b for _, b in pairs]),
                        gate.margin(run.evalset.name, metric),
                        min_items=gate.min_items,
                        resamples=gate.resamples,
                    )
                )
        decision = decide(stage, comparisons)
        if eval_error:  # an eval that cannot run blocks the promotion too
            decision.decision = "reject"
            decision.reasons = [eval_error, *decision.reasons]
        decisions[stage] = decision
    return decisions


def _pick(decisions: dict[str, Any], order: list[str]) -> tuple[str, list[str]]:
    """The stage to register: the clearest winner among those the gate would promote (the
    earlier stage wins a tie: DPO and KTO must earn their place); with none, the clearest of
    all, so an operator can still force it. Returns it with the reasons for the choice."""
    passing = [s for s in order if decisions[s].decision == "promote"]
    pool = passing or order
    best = max(pool, key=lambda s: (round(decisions[s].strength(), 9), -order.index(s)))
    reasons: list[str] = []
    for stage in order:
        d = decisions[stage]
        if stage == best and d.decision == "promote":
            continue
        label = "dropped" if passing else d.decision
        if passing and d.decision == "promote":
            why = [f"{best} wins more clearly"]
        else:
            why = d.reasons or [d.decision]
        reasons += [f"{stage} {label}: {r}" for r in why]
    return best, reasons


def _public(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics without the per-item values (those live in the round's report.json)."""
    return {k: v for k, v in metrics.items() if k != "items"}


def _hyperparameters(config: RoundConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(config), default=str))
