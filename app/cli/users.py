"""`tuneloop users ...`: accounts, passwords, lockouts and API keys."""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated, Any

import typer

from app.cli.common import JsonOpt
from app.cli.common import emit as _emit
from app.cli.common import open_settings as _settings
from app.cli.common import open_store as _store
from feedback.auth.logins import name_key

users_app = typer.Typer(
    help="Accounts for experts, annotators and operators.", no_args_is_help=True
)


class Role(StrEnum):
    expert = "expert"
    annotator = "annotator"
    operator = "operator"


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
        from app.cli.argilla import add_annotator

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
    from feedback.auth.logins import LoginGuard, LoginPolicy

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


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")
