"""Accounts, the login throttle and API keys."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from feedback.auth import accounts
from feedback.auth.accounts import KeyState
from feedback.auth.apikeys import key_hash, key_label, new_key
from feedback.auth.passwords import burn_verify, check_new_password, hash_password, verify_password
from feedback.errors import FeedbackError
from feedback.models import ROLES, ApiKey, User, utcnow
from feedback.records import UserInfo
from feedback.store.base import StoreBase, user_info

# Names show up in pages, logs and Argilla: plain characters only.
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class UserStore(StoreBase):
    """Accounts, the login throttle and API keys."""

    # Users ---------------------------------------------------------------------------

    def add_user(self, *, name: str, role: str, password: str, min_length: int = 1) -> UserInfo:
        """Create a login. Names are unique; role is expert, annotator or operator.

        The password needs `min_length` characters (the CLI passes the deployment's
        setting) and more than spaces.
        """
        name = name.strip()
        if not name:
            raise FeedbackError("the user name is empty; give a name")
        if not USER_NAME.fullmatch(name):
            raise FeedbackError(
                f"user name {name[:80]!r} is not allowed; use 1-64 letters, digits and . _ - @"
            )
        if role not in ROLES:
            raise FeedbackError(f"role {role!r} is unknown; use one of {', '.join(ROLES)}")
        check_new_password(password, min_length)
        password_hash = hash_password(password)  # slow on purpose: outside the transaction
        duplicate = FeedbackError(f"user {name!r} already exists; pick another name")
        try:
            with self._write() as session:
                if session.exec(select(User).where(User.name == name)).first() is not None:
                    raise duplicate
                user = User(name=name, role=role, password_hash=password_hash)
                session.add(user)
                session.flush()
                return user_info(user)
        except IntegrityError:  # lost a race with another process adding the same name
            raise duplicate from None

    def authenticate(self, *, name: str, password: str) -> UserInfo | None:
        """The user if `password` is theirs and the account is active, else None.

        Unknown, disabled and removed names cost one password verification too, so the
        time to refuse does not tell which names exist.
        """
        with self._read() as session:
            user = session.exec(select(User).where(User.name == name.strip())).first()
        # Verify (slow on purpose) after the connection has gone back to the pool.
        if user is None or user.status != "active":
            burn_verify(password)
            return None
        if not verify_password(user.password_hash, password):
            return None
        return user_info(user)

    def set_password(self, *, name: str, password: str, min_length: int = 1) -> UserInfo:
        """Give `name` a new password (same rules as `add_user`)."""
        check_new_password(password, min_length)
        password_hash = hash_password(password)
        with self._write() as session:
            user = accounts.find_user(session, name)
            user.password_hash = password_hash
            session.add(user)
            return user_info(user)

    def set_user_status(self, *, name: str, status: str) -> UserInfo:
        """Disable, enable (status "active") or remove an account.

        Removing keeps the row (feedback stays attributed, the name stays taken) and
        replaces the password hash with one nothing matches.
        """
        if status not in ("active", "disabled", "removed"):
            raise FeedbackError(f"status {status!r} is unknown; use active, disabled or removed")
        with self._write() as session:
            user = accounts.find_user(session, name)
            user.status = status
            if status == "removed":
                user.password_hash = "removed"
            session.add(user)
            return user_info(user)

    def get_user(self, name: str) -> UserInfo | None:
        """The user called `name` (whatever its status), or None."""
        with self._read() as session:
            user = session.exec(select(User).where(User.name == name.strip())).first()
            return None if user is None else user_info(user)

    def list_users(self, *, include_removed: bool = False) -> list[UserInfo]:
        """Every user, by name (removed accounts only when asked)."""
        query = select(User).order_by(col(User.name))
        if not include_removed:
            query = query.where(User.status != "removed")
        with self._read() as session:
            return [user_info(u) for u in session.exec(query)]

    # The login throttle (policy: feedback.auth.logins) -------------------------------------

    def count_login_attempt(
        self, limits: dict[str, int], *, lockout: timedelta
    ) -> dict[str, KeyState]:
        """Count one login attempt against each key; see `accounts.count_attempt`."""
        for attempt in range(2):
            try:
                with self._write() as session:
                    return accounts.count_attempt(session, limits, lockout=lockout)
            except IntegrityError:  # PostgreSQL: another attempt created the same key first
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def clear_login_attempt(self, *, forget: list[str], take_back: list[str]) -> None:
        """After a successful login; see `accounts.clear_attempt`."""
        with self._write() as session:
            accounts.clear_attempt(session, forget=forget, take_back=take_back)

    def unlock_logins(self, keys: list[str]) -> int:
        """Lift lockouts on `keys`; how many had failures recorded."""
        with self._write() as session:
            return accounts.unlock(session, keys)

    def locked_logins(self) -> list[tuple[str, int, datetime]]:
        """(key, failures, locked until) of every key locked now."""
        with self._read() as session:
            return accounts.locked_keys(session)

    # API keys ------------------------------------------------------------------------

    def issue_api_key(self, *, name: str) -> tuple[UserInfo, str]:
        """A new API key for user `name` (returned once, stored hashed); their older keys
        stop working, so issuing again is how a leaked key is replaced."""
        key = new_key()
        with self._write() as session:
            user = session.exec(select(User).where(User.name == name.strip())).first()
            if user is None or user.id is None:
                raise FeedbackError(f"there is no user {name!r}; add them with `users add` first")
            self._revoke(session, user.id)
            session.add(ApiKey(user_id=user.id, key_hash=key_hash(key), prefix=key_label(key)))
            return user_info(user), key

    def revoke_api_keys(self, *, name: str) -> int:
        """Revoke every live API key of user `name`; returns how many there were."""
        with self._write() as session:
            user = session.exec(select(User).where(User.name == name.strip())).first()
            if user is None or user.id is None:
                raise FeedbackError(f"there is no user {name!r}; check the name")
            return self._revoke(session, user.id)

    @staticmethod
    def _revoke(session: Session, user_id: int) -> int:
        live = session.exec(
            select(ApiKey).where(ApiKey.user_id == user_id, col(ApiKey.revoked_at).is_(None))
        ).all()
        for key in live:
            key.revoked_at = utcnow()
            session.add(key)
        return len(live)

    def user_for_api_key(self, key: str) -> UserInfo | None:
        """The user a live API key belongs to, or None (unknown or revoked key, or an account
        that is disabled or removed)."""
        with self._read() as session:
            user = session.exec(
                select(User)
                .join(ApiKey, col(ApiKey.user_id) == col(User.id))
                .where(ApiKey.key_hash == key_hash(key), col(ApiKey.revoked_at).is_(None))
                .where(User.status == "active")  # a disabled or removed account's key is dead
            ).first()
            return None if user is None else user_info(user)
