"""Feedback never lost under load: thumbs clicks on a real `tuneloop serve` while a bulk
`tuneloop import` runs against the same database all land, and the expert never sees a
database error. The PostgreSQL run is in tests/test_postgres.py."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.server import add_user, serve


def write_pairs(path: Path, n: int, tag: str = "") -> Path:
    """`n` distinct TRL preference rows (plain strings)."""
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            row = {
                "prompt": f"Question {tag}{i}: how do I reset my router?",
                "chosen": f"Hold the reset button for 10 seconds ({i}).",
                "rejected": f"No idea ({i}).",
            }
            out.write(json.dumps(row) + "\n")
    return path


def ratings_during_import(
    home: Path, model_dir: Path, rows: int, clicks: int, **env: str
) -> dict[str, Any]:
    """Click 👎 `clicks` times while `tuneloop import` of `rows` pairs runs; what happened."""
    from gradio_client import Client

    add_user(home, "erin", "expert", "erin-pass", **env)
    data = write_pairs(home / "pairs.jsonl", rows)
    with serve(home, model=str(model_dir), **env) as (url, _):
        client = Client(url, auth=("erin", "erin-pass"), verbose=False)
        client.predict("hello", api_name="/chat")
        importer = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "import", str(data), "--json"],
            env={**os.environ, "TUNELOOP_HOME": str(home), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        acks, during, latencies = [], 0, []
        time.sleep(1.0)  # let the import reach its writes
        for i in range(clicks):
            running = importer.poll() is None
            start = time.perf_counter()
            acks.append(str(client.predict(f"reason {i}", api_name="/rate_down")[0]))
            latencies.append(time.perf_counter() - start)
            during += running and importer.poll() is None
        out, err = importer.communicate(timeout=600)
    return {
        "acks": acks,
        "during": during,
        "latencies": latencies,
        "import_code": importer.returncode,
        "import": json.loads(out) if out.strip() else err,
    }


def check(result: dict[str, Any], rows: int, clicks: int, reasons: list[str]) -> None:
    assert result["import_code"] == 0, result["import"]
    assert result["import"]["added"] == rows
    assert result["during"] >= clicks // 2, "the import finished before most clicks"
    assert all(a.startswith("Saved") for a in result["acks"]), result["acks"]
    assert not any("sqlite" in a.lower() or "SQL" in a for a in result["acks"])
    assert sorted(reasons) == sorted(f"reason {i}" for i in range(clicks))


@pytest.fixture
def home(_isolated_home: Path) -> Path:
    _isolated_home.mkdir(parents=True, exist_ok=True)
    return _isolated_home


ROWS, CLICKS = 30_000, 12


def test_ratings_during_a_bulk_import_all_land_sqlite(home: Path, tiny_model_dir: Path) -> None:
    result = ratings_during_import(home, tiny_model_dir, ROWS, CLICKS)
    with sqlite3.connect(home / "tuneloop.db") as conn:
        reasons = [r for (r,) in conn.execute("select reason from ratings")]
    check(result, ROWS, CLICKS, reasons)


def database_reasons(url: str) -> list[str]:
    engine = create_engine(url)
    with engine.connect() as connection:
        found = [r for (r,) in connection.execute(text("select reason from ratings"))]
    engine.dispose()
    return found


def test_a_locked_database_is_retried_then_reported_in_plain_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real SQLite lock held by another connection past the busy timeout."""
    from app.serving.chat import ChatService
    from app.serving.conversation import ChatError, ChatState, Turn
    from feedback import db
    from feedback.store import Store

    # A 0.1 s busy timeout instead of 5 s: the same waits and retries, 50 times shorter.
    monkeypatch.setattr(
        db,
        "SQLITE_PRAGMAS",
        tuple("PRAGMA busy_timeout=100" if "busy" in p else p for p in db.SQLITE_PRAGMAS),
    )
    monkeypatch.setattr("feedback.store.base.RETRY_PAUSES_S", (0.05, 0.05))
    path = tmp_path / "s.db"
    store = Store.open(f"sqlite:///{path}")
    user = store.add_user(name="erin", role="expert", password="pw")
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
    service = ChatService(
        engine=None,  # type: ignore[arg-type]  # rating needs no model
        store=store,
        params=None,  # type: ignore[arg-type]
        compare_temperature=1.0,
        max_message_chars=100,
    )
    state = ChatState(conversation_id=cid, turns=[Turn("assistant", "hello", rid)])
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # a writer that does not let go
    try:
        with pytest.raises(ChatError) as refused:
            service.rate(user, state, 0, up=False, reason="vague")
    finally:
        holder.execute("ROLLBACK")
    message = str(refused.value)
    assert message.startswith("Not saved yet") and "sql" not in message.lower()
    # a lock held only briefly is waited out by the retries: the click lands
    holder.execute("BEGIN IMMEDIATE")
    import threading

    threading.Timer(0.03, lambda: holder.execute("ROLLBACK")).start()
    assert service.rate(user, state, 0, up=False, reason="vague").startswith("Saved")
    assert store.counts()["ratings_down"] == 1
