"""`tuneloop` commands for the training part of the loop (registered by app/cli.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from app.cli_common import JsonOpt, emit, open_settings, open_store
from app.config import Settings

if TYPE_CHECKING:
    from training.registry import Registry
    from training.round import RoundConfig


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main `tuneloop` app."""
    register_core(app)  # core: `train`, `promote`, `rollback`, `rounds` (block below)
    register_watch(app)  # operator side: `watch` and `tracker` (block below)


# --- Core: a round (`tuneloop train`), promotion, rollback, the list of rounds ---------------


class RoundFailedError(Exception):
    """A training round ended as failed (its reason is in its state.json)."""


class RollbackError(Exception):
    """There is nothing to roll back to."""


def build_round_config(
    settings: Settings, *, sft_steps: int | None = None, dpo_steps: int | None = None,
    max_steps: int | None = None,
) -> RoundConfig:  # fmt: skip
    """The round's hyperparameters from Settings (command-line overrides win)."""
    from training.evaluate import EvalSettings, GateMargins
    from training.round import RoundConfig
    from training.stages import default_train_batch_size

    data = settings.data_dir
    return RoundConfig(
        sft_epochs=settings.sft_epochs,
        dpo_epochs=settings.dpo_epochs,
        sft_steps=settings.sft_steps if sft_steps is None else sft_steps,
        dpo_steps=settings.dpo_steps if dpo_steps is None else dpo_steps,
        max_steps=settings.train_max_steps if max_steps is None else max_steps,
        batch_size=settings.train_batch_size or default_train_batch_size(),
        grad_accum=settings.train_grad_accum,
        sft_learning_rate=settings.sft_learning_rate,
        dpo_learning_rate=settings.dpo_learning_rate,
        dpo_beta=settings.dpo_beta,
        lora_r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        lora_targets=settings.lora_targets,
        max_length=settings.train_max_length,
        save_steps=settings.train_save_steps,
        seed=settings.train_seed,
        gradient_checkpointing=settings.gradient_checkpointing,
        precompute_ref_log_probs=settings.precompute_ref_log_probs,
        qlora=settings.qlora,
        system_prompt=settings.system_prompt(),
        seed_file=data / "seed_sft.jsonl",
        replay_file=data / "replay_prompts.jsonl",
        dedup_threshold=settings.dedup_threshold,
        pii_region=settings.pii_region,
        eval=EvalSettings(
            batch_size=settings.eval_batch_size,
            max_length=settings.train_max_length,
            generate=settings.eval_generate,
            max_prompts=settings.eval_max_prompts,
            max_new_tokens=settings.eval_max_new_tokens,
            rubric_file=data / "rubric.json",
            general_file=data / "general_checks.jsonl",
            system_prompt=settings.system_prompt(),
        ),
        margins=GateMargins(
            min_pref_acc_gain=settings.gate_min_pref_acc_gain,
            min_loss_decrease=settings.gate_min_loss_decrease,
            min_rubric_gain=settings.gate_min_rubric_gain,
            max_loss_increase=settings.gate_max_loss_increase,
            max_pref_acc_drop=settings.gate_max_pref_acc_drop,
            max_rubric_drop=settings.gate_max_rubric_drop,
            max_general_loss_increase=settings.gate_max_general_loss_increase,
            max_general_pass_drop=settings.gate_max_general_pass_drop,
        ),
        tracker=settings.tracker,
    )


def rollback_target(registry: Registry) -> str | None:
    """The version that served before the current one (None = the bare base), skipping
    versions already rolled back; RollbackError when the pointer never moved."""
    current = registry.current()
    for entry in reversed(registry.history()):
        target = entry.get("from")
        if target == current:
            continue
        if target is None or registry.info(target).get("status") != "rolled_back":
            return target
    raise RollbackError("nothing to roll back to: CURRENT has never pointed elsewhere")


