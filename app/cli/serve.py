"""`tuneloop serve`: the chat page and the OpenAI-compatible API on one port."""

from __future__ import annotations

import os
import secrets
from typing import Annotated, Any

import typer

from app.cli.common import chat_sampling
from app.cli.common import open_settings as _settings
from app.cli.common import open_store as _store
from app.config import Settings
from feedback.atomic_write import write_atomic


def model_label(settings: Settings) -> str:
    """How output names the base model: its directory, or the embedded SmolLM2."""
    return settings.model or "SmolLM2-135M-Instruct (embedded)"


def _first_admin(store: Any, settings: Settings) -> None:
    """On a fresh home, make an operator account so the first person can log in at all."""
    if any(u.role in ("expert", "operator") for u in store.list_users()):
        return
    password = secrets.token_urlsafe(12)
    store.add_user(name="admin", role="operator", password=password)
    path = settings.home / "admin-password"
    write_atomic(path, password + "\n")  # owner-only from the start
    typer.echo(
        f"Created the first account: user 'admin' (operator), password {password}\n"
        f"(also saved in {path}). Add experts with: tuneloop users add NAME --role expert",
        err=True,
    )


def trust_proxies(settings: Settings) -> None:
    """Honour X-Forwarded-For only from the proxies the operator listed.

    uvicorn, under Gradio, replaces the client address with the header's for the peers in
    `FORWARDED_ALLOW_IPS`, and trusts 127.0.0.1 when it is unset: any local client could then
    pose as any address and slip past the per-address login limit. Set before the server
    starts, from `TUNELOOP_TRUSTED_PROXIES` (empty: trust no one).
    """
    proxies = [p.strip() for p in settings.trusted_proxies.split(",") if p.strip()]
    os.environ["FORWARDED_ALLOW_IPS"] = ",".join(proxies)


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
) -> None:
    """Serve the chat app: the base model plus the adapter CURRENT names, streaming."""
    from app.serving.cpu_env import tune_cpu_threads

    tune_cpu_threads()  # before anything loads torch
    from app.serving.adapters import UsableVersions
    from app.serving.chat import ChatService
    from app.serving.engine import ChatEngine
    from app.serving.modelfiles import resolve_model_dir
    from app.serving.vllm_engine import check_backend
    from app.web.server import launch
    from training.registry import Registry

    settings = _settings()
    check_backend(settings.backend)  # before anything heavy loads
    store = _store(settings)
    _first_admin(store, settings)
    model_dir = resolve_model_dir(settings.model, settings.models_dir, progress=True)
    registry = Registry(settings.adapters_dir)
    common: dict[str, Any] = {
        "system_prompt": settings.system_prompt(),
        "context_tokens": settings.context_tokens,
        "poll_seconds": settings.adapter_poll_seconds,
    }
    engine: Any
    if settings.backend == "vllm":
        from app.serving.vllm_engine import VllmEngine

        engine = VllmEngine(
            model_dir,
            registry,
            max_loras=settings.vllm_max_loras,
            max_lora_rank=settings.vllm_max_lora_rank,
            gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
            **common,
        )
    else:
        engine = ChatEngine(
            model_dir,
            registry,
            load_in_4bit=settings.load_in_4bit,
            bf16=settings.infer_bf16,
            max_batch=settings.max_batch,
            model_nice=settings.model_nice,
            **common,
        )
    engine.start()
    service = ChatService(
        engine=engine,
        store=store,
        params=chat_sampling(settings),
        compare_temperature=settings.compare_temperature,
        max_message_chars=settings.max_message_chars,
        versions=UsableVersions(registry),  # a corrupted version is not offered
        argilla_address=settings.argilla_address,
        max_reason_chars=settings.max_reason_chars,
    )
    from app.cli.argilla import start_background_sync
    from app.cli.openwebui import start_background_sync as start_openwebui_sync
    from app.web.login import LoginGate, policy_from
    from app.web.server import auth_message
    from feedback.models import ROLES

    openwebui_stop = start_openwebui_sync(settings, store)
    sync_stop = start_background_sync(settings, store, engine)
    if sync_stop is None:
        typer.echo(
            "note: Argilla is not set up or not syncing; pairs stay queued "
            "(run `tuneloop argilla up`, or set TUNELOOP_ARGILLA_URL).",
            err=True,
        )
    from app.serving.api import OpenAIApi
    from app.serving.api_routes import api_routes

    api = OpenAIApi(
        service,
        versions=registry.versions,
        max_active=settings.api_max_active,
        trusted_frontends=settings.trusted_frontend_names,
        helper_max_tokens=settings.helper_max_tokens,
        quick_helpers=settings.helper_answers == "quick",
        wait_seconds=settings.api_wait_seconds,
        max_body_bytes=settings.api_max_body_bytes,
    )
    from app.serving.health import FILE_NAME, keep_health_file

    health_stop = keep_health_file(settings.home / FILE_NAME, api.serving)
    try:
        # Annotators may log in, to be told where their work is; every action refuses them.
        gate = LoginGate(
            store,
            policy_from(settings),
            allowed_roles=ROLES,
            max_pending_per_address=settings.login_max_pending_per_address,
            max_waiting=settings.login_max_waiting,
        )
        trust_proxies(settings)
        note = auth_message(
            settings.argilla_address, settings.login_max_failures, settings.login_lockout_minutes
        )
        launch(
            service,
            rounds_dir=settings.rounds_dir,
            gate=gate,
            login_note=note,
            host=host,
            port=port,
            routes=api_routes(api),
            remote_content=settings.page_remote_content,
        )
    finally:
        for stop in (health_stop, sync_stop, openwebui_stop):
            if stop is not None:
                stop.set()
        engine.close()


def register(app: typer.Typer) -> None:
    app.command()(serve)
