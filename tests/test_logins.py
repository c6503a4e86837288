"""Logins that resist guessing, through the real entry points: `tuneloop users ...` and the
login form of a real `tuneloop serve` over HTTP."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli import run_cli
from tests.server import add_user, serve


def login(url: str, name: str, password: str) -> tuple[int, float]:
    """POST the login form as the page does: (HTTP status, seconds it took)."""
    body = urllib.parse.urlencode({"username": name, "password": password}).encode()
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(url + "login", data=body, timeout=60) as reply:
            status = reply.status
    except urllib.error.HTTPError as err:
        status = err.code
    return status, time.perf_counter() - start


def cli(home: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The real `tuneloop` as its own process (beside a running serve)."""
    import os

    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        input=stdin,
        text=True,
        capture_output=True,
        env={**os.environ, "TUNELOOP_HOME": str(home)},
        check=False,
    )


@pytest.fixture
def home(_isolated_home: Path) -> Path:
    _isolated_home.mkdir(parents=True, exist_ok=True)
    return _isolated_home


@pytest.fixture(scope="module")
def unthrottled(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[tuple[str, Path]]:
    """One serve for the timing tests, with no lockout to get in their way: (url, home).
    Each test adds its own users (serve reads accounts at each login)."""
    home = tmp_path_factory.mktemp("unthrottled") / "home"
    home.mkdir()
    with serve(
        home,
        model=str(tiny_model_dir),
        TUNELOOP_LOGIN_DELAY_SECONDS="0",
        TUNELOOP_LOGIN_MAX_FAILURES_PER_ADDRESS="1000",
    ) as (url, _):
        yield url, home


# -- accounts through the CLI -------------------------------------------------------------


def test_short_or_blank_passwords_are_refused(monkeypatch, capsys) -> None:
    monkeypatch.setenv("TUNELOOP_MIN_PASSWORD_LENGTH", "8")
    for password in ("x", "        ", "seven77"):
        monkeypatch.setattr("sys.stdin", _stdin(password))
        code, out, err = run_cli(monkeypatch, capsys, "users", "add", "erin", "--role", "expert")
        assert code == 1 and out == "", (password, err)
        assert err.count("\n") == 1 and "password" in err
    monkeypatch.setattr("sys.stdin", _stdin("eight888"))
    code, _, err = run_cli(monkeypatch, capsys, "users", "add", "erin", "--role", "expert")
    assert code == 0, err


def _stdin(text: str):
    import io

    return io.StringIO(text + "\n")


def test_passwd_disable_enable_remove(monkeypatch, capsys) -> None:
    from app.config import Settings
    from feedback.store import Store

    def users(*args: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr("sys.stdin", _stdin(stdin))
        return run_cli(monkeypatch, capsys, "users", *args)

    assert users("add", "erin", "--role", "expert", stdin="first-pass")[0] == 0
    store = Store.open(Settings().database)
    assert store.authenticate(name="erin", password="first-pass") is not None

    code, out, _ = users("passwd", "erin", "--json", stdin="second-pass")
    assert code == 0 and json.loads(out) == {"name": "erin", "changed": True}
    assert store.authenticate(name="erin", password="first-pass") is None
    assert store.authenticate(name="erin", password="second-pass") is not None

    assert users("disable", "erin")[0] == 0
    assert store.authenticate(name="erin", password="second-pass") is None
    code, out, _ = users("list", "--json")
    assert json.loads(out)["users"][0]["status"] == "disabled"
    assert users("enable", "erin")[0] == 0
    assert store.authenticate(name="erin", password="second-pass") is not None

    # feedback given before the removal stays, attributed to erin
    user = store.get_user("erin")
    assert user is not None
    cid = store.start_conversation(user_id=user.id, title="t")
    rid = store.add_response(
        conversation_id=cid,
        prompt=[{"role": "user", "content": "hi"}],
        content="hello",
        model="m",
        adapter_version=None,
        params={},
        latency_ms=1.0,
    )
    store.rate(response_id=rid, user_id=user.id, up=False, reason="vague")
    store.correct(response_id=rid, user_id=user.id, content="Hello, how can I help?")
    code, out, _ = users("remove", "erin", "--json")
    assert code == 0 and json.loads(out)["status"] == "removed"
    assert store.authenticate(name="erin", password="second-pass") is None
    assert store.counts()["ratings_down"] == 1
    [pair] = list(store.dpo_rows())
    assert pair["chosen"][-1]["content"] == "Hello, how can I help?"
    assert users("list", "--json")[1] == '{"users": []}\n'
    listed = json.loads(users("list", "--removed", "--json")[1])["users"]
    assert [(u["name"], u["status"]) for u in listed] == [("erin", "removed")]
    # a removed account cannot come back, nor its name be taken by someone else
    code, _, err = users("enable", "erin")
    assert code == 1 and "no user 'erin'" in err
    code, _, err = users("add", "erin", "--role", "expert", stdin="another-pass")
    assert code == 1 and "already exists" in err
    for command in ("passwd", "disable", "remove"):
        code, _, err = users(command, "nobody", stdin="whatever-pass")
        assert code == 1 and err.count("\n") == 1, (command, err)


# -- the login form of a real serve -------------------------------------------------------


def test_throttle_locks_a_name_until_the_operator_unlocks_it(
    home: Path, tiny_model_dir: Path
) -> None:
    add_user(home, "erin", "expert", "right-pass")
    with serve(
        home,
        model=str(tiny_model_dir),
        TUNELOOP_LOGIN_MAX_FAILURES="3",
        TUNELOOP_LOGIN_DELAY_SECONDS="0.4",
    ) as (url, _):
        times = []
        for _ in range(3):
            status, took = login(url, "erin", "wrong-pass")
            assert status == 400
            times.append(took)
        # the second and third tries waited 0.4 s and 0.8 s before the password check
        assert times[1] > 0.35 and times[2] > 0.75, times
        # locked: even the right password is refused
        assert login(url, "erin", "right-pass")[0] == 400
        listed = json.loads(cli(home, "users", "list", "--json").stdout)["users"]
        assert listed[0]["locked_until"] is not None
        # the name is locked, not the address: another account still logs in
        add_user(home, "olga", "expert", "olga-pass")
        assert login(url, "olga", "olga-pass")[0] == 200

        done = cli(home, "users", "unlock", "erin")
        assert done.returncode == 0 and "Unlocked 'erin'" in done.stdout
        assert login(url, "erin", "right-pass")[0] == 200
    # what happened is in the log, on stderr and in HOME/logs
    logged = (home / "logs" / "tuneloop.log").read_text()
    assert "login refused: 'erin' from 127.0.0.1 is locked until" in logged
    assert "login refused: 'erin'" in (home / "serve.log").read_text()


def test_unknown_and_known_names_take_the_same_time(unthrottled: tuple[str, Path]) -> None:
    url, home = unthrottled
    names = ["kim", "lee", "max"]
    for name in names:
        add_user(home, name, "expert", f"{name}-right")
    login(url, "warm", "up")  # the first check builds the dummy hash
    known, unknown = [], []
    for round_ in range(2):
        for name in names:
            known.append(login(url, name, f"wrong-{round_}")[1])
            unknown.append(login(url, f"ghost-{name}-{round_}", "wrong")[1])
    k, u = statistics.median(known), statistics.median(unknown)
    # before: ~550 ms for a known name, ~16 ms for an unknown one (35x)
    assert max(k, u) / min(k, u) < 2.5, (known, unknown)


def logged_in(url: str, name: str, password: str) -> urllib.request.OpenerDirector:
    """An HTTP client holding a session cookie, as a logged-in browser tab would."""
    import http.cookiejar

    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    body = urllib.parse.urlencode({"username": name, "password": password}).encode()
    opener.open(url + "login", data=body, timeout=60).read()
    return opener


def test_password_checks_do_not_stall_other_pages(unthrottled: tuple[str, Path]) -> None:
    url, home = unthrottled
    add_user(home, "erin", "expert", "erin-pass")
    erin = logged_in(url, "erin", "erin-pass")
    storm = [threading.Thread(target=login, args=(url, f"guess{i}", "wrong")) for i in range(8)]
    for thread in storm:
        thread.start()
    pages = []
    while any(t.is_alive() for t in storm):
        start = time.perf_counter()
        erin.open(url + "config", timeout=30).read()
        pages.append(time.perf_counter() - start)
    for thread in storm:
        thread.join()
    # on the event loop, 8 verifications (~0.5 s each) held /config for seconds
    assert pages and max(pages) < 1.0, pages


def test_address_limit_spans_names_and_successes_do_not_count(tmp_path: Path) -> None:
    from datetime import timedelta

    from feedback.auth.logins import LoginGuard, LoginPolicy
    from feedback.store import Store

    store = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    store.add_user(name="erin", role="expert", password="erin-pass")
    policy = LoginPolicy(
        max_failures=3, max_failures_per_address=4, lockout=timedelta(minutes=1), delay_seconds=0
    )
    guard = LoginGuard(store, policy)
    store.add_user(name="olga", role="expert", password="olga-pass")
    slow = LoginGuard(store, LoginPolicy(max_failures=9, delay_seconds=0.5))
    first = slow.begin("olga", None)
    assert first.delay == 0 and slow.finish(first, "typo") is None
    second = slow.begin("olga", None)  # a wait after the first failure, doubling after each
    assert second.delay == 0.5 and slow.finish(second, "typo") is None
    assert slow.begin("olga", None).delay == 1.0
    assert slow.finish(slow.begin("olga", None), "olga-pass") is not None
    # a success forgets the name's failures: the next try waits nothing
    assert slow.begin("olga", None).delay == 0
    for _ in range(6):  # logging in again and again from one address is not guessing
        attempt = guard.begin("erin", "10.0.0.1")
        assert attempt.locked_until is None and guard.finish(attempt, "erin-pass") is not None
    for i in range(4):  # four names guessed from one address...
        attempt = guard.begin(f"guess{i}", "10.0.0.1")
        assert attempt.locked_until is None and guard.finish(attempt, "x") is None
    # ...lock the address for every name, right password or not, but not other addresses
    assert guard.begin("erin", "10.0.0.1").locked_until is not None
    assert guard.begin("erin", "10.0.0.2").locked_until is None
    assert guard.unlock(address="10.0.0.1") == 1
    assert guard.begin("erin", "10.0.0.1").locked_until is None
