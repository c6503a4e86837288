"""Accounts and the login throttle, inside a store transaction (the Store calls these).

An account is never deleted: "removed" keeps its row, so every rating, correction and
preference it gave stays attributed to its name, and the name is never handed out again.
Failed logins are counted per key (a user name or a client address) in the database, so
`tuneloop users unlock` in another process can lift a lockout the server enforces.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session, select

from feedback.errors import FeedbackError
from feedback.models import LoginFailure, User, utcnow
from feedback.records import as_utc


@dataclass(frozen=True)
class KeyState:
    """One throttle key as a login attempt found it."""

    failures: int  # failed attempts before this one, within the window
    locked_until: datetime | None  # set when this attempt is refused outright


def find_user(session: Session, name: str) -> User:
    """The account called `name`, or a FeedbackError naming it."""
    user = session.exec(select(User).where(User.name == name.strip())).first()
    if user is None or user.status == "removed":
        raise FeedbackError(f"no user {name.strip()!r}; see `tuneloop users list`")
    return user


def count_attempt(
    session: Session, limits: dict[str, int], *, lockout: timedelta
) -> dict[str, KeyState]:
    """Count a login attempt against every key before its password is checked.

    Counting first means parallel guesses see each other: the attempt past a key's limit
    locks that key for `lockout` and is refused. A key that is locked refuses without
    counting; counts older than `lockout` are forgotten. A successful login takes its
    count back (`clear_attempt`).
    """
    now = utcnow()
    found: dict[str, LoginFailure | None] = {}
    for key in limits:
        query = select(LoginFailure).where(LoginFailure.key == key).with_for_update()
        found[key] = session.exec(query).first()
    locked = {
        key: as_utc(row.locked_until)
        for key, row in found.items()
        if row is not None and row.locked_until is not None and as_utc(row.locked_until) > now
    }
    if locked:  # refused as it is: nothing written, so a locked key's refusals cost no disk
        return {
            key: KeyState(failures=row.failures if row else 0, locked_until=locked.get(key))
            for key, row in found.items()
        }
    rows: dict[str, LoginFailure] = {}
    for key, row in found.items():
        if row is None:
            row = LoginFailure(key=key, failures=0, last_failure_at=now)
            session.add(row)
        rows[key] = row
    states = {}
    for key, row in rows.items():
        if row.locked_until is not None or now - as_utc(row.last_failure_at) > lockout:
            row.failures, row.locked_until = 0, None
        before = row.failures
        row.failures += 1
        row.last_failure_at = now
        if row.failures > limits[key]:
            row.locked_until = now + lockout
        states[key] = KeyState(failures=before, locked_until=row.locked_until)
    session.flush()
    return states


def clear_attempt(session: Session, *, forget: list[str], take_back: list[str]) -> None:
    """After a successful login: forget the name's failures, take back the address's count."""
    for key in forget + take_back:
        row = session.exec(
            select(LoginFailure).where(LoginFailure.key == key).with_for_update()
        ).first()
        if row is None:
            continue
        if key in forget:
            session.delete(row)
        elif row.locked_until is None:
            row.failures = max(0, row.failures - 1)


def unlock(session: Session, keys: list[str]) -> int:
    """Lift the lockout and forget the failures of `keys`; how many keys had any."""
    found = 0
    for key in keys:
        row = session.exec(select(LoginFailure).where(LoginFailure.key == key)).first()
        if row is not None:
            found += 1
            session.delete(row)
    return found


def locked_keys(session: Session) -> list[tuple[str, int, datetime]]:
    """(key, failures, locked until) of every key locked now."""
    now = utcnow()
    query = select(LoginFailure).where(LoginFailure.locked_until.is_not(None))  # type: ignore[union-attr]
    return [
        (row.key, row.failures, as_utc(row.locked_until))
        for row in session.exec(query)
        if row.locked_until is not None and as_utc(row.locked_until) > now
    ]
