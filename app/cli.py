"""`tuneloop`: the one console command. Thin: each command builds Settings and calls down.

Domain errors become a one-line message and exit code 1; `TUNELOOP_DEBUG=1` shows the
traceback instead. Every command that reports takes `--json` and then prints one object.
"""

from __future__ import annotations

import os
import secrets
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli_common import JsonOpt
from app.cli_common import emit as _emit
from app.cli_common import open_settings as _settings
from app.cli_common import open_store as _store
from app.config import Settings
from feedback.atomic_write import write_atomic
from feedback.logins import name_key

app = typer.Typer(
    name="tuneloop",
    help="Self-hosted chat assistant that gets better from its own experts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
users_app = typer.Typer(
    help="Accounts for experts, annotators and operators.", no_args_is_help=True
)
app.add_typer(users_app, name="users")


class Role(StrEnum):
    expert = "expert"
    annotator = "annotator"
    operator = "operator"


class ImportFormat(StrEnum):
    auto = "auto"
    trl = "trl"
    hh = "hh"
    messages = "messages"


class ExportKind(StrEnum):
    sft = "sft"
    dpo = "dpo"
    kto = "kto"


class Split(StrEnum):
    train = "train"
    heldout = "heldout"
    all = "all"


def _model_label(settings: Settings) -> str:
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


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
) -> None:
    """Serve the chat app: the base model plus the adapter CURRENT names, streaming."""
    from app.cpu_env import tune_cpu_threads

    tune_cpu_threads()  # before anything loads torch
    from app.chat import ChatService, UsableVersions
    from app.modelfiles import resolve_model_dir
    from app.serving import ChatEngine, SamplingParams
    from app.ui import launch
    from app.vllm_engine import check_backend
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
        from app.vllm_engine import VllmEngine

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
        params=SamplingParams(
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
        ),
        compare_temperature=settings.compare_temperature,
        max_message_chars=settings.max_message_chars,
        versions=UsableVersions(registry),  # a corrupted version is not offered
        argilla_address=settings.argilla_address,
        max_reason_chars=settings.max_reason_chars,
    )
    from app.cli_argilla import start_background_sync
    from app.login import LoginGate, policy_from
    from app.ui import auth_message
    from feedback.models import ROLES

    sync_stop = start_background_sync(settings, store, engine)
    if sync_stop is None:
        typer.echo(
            "note: Argilla is not set up or not syncing; pairs stay queued "
            "(run `tuneloop argilla up`, or set TUNELOOP_ARGILLA_URL).",
            err=True,
        )
    from app.api import OpenAIApi, api_routes

    api = OpenAIApi(service, versions=registry.versions, max_active=settings.api_max_active)
    try:
        # Annotators may log in, to be told where their work is; every action refuses them.
        gate = LoginGate(store, policy_from(settings), allowed_roles=ROLES)
        note = auth_message(
            settings.argilla_address, settings.login_max_failures, settings.login_lockout_minutes
        )
        launch(service, gate=gate, login_note=note, host=host, port=port, routes=api_routes(api))
    finally:
        if sync_stop is not None:
            sync_stop.set()
        engine.close()


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="Login name.")],
    role: Annotated[Role, typer.Option("--role", help="expert | annotator | operator")],
    as_json: JsonOpt = False,
) -> None:
    """Add an account; the password is read from stdin or prompted for (never an argument)."""
    settings = _settings()
    store = _store(settings)
    password = _read_password()
    user = store.add_user(
        name=name, role=role.value, password=password, min_length=settings.min_password_length
    )
    payload: dict[str, Any] = {"id": user.id, "name": user.name, "role": user.role}
    how = "log in to the chat app" if user.role != "annotator" else "rank pairs in Argilla"
    text = f"Added {user.role} '{user.name}': they can now {how}."
    if user.role == "annotator":
        from app.cli_argilla import add_annotator

        payload["argilla"] = add_annotator(settings, user.name, password)
        text += "\n" + payload["argilla"]
    _emit(as_json, payload, text)


