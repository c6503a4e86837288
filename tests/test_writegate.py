"""The SQLite write gate: clicks go ahead of bulk batches, a bulk writer is never stopped for
good, nested writes pass, and the lock files are private. The end-to-end check (ratings on
a real `tuneloop serve` during a real `tuneloop import` all land) is in test_store_load.py."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from feedback import writegate
from feedback.store import Store
from feedback.writegate import WriteGate, write_gate


def test_a_click_that_queued_goes_before_the_waiting_bulk_batch(tmp_path: Path) -> None:
    gate = WriteGate(tmp_path / "s.db")
    order: list[str] = []
    first_in, release_first = threading.Event(), threading.Event()

    def first_click() -> None:
        with gate.hold():
            order.append("click 1")
            first_in.set()
            release_first.wait(5)

    def bulk_batch() -> None:
        with gate.hold(bulk=True):
            order.append("bulk")

    def second_click() -> None:
        with gate.hold():
            order.append("click 2")

    threads = [threading.Thread(target=first_click)]
    threads[0].start()
    assert first_in.wait(5)
    threads.append(threading.Thread(target=bulk_batch))
    threads[-1].start()
    time.sleep(0.05)  # the batch is waiting for the gate
    threads.append(threading.Thread(target=second_click))
    threads[-1].start()
    time.sleep(0.05)  # so is the second click
    release_first.set()
    for thread in threads:
        thread.join(5)
    assert order == ["click 1", "click 2", "bulk"]


def test_a_stream_of_clicks_slows_a_bulk_writer_but_never_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writegate, "BULK_YIELD_MAX_S", 0.2)
    gate = WriteGate(tmp_path / "s.db")
    waiting, done = threading.Event(), threading.Event()

    def click_that_never_ends_waiting() -> None:  # holds its place in the queue
        import fcntl

        fd = os.open(gate.queue_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        waiting.set()
        done.wait(5)
        os.close(fd)

    holder = threading.Thread(target=click_that_never_ends_waiting)
    holder.start()
    assert waiting.wait(5)
    start = time.monotonic()
    with gate.hold(bulk=True):
        waited = time.monotonic() - start
    done.set()
    holder.join(5)
    assert 0.15 <= waited < 2.0


def test_nested_writes_in_one_thread_pass_and_the_files_are_private(tmp_path: Path) -> None:
    gate, same_file = WriteGate(tmp_path / "s.db"), WriteGate(tmp_path / "s.db")
    with gate.hold(), gate.hold(bulk=True), same_file.hold():
        pass
    for path in (gate.gate_path, gate.queue_path):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_only_a_sqlite_file_has_a_gate(tmp_path: Path) -> None:
    from sqlalchemy import create_engine

    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    assert store._gate is not None
    assert store._gate.gate_path == f"{tmp_path / 'store.db'}-writer"
    assert write_gate(create_engine("sqlite://")) is None
    assert write_gate(create_engine("postgresql+psycopg://u@localhost/db")) is None


def test_ratings_between_bulk_batches_are_stored_with_the_import(tmp_path: Path) -> None:
    """A real store: ratings from other threads while add_bulk writes many batches."""
    from feedback.records import NewPreference

    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    user = store.add_user(name="erin", role="expert", password="pw")
    chat = store.start_conversation(user_id=user.id, title="t")
    prompt = [{"role": "user", "content": "hi"}]
    reply = store.add_response(
        conversation_id=chat,
        prompt=prompt,
        content="hello",
        model="m",
        adapter_version=None,
        params={},
        latency_ms=1.0,
    )
    pairs = [
        NewPreference(prompt=[{"role": "user", "content": f"q{i}"}], chosen="a", rejected="b")
        for i in range(600)
    ]
    stop = threading.Event()
    rated: list[int] = []

    def rate() -> None:
        while not stop.is_set():
            rated.append(store.rate(response_id=reply, user_id=user.id, up=False))

    raters = [threading.Thread(target=rate) for _ in range(2)]
    for thread in raters:
        thread.start()
    result = store.add_bulk(preferences=pairs, batch_rows=100)
    stop.set()
    for thread in raters:
        thread.join(10)
    assert result.added == 600
    assert rated and len(set(rated)) == len(rated)
    from sqlmodel import Session, func, select

    from feedback.models import Rating

    with Session(store.engine) as session:
        assert session.exec(select(func.count()).select_from(Rating)).one() == len(rated)
