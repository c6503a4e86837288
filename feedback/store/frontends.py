"""Chat front ends (Open WebUI): their end users and their chats.

The mapping from Open WebUI's export to our terms is `feedback.openwebui` (no I/O); this part
runs it against the database in short transactions (a batch of ratings with its cursor rows),
so a sync stopped anywhere is finished by running it again and nothing is counted twice.
"""

from __future__ import annotations

import re

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from feedback.errors import FeedbackError
from feedback.models import (
    Conversation,
    Message,
    User,
    fetch,
)
from feedback.models_external import FrontendChat, FrontendUser
from feedback.records import MessageInfo, UserInfo
from feedback.store.base import StoreBase, retried, user_info

# Front-end end users get accounts that no password opens (not an argon2 hash).
NO_LOGIN = "!frontend"
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._@-]")


def _account_name(source: str, external_id: str) -> str:
    return f"{source}-{_NAME_CHARS.sub('-', external_id)}"[:60]


class FrontendStore(StoreBase):
    """Front ends' end users and chats, and Open WebUI's feedback as applied."""

    # End users and chats ------------------------------------------------------------------

    def frontend_user(self, *, source: str, external_id: str) -> UserInfo:
        """Our account for a front end's end user, made on first sight (an expert that no
        password logs in as). Never an existing account of ours, whatever its name."""
        external_id = external_id.strip()
        if not external_id:
            raise FeedbackError("the front end sent an empty user id")
        for _ in range(3):
            with self._read() as session:
                found = session.exec(
                    select(User)
                    .join(FrontendUser, col(FrontendUser.user_id) == col(User.id))
                    .where(FrontendUser.source == source)
                    .where(FrontendUser.external_id == external_id)
                ).first()
                if found is not None:
                    return user_info(found)
            try:
                return self._add_frontend_user(source, external_id)
            except IntegrityError:
                continue  # another request made the same user meanwhile: read it
        raise FeedbackError("could not record the front end's user; try again")

    @retried
    def _add_frontend_user(self, source: str, external_id: str) -> UserInfo:
        with self._write() as session:
            return user_info(self._user_in(session, source, external_id))

    @staticmethod
    def _user_in(session: Session, source: str, external_id: str) -> User:
        """The end user's account, found or made in `session`."""
        found = session.exec(
            select(User)
            .join(FrontendUser, col(FrontendUser.user_id) == col(User.id))
            .where(FrontendUser.source == source)
            .where(FrontendUser.external_id == external_id)
        ).first()
        if found is not None:
            return found
        base = _account_name(source, external_id)
        name, n = base, 1
        while session.exec(select(User.id).where(User.name == name)).first() is not None:
            n += 1
            name = f"{base}-{n}"
        user = User(name=name, role="expert", password_hash=NO_LOGIN)
        session.add(user)
        session.flush()
        assert user.id is not None
        session.add(FrontendUser(source=source, external_id=external_id, user_id=user.id))
        session.flush()
        return user

    @retried
    def frontend_chat(
        self, *, source: str, chat_id: str, user_id: int, title: str
    ) -> tuple[int, list[MessageInfo]]:
        """The conversation a front end's chat is stored in (opened on first sight) and its
        transcript. Keyed by our user too: another user naming the same chat id gets a
        conversation of their own."""
        with self._write() as session:
            conversation_id = self._chat(session, source, chat_id, user_id, title)
            messages = session.exec(
                select(Message)
                .where(Message.conversation_id == conversation_id)
                .order_by(col(Message.position))
            ).all()
            return conversation_id, [
                MessageInfo(role=m.role, content=m.content, response_id=m.response_id)
                for m in messages
            ]

    @staticmethod
    def _chat(session: Session, source: str, chat_id: str, user_id: int, title: str) -> int:
        key = f"{user_id}/{chat_id}"
        found = session.exec(
            select(FrontendChat.conversation_id)
            .where(FrontendChat.source == source)
            .where(FrontendChat.external_id == key)
        ).first()
        if found is not None:
            return int(found)
        fetch(session, User, user_id, "user")
        conversation = Conversation(user_id=user_id, title=title.strip()[:60] or "Untitled")
        session.add(conversation)
        session.flush()
        assert conversation.id is not None
        session.add(FrontendChat(source=source, external_id=key, conversation_id=conversation.id))
        session.flush()
        return conversation.id

    # Open WebUI's feedback ----------------------------------------------------------------
