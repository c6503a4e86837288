"""Run the real `tuneloop serve` in a subprocess for server-level and browser tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def home_store(home: Path, **env: str) -> Iterator[Any]:
    """HOME's store as `tuneloop` would open it with `env` set, and the settings it read."""
    from app.config import Settings
    from feedback.store import Store

    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"TUNELOOP_HOME": str(home), **env}.items():
            patch.setenv(key, value)
        settings = Settings()
    store = Store.open(settings.database)
    try:
        yield store, settings
    finally:
        store.engine.dispose()


def add_user(home: Path, name: str, role: str, password: str, **env: str) -> None:
    """Create an account in HOME's store as `tuneloop users add` does, in this process: a
    second of start-up saved per account (the command itself: tests/test_logins.py,
    tests/test_json_output.py and, for annotators, tests/test_argilla.py)."""
    with home_store(home, **env) as (store, settings):
        store.add_user(
            name=name, role=role, password=password, min_length=settings.min_password_length
        )


def issue_key(home: Path, name: str, **env: str) -> str:
    """An API key for `name`, issued as `tuneloop users key NAME` does, in this process (the
    command itself: tests/test_api.py)."""
    with home_store(home, **env) as (store, _):
        return str(store.issue_api_key(name=name)[1])


@contextmanager
def serve(
    home: Path, *, model: str | None, port: int | None = None, timeout: float = 240.0, **env: str
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start `tuneloop serve` on `port` (a free one unless given); yields (url, process);
    stops it afterwards."""
    port = port or free_port()
    full_env = {
        **os.environ,
        "TUNELOOP_HOME": str(home),
        "TUNELOOP_ADAPTER_POLL_SECONDS": "0.5",
        **env,
    }
    if model:
        full_env["TUNELOOP_MODEL"] = model
    log = open(home / "serve.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited early:\n{(home / 'serve.log').read_text()}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    log_text = (home / "serve.log").read_text()
                    raise RuntimeError(f"serve did not start:\n{log_text}") from None
                time.sleep(0.1)  # a refused connection costs nothing: look often
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
