"""`tuneloop` commands for the training part of the loop (registered by app/cli/main.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli.common import JsonOpt, emit, open_settings, open_store


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main `tuneloop` app."""
    register_core(app)  # core: `train`, `promote`, `rollback`, `rounds` (block below)
    register_watch(app)  # operator side: `watch` and `tracker` (block below)


# --- Core: a round (`tuneloop train`), promotion, rollback, the list of rounds ---------------


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
        """Run one training round: snapshot, SFT, DPO, KTO, evaluate, gate, promote if better.

        Under `torchrun` / `accelerate launch` every process trains; the main one does the
        rest and alone prints the result."""
        from app.cli.eval import judge
        from app.serving.cpu_env import lower_thread_priority
        from app.serving.modelfiles import resolve_model_dir
        from training import early_stopping
        from training.continuation import describe
        from training.device import ranks
        from training.registry import Registry
        from training.round import run_round
        from training.round_config import RoundConfig

        settings = open_settings()
        # Before torch starts its threads, which inherit it: a round yields the CPU to the
        # server's clicks and saves, and shares it with replies as before.
        lower_thread_priority(settings.model_nice)
        main = ranks.is_main()
        store = open_store(settings) if main else None  # the main process takes the snapshot
        with ranks.main_first():  # a model file is converted once, by the main process
            model_dir = resolve_model_dir(
                settings.model, settings.models_dir, progress=main and not as_json
            )
        config = RoundConfig.from_settings(
            settings,
            judge=judge(settings),
            sft_steps=sft_steps,
            dpo_steps=dpo_steps,
            max_steps=max_steps,
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
            rounds_dir=settings.rounds_dir,
            resume=resume,
            promote=not no_promote,
            on_progress=progress,
        )
        ranks.finish()
        if not main:
            raise typer.Exit(1 if result.status == "failed" else 0)
        if result.status == "failed" and as_json:  # a failure is an error, as for every command
            reason = (result.reasons or ["see the log"])[0]
            emit(True, {"error": f"round {result.id} failed: {reason}", "exit_code": 1}, "")
            raise typer.Exit(1)
        payload = result.to_dict()
        text = f"Round {result.id}: {result.status}" + (
            f", version {result.version} ({result.candidate_stage})" if result.version else ""
        )
        if result.continuation:
            text += f"\n  mode: {describe(result.continuation)}"
        for stage, summary in result.training.items():
            text += f"\n  {stage} training: {early_stopping.describe(summary)}"
        for stage, decision in result.gate.items():
            text += f"\n  {stage}: {decision['decision']}"
            for comp in decision["comparisons"]:
                if comp["margin"] is not None and comp["diff"] is not None:
                    text += (
                        f"\n    {comp['name']} {comp['diff']:+.3f} "
                        f"[{comp['low']:+.3f}, {comp['high']:+.3f}] n={comp['n']}: "
                        f"{comp['verdict']} ({comp['role']})"
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
        force: Annotated[
            bool,
            typer.Option(
                "--force", help="Serve it even though the gate rejected it or could not decide."
            ),
        ] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Serve VERSION now (checksums verified; a running serve switches within seconds)."""
        from training.registry import Registry

        registry = Registry(open_settings().adapters_dir)
        before, now = registry.promote(version, by=f"operator {_who()}", force=force)
        payload = {"from": before, "to": now, "forced": force}
        emit(as_json, payload, f"Serving {now} (was {before or 'the bare base model'}).")

    @app.command("rollback")
    def rollback(as_json: JsonOpt = False) -> None:
        """Serve the version that served before the current one again."""
        from training.registry import Registry

        registry = Registry(open_settings().adapters_dir)
        before, target = registry.rollback(by=f"operator {_who()}")
        payload = {"from": before, "to": target}
        emit(as_json, payload, f"Rolled back from {before} to {target or 'the bare base model'}.")

    @app.command("rounds")
    def rounds(as_json: JsonOpt = False) -> None:
        """Training rounds so far (oldest first) and the feedback that arrived since."""
        from training.continuation import describe
        from training.rounds_dir import list_rounds, new_feedback_since_last_round

        settings = open_settings()
        rounds_dir = settings.rounds_dir
        states = list_rounds(rounds_dir)
        new = new_feedback_since_last_round(open_store(settings), rounds_dir)
        lines = [
            f"{s['id']}  {s.get('status'):<9} {s.get('stage'):<9} {s.get('version') or '-'}"
            + (f"  [{describe(s['continuation'])}]" if s.get("continuation") else "")
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
        checks every TUNELOOP_WATCH_POLL_SECONDS. Each round runs as `tuneloop train --json`,
        started by TUNELOOP_TRAIN_LAUNCHER (e.g. torchrun) when that is set.
        """
        from training import schedule

        settings = open_settings()
        store = open_store(settings)
        rounds_dir = settings.rounds_dir
        log = rounds_dir / "watch.log"

        def say(text: str) -> None:
            if once:
                if not as_json:
                    typer.echo(text)
            else:  # a long-running log: one timestamped line per check, on stderr
                from datetime import UTC, datetime

                typer.echo(f"{datetime.now(UTC):%Y-%m-%d %H:%M:%SZ} {text}", err=True)

        def check() -> schedule.Decision:
            if settings.openwebui_url and settings.openwebui_sync_seconds > 0:
                from app.cli.openwebui import sync_quietly

                sync_quietly(settings, store)  # Open WebUI's new ratings count for this check
            return schedule.check(
                store,
                rounds_dir,
                min_new=settings.round_min_new,
                interval_minutes=settings.round_interval_minutes,
            )

        events = schedule.watch(
            checker=check,
            runner=lambda resume: schedule.run_train(
                resume=resume, log=log, launcher=settings.train_launcher
            ),
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
        tracking.show(settings.rounds_dir, host=host, port=port)


def _who() -> str:
    """The operator's login name on this machine, for the version's record."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
