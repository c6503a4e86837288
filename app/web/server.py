"""Serving the page: the Gradio app started with login enforced (app/web/login.py), the
routes of the OpenAI-compatible API beside it, and the note the login page shows."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import gradio as gr

from app.serving.chat import ChatService
from app.web.login import ClientAddress, LoginGate
from app.web.ui import build_ui


def auth_message(argilla_address: str, max_failures: int, lockout_minutes: float) -> str:
    """The login page's note (HTML): who logs in here, where annotators go, the lockout."""
    address = html.escape(argilla_address)
    return (
        "Log in with your tuneloop account (experts and operators). Annotators rank pairs "
        f'in Argilla instead: <a href="{address}">{address}</a>. After {max_failures} '
        f"failed attempts a name is locked for {lockout_minutes:g} minutes; your operator "
        "can lift it sooner."
    )


def launch(
    service: ChatService,
    *,
    rounds_dir: Path,
    gate: LoginGate,
    login_note: str,
    host: str = "127.0.0.1",
    port: int = 7860,
    block: bool = True,
    routes: list[Any] | None = None,
    remote_content: bool = False,
) -> gr.Blocks:
    """Serve the app with login enforced by `gate`; returns the running Blocks.

    `routes` (e.g. the OpenAI-compatible API's) are served by the same web app, ahead of
    Gradio's own; they do their own authentication.
    """
    from starlette.middleware import Middleware

    demo = build_ui(service, rounds_dir, remote_content=remote_content)
    demo.queue(default_concurrency_limit=16)
    demo.launch(
        server_name=host,
        server_port=port,
        auth=gate.check,  # type: ignore[arg-type]  # Gradio awaits a coroutine function
        auth_message=login_note,
        app_kwargs={
            "middleware": [Middleware(ClientAddress)],
            **({"routes": list(routes)} if routes else {}),
        },
        ssr_mode=False,
        prevent_thread_lock=not block,
        show_error=True,
        quiet=False,
    )
    return demo
