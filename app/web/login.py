"""The chat app's login check: bounded work in front, the slow password check off the loop.

Gradio awaits an async auth callback on its event loop, which also serves every page and
every other user's clicks. So the throttle's wait is an `asyncio.sleep`, and the database
and the Argon2 verification (half a second of CPU, on purpose) run in worker threads, one
per core, behind a queue that lets people who log in go before guessers
(`app.web.login_queue`). Before any of that, work on a request is bounded: the form's body
has a size limit, fields no account could match are refused unread by the throttle, each
client address may have only a few attempts in progress, and refusals are logged at most
once a minute per address and reason, so a flood of them fills neither disk nor memory.
Gradio does not hand the callback the request, so a small ASGI middleware notes the client
address of each `/login` post (the peer, or the address a proxy listed in
`TUNELOOP_TRUSTED_PROXIES` forwarded: see `app.cli.serve.trust_proxies`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any

from app.config import Settings
from app.web.login_queue import QueueFull, VerifyQueue
from feedback.auth.logins import LoginGuard, LoginPolicy, malformed
from feedback.store import Store

log = logging.getLogger(__name__)

# The client address of the login request being handled (set by `ClientAddress`).
_login_client: ContextVar[str | None] = ContextVar("tuneloop_login_client", default=None)


# A login form holds a name (64 characters) and a password (1,024): a body past this is
# no login, and reading it would only cost memory.
MAX_LOGIN_BODY = 16 * 1024


def _is_login(scope: dict[str, Any]) -> bool:
    return scope["type"] == "http" and scope.get("path", "").rstrip("/").endswith("/login")


class ClientAddress:
    """ASGI middleware: remember the client address of each `/login` request for the check,
    and refuse (413) a login body over `MAX_LOGIN_BODY` before the form is parsed."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not _is_login(scope):
            await self.app(scope, receive, send)
            return
        body = await _read_bounded(receive)
        if body is None:
            await _too_large(send)
            return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()  # after the body: only a disconnect can come
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        client = scope.get("client")
        token = _login_client.set(client[0] if client else None)
        try:
            await self.app(scope, replay, send)
        finally:
            _login_client.reset(token)


async def _read_bounded(receive: Any) -> bytes | None:
    """The request body, or None as soon as it passes `MAX_LOGIN_BODY` (the rest unread)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)  # the client left: the app sees an empty form
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_LOGIN_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _too_large(send: Any) -> None:
    body = b'{"detail": "The login form is too large."}'
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class QuietLog:
    """Log a refusal at most once per `every` seconds per (reason, address): a flood of
    refused logins writes a few lines, not one per request. Bounded: forgets when full."""

    def __init__(self, every: float = 60.0, remember: int = 4096) -> None:
        self.every = every
        self.remember = remember
        self._last: dict[tuple[str, str | None], float] = {}

    def __call__(self, reason: str, address: str | None, message: str, *args: object) -> None:
        now = time.monotonic()
        key = (reason, address)
        if now - self._last.get(key, -self.every) < self.every:
            return
        if len(self._last) >= self.remember:
            self._last.clear()
        self._last[key] = now
        log.warning(message, *args)


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


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 2


class LoginGate:
    """Gradio's auth callback (`gate.check`) for one store and one policy."""

    def __init__(
        self,
        store: Store,
        policy: LoginPolicy,
        *,
        allowed_roles: tuple[str, ...],
        max_pending_per_address: int = 4,
        max_waiting: int = 64,
        workers: int | None = None,
    ):
        self.guard = LoginGuard(store, policy)
        self.allowed_roles = allowed_roles
        self.max_pending_per_address = max_pending_per_address
        self.pending: dict[str | None, int] = {}  # attempts in progress, per client address
        workers = workers or cores()
        self._verify = ThreadPoolExecutor(
            workers, thread_name_prefix="tuneloop-login", initializer=_lower_priority
        )
        self.queue = VerifyQueue(self._verify, workers=workers, max_waiting=max_waiting)
        self.quiet = QuietLog()

    async def check(self, name: str, password: str) -> bool:
        """True when the name may log in now with this password (awaited by Gradio)."""
        address = _login_client.get()
        why = malformed(name, password)
        if why is not None:  # no account could match: nothing counted, stored or hashed
            self.quiet("malformed", address, "login refused: %s from %s", why, address)
            return False
        if self.pending.get(address, 0) >= self.max_pending_per_address:
            self.quiet(
                "busy",
                address,
                "login refused: %s already has %d logins in progress",
                address,
                self.max_pending_per_address,
            )
            return False
        self.pending[address] = self.pending.get(address, 0) + 1
        try:
            return await self._check(name, password, address)
        finally:
            self.pending[address] -= 1
            if not self.pending[address]:
                del self.pending[address]

    async def _check(self, name: str, password: str, address: str | None) -> bool:
        attempt = await asyncio.to_thread(self.guard.begin, name, address)
        if attempt.locked_until is not None:
            self.quiet(  # once a minute per locked key: bounded by real failed attempts
                "locked:" + ",".join(attempt.locked_keys),
                address,
                "login refused: %r from %s is locked until %s",
                name,
                address,
                attempt.locked_until.isoformat(timespec="seconds"),
            )
            return False
        if attempt.delay:
            await asyncio.sleep(attempt.delay)
        try:
            user = await self.queue.run(attempt.suspicion, self.guard.finish, attempt, password)
        except QueueFull:  # counted as a try (it was one) but never hashed
            self.quiet("queue", address, "login refused: the login queue is full (%s)", address)
            return False
        if user is None:
            log.info("login failed for %r from %s", name, address)
            return False
        return user.role in self.allowed_roles
