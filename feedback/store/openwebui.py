"""Open WebUI's ratings and picks applied to the store, in short transactions.

The mapping from Open WebUI's export to our terms is `feedback.openwebui` (no I/O); this part
runs it against the database (a batch of ratings with its cursor rows), so a sync stopped
anywhere is finished by running it again and nothing is counted twice. The front end's end
users and chats it attaches to are `feedback.store.frontends`.
"""

from __future__ import annotations

import json

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from feedback.messages import check_prompt
from feedback.models import (
    Comparison,
    Message,
    Preference,
    Rating,
    Response,
    User,
    fetch,
    utcnow,
)
from feedback.models_external import FrontendChat, OpenWebUIFeedback
from feedback.openwebui import SOURCE, Judged, Pick, RatedReply, judged
from feedback.store.base import retried
from feedback.store.frontends import FrontendStore

# Replies brought in from a snapshot were not served by tuneloop: no timing, no sampling.
_BROUGHT_IN = {"source": "openwebui-snapshot"}


class OpenWebUIStore(FrontendStore):
    """Open WebUI's feedback: what was applied (the cursor), ratings, picks."""

    def openwebui_applied(self) -> dict[str, int]:
        """Open WebUI feedback id -> the `updated_at` last applied: the sync's cursor."""
        with self._read() as session:
            rows = session.exec(
                select(OpenWebUIFeedback.feedback_id, OpenWebUIFeedback.updated_at)
            ).all()
            return {fid: int(updated) for fid, updated in rows}

    def openwebui_judged(self) -> list[Judged]:
        """Every applied rating as picks need it."""
        with self._read() as session:
            rows = session.exec(select(OpenWebUIFeedback)).all()
            return [judged(r) for r in rows]

    def apply_openwebui_ratings(self, *, ratings: list[RatedReply]) -> list[str]:
        """Apply a batch of ratings (their users made as needed) in one transaction; what
        happened to each: "unchanged", "rated" (a reply tuneloop served), "brought-in" (from
        the snapshot) or "skipped: why".

        A changed entry (new `updated_at`) adds a new rating row (the latest counts); the
        same thumb and reason already there as this user's latest adds none, so a rating
        seen first through `/v1/feedback` is not counted twice. A batch is stored whole or
        not at all, the cursor rows with it, so a sync stopped anywhere loses nothing. When
        a concurrent sync applied some of them first, they are applied one by one.
        """
        try:
            return self._apply_batch(ratings)
        except IntegrityError:
            return [self._apply_alone(r) for r in ratings]

    def _apply_alone(self, rated: RatedReply) -> str:
        try:
            return self._apply_batch([rated])[0]
        except IntegrityError:
            return "unchanged"  # the other sync applied it first

    @retried
    def _apply_batch(self, ratings: list[RatedReply]) -> list[str]:
        with self._write(bulk=True) as session:
            users: dict[str, int] = {}
            out = []
            for rated in ratings:
                if rated.user_ref not in users:
                    user = self._user_in(session, SOURCE, rated.user_ref)
                    assert user.id is not None
                    users[rated.user_ref] = user.id
                out.append(self._apply_one(session, rated, users[rated.user_ref]))
            return out

    def _apply_one(self, session: Session, rated: RatedReply, user_id: int) -> str:
        known = session.exec(
            select(OpenWebUIFeedback).where(OpenWebUIFeedback.feedback_id == rated.feedback_id)
        ).first()
        if known is not None and known.updated_at == rated.updated_at:
            return "unchanged"
        outcome = "rated"
        response_id = self._served(session, rated, user_id)
        if response_id is None and known is not None:
            response_id = known.response_id
        if response_id is None:
            if rated.content is None:
                return "skipped: no snapshot of the chat, and tuneloop never served it"
            response_id = self._bring_in(session, rated, user_id)
            outcome = "brought-in"
        rating_id = self._rate(session, response_id, user_id, rated)
        row = known or OpenWebUIFeedback(
            feedback_id=rated.feedback_id,
            updated_at=rated.updated_at,
            user_id=user_id,
            response_id=response_id,
            user_ref=rated.user_ref,
            chat_id=rated.chat_id,
            message_id=rated.message_id,
            up=rated.up,
        )
        row.updated_at = rated.updated_at
        row.response_id = response_id
        row.rating_id = rating_id
        row.parent_id = rated.parent_id
        row.up = rated.up
        row.score = rated.score
        row.applied_at = utcnow()
        session.add(row)
        return outcome

    @staticmethod
    def _served(session: Session, rated: RatedReply, user_id: int) -> int | None:
        """The reply tuneloop served for this message: same chat, same (stripped) text."""
        if rated.content is None:
            return None
        conversation_id = session.exec(
            select(FrontendChat.conversation_id)
            .where(FrontendChat.source == SOURCE)
            .where(FrontendChat.external_id == f"{user_id}/{rated.chat_id}")
        ).first()
        if conversation_id is None:
            return None
        text = rated.content.strip()
        candidates = session.exec(
            select(Response.id, Response.content)
            .where(Response.conversation_id == conversation_id)
            .order_by(col(Response.id).desc())
        ).all()
        for rid, content in candidates:
            if content.strip() == text:
                return rid
        return None

    def _bring_in(self, session: Session, rated: RatedReply, user_id: int) -> int:
        """Store a reply tuneloop never served, from the snapshot: in the chat's conversation
        (new, with the turns before it), as the transcript's next reply when it continues
        the transcript, else as a candidate beside it."""
        assert rated.content is not None
        prompt = check_prompt(rated.prompt)
        first_user = next((m["content"] for m in prompt if m["role"] == "user"), "")
        conversation_id = self._chat(
            session, SOURCE, rated.chat_id, user_id, rated.title or first_user
        )
        transcript = [
            {"role": m.role, "content": m.content.strip()}
            for m in session.exec(
                select(Message)
                .where(Message.conversation_id == conversation_id)
                .order_by(col(Message.position))
            )
        ]
        turns = [
            {"role": m["role"], "content": m["content"].strip()}
            for m in prompt
            if m["role"] in ("user", "assistant")  # the turns a person sees
        ]
        continues = transcript == turns[: len(transcript)]
        response = Response(
            conversation_id=conversation_id,
            prompt_json=json.dumps(prompt, ensure_ascii=False),
            content=rated.content,
            model=rated.model_id or SOURCE,
            adapter_version=None,
            params_json=json.dumps(_BROUGHT_IN),
            latency_ms=0.0,
            kind="reply" if continues else "candidate",
        )
        session.add(response)
        session.flush()
        assert response.id is not None
        if continues:
            position = len(transcript)
            for turn in turns[len(transcript) :]:
                session.add(
                    Message(
                        conversation_id=conversation_id,
                        position=position,
                        role=turn["role"],
                        content=turn["content"],
                    )
                )
                position += 1
            session.add(
                Message(
                    conversation_id=conversation_id,
                    position=position,
                    role="assistant",
                    content=rated.content,
                    response_id=response.id,
                )
            )
        session.flush()
        return response.id

    @staticmethod
    def _rate(session: Session, response_id: int, user_id: int, rated: RatedReply) -> int:
        latest = session.exec(
            select(Rating)
            .where(Rating.response_id == response_id)
            .where(Rating.user_id == user_id)
            .order_by(col(Rating.id).desc())
        ).first()
        reason = (rated.reason or "").strip() or None
        if latest is not None and latest.up == rated.up and latest.reason == reason:
            assert latest.id is not None
            return latest.id
        rating = Rating(response_id=response_id, user_id=user_id, up=rated.up, reason=reason)
        session.add(rating)
        session.flush()
        assert rating.id is not None
        return rating.id

    def apply_openwebui_pick(self, *, pick: Pick) -> bool:
        """Record a pick as a decided comparison and its preference; False when it is
        already there (the same two messages picked before, perhaps by a concurrent sync)
        or a side is not applied yet."""
        try:
            return self._apply_pick(pick)
        except IntegrityError:
            return False

    @retried
    def _apply_pick(self, pick: Pick) -> bool:
        with self._write() as session:
            exists = session.exec(
                select(Preference.id).where(Preference.dedup_key == pick.dedup_key)
            ).first()
            if exists is not None:
                return False
            sides = {
                r.feedback_id: r
                for r in session.exec(
                    select(OpenWebUIFeedback).where(
                        col(OpenWebUIFeedback.feedback_id).in_(
                            [pick.chosen.feedback_id, pick.rejected.feedback_id]
                        )
                    )
                )
            }
            if len(sides) != 2:
                return False
            chosen_row = sides[pick.chosen.feedback_id]
            rejected_row = sides[pick.rejected.feedback_id]
            chosen = fetch(session, Response, chosen_row.response_id, "response")
            rejected = fetch(session, Response, rejected_row.response_id, "response")
            if chosen.id == rejected.id or chosen.content.strip() == rejected.content.strip():
                return False
            user = fetch(session, User, chosen_row.user_id, "user")
            assert chosen.id is not None and rejected.id is not None and user.id is not None
            now = utcnow()
            comparison = Comparison(
                user_id=user.id,
                conversation_id=chosen.conversation_id,
                response_a_id=chosen.id,
                response_b_id=rejected.id,
                original_is_a=True,
                choice="A",
                decided_at=now,
            )
            session.add(comparison)
            session.flush()
            session.add(
                Preference(
                    prompt_json=chosen.prompt_json,
                    chosen=chosen.content,
                    rejected=rejected.content,
                    source="chat-compare",
                    annotator=user.name,
                    comparison_id=comparison.id,
                    chosen_response_id=chosen.id,
                    rejected_response_id=rejected.id,
                    dedup_key=pick.dedup_key,
                )
            )
            return True
