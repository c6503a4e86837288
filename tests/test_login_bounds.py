"""Bounded work before authentication: huge or malformed login fields, refusals of a locked
address, a storm of guesses from many addresses, and which addresses are believed. The
mechanism is asserted (what is written, what is hashed, in which order); the latency of a
right login during a storm is measured in bench/login_storm.py, not here."""

from __future__ import annotations

import asyncio
import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from app.web.login import LoginGate, _login_client
from app.web.login_queue import QueueFull, VerifyQueue
from feedback.auth.logins import LoginPolicy, address_key, malformed
from feedback.store import Store
from tests.server import add_user, serve

LOCKOUT = timedelta(minutes=5)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{tmp_path / 'logins.db'}")
    store.add_user(name="erin", role="expert", password="erin-pass")
    yield store


def failure_keys(store: Store) -> set[str]:
    """Every throttle key the store holds a row for (locked or not)."""
    from sqlmodel import select

    from feedback.models import LoginFailure

    with store._read() as session:  # the test looks at the table the Store writes
        return set(session.exec(select(LoginFailure.key)).all())


def check(gate: LoginGate, name: str, password: str, address: str | None) -> bool:
    async def run() -> bool:
        _login_client.set(address)
        return await gate.check(name, password)

    return asyncio.run(run())


def gate_for(store: Store, **kwargs: object) -> LoginGate:
    policy = LoginPolicy(
        max_failures=3, max_failures_per_address=3, lockout=LOCKOUT, delay_seconds=0
    )
    return LoginGate(store, policy, allowed_roles=("expert",), **kwargs)  # type: ignore[arg-type]


def test_malformed_fields_write_and_log_nothing(store: Store, caplog) -> None:
    gate = gate_for(store)
    huge = "a" * 1_000_000
    caplog.set_level(logging.INFO)
    for name, password in (
        (huge, "x"),
        ("erin", "p" * 2_000),
        ("bad name with spaces", "x"),
        ("erin\x00", "x"),
        ("\ud800", "x"),
    ):
        assert check(gate, name, password, "10.0.0.1") is False
    assert failure_keys(store) == set()
    assert "aaaaaaaaaa" not in caplog.text and "pppppppppp" not in caplog.text
    assert "a malformed user name (1000000 characters)" in caplog.text
    # logged once a minute per address and reason, not once per request
    assert caplog.text.count("malformed user name") == 1
    assert check(gate, "erin", "erin-pass", "10.0.0.1") is True  # nothing was held against it


def test_a_locked_address_refuses_without_writing(store: Store, caplog) -> None:
    gate = gate_for(store)
    caplog.set_level(logging.WARNING)
    for i in range(4):  # the fourth failure from the address locks it
        assert check(gate, f"guess{i}", "wrong", "10.0.0.1") is False
    assert ("addr:10.0.0.1" in [key for key, _, _ in store.locked_logins()]) is True
    before = failure_keys(store)
    for i in range(20):  # names never seen before: no row for any of them
        assert check(gate, f"other{i}", "wrong", "10.0.0.1") is False
    assert check(gate, "erin", "erin-pass", "10.0.0.1") is False  # locked, right or not
    assert failure_keys(store) == before
    assert caplog.text.count("is locked until") == 1  # once a minute per locked key


def test_malformed_is_the_account_name_rule() -> None:
    assert malformed("erin", "pw") is None
    assert malformed(" erin.o-k@x ", "pw") is None
    assert malformed("x" * 64, "p" * 1024) is None
    assert malformed("x" * 65, "pw") is not None
    assert malformed("erin", "p" * 1025) is not None
    assert malformed("", "pw") is not None
    assert malformed(None, "pw") is not None
    assert malformed("erin", "a\ud800b") is not None  # Argon2 hashes bytes; this has none


def test_the_queue_runs_the_least_suspect_first_and_drops_the_most_suspect() -> None:
    from concurrent.futures import ThreadPoolExecutor

    order: list[str] = []
    hold = threading.Event()

    async def scenario() -> list[object]:
        queue = VerifyQueue(ThreadPoolExecutor(1), workers=1, max_waiting=3)
        blocker = asyncio.create_task(queue.run(0.0, hold.wait))
        await asyncio.sleep(0)
        tasks = [
            asyncio.create_task(queue.run(s, order.append, tag))
            for s, tag in ((0.5, "guess-a"), (0.9, "guess-b"), (0.5, "guess-c"))
        ]
        while queue.waiting < 3:
            await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):  # full of attempts no more suspect: refused at once
            await queue.run(0.9, order.append, "guess-d")
        right = asyncio.create_task(queue.run(0.0, order.append, "right"))  # drops guess-b
        await asyncio.sleep(0.01)
        hold.set()
        results = await asyncio.gather(blocker, right, *tasks, return_exceptions=True)
        assert queue.running == 0 and queue.waiting == 0
        return results

    results = asyncio.run(scenario())
    assert order == ["right", "guess-a", "guess-c"]
    assert isinstance(results[3], QueueFull)  # guess-b, the most suspect, was dropped


