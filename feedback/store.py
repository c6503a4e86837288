"""The preference store: every write the app makes, and the reads its screens need.

Each write method runs in its own transaction and has committed (fsync'd, on SQLite) before
it returns, so the UI can acknowledge a click the moment the call returns and a crash
right after loses nothing. Methods take keyword arguments only and hand back ids or plain
dataclasses from `feedback.records`, never ORM objects.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Engine, func
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, select

from feedback import accounts, bulk, compare, rows
from feedback.accounts import KeyState
from feedback.apikeys import key_hash, key_label, new_key
from feedback.canonical import event_key
from feedback.db import WRITE_OPTIONS, make_engine
from feedback.errors import FeedbackError, StoreBusyError
from feedback.messages import check_prompt
from feedback.models import (
    RESPONSE_KINDS,
    ROLES,
    ApiKey,
    Conversation,
    Correction,
    Message,
    Preference,
    Rating,
    Response,
    User,
    fetch,
    utcnow,
)
from feedback.passwords import burn_verify, check_new_password, hash_password, verify_password
from feedback.records import (
    BulkResult,
    ConversationInfo,
    MessageInfo,
    NewExample,
    NewPreference,
    ResponseInfo,
    UserInfo,
    as_utc,
)
from feedback.split import HeldoutSplit
from feedback.writegate import gated, write_gate

Row = dict[str, Any]

# Names show up in pages, logs and Argilla: plain characters only.
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")

# Rows per transaction of a bulk import: on SQLite each holds the one write lock for a few
# tens of milliseconds, so ratings that arrive meanwhile wait no longer than that.
BULK_BATCH_ROWS = 500


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


def _user_info(user: User) -> UserInfo:
    assert user.id is not None
    return UserInfo(
        id=user.id,
        name=user.name,
        role=user.role,
        created_at=as_utc(user.created_at),
        status=user.status,
    )


def _response_info(r: Response) -> ResponseInfo:
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


class Store:
    """Reads and writes of the preference store over one SQLAlchemy engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Same pool; on SQLite its transactions BEGIN IMMEDIATE (see feedback.db).
        self._writer = engine.execution_options(**WRITE_OPTIONS)
        # SQLite: writers queue fairly for the write lock, clicks ahead of bulk batches.
        self._gate = write_gate(engine)

    @classmethod
    def open(cls, url: str) -> Store:
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
                return _user_info(user)
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
        return _user_info(user)

    def set_password(self, *, name: str, password: str, min_length: int = 1) -> UserInfo:
        """Give `name` a new password (same rules as `add_user`)."""
        check_new_password(password, min_length)
        password_hash = hash_password(password)
        with self._write() as session:
            user = accounts.find_user(session, name)
            user.password_hash = password_hash
            session.add(user)
            return _user_info(user)

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
            return _user_info(user)

    def get_user(self, name: str) -> UserInfo | None:
        """The user called `name` (whatever its status), or None."""
        with self._read() as session:
            user = session.exec(select(User).where(User.name == name.strip())).first()
            return None if user is None else _user_info(user)

    def list_users(self, *, include_removed: bool = False) -> list[UserInfo]:
        """Every user, by name (removed accounts only when asked)."""
        query = select(User).order_by(col(User.name))
        if not include_removed:
            query = query.where(User.status != "removed")
        with self._read() as session:
            return [_user_info(u) for u in session.exec(query)]

    # The login throttle (policy: feedback.logins) -------------------------------------

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
            return _user_info(user), key

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
            return None if user is None else _user_info(user)

    # Conversations -------------------------------------------------------------------

    @retried
    def start_conversation(self, *, user_id: int, title: str) -> int:
        """Open a new chat for `user_id`; returns its id."""
        with self._write() as session:
            fetch(session, User, user_id, "user")
            conversation = Conversation(user_id=user_id, title=title.strip() or "Untitled")
            session.add(conversation)
            session.flush()
            assert conversation.id is not None
            return conversation.id

    @retried
    def add_user_message(self, *, conversation_id: int, content: str) -> int:
        """Append the user's turn to the transcript; returns the message id."""
        if not content.strip():
            raise FeedbackError("the message is empty; type something first")
        with self._write() as session:
            fetch(session, Conversation, conversation_id, "conversation")
            return self._append(session, conversation_id, "user", content, None)

    @staticmethod
    def _append(
        session: Session, conversation_id: int, role: str, content: str, response_id: int | None
    ) -> int:
        # Lock the conversation (PostgreSQL; SQLite already holds the write lock) so two
        # concurrent appends cannot pick the same position.
        session.exec(
            select(Conversation.id).where(Conversation.id == conversation_id).with_for_update()
        ).one()
        last = session.exec(
            select(func.max(Message.position)).where(Message.conversation_id == conversation_id)
        ).one()
        message = Message(
            conversation_id=conversation_id,
            position=0 if last is None else last + 1,
            role=role,
            content=content,
            response_id=response_id,
        )
        session.add(message)
        session.flush()
        assert message.id is not None
        return message.id

    @retried
    def add_response(
        self,
        *,
        conversation_id: int,
        prompt: list[dict[str, Any]],
        content: str,
        model: str,
        adapter_version: str | None,
        params: dict[str, Any],
        latency_ms: float,
        ttft_ms: float | None = None,
        new_tokens: int | None = None,
        kind: str = "reply",
        error: str | None = None,
        completion_id: str | None = None,
    ) -> int:
        """Record a model output and exactly what produced it; returns the response id.

        A "reply" is also appended to the transcript as the assistant's turn; a "candidate"
        (the second reply of a compare) is not. `completion_id` is the id an API client was
        given for it (unique).
        """
        if kind not in RESPONSE_KINDS:
            raise FeedbackError(f"kind {kind!r} is unknown; use 'reply' or 'candidate'")
        messages = check_prompt(prompt)
        try:
            params_json = json.dumps(params, sort_keys=True)
        except (TypeError, ValueError) as err:
            raise FeedbackError(
                f"sampling params are not JSON ({err}); pass plain values"
            ) from None
        with self._write() as session:
            fetch(session, Conversation, conversation_id, "conversation")
            response = Response(
                conversation_id=conversation_id,
                prompt_json=json.dumps(messages, ensure_ascii=False),
                content=content,
                model=model,
                adapter_version=adapter_version,
                params_json=params_json,
                latency_ms=float(latency_ms),
                ttft_ms=None if ttft_ms is None else float(ttft_ms),
                new_tokens=new_tokens,
                kind=kind,
                error=error,
                completion_id=completion_id,
            )
            session.add(response)
            session.flush()
            assert response.id is not None
            if kind == "reply":
                self._append(session, conversation_id, "assistant", content, response.id)
            return response.id

    # Feedback ------------------------------------------------------------------------

    @retried
    def rate(self, *, response_id: int, user_id: int, up: bool, reason: str | None = None) -> int:
        """Record one thumbs-up/down click; the latest per response and user counts."""
        with self._write() as session:
            fetch(session, Response, response_id, "response")
            fetch(session, User, user_id, "user")
            rating = Rating(
                response_id=response_id,
                user_id=user_id,
                up=bool(up),
                reason=(reason or "").strip() or None,
            )
            session.add(rating)
            session.flush()
            assert rating.id is not None
            return rating.id

    @retried
    def correct(self, *, response_id: int, user_id: int, content: str) -> int:
        """Store an expert's rewrite of a response; returns the correction id.

        The response row keeps its original text. The rewrite also becomes an "edit"
        preference: the response's prompt, chosen = the rewrite, rejected = the original.
        """
        text = content.strip()
        if not text:
            raise FeedbackError("the correction is empty; write the reply as it should be")
        with self._write() as session:
            response = fetch(session, Response, response_id, "response")
            user = fetch(session, User, user_id, "user")
            if text == response.content.strip():
                raise FeedbackError("the correction equals the original reply; change it first")
            correction = Correction(response_id=response_id, user_id=user_id, content=text)
            session.add(correction)
            session.flush()
            assert correction.id is not None
            session.add(
                Preference(
                    prompt_json=response.prompt_json,
                    chosen=text,
                    rejected=response.content,
                    source="edit",
                    annotator=user.name,
                    correction_id=correction.id,
                    rejected_response_id=response_id,
                    dedup_key=event_key("edit", correction.id),
                )
            )
            return correction.id

    @retried
    def add_comparison(
        self,
        *,
        user_id: int,
        original_response_id: int,
        candidate_response_id: int,
        original_is_a: bool,
    ) -> int:
        """Record that two replies are shown side by side; see `feedback.compare`."""
        with self._write() as session:
            return compare.add_comparison(
                session,
                user_id=user_id,
                original_response_id=original_response_id,
                candidate_response_id=candidate_response_id,
                original_is_a=original_is_a,
            )

    @retried
    def decide_comparison(self, *, comparison_id: int, user_id: int, choice: str) -> int:
        """Record the owner's final choice ("A", "B" or "tie"); returns the preference id.

        Deciding twice raises FeedbackError (decisions are final); see `feedback.compare`.
        """
        with self._write() as session:
            return compare.decide_comparison(
                session, comparison_id=comparison_id, user_id=user_id, choice=choice
            )

    # Reads ---------------------------------------------------------------------------

    def list_conversations(self, *, user_id: int) -> list[ConversationInfo]:
        """The user's chats, newest first."""
        with self._read() as session:
            query = (
                select(Conversation)
                .where(Conversation.user_id == user_id)
                .order_by(col(Conversation.created_at).desc(), col(Conversation.id).desc())
            )
            return [
                ConversationInfo(id=c.id or 0, title=c.title, created_at=as_utc(c.created_at))
                for c in session.exec(query)
            ]

    def conversation_messages(self, *, conversation_id: int, user_id: int) -> list[MessageInfo]:
        """The transcript of one of the user's chats; someone else's chat raises."""
        with self._read() as session:
            conversation = session.get(Conversation, conversation_id)
            if conversation is None or conversation.user_id != user_id:
                raise FeedbackError(
                    f"conversation {conversation_id} is not yours; open one from your history"
                )
            query = (
                select(Message)
                .where(Message.conversation_id == conversation_id)
                .order_by(col(Message.position))
            )
            return [
                MessageInfo(role=m.role, content=m.content, response_id=m.response_id)
                for m in session.exec(query)
            ]

    def response(self, *, response_id: int) -> ResponseInfo:
        """Everything recorded about one response."""
        with self._read() as session:
            return _response_info(fetch(session, Response, response_id, "response"))

    def owned_completion(self, *, completion_id: str, user_id: int) -> ResponseInfo:
        """The API reply `completion_id` if it is in one of the user's own conversations.

        Someone else's id gets the same answer as an unknown one: ids are not revealed.
        """
        with self._read() as session:
            row = session.exec(
                select(Response, Conversation.user_id)
                .join(Conversation, col(Conversation.id) == col(Response.conversation_id))
                .where(Response.completion_id == completion_id)
            ).first()
            if row is None or row[1] != user_id:
                raise FeedbackError(f"there is no completion {completion_id!r} of yours")
            return _response_info(row[0])

    def counts(self) -> dict[str, Any]:
        """Row counts for the status screen; ratings count each user's latest click only."""
        with self._read() as session:
            return rows.counts(session)

    # Training data -------------------------------------------------------------------

    def sft_rows(self, split: str = "all", plan: HeldoutSplit | None = None) -> Iterator[Row]:
        """SFT conversations `{"messages": [...]}`; see `feedback.rows.sft_rows`."""
        with self._read() as session:
            return iter(rows.sft_rows(session, split, plan))

    def dpo_rows(self, split: str = "all", plan: HeldoutSplit | None = None) -> Iterator[Row]:
        """TRL conversational DPO rows; see `feedback.rows.dpo_rows`."""
        with self._read() as session:
            return iter(rows.dpo_rows(session, split, plan))

    def kto_rows(self, split: str = "all", plan: HeldoutSplit | None = None) -> Iterator[Row]:
        """TRL unpaired rows from thumbs without a partner; see `feedback.rows.kto_rows`."""
        with self._read() as session:
            return iter(rows.kto_rows(session, split, plan))

    def heldout_split(self, *, min_items: int = 0, extra: list[Row] | None = None) -> HeldoutSplit:
        """The train/heldout split of everything stored (`feedback.split`), holding out at
        least `min_items` prompts where the data allows; `extra`: SFT rows kept elsewhere
        (the domain's seed examples) that the split must also cover."""
        with self._read() as session:
            return rows.split_plan(session, min_items=min_items, extra=extra)

    # Bulk ----------------------------------------------------------------------------

    def add_bulk(
        self,
        *,
        preferences: Iterable[NewPreference] = (),
        examples: Iterable[NewExample] = (),
        source: str = "import",
        batch_rows: int = BULK_BATCH_ROWS,
    ) -> BulkResult:
        """Add pairs and conversations, skipping duplicates, in short transactions.

        Duplicates (same content already stored, or repeated in the input) are counted, not
        added. Each batch of `batch_rows` commits on its own, so a big import never holds
        the database long enough to keep an expert's rating waiting; an import stopped
        half-way is finished by running it again (what is stored counts as duplicates).
        """
        prepared = bulk.prepare(preferences, examples, source)  # outside any transaction
        added = 0
        for batch in prepared.batches(batch_rows):
            with self._write(bulk=True) as session:
                added += bulk.insert_new(session, batch)
        return BulkResult(added=added, duplicates=prepared.total - added)
