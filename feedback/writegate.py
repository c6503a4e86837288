"""A fair queue for the one write lock of a SQLite store, shared by every process writing it.

SQLite lets one writer in at a time. A writer that finds the database locked waits in
SQLite's busy handler, which sleeps in growing steps (up to 100 ms) and tries again. A bulk
import commits batch after batch with barely a moment between them, so an expert's rating
waiting that way seldom lands in a gap: it sat behind the import for a second or more.

Writers that go through the Store queue on two file locks beside the database instead:
- the gate (`<db>-writer`): held for the whole write transaction; the kernel wakes a
  waiter the moment it is free, with no sleeping steps;
- the queue (`<db>-waiting`): every interactive writer (a click) holds it shared from the
  moment it wants to write until it has committed. Before each batch, a bulk writer waits
  until nobody holds it, so every click that arrived meanwhile goes first and waits for at
  most the one batch in progress. The bulk writer waits at most `BULK_YIELD_MAX_S` per batch,
  so a steady stream of clicks slows an import but never stops it.

The database's own lock (and its busy timeout) stays the safety net for any writer that does
not go through here. On PostgreSQL, and for in-memory SQLite, there is no gate: row locks
already let a click pass an import.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from sqlalchemy import Engine

# The longest a bulk batch waits for interactive writers to finish before it goes anyway.
BULK_YIELD_MAX_S = 0.5
# How often a waiting bulk writer looks again (it only waits while clicks are pending).
_BULK_POLL_S = 0.001


# Per lock file, how deep each thread is in writes: a write nested in another (through any
# Store on the same file) passes through instead of waiting for the lock its own thread holds.
_DEPTHS: dict[str, threading.local] = {}
_DEPTHS_LOCK = threading.Lock()


class WriteGate:
    """The two file locks of one SQLite database file; see the module's docstring."""

    def __init__(self, database: Path) -> None:
        self.gate_path = f"{database}-writer"
        self.queue_path = f"{database}-waiting"
        with _DEPTHS_LOCK:
            self._local = _DEPTHS.setdefault(self.gate_path, threading.local())

    def _open(self, path: str) -> int:
        # Private like the database itself: created 0600, never widened afterwards.
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @contextmanager
    def hold(self, *, bulk: bool = False) -> Iterator[None]:
        """Hold the gate for one write transaction; `bulk` lets pending clicks go first."""
        if getattr(self._local, "depth", 0):  # already held by this thread
            self._local.depth += 1
            try:
                yield
            finally:
                self._local.depth -= 1
            return
        queue = self._open(self.queue_path)
        gate = -1
        try:
            if bulk:
                self._let_clicks_pass(queue)
            else:
                fcntl.flock(queue, fcntl.LOCK_SH)
            gate = self._open(self.gate_path)
            fcntl.flock(gate, fcntl.LOCK_EX)
            self._local.depth = 1
            try:
                yield
            finally:
                self._local.depth = 0
        finally:
            if gate >= 0:
                os.close(gate)  # closing the last descriptor releases its lock
            os.close(queue)

    @staticmethod
    def _let_clicks_pass(queue: int) -> None:
        """Wait (bounded) until no interactive writer is waiting or writing."""
        deadline = time.monotonic() + BULK_YIELD_MAX_S
        while True:
            try:
                fcntl.flock(queue, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return
                time.sleep(_BULK_POLL_S)
                continue
            fcntl.flock(queue, fcntl.LOCK_UN)
            return


def write_gate(engine: Engine) -> WriteGate | None:
    """The gate for `engine`'s database: a SQLite file only, else None."""
    url = engine.url
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):  # URI form: shared memory or options, not a plain path
        return None
    return WriteGate(Path(database).expanduser())


def gated(gate: WriteGate | None, *, bulk: bool = False) -> AbstractContextManager[None]:
    """`gate.hold(bulk=...)`, or nothing to hold when there is no gate."""
    return nullcontext() if gate is None else gate.hold(bulk=bulk)