@users_app.command("list")
def users_list(
    removed: Annotated[bool, typer.Option("--removed", help="Show removed accounts too.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List accounts, their roles and status (and any name locked by failed logins)."""
    store = _store(_settings())
    users = store.list_users(include_removed=removed)
    locked = {key: until for key, _, until in store.locked_logins()}
    rows = [
        {
            "id": u.id,
            "name": u.name,
            "role": u.role,
            "status": u.status,
            "created_at": u.created_at,
            "locked_until": locked.get(name_key(u.name)),
        }
        for u in users
    ]
    lines = []
    for r in rows:
        until = r["locked_until"]
        lock = f" (locked until {until:%Y-%m-%d %H:%M} UTC)" if until else ""
        lines.append(f"{r['name']:<24} {r['role']:<10} {r['status']}{lock}")
    text = "\n".join(lines) or "No users yet."
    _emit(as_json, {"users": rows}, text)


@users_app.command("passwd")
def users_passwd(
    name: Annotated[str, typer.Argument(help="Login name.")], as_json: JsonOpt = False
) -> None:
    """Set a new password for NAME, read from stdin or prompted for (never an argument).

    Only tuneloop's own login changes: an annotator's Argilla password is changed in Argilla.
    """
    settings = _settings()
    store = _store(settings)
    password = _read_password()
    user = store.set_password(name=name, password=password, min_length=settings.min_password_length)
    _emit(as_json, {"name": user.name, "changed": True}, f"New password set for '{user.name}'.")


def _set_status(name: str, status: str, as_json: bool, done: str) -> None:
    user = _store(_settings()).set_user_status(name=name, status=status)
    _emit(as_json, {"name": user.name, "status": user.status}, f"'{user.name}' {done}.")


@users_app.command("disable")
def users_disable(
    name: Annotated[str, typer.Argument(help="Login name.")], as_json: JsonOpt = False
) -> None:
    """Stop NAME from logging in (and from acting in a session already open) until enabled."""
    _set_status(name, "disabled", as_json, "is disabled: no login until `users enable`")


@users_app.command("enable")
def users_enable(
    name: Annotated[str, typer.Argument(help="Login name.")], as_json: JsonOpt = False
) -> None:
    """Let a disabled NAME log in again."""
    _set_status(name, "active", as_json, "is enabled")


@users_app.command("remove")
def users_remove(
    name: Annotated[str, typer.Argument(help="Login name.")], as_json: JsonOpt = False
) -> None:
    """Remove NAME for good: no login ever again; their feedback stays, attributed to them."""
    _set_status(name, "removed", as_json, "is removed; their feedback stays, attributed")


@users_app.command("unlock")
def users_unlock(
    name: Annotated[str | None, typer.Argument(help="Login name to unlock.")] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="A client address to unlock instead.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Lift the lockout that failed logins put on NAME (or on a client --address)."""
    from feedback.logins import LoginGuard, LoginPolicy

    if not name and not address:
        raise typer.BadParameter("give a NAME or --address")
    found = LoginGuard(_store(_settings()), LoginPolicy()).unlock(name=name, address=address)
    what = " and ".join(x for x in (name and f"'{name}'", address and f"address {address}") if x)
    text = f"Unlocked {what}." if found else f"Nothing to unlock: no failed logins for {what}."
    _emit(as_json, {"name": name, "address": address, "unlocked": bool(found)}, text)


@users_app.command("key")
def users_key(
    name: Annotated[str, typer.Argument(help="The account the key acts as.")],
    revoke: Annotated[
        bool, typer.Option("--revoke", help="Revoke the user's key instead of issuing one.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Issue an API key for the OpenAI-compatible API (shown once; replaces any older key)."""
    store = _store(_settings())
    if revoke:
        n = store.revoke_api_keys(name=name)
        text = f"Revoked {n} API key(s) of '{name}'." if n else f"'{name}' had no live API key."
        _emit(as_json, {"name": name, "revoked": n}, text)
        return
    user, key = store.issue_api_key(name=name)
    note = (
        "annotators get 403 from the API (they rank in Argilla)"
        if user.role == "annotator"
        else "use it as the OpenAI API key with base URL http://HOST:PORT/v1"
    )
    text = f"API key for '{user.name}' ({user.role}); it is shown only this once:\n{key}\n({note})"
    _emit(as_json, {"name": user.name, "role": user.role, "api_key": key}, text)


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="A JSONL file of preferences or conversations.")],
    fmt: Annotated[
        ImportFormat, typer.Option("--format", help="auto | trl | hh | messages")
    ] = ImportFormat.auto,
    as_json: JsonOpt = False,
) -> None:
    """Import preference pairs (TRL, Anthropic HH) or SFT conversations, all or nothing."""
    from feedback.formats import import_file

    result = import_file(_store(_settings()), file, fmt.value)
    payload = {"format": result.format, "added": result.added, "duplicates": result.duplicates}
    text = (
        f"Imported {result.added} rows from {file} ({result.format}); "
        f"{result.duplicates} duplicates skipped."
    )
    _emit(as_json, payload, text)


@app.command("export")
def export(
    kind: Annotated[
        ExportKind,
        typer.Argument(
            help="sft: conversations; dpo: preference pairs; kto: unpaired 👍/👎 replies."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output JSONL file.")],
    split: Annotated[Split, typer.Option("--split", help="train | heldout | all")] = Split.all,
    raw: Annotated[
        bool,
        typer.Option(
            "--raw",
            help="Keep emails, phone numbers, card/account numbers and names as stored "
            "(default: scrubbed, as for training and Argilla).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Export training data in TRL's conversational format, PII scrubbed unless --raw."""
    from feedback.formats import export as export_rows
    from training.datasets import read_seed_rows

    settings = _settings()
    store = _store(settings)
    plan = None
    if split.value != "all":  # the round's split: the domain's seed examples count too
        seeds = read_seed_rows(settings.data_dir / "seed_sft.jsonl")
        plan = store.heldout_split(min_items=settings.heldout_min_items, extra=seeds)
    n = export_rows(
        store, kind.value, out, split.value, plan, raw=raw, pii_region=settings.pii_region
    )
    payload = {
        "kind": kind.value,
        "split": split.value,
        "rows": n,
        "out": str(out),
        "pii": "raw" if raw else "scrubbed",
    }
    text = f"Wrote {n} {kind.value} rows ({split.value}, PII {payload['pii']}) to {out}."
    _emit(as_json, payload, text)


@app.command("init")
def init(
    folder: Annotated[Path, typer.Argument(help="The domain folder to create.")],
    as_json: JsonOpt = False,
) -> None:
    """Write a domain folder skeleton: system_prompt.md, a README, inactive *.example files.

    Refuses, writing nothing, if any of those files is already there. Point
    TUNELOOP_DATA_DIR at the folder to use it.
    """
    from training.domain import write_skeleton

    written = write_skeleton(folder)
    payload = {"folder": str(folder), "files": [p.name for p in written]}
    text = (
        f"Wrote {len(written)} files to {folder}: {', '.join(payload['files'])}.\n"
        f"Edit system_prompt.md, then: export TUNELOOP_DATA_DIR={folder}"
    )
    _emit(as_json, payload, text)


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """Model, serving adapter version, and counts of what experts have given."""
    from app.cli_argilla import status_payload
    from training.registry import Registry

    settings = _settings()
    store = _store(settings)
    counts = store.counts()
    registry = Registry(settings.adapters_dir)
    named, version, problem = _serving(registry)
    from training.round import list_rounds  # issue 4: the serving version's metrics, last round

    rounds = list_rounds(settings.home / "rounds")
    payload = {
        "model": _model_label(settings),
        "adapter": version,
        "adapter_named": named,
        "adapter_problem": problem,
        "home": str(settings.home.resolve()),
        "database": settings.database_shown,
        "counts": counts,
        "adapter_metrics": registry.info(version).get("metrics") if version else None,
        "last_round": rounds[-1] if rounds else None,
        "argilla": status_payload(settings, store),
    }
    by_source = counts.get("preferences_by_source", {})
    lines = [
        f"model:          {payload['model']}",
        f"adapter:        {version or 'none (bare base model)'}"
        + (f" (CURRENT names {named!r}, but {problem}; serve falls back)" if problem else ""),
        f"conversations:  {counts.get('conversations', 0)}",
        f"ratings:        {counts.get('ratings_up', 0)} up, {counts.get('ratings_down', 0)} down",
        f"corrections:    {counts.get('corrections', 0)}",
        "preferences:    "
        + (", ".join(f"{k} {v}" for k, v in sorted(by_source.items())) or "none"),
        _argilla_line(payload["argilla"]),
    ]
    if rounds:
        last = rounds[-1]
        lines.append(f"last round:     {last['id']} {last.get('status')} ({last.get('stage')})")
    _emit(as_json, payload, "\n".join(lines))


def _serving(registry: Any) -> tuple[str | None, str | None, str | None]:
    """(what CURRENT names, what `serve` really serves, why they differ): a version whose
    files fail their checksums, or a pointer that names nothing valid, is not served."""
    from training.registry import RegistryError

    try:
        named = registry.current()
    except (RegistryError, OSError) as err:
        return None, None, f"CURRENT cannot be read ({err})"
    if named is None:
        return None, None, None
    try:
        registry.verify(named)
    except (RegistryError, OSError) as err:
        return named, None, str(err)
    return named, named, None


def _argilla_line(argilla: dict[str, Any]) -> str:
    agreement = argilla["agreement"]
    alpha = agreement["alpha"]
    return (
        f"argilla:        {argilla['url'] or argilla['note']}; pairs {argilla['outbox']}; "
        f"agreement {agreement['percent_agreement']}, alpha "
        f"{'n/a' if alpha is None else round(alpha, 3)}, "
        f"{agreement['flagged_records']} flagged"
    )


# Command groups that live in their own modules (one module per part of the loop).
for _module in ("app.cli_argilla", "app.cli_training", "app.cli_eval"):
    __import__(_module, fromlist=["register"]).register(app)


def _is_ours(err: BaseException) -> bool:
    """Errors defined by tuneloop's own packages are user-facing; anything else is a bug."""
    return type(err).__module__.split(".")[0] in {"app", "feedback", "training"}


def _error_message(err: BaseException) -> tuple[str, bool]:
    """(one-line message, whether it is a known, user-facing error)."""
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        first = err.errors()[0]
        name = "TUNELOOP_" + str(first["loc"][0]).upper() if first["loc"] else "a setting"
        return f"invalid {name}: {first['msg']}", True
    if isinstance(err, OSError) and err.filename is not None:
        # a path problem: say which path and what is wrong, not a traceback
        what = err.strerror or type(err).__name__
        return f"{err.filename}: {what}", True
    if _is_ours(err):
        return str(err), True
    return f"{type(err).__name__}: {err}", False


def _run() -> int:
    """Run the typer app; the exit code, with every error turned into one line."""
    from typer.exceptions import TyperException

    try:
        result = app(standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.Exit as exit_:
        return exit_.exit_code
    except typer.Abort:
        return _fail("aborted", code=1)
    except TyperException as err:  # bad arguments or options (typer's own click)
        return _fail(err.format_message(), code=err.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", code=130)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except Exception as err:
        if os.environ.get("TUNELOOP_DEBUG"):
            raise
        message, known = _error_message(err)
        return _fail(message, code=1, hint=not known)


def _fail(message: str, *, code: int, hint: bool = False) -> int:
    line = message.strip().splitlines()[0] if message.strip() else "failed"
    typer.echo(f"error: {line}", err=True)
    if hint:
        typer.echo("(set TUNELOOP_DEBUG=1 to see the traceback)", err=True)
    if _JSON_MODE[0]:
        from app.cli_common import write_json

        write_json({"error": line, "exit_code": code})
    return code


# Whether this run was asked for --json (then a failure is a JSON object on stdout too).
_JSON_MODE = [False]


def main() -> None:
    """Console entry point: run the typer app, turning errors into one line and an exit code.

    With --json, stdout carries exactly one JSON object, for success and failure alike;
    everything else anything prints meanwhile goes to stderr.
    """
    from app.cli_common import json_stdout

    # Everything tuneloop creates (the store, models, adapters, logs, Argilla's database and
    # the processes it starts) is private to the account that runs it: 0700 / 0600.
    os.umask(0o077)
    _JSON_MODE[0] = "--json" in sys.argv[1:]
    if not _JSON_MODE[0]:
        raise SystemExit(_run())
    with json_stdout():
        code = _run()
    raise SystemExit(code)


if __name__ == "__main__":
    main()
