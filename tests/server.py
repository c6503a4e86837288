"""Run the real `tuneloop serve` in a subprocess for server-level and browser tests."""

from __future__ import annotations

import json
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def add_user(home: Path, name: str, role: str, password: str, **env: str) -> None:
    """Create an account through the real CLI (password on stdin)."""
    subprocess.run(
        [sys.executable, "-m", "app.cli", "users", "add", name, "--role", role],
        input=password + "\n",
        text=True,
        check=True,
        capture_output=True,
        env={**os.environ, "TUNELOOP_HOME": str(home), **env},
    )


def issue_key(home: Path, name: str, **env: str) -> str:
    """An API key for `name` through the real CLI (`tuneloop users key NAME --json`)."""
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "users", "key", name, "--json"],
        text=True,
        check=True,
        capture_output=True,
        env={**os.environ, "TUNELOOP_HOME": str(home), **env},
    ).stdout
    return str(json.loads(out)["api_key"])


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
