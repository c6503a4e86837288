"""The real `tuneloop serve` process on the tiny model, driven through gradio_client."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest
from gradio_client import Client

from tests.server import add_user, serve
from training.registry import Registry


def rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def home(_isolated_home: Path) -> Path:
    _isolated_home.mkdir(parents=True, exist_ok=True)
    return _isolated_home


def test_feedback_survives_sigkill_right_after_ack(home: Path, tiny_model_dir: Path) -> None:
    add_user(home, "erin", "expert", "pw-erin-secret")
    with serve(home, model=str(tiny_model_dir)) as (url, proc):
        client = Client(url, auth=("erin", "pw-erin-secret"), verbose=False)
        client.predict("hello", api_name="/chat")
        ack = client.predict("too vague", api_name="/rate_down")
        # the acknowledgement is back: kill the server without any chance to flush
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert "Saved" in str(ack)
    db = home / "tuneloop.db"
    assert rows(db, "select up, reason from ratings") == [(0, "too vague")]
    assert rows(db, "select role, content from messages order by id")[0] == ("user", "hello")


def test_running_server_switches_adapter_without_restart(
    home: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from tests.tiny import build_tiny_adapter

    add_user(home, "erin", "expert", "pw-erin-secret")
    registry = Registry(home / "adapters")
    registry.register("v1", build_tiny_adapter(tiny_model_dir, tmp_path / "a1", seed=1))
    with serve(home, model=str(tiny_model_dir)) as (url, proc):
        client = Client(url, auth=("erin", "pw-erin-secret"), verbose=False)
        client.predict("before", api_name="/chat")
        registry.set_current("v1")
        deadline = time.monotonic() + 30
        versions: list[str | None] = []
        while time.monotonic() < deadline:
            client.predict("after", api_name="/chat")
            versions = [
                v for (v,) in rows(home / "tuneloop.db", "select adapter_version from responses")
            ]
            if versions[-1] == "v1":
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the server must not restart"
    assert versions[0] is None and versions[-1] == "v1"
