"""API keys for the OpenAI-compatible API: made here, stored only as a hash.

A key is 256 random bits behind a recognisable prefix. It is shown once, when issued; the
store keeps its SHA-256 (a fast hash is enough for a random secret of this size, and the
check runs on every request) and its first characters, to tell keys apart in listings.
"""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "tl-"
SHOWN_CHARS = 10  # of the key, kept in clear to identify it (prefix + 7 random characters)


def new_key() -> str:
    """A fresh random API key."""
    return PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    """What the store keeps instead of `key`."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_label(key: str) -> str:
    """The part of `key` that may be shown again later."""
    return key[:SHOWN_CHARS] + "…"
