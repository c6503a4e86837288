"""`tuneloop argilla up|down|status|sync` and `tuneloop pairs generate` (registered by cli.py).

Also the Argilla glue the other commands use: which Argilla is configured (`target`), the
background sync of `serve`, annotator creation for `users add`, and the status figures.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli.common import JsonOpt, chat_sampling, emit, open_settings, open_store
from app.config import Settings

argilla_app = typer.Typer(
    help="Argilla: the local stack, and syncing pairs out / rankings back.", no_args_is_help=True
)
pairs_app = typer.Typer(help="Response pairs for annotators to rank.", no_args_is_help=True)
log = logging.getLogger("tuneloop.argilla")


class ArgillaConfigError(Exception):
    """Argilla is not set up the way a command needs; the message says what to do."""


def local_stack(settings: Settings) -> Any:
    """The local Argilla stack under HOME/argilla."""
    from feedback.argilla.stack import LocalStack

    return LocalStack(
        home=settings.home.resolve(),
        venv=settings.argilla_venv,
        port=settings.argilla_port,
        workspace=settings.argilla_workspace,
    )


def _guidelines(settings: Settings) -> str:
    path = settings.data_dir / "guidelines.md"
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def target(settings: Settings) -> Any | None:
    """The Argilla in use: TUNELOOP_ARGILLA_URL, else the local stack once it was set up."""
    from feedback.argilla.dataset import Target
    from feedback.argilla.stack import Credentials

    if settings.argilla_url:
        if not settings.argilla_api_key:
            raise ArgillaConfigError(
                "TUNELOOP_ARGILLA_URL is set but TUNELOOP_ARGILLA_API_KEY is not; "
                "set it to an owner's API key (Argilla UI: My settings)"
            )
        creds = Credentials(
            settings.argilla_url.rstrip("/"), settings.argilla_api_key.get_secret_value()
        )
    else:
        creds = local_stack(settings).credentials()
        if creds is None:
            return None
    return Target(
        credentials=creds,
        workspace=settings.argilla_workspace,
        dataset=settings.argilla_dataset,
        min_submitted=settings.argilla_min_submitted,
        min_agreement=settings.argilla_min_agreement,
        guidelines=_guidelines(settings),
        timeout=settings.argilla_timeout_seconds,
        pii_region=settings.pii_region,
    )


def _refuse_external(settings: Settings, verb: str) -> None:
    if settings.argilla_url:
        raise ArgillaConfigError(
            f"TUNELOOP_ARGILLA_URL is set ({settings.argilla_url}): tuneloop does not {verb} "
            "a team's own Argilla; unset it to use the local stack"
        )


def sync_once(settings: Settings, store: Any) -> dict[str, Any]:
    """Queue undecided compares, push pending pairs, pull responses; one report."""
    from feedback.argilla.outbox import queue_undecided_comparisons
    from feedback.argilla.sync import sync

    found = target(settings)
    if found is None:
        raise ArgillaConfigError(
            "Argilla is not set up: run `tuneloop argilla up` (local) or set "
            "TUNELOOP_ARGILLA_URL and TUNELOOP_ARGILLA_API_KEY"
        )
    queued = queue_undecided_comparisons(store)
    report = sync(store, found).as_dict()
    return {"queued_compares": queued, **report}


def add_annotator(settings: Settings, name: str, password: str) -> str:
    """Create the annotator in Argilla too; returns a line telling how they log in."""
    from feedback.argilla.dataset import connect, ensure_annotator

    found = target(settings)
    if found is None:
        return (
            "Argilla is not set up yet: after `tuneloop argilla up`, run this command again "
            "with a new name, or create the user in Argilla's UI."
        )
    if len(password) < 8:
        return "Not created in Argilla: Argilla needs a password of at least 8 characters."
    try:
        created = ensure_annotator(connect(found), found, name, password)
    except Exception as err:  # Argilla down: our account exists, say how to finish
        return f"Not created in Argilla ({err}); start it and run this command again."
    what = "created" if created else "already existed"
    return (
        f"Argilla account {what}: log in at {found.credentials.url} as '{name}' with the "
        f"same password; the pairs are in workspace '{found.workspace}'."
    )


def status_payload(settings: Settings, store: Any) -> dict[str, Any]:
    """Outbox counts and agreement figures for `tuneloop status`."""
    from feedback.argilla.sync import agreement

    note: str | None
    try:
        found = target(settings)
    except ArgillaConfigError as err:
        found, note = None, str(err)
    else:
        note = None if found else "not set up (run `tuneloop argilla up`)"
    return {
        "url": found.credentials.url if found else None,
        "note": note,
        "outbox": store.outbox_counts(),
        "agreement": agreement(store),
    }


def start_background_sync(settings: Settings, store: Any, engine: Any = None) -> Any:
    """Sync every TUNELOOP_ARGILLA_SYNC_SECONDS in a daemon thread (None: not configured)."""
    if settings.argilla_sync_seconds <= 0:
        return None
    try:
        if target(settings) is None:
            return None
    except ArgillaConfigError:
        return None
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(settings.argilla_sync_seconds):
            try:
                if engine is not None:
                    pair_thumbs_down(settings, store, engine, limit=5)
                sync_once(settings, store)
            except Exception as err:  # Argilla away: the outbox keeps everything queued
                log.warning("background Argilla sync failed: %s", err)

    thread = threading.Thread(target=loop, name="argilla-sync", daemon=True)
    thread.start()
    return stop


# Pairs -------------------------------------------------------------------------------


def _engine(settings: Settings) -> Any:
    from app.serving.engine import ChatEngine
    from app.serving.modelfiles import resolve_model_dir
    from training.registry import Registry

    model_dir = resolve_model_dir(settings.model, settings.models_dir, progress=True)
    engine = ChatEngine(
        model_dir,
        Registry(settings.adapters_dir),
        system_prompt=settings.system_prompt(),
        context_tokens=settings.context_tokens,
        load_in_4bit=settings.load_in_4bit,
        bf16=settings.infer_bf16,
        poll_seconds=settings.adapter_poll_seconds,
    )
    engine.start()
    return engine


def pair_thumbs_down(settings: Settings, store: Any, engine: Any, *, limit: int) -> int:
    """Pair each 👎 reply with a fresh sample of the model now serving; returns pairs queued."""
    from feedback.argilla.outbox import queue_pair, thumbs_down_to_pair
    from feedback.errors import FeedbackError

    queued = 0
    for item in thumbs_down_to_pair(store, limit=limit):
        history = [m for m in item["prompt"] if m["role"] != "system"]
        fresh = engine.generate(
            history, chat_sampling(settings, temperature=settings.compare_temperature)
        )
        try:
            queue_pair(
                store,
                source="thumbs-down",
                prompt=item["prompt"],
                first=item["content"],
                second=fresh.text,
                first_response_id=item["response_id"],
                metadata={
                    "model": item["model"],
                    "adapter_first": item["adapter_version"] or "base",
                    "adapter_second": fresh.adapter_version or "base",
                    "conversation_id": item["conversation_id"],
                },
            )
            queued += 1
        except FeedbackError:
            continue
    return queued


@pairs_app.command("generate")
def pairs_generate(
    prompts: Annotated[Path, typer.Option("--prompts", help=".jsonl or one prompt a line.")],
    n: Annotated[int | None, typer.Option("--n", help="Use the first N prompts only.")] = None,
    adapters: Annotated[
        str | None,
        typer.Option(
            "--adapters",
            help="CURRENT (two samples of one adapter) or two of CURRENT, base, VERSION.",
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--from", help="With --best-of: the adapter sampled (CURRENT, base, VERSION)."
        ),
    ] = None,
    best_of: Annotated[
        int | None,
        typer.Option(
            "--best-of",
            help="Sample N replies per prompt, queue the best and worst by the scorers.",
        ),
    ] = None,
    scorer: Annotated[
        str | None,
        typer.Option("--scorer", help="With --best-of: scorers (default TUNELOOP_EVAL_SCORER)."),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="With --best-of: 'argilla' (annotators rank, the default) or 'round' (the "
            "scorers' pick is the label: stored as best-of pairs the next round trains on).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Sample two replies per prompt and queue them for ranking (never waits on Argilla);
    with --best-of N, N replies of one adapter, the best and worst by the scorers paired."""
    from feedback.argilla.outbox import queue_pair
    from feedback.errors import FeedbackError

    settings = open_settings()
    store = open_store(settings)
    if best_of is not None:
        from app.cli.pairs import best_of_pairs

        if adapters is not None:
            raise ArgillaConfigError("--best-of samples one adapter: name it with --from")
        payload, text = best_of_pairs(
            settings, store, prompts=prompts, limit=n, source=source or "CURRENT", n=best_of,
            scorer=scorer, to=to or "argilla",
        )  # fmt: skip
        emit(as_json, payload, text)
        return
    if source is not None or scorer is not None or to is not None:
        raise ArgillaConfigError("--from, --scorer and --to go with --best-of N")
    names = [a.strip() for a in (adapters or "CURRENT").split(",") if a.strip()]
    if not 1 <= len(names) <= 2:
        raise ArgillaConfigError("--adapters takes one or two names, e.g. CURRENT,v0003")
    picked = [None if a == "base" else a for a in names]
    from app.cli.pairs import read_prompts

    rows = read_prompts(prompts)[: n if n else None]
    engine = _engine(settings)
    queued = same = 0
    try:
        for history in rows:
            if len(picked) == 2:
                replies = [engine.generate(history, chat_sampling(settings),
                                           adapter=a) for a in picked]  # fmt: skip
            else:
                replies = [
                    engine.generate(
                        history, chat_sampling(settings, temperature=t), adapter=picked[0]
                    )
                    for t in (settings.temperature, settings.compare_temperature)
                ]
            first, second = replies
            try:
                result = queue_pair(
                    store,
                    source="generated",
                    prompt=first.prompt,
                    first=first.text,
                    second=second.text,
                    metadata={
                        "model": first.model_name,
                        "adapter_first": first.adapter_version or "base",
                        "adapter_second": second.adapter_version or "base",
                    },
                )
                queued += result.created
            except FeedbackError:
                same += 1
    finally:
        engine.close()
    payload = {"prompts": len(rows), "queued": queued, "skipped_identical": same}
    text = (
        f"Queued {queued} pairs from {len(rows)} prompts ({same} skipped: identical "
        "replies). Push them with `tuneloop argilla sync`."
    )
    emit(as_json, payload, text)


