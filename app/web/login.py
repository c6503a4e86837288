"""The chat app's login check: the throttle in front, the slow password check off the loop.

Gradio awaits an async auth callback on its event loop, which also serves every page and
every other user's clicks. So the throttle's wait is an `asyncio.sleep`, and the database
and the Argon2 verification (half a second of CPU, on purpose) run in worker threads; the
verifications in a pool of their own, at most half the cores at once, so a storm of wrong
passwords queues there instead of starving the pages. Gradio does not hand the callback
the request, so a small ASGI middleware notes the client address of each `/login` post.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any

from app.config import Settings
from feedback.auth.logins import LoginGuard, LoginPolicy
from feedback.store import Store

log = logging.getLogger(__name__)

# The client address of the login request being handled (set by `ClientAddress`).
_login_client: ContextVar[str | None] = ContextVar("tuneloop_login_client", default=None)


class ClientAddress:
    """ASGI middleware: remember the peer address of each `/login` request for the check."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path", "").rstrip("/").endswith("/login"):
            client = scope.get("client")
            token = _login_client.set(client[0] if client else None)
            try:
                await self.app(scope, receive, send)
            finally:
                _login_client.reset(token)
            return
        await self.app(scope, receive, send)


def _lower_priority() -> None:
    """Run this password-check thread at a lower CPU priority than the web server's loop,
    so pages stay quick while it works through a queue of guesses (Linux: per thread)."""
    import threading

    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not allowed: same priority then
        pass


def policy_from(settings: Settings) -> LoginPolicy:
    """The throttle's policy from the deployment's settings."""
    from datetime import timedelta

    return LoginPolicy(
        max_failures=settings.login_max_failures,
        max_failures_per_address=settings.login_max_failures_per_address,
        lockout=timedelta(minutes=settings.login_lockout_minutes),
        delay_seconds=settings.login_delay_seconds,
    )


class LoginGate:
    """Gradio's auth callback (`gate.check`) for one store and one policy."""

    def __init__(self, store: Store, policy: LoginPolicy, *, allowed_roles: tuple[str, ...]):
        self.guard = LoginGuard(store, policy)
        self.allowed_roles = allowed_roles
        workers = max(1, (os.cpu_count() or 2) // 2)
        self._verify = ThreadPoolExecutor(
            workers, thread_name_prefix="tuneloop-login", initializer=_lower_priority
        )

    async def check(self, name: str, password: str) -> bool:
        """True when the name may log in now with this password (awaited by Gradio)."""
        address = _login_client.get()
        attempt = await asyncio.to_thread(self.guard.begin, name, address)
        if attempt.locked_until is not None:
            log.warning(
                "login refused: %r from %s is locked until %s",
                name,
                address,
                attempt.locked_until.isoformat(timespec="seconds"),
            )
            return False
        if attempt.delay:
            await asyncio.sleep(attempt.delay)
        loop = asyncio.get_running_loop()
        user = await loop.run_in_executor(self._verify, self.guard.finish, attempt, password)
        if user is None:
            log.info("login failed for %r from %s", name, address)
            return False
        return user.role in self.allowed_roles
