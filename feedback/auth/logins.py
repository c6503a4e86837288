"""When a login may be tried and how long it waits: the throttle's policy, in one place.

Every attempt is counted against its user name and its client address before the
password is checked. Each failure on a key makes the next attempt on it wait longer
(`delay_seconds`, doubling, at most `MAX_DELAY_SECONDS`); past the limit the key is
locked for `lockout`, whatever the password, until it runs out or an operator runs
`tuneloop users unlock`. Names that do not exist are counted the same way, so the
throttle itself does not tell which names exist either.

A form whose fields no account could match (a name outside the account-name rule, a
password longer than any stored one) is refused before any of that: nothing is counted,
stored, hashed or logged from it, so sending huge or malformed fields costs the server
almost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from feedback.auth.passwords import MAX_PASSWORD_CHARS, is_text
from feedback.records import UserInfo
from feedback.store import Store
from feedback.store.users import USER_NAME

MAX_DELAY_SECONDS = 8.0


def malformed(name: object, password: object) -> str | None:
    """Why a login form cannot match any account (a few words, never the fields), or None.

    Checked first, on the raw fields: the length before the pattern, so a megabyte of
    name is refused after one `len`.
    """
    if not isinstance(name, str) or not isinstance(password, str):
        return "fields are not text"
    if len(name) > 80 or not USER_NAME.fullmatch(name.strip()):
        return f"a malformed user name ({len(name)} characters)"
    if len(password) > MAX_PASSWORD_CHARS:
        return f"a password of {len(password)} characters"
    if not is_text(password):
        return "a password that is not valid text"
    return None


def name_key(name: str) -> str:
    """The throttle key of a user name (case and surrounding spaces ignored)."""
    return "name:" + name.strip().casefold()


def address_key(address: str) -> str:
    """The throttle key of a client address."""
    return "addr:" + address.strip()


@dataclass(frozen=True)
class LoginPolicy:
    """How many failures a name or an address may have, and what they cost."""

    max_failures: int = 5
    max_failures_per_address: int = 30
    lockout: timedelta = timedelta(minutes=15)
    delay_seconds: float = 0.5


@dataclass(frozen=True)
class Attempt:
    """What the throttle decided before the password is looked at."""

    name: str
    keys: tuple[str, ...]
    delay: float  # seconds to wait before checking the password
    locked_until: datetime | None  # set: refused without checking
    # The largest share of its limit any of its keys has used up (0: no recent failure).
    # Password checks wait in this order, so guessers queue behind people who log in.
    suspicion: float = 0.0
    locked_keys: tuple[str, ...] = ()  # the keys whose lockout refused it


def _delay(failures: int, limit: int, policy: LoginPolicy) -> float:
    """`delay_seconds` after the first failure, doubling with each one (scaled to the
    key's limit, so an address shared by a team slows down more gently than a name)."""
    if failures <= 0 or policy.delay_seconds <= 0:
        return 0.0
    steps = (failures - 1) * policy.max_failures / limit
    return float(min(MAX_DELAY_SECONDS, policy.delay_seconds * 2**steps))


class LoginGuard:
    """Login checks against the store with the throttle in front of them.

    `begin` and `finish` are separate so a web server can wait out the delay without
    holding a thread and run the slow password check off its event loop.
    """

    def __init__(self, store: Store, policy: LoginPolicy) -> None:
        self.store = store
        self.policy = policy

    def begin(self, name: str, address: str | None) -> Attempt:
        """Count the attempt; say how long to wait, or that it is refused (locked)."""
        limits = {name_key(name): self.policy.max_failures}
        if address:
            limits[address_key(address)] = self.policy.max_failures_per_address
        states = self.store.count_login_attempt(limits, lockout=self.policy.lockout)
        locks = [s.locked_until for s in states.values() if s.locked_until is not None]
        delay = max(_delay(states[k].failures, limit, self.policy) for k, limit in limits.items())
        suspicion = max(states[k].failures / limit for k, limit in limits.items())
        return Attempt(
            name=name,
            keys=tuple(limits),
            delay=delay,
            locked_until=max(locks, default=None),
            suspicion=suspicion,
            locked_keys=tuple(k for k, state in states.items() if state.locked_until is not None),
        )

    def finish(self, attempt: Attempt, password: str) -> UserInfo | None:
        """Check the password (slow on purpose); a success takes its count back."""
        user = self.store.authenticate(name=attempt.name, password=password)
        if user is not None:
            self.store.clear_login_attempt(
                forget=[attempt.keys[0]], take_back=list(attempt.keys[1:])
            )
        return user

    def unlock(self, *, name: str | None = None, address: str | None = None) -> int:
        """Lift the lockout of a user name and/or a client address (the operator's way out)."""
        keys = ([name_key(name)] if name else []) + ([address_key(address)] if address else [])
        return self.store.unlock_logins(keys)
