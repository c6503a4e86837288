"""The chat app's Operator tab: new feedback, start a round, live progress, history, promote.

`OperatorService` holds the logic (no Gradio): every action checks, server-side, that the
logged-in user is an operator, so hiding the tab from others is cosmetic, not the guard.
`build_operator_tab` lays the tab out inside the chat app's Blocks; `app/web/ui.py` calls it and
shows the tab only to operators.

A round started here runs as a `tuneloop train --json` subprocess (`training.schedule`), so
the chat keeps serving while it trains; its live progress is the round's own `state.json`,
polled by a timer. Promotion and rollback are the registry's own `promote` and `rollback`
(the one path `tuneloop promote`/`rollback` and rounds take too), which the
running server follows within `TUNELOOP_ADAPTER_POLL_SECONDS`.
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import Any

import gradio as gr

from app.web.sanitize import plain
from feedback.store import Store, UserInfo
from training.registry import Registry, RegistryError

OPERATOR = "operator"


class OperatorError(Exception):
    """A user-facing problem with an operator action; the message says what to do."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _numbers(data: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict, as dotted keys (a report's metrics, flattened)."""
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(_numbers(value, f"{prefix}{key}."))
    elif isinstance(data, int | float) and not isinstance(data, bool):
        out[prefix.rstrip(".")] = float(data)
    return out


