"""Secrets stay secret: files a fresh `tuneloop serve` creates are private to its account,
no secret reaches a command line or `--json` output."""

from __future__ import annotations

import json
import os
import stat
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_cli
from tests.server import serve


def test_a_first_start_creates_an_admin_and_only_private_files(
    _isolated_home: Path, tiny_model_dir: Path
) -> None:
    """A serve on an empty home makes the admin account, its password in a private file,
    and the admin logs in with it and chats; nothing serve wrote is open to others."""
    from gradio_client import Client

    home = _isolated_home
    home.parent.mkdir(parents=True, exist_ok=True)
    home.mkdir(mode=0o755)  # even in a home others could enter, what serve makes is private
    os.chmod(home, 0o755)
    with serve(home, model=str(tiny_model_dir)) as (url, _):
        stranger = urllib.parse.urlencode({"username": "erin", "password": "nope"}).encode()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "login", data=stranger, timeout=60)
        assert refused.value.code == 400  # a name with no account: refused like a wrong password
        password = (home / "admin-password").read_text().strip()
        client = Client(url, auth=("admin", password), verbose=False)
        client.predict("hello", api_name="/chat")
        client.predict("too vague", api_name="/rate_down")
        found = {}
        for root, dirs, files in os.walk(home):
            for name in dirs + files:
                path = Path(root) / name
                if path.name != "serve.log":  # written by this test, not by serve
                    found[str(path.relative_to(home))] = stat.S_IMODE(path.lstat().st_mode)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert {"tuneloop.db", "tuneloop.db-wal", "admin-password"} <= set(found)
    loose = {p: oct(m) for p, m in found.items() if m & 0o077}
    assert not loose, loose


def test_no_secret_in_json_output(monkeypatch, capsys) -> None:
    monkeypatch.setenv("TUNELOOP_DATABASE_URL", "postgresql+psycopg://tl:hunter2@127.0.0.1:9/tl")
    monkeypatch.setenv("TUNELOOP_ARGILLA_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("TUNELOOP_ARGILLA_API_KEY", "argilla-key-42")
    for args in (["status"], ["argilla", "status"], ["users", "list"], ["rounds"]):
        code, out, err = run_cli(monkeypatch, capsys, *args, "--json")
        assert json.loads(out)  # one object, here an error: nothing listens on port 9
        assert "hunter2" not in out + err and "argilla-key-42" not in out + err, (args, out, err)


def test_settings_hold_secrets_redacted(monkeypatch) -> None:
    from app.config import Settings

    monkeypatch.setenv("TUNELOOP_DATABASE_URL", "postgresql+psycopg://tl:hunter2@db/tl")
    monkeypatch.setenv("TUNELOOP_ARGILLA_API_KEY", "argilla-key-42")
    settings = Settings()
    shown = repr(settings) + str(settings.model_dump()) + settings.database_shown
    assert "hunter2" not in shown and "argilla-key-42" not in shown
    assert settings.database_shown == "postgresql+psycopg://tl:***@db/tl"
    assert "hunter2" in settings.database  # what the engine gets


# A stand-in argilla_server package: its CLI records each argv it got and the command line
# the kernel shows for its process (what `ps` shows every local user), and fails a command
# whose first word is in FAKE_FAIL.
FAKE_MAIN = """
import json, os, sys
from pathlib import Path


def app(args=None, prog_name=None, standalone_mode=True):
    cmdline = Path("/proc/self/cmdline").read_bytes().replace(b"\\0", b" ").decode()
    seen = json.loads(Path(REPORT).read_text()) if Path(REPORT).exists() else []
    Path(REPORT).write_text(json.dumps([*seen, {"argv": args, "cmdline": cmdline}]))
    if args[0] == os.environ.get("FAKE_FAIL"):
        print("no index", file=sys.stderr)
        return 1
    return 0
"""
FAKE_COMMONS = """
class BaseElasticAndOpenSearchEngine:
    pass


def es_index_name_for_dataset(dataset):
    return "index"
"""


def fake_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Path]:
    """The real stack code and launcher in front of a stand-in argilla-server: (the stack,
    the file where the stand-in records what it was asked)."""
    from feedback.argilla.stack import LocalStack

    report = tmp_path / "report.json"
    package = tmp_path / "fake" / "argilla_server"
    for sub in ("cli", "search_engine"):
        (package / sub).mkdir(parents=True)
        (package / sub / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "cli" / "__main__.py").write_text(f"REPORT = {str(report)!r}\n" + FAKE_MAIN)
    (package / "search_engine" / "commons.py").write_text(FAKE_COMMONS)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    stack = LocalStack(home=tmp_path / "home", venv=venv)
    stack.root.mkdir(parents=True)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake"))
    return stack, report


STATE = {"ports": {"redis": 1, "osmem": 2}, "processes": {}}


def test_argilla_owner_secrets_never_on_a_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack, report = fake_stack(tmp_path, monkeypatch)
    create = ["database", "users", "create", "--password", "pw-s3cret"]
    assert stack._server_cli(STATE, create) == (1, "")
    (seen,) = json.loads(report.read_text())
    assert seen["argv"] == create  # argilla-server gets it...
    assert "launcher.py" in seen["cmdline"] and "pw-s3cret" not in seen["cmdline"]  # not ps


def test_a_first_start_that_fails_keeps_the_owner_only_once_argilla_has_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first start migrates, makes the owner and rebuilds the indices in one process;
    its credentials are saved exactly when that process got as far as making the owner."""
    from feedback.argilla.stack import ArgillaError

    stack, report = fake_stack(tmp_path, monkeypatch)
    monkeypatch.setenv("FAKE_FAIL", "database")  # the migration fails: no owner made
    with pytest.raises(ArgillaError, match="argilla-server database migrate failed: no index"):
        stack._prepare(STATE)
    assert stack.credentials() is None
    assert [s["argv"][:2] for s in json.loads(report.read_text())] == [["database", "migrate"]]

    report.unlink()
    monkeypatch.setenv("FAKE_FAIL", "search-engine")  # the owner is made, the reindex fails
    with pytest.raises(ArgillaError, match="search-engine reindex failed: no index"):
        stack._prepare(STATE)
    asked = [s["argv"] for s in json.loads(report.read_text())]
    assert [a[:2] for a in asked] == [["database", "migrate"], ["database", "users"],
                                      ["search-engine", "reindex"]]  # fmt: skip
    creds = stack.credentials()
    assert creds is not None and creds.password == asked[1][asked[1].index("--password") + 1]
    assert creds.api_key == asked[1][asked[1].index("--api-key") + 1]
    assert stack.credentials_file.stat().st_mode & 0o777 == 0o600

    report.unlink()
    monkeypatch.delenv("FAKE_FAIL")  # the next start: the owner exists, only migrate + reindex
    stack._prepare(STATE)
    assert [s["argv"] for s in json.loads(report.read_text())] == [
        ["database", "migrate"], ["search-engine", "reindex"]]  # fmt: skip
    assert stack.credentials() == creds
