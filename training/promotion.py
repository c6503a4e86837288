"""The end of a round: evaluate the trained stages beside the serving version, let the gate
decide on each (training/gate.py), register the stage it picks, promote it when it passed
and CURRENT still names the version it was compared with, and write the round's report
and `items.json` (every model's per-item values the gate paired). Runs on the main process
only."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from feedback.atomic_write import write_atomic
from training.comparisons import HELDOUT
from training.eval.evaluate import evaluate_models
from training.eval.reply_match import approved_answers, human_written, judge_replies
from training.eval.report import write_report
from training.gate import decide_stages, pick_candidate
from training.registry import CurrentChangedError, Registry
from training.round_config import RoundConfig
from training.round_state import RoundResult, RoundState, now


def judge_and_register(
    rnd: RoundState,
    snap: Any,
    registry: Registry,
    model_dir: Path,
    config: RoundConfig,
    serving: str | None,
    stages: dict[str, Path],
    training: dict[str, Any],
    promote: bool,
) -> RoundResult:
    """Evaluate, gate, register (and with `promote`, promote) the round's best stage; returns
    how the round ended. `training`: what early stopping did in each stage."""
    folder = rnd.folder
    rnd.update(stage="evaluate", step=0)
    serving_dir = registry.verify(serving) if serving else None
    metrics = evaluate_models(
        model_dir,
        {"serving": serving_dir, **stages},
        sft_rows=human_written(snap.sft_heldout),  # the loss: answers people wrote
        pairs=snap.dpo_heldout,
        kto_rows=snap.kto_heldout,
        approved=approved_answers(snap.sft_heldout, snap.dpo_heldout, snap.kto_heldout),
        settings=config.eval,
        load_in_4bit=config.serve_in_4bit,  # the precision `serve` runs, not training's
        bf16=config.infer_bf16,
    )
    judge_error = _judge(config, metrics)
    runs, eval_error = _eval_set_runs(config, registry, model_dir, serving, stages)
    rnd.update(stage="gate")
    decisions = decide_stages(config.gate, metrics, runs, list(stages), eval_error or judge_error)
    items = {HELDOUT: {name: m.get("items", {}) for name, m in metrics.items()}}
    items.update({run.evalset.name: run.items for run in runs})
    write_atomic(folder / "items.json", json.dumps(items) + "\n")
    candidate, reasons = pick_candidate(decisions, list(stages))
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
        created_at=now(),
        base_model=str(model_dir),
        code_version=code_version(),
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
        from training.eval.eval_results import record

        for run in runs:  # the serving version (or base) under its own label
            names = {run.labels[0]: run.labels[0], candidate: version}
            record(run, registry, config.gate.evals_dir, names)

    if decision != "promote":
        status = "rejected" if decision == "reject" else "inconclusive"
    elif promote:
        try:  # only if CURRENT still serves what the gate compared against
            registry.promote(version, by=f"round {folder.name}", expect=serving)
            status = "promoted"
        except CurrentChangedError as err:
            status = "stale"
            reasons = [f"not promoted: {err}; promote it by hand after a look", *reasons]
    else:
        status = "done"
    info_status = {"promoted": "promoted", "done": "passed", "stale": "passed"}.get(status, status)
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
        objectives=[c.name for c in decisions[candidate].comparisons if c.role == "objective"],
        report=str(folder / "report.md"),
        continuation=snap.info.get("continuation") or {},
        training=training,
    )
    write_report(
        folder, result=result.to_dict(), snapshot=snap.info, config=_hyperparameters(config)
    )
    rnd.update(stage="done", status=status, reason="; ".join(reasons) or None, finished_at=now())
    return result


def _judge(config: RoundConfig, metrics: dict[str, dict[str, Any]]) -> str | None:
    """With a judge model, its verdicts on the held-out replies against the serving
    version's (`reply_judge`, then the objective); why it could not judge, if so."""
    if config.gate.judge is None:
        return None
    try:
        judge_replies(config.gate.judge, metrics, "serving")
    except Exception as err:  # a judge that cannot load or answer blocks; the round goes on
        return f"the judge could not run: {type(err).__name__}: {err}".splitlines()[0]
    return None


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


def code_version() -> str:
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


def _public(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics without the per-item values and replies (those are in items.json)."""
    return {k: v for k, v in metrics.items() if k not in ("items", "replies")}


def _hyperparameters(config: RoundConfig) -> dict[str, Any]:
    """The round's configuration as plain JSON values (for the registry and the report)."""
    return json.loads(json.dumps(asdict(config), default=str))
