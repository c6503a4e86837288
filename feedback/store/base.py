"""The store's engine, its short write transactions and their retry, shared by every part."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, Self, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from feedback.db import WRITE_OPTIONS, make_engine
from feedback.errors import StoreBusyError
from feedback.models import Response, User
from feedback.records import ResponseInfo, UserInfo, as_utc
from feedback.writegate import gated, write_gate

Row = dict[str, Any]


# A feedback write that found the database busy is tried again after these pauses.
RETRY_PAUSES_S = (0.2, 1.0)

P = ParamSpec("P")
R = TypeVar("R")


def retried(method: Callable[P, R]) -> Callable[P, R]:
    """Run a one-transaction write again when the database was busy (nothing was stored)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        for pause in RETRY_PAUSES_S:
            try:
                return method(*args, **kwargs)
            except StoreBusyError:
                time.sleep(pause)
        return method(*args, **kwargs)

    return wrapper


def user_info(user: User) -> UserInfo:
    """The UserInfo a caller gets for a stored user (no password hash)."""
    assert user.id is not None
    return UserInfo(
        id=user.id,
        name=user.name,
        role=user.role,
        created_at=as_utc(user.created_at),
        status=user.status,
    )


def response_info(r: Response) -> ResponseInfo:
    """The ResponseInfo a caller gets for a stored response."""
    assert r.id is not None
    return ResponseInfo(
        id=r.id,
        conversation_id=r.conversation_id,
        prompt=json.loads(r.prompt_json),
        content=r.content,
        model=r.model,
        adapter_version=r.adapter_version,
        params=json.loads(r.params_json),
        latency_ms=r.latency_ms,
        ttft_ms=r.ttft_ms,
        new_tokens=r.new_tokens,
        kind=r.kind,
        error=r.error,
        created_at=as_utc(r.created_at),
        completion_id=r.completion_id,
    )


class StoreBase:
    """The engine and the two ways to use it: a short write transaction, a read session."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Same pool; on SQLite its transactions BEGIN IMMEDIATE (see feedback.db).
        self._writer = engine.execution_options(**WRITE_OPTIONS)
        # SQLite: writers queue fairly for the write lock, clicks ahead of bulk batches.
        self._gate = write_gate(engine)

    @classmethod
    def open(cls, url: str) -> Self:
        """Open (creating and migrating if needed) the database at `url`."""
        return cls(make_engine(url))

    @contextmanager
    def _write(self, *, bulk: bool = False) -> Iterator[Session]:
        """A session whose work is committed when the block ends without an error.

        A database that stays locked past the busy timeout, or a dropped connection,
        becomes StoreBusyError: a plain message, and nothing of the block was stored.
        `bulk`: one batch of a big write, which lets waiting clicks go first.
        """
        try:
            with (
                gated(self._gate, bulk=bulk),
                Session(self._writer, expire_on_commit=False) as session,
            ):
                yield session
                session.commit()
        except OperationalError as err:
            raise StoreBusyError(
                "the database is busy (a large import may be running); nothing was saved, "
                "try again in a moment"
            ) from err

    def _read(self) -> Session:
        return Session(self.engine)
