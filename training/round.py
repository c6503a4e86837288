"""One training round: snapshot -> SFT -> DPO -> KTO -> evaluate -> gate every stage ->
register (and promote the best stage that passes).

Everything a round does lands under `rounds_dir/<round id>/`:
    state.json     live progress, replaced atomically (other processes read it)
    metrics.jsonl  one line per logged training step
    snapshot.json  + data/*.jsonl: the frozen, curated rows and their hash
    sft/, dpo/, kto/  checkpoints and each stage's adapter
    report.json, report.md, *.png
One round at a time (training/rounds_dir.py); the round's record on disk is
training/round_state.py, its end (evaluate, gate, register) training/promotion.py. A round
launched as several processes (torchrun, `accelerate launch`) trains on all of them; the
lock, the snapshot, evaluation, the gate, the registry and every file above belong to the
main process (training/device/ranks.py), and the others return the main process's result.
A failed round records its reason and leaves the serving version (the registry's CURRENT)
untouched; `resume=True` continues the newest unfinished round from its snapshot and last
checkpoints.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training import early_stopping
from training.device import ranks
from training.promotion import judge_and_register
from training.registry import Registry
from training.round_config import RoundConfig
from training.round_state import RoundResult, RoundState, now
from training.rounds_dir import RoundError, new_round_id, resumable_round, round_lock
from training.stages import NonFiniteLossError, train_dpo, train_kto, train_sft

log = logging.getLogger(__name__)


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
    with round_lock(rounds_dir):
        round_id = ranks.on_main(
            lambda: resumable_round(rounds_dir) if resume else new_round_id(rounds_dir)
        )
        folder = rounds_dir / round_id
        folder.mkdir(parents=True, exist_ok=True)
        rnd = RoundState(folder, on_progress)
        serving = registry.current()
        if resume:
            rnd.state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
            rnd.update(status="running", reason=None, finished_at=None, resumed_at=now())
        else:
            rnd.update(
                id=round_id,
                status="running",
                stage="snapshot",
                step=0,
                max_steps=0,
                loss=None,
                started_at=now(),
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
                gate_eval_sets=config.gate.eval_sets,
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
            rnd.update(status="failed", reason=reason, finished_at=now(), quiet=True)
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


def _others_mid_training(rnd: RoundState, err: BaseException) -> bool:
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
    rnd: RoundState,
    snap: Any,
    registry: Registry,
    model_dir: Path,
    config: RoundConfig,
    serving: str | None,
    promote: bool,
) -> RoundResult:
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
    return judge_and_register(
        rnd, snap, registry, model_dir, config, serving, stages, training, promote
    )


def _training_summaries(folder: Path, stages: list[str]) -> dict[str, Any]:
    """What early stopping did in each trained stage, from the stage folders (a resumed
    round reads those of stages it trained before)."""
    found = {stage: early_stopping.read(folder / stage) for stage in stages}
    return {stage: summary for stage, summary in found.items() if summary is not None}


def kto_ready(rows: list[dict[str, Any]], min_rows: int) -> bool:
    """Whether the unpaired 👍/👎 rows can carry a KTO stage: at least `min_rows` of them,
    with both labels present (one label alone has no contrast to learn)."""
    labels = {bool(r["label"]) for r in rows}
    return len(rows) >= max(min_rows, 1) and labels == {True, False}