class OperatorService:
    """Operator actions over the store, the adapter registry and the rounds directory."""

    def __init__(self, *, store: Store, registry: Registry, rounds_dir: Path) -> None:
        self.store = store
        self.registry = registry
        self.rounds_dir = Path(rounds_dir)
        self._proc: subprocess.Popen[bytes] | None = None

    # -- who is asking -------------------------------------------------------------------
    def operator(self, name: str | None) -> UserInfo:
        """The logged-in user if an operator; anyone else is refused."""
        user = self.store.get_user(name) if name else None
        if user is None or user.role != OPERATOR or user.status != "active":
            raise OperatorError("Only operators can see and run training rounds.")
        return user

    def is_operator(self, name: str | None) -> bool:
        try:
            self.operator(name)
        except OperatorError:
            return False
        return True

    # -- reading -------------------------------------------------------------------------
    def rounds(self) -> list[dict[str, Any]]:
        """Every round's state.json, oldest first."""
        if not self.rounds_dir.is_dir():
            return []
        from training.rounds_dir import list_rounds

        return list_rounds(self.rounds_dir)

    def new_feedback(self, name: str | None) -> dict[str, int]:
        """Counts of preferences / corrections / ratings added since the last round."""
        self.operator(name)
        from training.rounds_dir import new_feedback_since_last_round

        return new_feedback_since_last_round(self.store, self.rounds_dir)

    def summary(self, name: str | None) -> str:
        """Markdown: what is served and what is new since the last round."""
        new = self.new_feedback(name)
        current = self.registry.current()
        parts = ", ".join(f"{v} {k}" for k, v in new.items()) or "nothing"
        return (
            f"**Serving:** {current or 'the bare base model'} · "
            f"**New since the last round:** {parts}"
        )

    def running(self) -> bool:
        """Whether a round holds the rounds lock, or the one started here is still starting."""
        from training.rounds_dir import lock_held

        if self._proc is not None and self._proc.poll() is None:
            return True
        return lock_held(self.rounds_dir)

    def progress(self, name: str | None) -> str:
        """Markdown: the newest round's stage, step and loss (its live state.json)."""
        self.operator(name)
        rounds = self.rounds()
        if not rounds:
            return "_Starting…_" if self.running() else "_No round has run yet._"
        s = rounds[-1]
        loss = s.get("loss")
        loss_text = f"{loss:.4f}" if isinstance(loss, int | float) else "–"
        step = f"{s.get('step') or 0}/{s.get('max_steps') or '?'}"
        line = (
            f"**Round {s.get('id')}** · status **{s.get('status')}** · stage "
            f"**{s.get('stage')}** · step {step} · loss {loss_text}"
        )
        if s.get("version"):
            line += f" · version `{s['version']}`"
        if s.get("reason"):
            line += f"\n\n{plain(str(s['reason']))}"
        return line

    def history(self, name: str | None) -> list[list[Any]]:
        """One row per round, newest first: id, status, version, key metrics, reason."""
        self.operator(name)
        table = []
        for s in reversed(self.rounds()):
            report = _read_json(self.rounds_dir / str(s.get("id")) / "report.json")
            metrics = _numbers(report.get("metrics", report))
            shown = ", ".join(f"{k}={v:.3g}" for k, v in list(metrics.items())[:8])
            table.append(
                [
                    s.get("id"),
                    s.get("status"),
                    s.get("version") or "",
                    str(s.get("started_at") or "")[:19],
                    shown,
                    s.get("reason") or "",
                ]
            )
        return table

    def round_details(self, name: str | None, round_id: str | None) -> tuple[str, list[str]]:
        """(report.md text, PNG plot paths) of one round; the newest when none is named."""
        self.operator(name)
        ids = [str(s.get("id")) for s in self.rounds()]
        if not ids:
            return "_No rounds yet._", []
        round_id = round_id or ids[-1]
        if round_id not in ids:
            raise OperatorError(f"There is no round {round_id!r}.")
        where = self.rounds_dir / round_id
        report = where / "report.md"
        text = report.read_text(encoding="utf-8") if report.is_file() else "_No report yet._"
        return text, [str(p) for p in sorted(where.glob("*.png"))]

    def versions(self, name: str | None) -> list[str]:
        self.operator(name)
        return self.registry.versions()

    def evals(self, name: str | None, version: str | None) -> str:
        """Markdown: what is recorded about a version (status, metrics, `tuneloop eval` runs)."""
        self.operator(name)
        if not version:
            return ""
        try:
            info = self.registry.info(version)
        except RegistryError as err:
            raise OperatorError(str(err)) from err
        lines = [f"**{version}** · status: {info.get('status', 'unknown')}"]
        if info.get("decision"):
            lines.append(f"gate decision: {plain(str(info['decision']))}")
        for reason in info.get("reasons") or []:
            lines.append(f"- {plain(str(reason))}")
        for key, value in _numbers(info.get("metrics", {})).items():
            lines.append(f"- {key}: {value:.4g}")
        evals = info.get("evals")
        if evals:
            lines.append("\n**Evaluations**")
            items: list[tuple[Any, Any]] = (
                list(evals.items()) if isinstance(evals, dict) else list(enumerate(evals))
            )
            for set_name, value in items:
                figures = _numbers(value)
                shown = ", ".join(f"{k}={v:.4g}" for k, v in figures.items()) or json.dumps(value)
                lines.append(f"- {set_name}: {shown}")
        return "\n".join(lines)

    # -- acting --------------------------------------------------------------------------
    def start_round(self, name: str | None) -> str:
        """Start `tuneloop train --json` in the background; refuses while one is running."""
        self.operator(name)
        if self.running():
            raise OperatorError("A round is already running; wait for it to finish.")
        from app.serving.cpu_env import untuned_environ
        from training.schedule import train_command

        log = self.rounds_dir / "operator-train.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            self._proc = subprocess.Popen(
                train_command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=untuned_environ(),  # the serving CPU setting is not for training
            )
        return f"Started a round (process {self._proc.pid}); progress appears below."

    def promote(self, name: str | None, version: str | None) -> str:
        """Serve `version` now (verified first); the running server switches by itself.

        The registry's one promotion path: a version the gate rejected or could not decide
        on is refused here, with what to do (`tuneloop promote --force`).
        """
        user = self.operator(name)
        if not version:
            raise OperatorError("Pick a version to promote.")
        try:
            self.registry.promote(version, by=user.name)
        except RegistryError as err:
            raise OperatorError(str(err)) from err
        return f"Now serving {version}."

    def rollback(self, name: str | None) -> str:
        """Serve the version that served before the current one (as `tuneloop rollback`)."""
        user = self.operator(name)
        try:
            _, target = self.registry.rollback(by=user.name)
        except RegistryError as err:
            raise OperatorError(f"Cannot roll back: {err}") from err
        return f"Rolled back: now serving {target or 'the bare base model'}."


