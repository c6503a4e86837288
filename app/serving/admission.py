"""How many API completions run at once, and who waits.

People's turns share TUNELOOP_API_MAX_ACTIVE slots; a front end's helper calls (titles,
tags: `app.serving.frontends`) have a small pool of their own, so a chat's own title request
can never take the slot its user's message needs. A request that finds every slot of its
pool taken waits up to TUNELOOP_API_WAIT_SECONDS for one before it is refused (429), since
front ends such as Open WebUI show a 429 to the user rather than retry it.
"""

from __future__ import annotations

import threading
import time

import anyio

_POLL_S = 0.05


class Slots:
    """Slots for people's turns and for helper calls; `take` waits, `give_back` frees."""

    def __init__(self, max_active: int, *, wait_seconds: float = 0.0) -> None:
        self.max_active = max_active
        self.max_helpers = max(1, max_active // 4)
        self.wait_seconds = wait_seconds
        self._active = {False: 0, True: 0}
        self._lock = threading.Lock()

    def _try(self, helper: bool) -> bool:
        limit = self.max_helpers if helper else self.max_active
        with self._lock:
            if self._active[helper] >= limit:
                return False
            self._active[helper] += 1
            return True

    async def take(self, *, helper: bool = False) -> bool:
        """Take a slot, waiting up to `wait_seconds`; False when none came free."""
        deadline = time.monotonic() + self.wait_seconds
        while not self._try(helper):
            if time.monotonic() >= deadline:
                return False
            await anyio.sleep(_POLL_S)
        return True

    def in_use(self) -> tuple[int, int]:
        """(people's turns, helper calls) answered now."""
        with self._lock:
            return self._active[False], self._active[True]

    def give_back(self, *, helper: bool = False) -> None:
        with self._lock:
            self._active[helper] -= 1