def register_core(app: typer.Typer) -> None:
    """`tuneloop train`, `promote`, `rollback` and `rounds`."""

    @app.command("train")
    def train(
        max_steps: Annotated[
            int | None, typer.Option("--max-steps", help="Cap on each stage's steps.")
        ] = None,
        sft_steps: Annotated[int | None, typer.Option("--sft-steps", help="SFT steps.")] = None,
        dpo_steps: Annotated[int | None, typer.Option("--dpo-steps", help="DPO steps.")] = None,
        no_promote: Annotated[
            bool, typer.Option("--no-promote", help="Evaluate and register, never promote.")
        ] = False,
        resume: Annotated[
            bool, typer.Option("--resume", help="Continue the last failed or interrupted round.")
        ] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Run one training round: snapshot, SFT, DPO, evaluate, gate, promote if better."""
        from app.modelfiles import resolve_model_dir
        from training.registry import Registry
        from training.round import run_round

        settings = open_settings()
        store = open_store(settings)
        model_dir = resolve_model_dir(settings.model, settings.models_dir, progress=not as_json)
        config = build_round_config(
            settings, sft_steps=sft_steps, dpo_steps=dpo_steps, max_steps=max_steps
        )
        last: dict[str, object] = {}

        def progress(state: dict) -> None:
            shown = (state.get("stage"), state.get("step"))
            if not as_json and shown != (last.get("stage"), last.get("step")):
                loss = state.get("loss")
                typer.echo(
                    f"[{state.get('id')}] {state.get('stage')} step {state.get('step')}"
                    f"/{state.get('max_steps')}" + (f" loss {loss:.4f}" if loss else ""),
                    err=True,
                )
            last.update(stage=shown[0], step=shown[1])

        result = run_round(
            store=store,
            registry=Registry(settings.adapters_dir),
            model_dir=model_dir,
            config=config,
            rounds_dir=settings.home / "rounds",
            resume=resume,
            promote=not no_promote,
            on_progress=progress,
        )
        payload = result.to_dict()
        text = f"Round {result.id}: {result.status}" + (
            f", version {result.version} ({result.candidate_stage})" if result.version else ""
        )
        if result.reasons:
            text += "\n" + "\n".join(f"  - {r}" for r in result.reasons)
        if result.report:
            text += f"\nReport: {result.report}"
        emit(as_json, payload, text)
        if result.status == "failed":
            raise typer.Exit(1)

    @app.command("promote")
    def promote(
        version: Annotated[str, typer.Argument(help="A registered adapter version.")],
        as_json: JsonOpt = False,
    ) -> None:
        """Serve VERSION now (checksums verified; a running serve switches within seconds)."""
        from training.registry import Registry

        registry = Registry(open_settings().adapters_dir)
        before = registry.current()
        registry.set_current(version)
        registry.update_info(version, status="promoted", promoted_by="operator")
        payload = {"from": before, "to": version}
        emit(as_json, payload, f"Serving {version} (was {before or 'the bare base model'}).")

    @app.command("rollback")
    def rollback(as_json: JsonOpt = False) -> None:
        """Serve the version that served before the current one again."""
        from training.registry import Registry

        registry = Registry(open_settings().adapters_dir)
        before = registry.current()
        target = rollback_target(registry)
        registry.set_current(target)
        if before is not None and before in registry.versions():  # not a hand-edited name
            registry.update_info(before, status="rolled_back")
        payload = {"from": before, "to": target}
        emit(as_json, payload, f"Rolled back from {before} to {target or 'the bare base model'}.")

    @app.command("rounds")
    def rounds(as_json: JsonOpt = False) -> None:
        """Training rounds so far (oldest first) and the feedback that arrived since."""
        from training.round import list_rounds, new_feedback_since_last_round

        settings = open_settings()
        rounds_dir = settings.home / "rounds"
        states = list_rounds(rounds_dir)
        new = new_feedback_since_last_round(open_store(settings), rounds_dir)
        lines = [
            f"{s['id']}  {s.get('status'):<9} {s.get('stage'):<9} {s.get('version') or '-'}"
            + (f"  ({s['reason']})" if s.get("reason") else "")
            for s in states
        ] or ["No rounds yet."]
        lines.append("new since the last round: " + ", ".join(f"{k} {v}" for k, v in new.items()))
        emit(as_json, {"rounds": states, "new_feedback": new}, "\n".join(lines))


# --- Operator side: the schedule (`tuneloop watch`) and the tracker's dashboard -------------


def register_watch(app: typer.Typer) -> None:
    """`tuneloop watch` and `tuneloop tracker`."""

    @app.command("watch")
    def watch(
        once: Annotated[
            bool, typer.Option("--once", help="Check once (running a round if due), then exit.")
        ] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Run a training round whenever enough new feedback arrived (or on an interval).

        Thresholds: TUNELOOP_ROUND_MIN_NEW preferences, TUNELOOP_ROUND_INTERVAL_MINUTES;
        checks every TUNELOOP_WATCH_POLL_SECONDS. Each round runs as `tuneloop train --json`.
        """
        from training import schedule

        settings = open_settings()
        store = open_store(settings)
        rounds_dir = settings.home / "rounds"
        log = rounds_dir / "watch.log"

        def say(text: str) -> None:
            if once:
                if not as_json:
                    typer.echo(text)
            else:  # a long-running log: one timestamped line per check, on stderr
                from datetime import UTC, datetime

                typer.echo(f"{datetime.now(UTC):%Y-%m-%d %H:%M:%SZ} {text}", err=True)

        events = schedule.watch(
            checker=lambda: schedule.check(
                store,
                rounds_dir,
                min_new=settings.round_min_new,
                interval_minutes=settings.round_interval_minutes,
            ),
            runner=lambda resume: schedule.run_train(resume=resume, log=log),
            poll_seconds=settings.watch_poll_seconds,
            once=once,
            say=say,
        )
        if once and as_json:
            emit(True, events[-1], "")

    @app.command("tracker")
    def tracker(
        host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port to listen on.")] = 7870,
    ) -> None:
        """Browse every round's training curves in trackio's dashboard (local, offline)."""
        from training import tracking

        settings = open_settings()
        typer.echo(f"trackio dashboard on http://{host}:{port}/ (Ctrl-C to stop)", err=True)
        tracking.show(settings.home / "rounds", host=host, port=port)
