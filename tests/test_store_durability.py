"""Durability and concurrency: an acknowledged write survives SIGKILL; threads can write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from test_store import REPO, chat, db_url, rows_of

from feedback.models import Rating
from feedback.store import Store

# Concurrency and durability ----------------------------------------------------------


def test_writes_from_many_threads(tmp_path: Path) -> None:
    """One Store shared by threads, as the Gradio app does: no "database is locked"."""
    store = Store.open(db_url(tmp_path / "threads.db"))
    ann = store.add_user(name="ann", role="expert", password="pw")
    _, response, _ = chat(store, ann)
    errors: list[BaseException] = []

    def click(n: int) -> None:
        try:
            for i in range(15):
                store.rate(response_id=response, user_id=ann.id, up=(n + i) % 2 == 0)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=click, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(rows_of(store, Rating)) == 90


CHILD = """
import sys, time
from feedback.store import Store
store = Store.open(sys.argv[1])
rating = store.rate(response_id=int(sys.argv[2]), user_id=int(sys.argv[3]), up=True,
                    reason="kill me")
print("ACK", rating, flush=True)
time.sleep(60)
"""


def test_acknowledged_rating_survives_sigkill(tmp_path: Path) -> None:
    """A child writes a rating, prints ACK, and is SIGKILLed at once: the row is there."""
    url = db_url(tmp_path / "kill.db")
    store = Store.open(url)
    user = store.add_user(name="ann", role="expert", password="pw")
    _, response, _ = chat(store, user)
    store.engine.dispose()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(response), str(user.id)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    word, rating_id = line.split()
    assert word == "ACK"
    reopened = Store.open(url)
    [rating] = rows_of(reopened, Rating)
    assert (rating.id, rating.up, rating.reason) == (int(rating_id), True, "kill me")
