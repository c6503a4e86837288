"""Password hashing with Argon2id, so a copied database does not leak passwords."""

from __future__ import annotations

import secrets
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from feedback.errors import FeedbackError

_hasher = PasswordHasher()

# Longer than any passphrase a person types; a login form's password past it is refused
# before it is counted or hashed, so a huge field costs the server nothing.
MAX_PASSWORD_CHARS = 1024


def hash_password(password: str) -> str:
    """Return an Argon2id hash (salt and parameters included) to store instead of `password`."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when `password` matches `password_hash`; False for a wrong password or bad hash."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@cache
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))


def burn_verify(password: str) -> bool:
    """The work of one real verification, for a name that has no usable hash; always False.

    Refusing an unknown (or disabled) name as fast as a typo in a known one would tell
    whoever is guessing which names exist.
    """
    verify_password(_dummy_hash(), password)
    return False


def check_new_password(password: str, min_length: int) -> None:
    """Refuse a password shorter than `min_length` characters or made only of spaces."""
    if not password.strip():
        raise FeedbackError("the password is empty; choose a password")
    if len(password) < min_length:
        raise FeedbackError(
            f"the password has {len(password)} characters; use at least {min_length}"
        )
    if len(password) > MAX_PASSWORD_CHARS:
        raise FeedbackError(
            f"the password has {len(password)} characters; use at most {MAX_PASSWORD_CHARS}"
        )
    if not is_text(password):
        raise FeedbackError("the password is not valid text (it holds a lone surrogate)")


def is_text(value: str) -> bool:
    """Whether `value` encodes as UTF-8: Argon2 hashes bytes, and a lone surrogate has none."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
