"""The queue in front of the password checks: people who log in go before guessers.

An Argon2 verification takes about half a second of one core on purpose, so a storm of
guesses from many addresses can queue far more checks than the cores can run. Checks here
start in order of suspicion (the share of its failure limit an attempt's name or address
has used up; see `feedback.auth.logins`), then of arrival: someone whose name and address
have no recent failure waits at most for the checks already running, however long the
storm's queue. Past `max_waiting` the most suspect waiting attempt is dropped (refused
without a check), so the queue's memory is bounded too.

Everything here runs on the web server's event loop (one thread), so it needs no lock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """The attempt was dropped: the queue was full of attempts no more suspect than it."""


class VerifyQueue:
    """At most `workers` checks run at once in `executor`; the rest wait by suspicion."""

    def __init__(self, executor: Executor, *, workers: int, max_waiting: int) -> None:
        self.executor = executor
        self.workers = workers
        self.max_waiting = max_waiting
        self.running = 0
        self._waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        """How many attempts are queued (not yet running)."""
        return len(self._waiting)

    async def run(self, suspicion: float, check: Callable[..., T], *args: object) -> T:
        """Run `check(*args)` in the executor once a worker is free for this attempt.

        Raises QueueFull when the attempt is dropped, before or while it waits.
        """
        await self._acquire(suspicion)
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, check, *args)
        finally:
            self._release()

    async def _acquire(self, suspicion: float) -> None:
        if self.running < self.workers and not self._waiting:
            self.running += 1
            return
        entry = (suspicion, next(self._order), asyncio.get_running_loop().create_future())
        if len(self._waiting) >= self.max_waiting:
            worst = max(self._waiting)
            if entry >= worst:
                raise QueueFull
            self._waiting.remove(worst)
            heapq.heapify(self._waiting)
            worst[2].set_exception(QueueFull())
        heapq.heappush(self._waiting, entry)
        slot = entry[2]
        try:
            await slot  # set when `_release` hands this attempt a worker
        except asyncio.CancelledError:  # the client went away while waiting
            if slot.done() and not slot.cancelled() and slot.exception() is None:
                self._release()  # it had been handed a worker already: pass it on
            elif entry in self._waiting:
                self._waiting.remove(entry)
                heapq.heapify(self._waiting)
            raise

    def _release(self) -> None:
        """A check finished: hand its worker to the least suspect waiting attempt."""
        while self._waiting:
            _, _, slot = heapq.heappop(self._waiting)
            if not slot.done():
                slot.set_result(None)  # the worker passes on: `running` stays the same
                return
        self.running -= 1