def test_a_storm_from_many_addresses_queues_behind_a_right_login(store: Store) -> None:
    """One password-check worker, held busy; guessers from addresses with failures queue;
    per address only a few at once; a right login from a clean address goes first."""
    gate = gate_for(store, workers=1, max_pending_per_address=2, max_waiting=12)
    storm = [f"10.1.0.{i}" for i in range(6)]
    for address in storm:  # each storm address has guessed before
        store.count_login_attempt({address_key(address): 30}, lockout=LOCKOUT)
    finished: list[str] = []
    real_finish = gate.guard.finish

    def finish(attempt, password):  # the real check, noting whose it was
        finished.append(attempt.name)
        return real_finish(attempt, password)

    gate.guard.finish = finish  # type: ignore[method-assign]
    hold = threading.Event()

    async def scenario() -> tuple[bool, list[object], list[str]]:
        blocker = asyncio.create_task(gate.queue.run(0.0, hold.wait))
        await asyncio.sleep(0)

        async def attempt(name: str, password: str, address: str) -> bool:
            _login_client.set(address)
            return await gate.check(name, password)

        guesses = [
            asyncio.create_task(attempt(f"g{n}{i}", "wrong", address))
            for i, address in enumerate(storm)
            for n in range(2)
        ]
        while gate.queue.waiting < 12:  # the queue is full of guesses
            await asyncio.sleep(0.01)
        rows = failure_keys(store)
        # a third attempt from a storm address is refused before it is counted
        third = await attempt("g9", "wrong", storm[0])
        assert third is False and failure_keys(store) == rows
        right = asyncio.create_task(attempt("erin", "erin-pass", "10.9.9.9"))
        while "name:erin" not in failure_keys(store):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        hold.set()
        ok = await right
        early = list(finished)
        for task in guesses:
            task.cancel()
        results = await asyncio.gather(blocker, *guesses, return_exceptions=True)
        return ok, results, early

    ok, results, early = asyncio.run(scenario())
    assert ok is True
    assert early[0] == "erin"  # ahead of every guess already waiting
    # the right login took the place of the most suspect guess, refused unhashed
    assert sum(1 for r in results[1:] if r is False) == 1
    assert all(isinstance(r, asyncio.CancelledError) for r in results[1:] if r is not False)


# -- a real serve: the form's size and the proxy headers ---------------------------------


def post_login(url: str, name: str, password: str, headers: dict[str, str] | None = None) -> int:
    body = urllib.parse.urlencode({"username": name, "password": password}).encode()
    request = urllib.request.Request(url + "login", data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def locked_addresses(home: Path) -> set[str]:
    store = Store.open(f"sqlite:///{home / 'tuneloop.db'}")
    return {key for key, _, _ in store.locked_logins() if key.startswith("addr:")}


def test_serve_refuses_huge_forms_and_ignores_forwarded_for_by_default(
    _isolated_home: Path, tiny_model_dir: Path
) -> None:
    home = _isolated_home
    home.mkdir(parents=True, exist_ok=True)
    add_user(home, "erin", "expert", "erin-pass")
    with serve(
        home,
        model=str(tiny_model_dir),
        TUNELOOP_LOGIN_DELAY_SECONDS="0",
        TUNELOOP_LOGIN_MAX_FAILURES_PER_ADDRESS="3",
    ) as (url, _):
        assert post_login(url, "a" * 1_000_000, "x") == 413
        assert post_login(url, "a" * 5_000, "x") == 400  # under the body limit, still no name
        assert post_login(url, "erin", "erin-pass") == 200
        # a local client rotating X-Forwarded-For is still one address: 127.0.0.1
        for i in range(5):
            forged = {"X-Forwarded-For": f"203.0.113.{i}"}
            assert post_login(url, f"guess{i}", "wrong", forged) == 400
        assert locked_addresses(home) == {"addr:127.0.0.1"}
    logged = (home / "logs" / "tuneloop.log").read_text()
    assert "aaaaaaaaaa" not in logged and len(logged) < 20_000


def test_serve_believes_forwarded_for_from_a_listed_proxy(
    _isolated_home: Path, tiny_model_dir: Path
) -> None:
    home = _isolated_home
    home.mkdir(parents=True, exist_ok=True)
    with serve(
        home,
        model=str(tiny_model_dir),
        TUNELOOP_LOGIN_DELAY_SECONDS="0",
        TUNELOOP_LOGIN_MAX_FAILURES_PER_ADDRESS="3",
        TUNELOOP_TRUSTED_PROXIES="127.0.0.1, ::1",
    ) as (url, _):
        for i in range(4):  # the proxy says it is one client guessing
            forwarded = {"X-Forwarded-For": "198.51.100.7"}
            assert post_login(url, f"guess{i}", "wrong", forwarded) == 400
        for i in range(3):  # and others, each under the limit
            forwarded = {"X-Forwarded-For": f"198.51.100.{20 + i}"}
            assert post_login(url, f"other{i}", "wrong", forwarded) == 400
        assert locked_addresses(home) == {"addr:198.51.100.7"}


def test_a_trusted_proxy_that_is_no_address_is_refused_in_one_line(monkeypatch, capsys) -> None:
    import json

    from tests.cli import run_cli

    monkeypatch.setenv("TUNELOOP_TRUSTED_PROXIES", "127.0.0.1, proxy.local")
    code, out, err = run_cli(monkeypatch, capsys, "status", "--json")
    assert code != 0 and "'proxy.local' is no IP address or network" in json.loads(out)["error"]
    assert err.count("\n") == 1