# Argilla -----------------------------------------------------------------------------


@argilla_app.command("up")
def argilla_up(as_json: JsonOpt = False) -> None:
    """Start the local Argilla stack (idempotent) and wait until it is healthy."""
    settings = open_settings()
    _refuse_external(settings, "start")
    payload = local_stack(settings).up()
    creds = local_stack(settings).credentials()
    emit(as_json, payload, f"Argilla is up at {payload['url']} (owner '{creds.username}', "
         f"password in {local_stack(settings).credentials_file}).")  # fmt: skip


@argilla_app.command("down")
def argilla_down(as_json: JsonOpt = False) -> None:
    """Stop exactly the processes `up` started; the data stays under HOME/argilla."""
    settings = open_settings()
    _refuse_external(settings, "stop")
    stopped = local_stack(settings).down()
    emit(as_json, {"stopped": stopped}, f"Stopped: {', '.join(stopped) or 'nothing was running'}.")


@argilla_app.command("status")
def argilla_status(as_json: JsonOpt = False) -> None:
    """Which Argilla is in use; for the local stack, its processes, health and memory."""
    settings = open_settings()
    if settings.argilla_url:
        payload: dict[str, Any] = {"managed": "external", "url": settings.argilla_url}
        text = f"Using a team's own Argilla at {settings.argilla_url}."
    else:
        payload = local_stack(settings).status()
        state = "healthy" if payload["healthy"] else ("running" if payload["running"] else "down")
        text = f"Local Argilla at {payload['url']}: {state}, {payload['memory_mb']} MB."
    emit(as_json, payload, text)


@argilla_app.command("sync")
def argilla_sync(as_json: JsonOpt = False) -> None:
    """Push queued pairs and pull new responses (incremental; safe to repeat)."""
    settings = open_settings()
    report = sync_once(settings, open_store(settings))
    text = (
        f"Pushed {report['pushed']} pairs ({report['push_failed']} failed, kept queued); "
        f"pulled {report['pulled']} responses; {report['decided']} pairs decided; "
        f"{report['skipped_total']} items skipped (see the log)."
    )
    emit(as_json, report, text)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main `tuneloop` app."""
    app.add_typer(argilla_app, name="argilla")
    app.add_typer(pairs_app, name="pairs")
