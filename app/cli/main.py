"""`tuneloop`: the one console command. Thin: each command builds Settings and calls down.

Domain errors become a one-line message and exit code 1; `TUNELOOP_DEBUG=1` shows the
traceback instead. Every command that reports takes `--json` and then prints one object.
"""

from __future__ import annotations

import os
import sys

import typer

from app.cli import argilla, data, eval, openwebui, serve, training, users

app = typer.Typer(
    name="tuneloop",
    help="Self-hosted chat assistant that gets better from its own experts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# One module per part of the loop; the order here is the order of `tuneloop --help`.
for _group in (serve, users, data, argilla, openwebui, training, eval):
    _group.register(app)


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
        from app.cli.common import write_json

        write_json({"error": line, "exit_code": code})
    return code


# Whether this run was asked for --json (then a failure is a JSON object on stdout too).
_JSON_MODE = [False]


def main() -> None:
    """Console entry point: run the typer app, turning errors into one line and an exit code.

    With --json, stdout carries exactly one JSON object, for success and failure alike;
    everything else anything prints meanwhile goes to stderr.
    """
    from app.cli.common import json_stdout

    # Everything tuneloop creates (the store, models, adapters, logs, Argilla's database and
    # the processes it starts) is private to the account that runs it: 0700 / 0600.
    os.umask(0o077)
    from app import logs

    logs.SHOW_TRACEBACKS[0] = bool(os.environ.get("TUNELOOP_DEBUG"))
    _JSON_MODE[0] = "--json" in sys.argv[1:]
    if not _JSON_MODE[0]:
        raise SystemExit(_run())
    with json_stdout():
        code = _run()
    raise SystemExit(code)


if __name__ == "__main__":
    main()
