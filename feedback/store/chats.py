"""Conversations, model replies and the experts' feedback on them."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from feedback import compare, rows
from feedback.canonical import event_key
from feedback.errors import FeedbackError
from feedback.messages import check_prompt, check_storable
from feedback.models import (
    RESPONSE_KINDS,
    Conversation,
    Correction,
    Message,
    Preference,
    Rating,
    Response,
    User,
    fetch,
)
from feedback.records import ConversationInfo, MessageInfo, ResponseInfo, as_utc
from feedback.store.base import StoreBase, response_info, retried


class ChatStore(StoreBase):
    """Conversations, model replies and the experts' feedback on them."""

    # Conversations -------------------------------------------------------------------

    @retried
    def start_conversation(self, *, user_id: int, title: str) -> int:
        """Open a new chat for `user_id`; returns its id."""
        check_storable(title, "the title")
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
        check_storable(content, "the message")
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
        for message in messages:
            check_storable(message["content"], "the message")
        check_storable(content, "the reply")
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
        check_storable(reason or "", "the reason")
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
        check_storable(text, "the correction")
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
            return response_info(fetch(session, Response, response_id, "response"))

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
            return response_info(row[0])

    def counts(self) -> dict[str, Any]:
        """Row counts for the status screen; ratings count each user's latest click only."""
        with self._read() as session:
            return rows.counts(session)