HISTORY_HEADERS = ["round", "status", "version", "started", "metrics", "reason"]


def build_operator_tab(service: OperatorService, demo: gr.Blocks) -> gr.Tab:
    """Lay the Operator tab out inside `demo` (call within its `with`); returns the tab.

    The tab starts hidden and is shown on page load to operators only; every handler
    checks the role again on the server, so a crafted request from anyone else is refused.
    """

    def guarded(fn: Any, fallback: Any) -> Any:
        """Run a handler; an OperatorError becomes a warning and the fallback outputs."""

        @functools.wraps(fn)
        def handler(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except OperatorError as err:
                gr.Warning(str(err))
                return fallback

        return handler

    with gr.Tab("Operator", visible=False, elem_id="operator-tab") as tab:
        summary = gr.Markdown(elem_id="op-summary")
        with gr.Row():
            start = gr.Button("Start a round", variant="primary", elem_id="op-start")
            refresh = gr.Button("Refresh", elem_id="op-refresh")
        progress = gr.Markdown(elem_id="op-progress")
        notice = gr.Markdown(elem_id="op-notice")
        history = gr.Dataframe(
            headers=HISTORY_HEADERS,
            value=[],
            label="Rounds (newest first)",
            interactive=False,
            elem_id="op-history",
        )
        with gr.Row():
            round_pick = gr.Dropdown(label="Round", choices=[], elem_id="op-round", scale=1)
        report = gr.Markdown(elem_id="op-report")
        plots = gr.Gallery(label="Plots", columns=2, height=360, elem_id="op-plots")
        with gr.Row():
            version_pick = gr.Dropdown(label="Version", choices=[], elem_id="op-version", scale=3)
            promote = gr.Button("Promote", elem_id="op-promote", scale=1)
            rollback = gr.Button("Roll back", variant="stop", elem_id="op-rollback", scale=1)
        evals = gr.Markdown(elem_id="op-evals")

    def overview(request: gr.Request) -> tuple[Any, ...]:
        name = request.username
        ids = [r[0] for r in service.history(name)]
        return (
            service.summary(name),
            service.progress(name),
            service.history(name),
            gr.update(choices=ids),
            gr.update(choices=service.versions(name)),
        )

    overview_out = [summary, progress, history, round_pick, version_pick]
    no_change = tuple(gr.update() for _ in overview_out)
    refresh.click(guarded(overview, no_change), None, overview_out, api_visibility="private")
    tab.select(guarded(overview, no_change), None, overview_out, api_visibility="private")

    def tick(request: gr.Request) -> Any:
        if not service.is_operator(request.username):
            return gr.update()
        return service.progress(request.username)

    gr.Timer(2.0).tick(tick, None, progress, show_progress="hidden", api_visibility="private")

    def do_start(request: gr.Request) -> str:
        return service.start_round(request.username)

    start.click(guarded(do_start, ""), None, notice, api_visibility="private")

    def show_round(round_id: str | None, request: gr.Request) -> tuple[str, list[str]]:
        return service.round_details(request.username, round_id)

    round_pick.change(
        guarded(show_round, ("", [])), round_pick, [report, plots], api_visibility="private"
    )

    def show_version(version: str | None, request: gr.Request) -> str:
        return service.evals(request.username, version)

    version_pick.change(guarded(show_version, ""), version_pick, evals, api_visibility="private")

    def do_promote(version: str | None, request: gr.Request) -> tuple[str, str]:
        return service.promote(request.username, version), service.summary(request.username)

    promote.click(
        guarded(do_promote, ("", gr.update())),
        version_pick,
        [notice, summary],
        api_visibility="private",
    )

    def do_rollback(request: gr.Request) -> tuple[str, str]:
        return service.rollback(request.username), service.summary(request.username)

    rollback.click(
        guarded(do_rollback, ("", gr.update())), None, [notice, summary], api_visibility="private"
    )

    def visibility(request: gr.Request) -> Any:
        return gr.update(visible=service.is_operator(request.username))

    demo.load(visibility, None, tab, api_visibility="private")
    return tab
