"""What happens when an expert chats and gives feedback, without any UI.

`app/web/ui.py` wires these methods to Gradio; the fast tests call them directly with the tiny
model and a real SQLite store. Every piece of feedback is committed by the store before a
method returns, so whatever the UI acknowledges is already durable.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from app.serving.conversation import (
    CHAT_ROLES,
    COMPARE_BASE,
    COMPARE_SAMPLE,
    ChatError,
    ChatState,
    Comparison,
    Turn,
    without_paths,
)
from app.serving.engine import CURRENT, Reply, ReplyInfo, SamplingParams, ServingError
from app.serving.engine_base import EngineBase
from feedback.errors import FeedbackError, StoreBusyError
from feedback.messages import check_storable
from feedback.store import Store, UserInfo


def _not_saved(err: FeedbackError) -> str:
    """What the expert reads when a write failed: plain words, never a database error."""
    if isinstance(err, StoreBusyError):
        return (
            "Not saved yet: the database is busy right now. Your input is still on the page; "
            "press the button again in a moment."
        )
    return str(err)


class ChatService:
    """Chat and feedback actions for one deployment (engine + store + limits)."""

    def __init__(
        self,
        *,
        engine: EngineBase,
        store: Store,
        params: SamplingParams,
        compare_temperature: float,
        max_message_chars: int,
        versions: Callable[[], list[str]] = list,
        argilla_address: str = "Argilla",
        max_reason_chars: int = 1000,
    ) -> None:
        self.max_reason_chars = max_reason_chars
        self.engine = engine
        self.argilla_address = argilla_address
        self.store = store
        self.params = params
        self.compare_temperature = compare_temperature
        self.max_message_chars = max_message_chars
        self._versions = versions

    # -- who is asking -------------------------------------------------------------------
    def user(self, name: str | None) -> UserInfo:
        """The logged-in chat user; refuses anyone who may not chat (checked on every action,
        so disabling an account also stops a session that is already open)."""
        user = self.store.get_user(name) if name else None
        if user is not None and user.status != "active":
            raise ChatError("Your account is disabled; ask your operator.")
        if user is not None and user.role == "annotator":
            raise ChatError(self.annotator_notice())
        if user is None or user.role not in CHAT_ROLES:
            raise ChatError("Log in as an expert or operator to chat.")
        return user

    def annotator_notice(self) -> str:
        """What an annotator who logs in here is told: where their work is."""
        return (
            "This chat is for experts and operators. Annotators rank pairs in Argilla: "
            f"open {self.argilla_address} and log in with the same name and password."
        )

    # -- chatting ------------------------------------------------------------------------
    def check_message(self, text: str | None) -> str:
        text = (text or "").strip()
        if not text:
            raise ChatError("Type a message first.")
        if len(text) > self.max_message_chars:
            raise ChatError(
                f"Your message is {len(text):,} characters; the limit is "
                f"{self.max_message_chars:,}. Shorten it and send again."
            )
        try:
            return check_storable(text, "Your message")
        except FeedbackError as err:
            raise ChatError(str(err)) from None

    def send(self, user: UserInfo, state: ChatState, text: str | None) -> Iterator[str]:
        """Record the expert's message, then stream the reply; yields the reply so far.

        The user message is committed before generation starts and the reply after it
        ends, so a model failure leaves the conversation and everything recorded intact.
        """
        try:
            reply = self.start_reply(user, state, text)
            for _ in reply:
                yield reply.text
        except ServingError as err:
            raise ChatError(f"The model could not answer: {without_paths(str(err))}") from err
        except ChatError:
            raise
        except Exception as err:  # a model crash must not take the conversation with it
            reason = without_paths(f"{type(err).__name__}: {err}")
            raise ChatError(f"The model failed ({reason}). Try again.") from err
        self.finish_reply(state, reply)
        yield state.turns[-1].content

    def start_reply(
        self,
        user: UserInfo,
        state: ChatState,
        text: str | None,
        *,
        params: SamplingParams | None = None,
        adapter: str | None = CURRENT,
    ) -> Reply:
        """Commit the user's message to their conversation, then start the reply to it.

        The page and the API both chat through this and `finish_reply`. Raises ChatError
        for a bad message and ServingError when the model cannot take the request.
        """
        text = self.check_message(text)
        for turn in state.turns:  # an API client sends the earlier turns too
            try:
                check_storable(turn.content, f"A {turn.role} message")
            except FeedbackError as err:
                raise ChatError(str(err)) from None
        try:
            if state.conversation_id is None:
                state.conversation_id = self.store.start_conversation(
                    user_id=user.id, title=text[:60]
                )
            self.store.add_user_message(conversation_id=state.conversation_id, content=text)
        except FeedbackError as err:
            raise ChatError(_not_saved(err)) from err
        state.turns.append(Turn("user", text))
        return self.engine.stream(state.history(), params or self.params, adapter=adapter)

    def finish_reply(
        self, state: ChatState, reply: Reply, *, completion_id: str | None = None
    ) -> int:
        """Store a reply that has streamed to its end as the conversation's next turn."""
        info = reply.info
        assert info is not None and state.conversation_id is not None  # set when it ended
        response_id = self._record(state.conversation_id, info, "reply", completion_id)
        state.turns.append(Turn("assistant", info.text, response_id, info.adapter_version))
        return response_id

    def record_candidate(self, conversation_id: int, info: ReplyInfo, completion_id: str) -> int:
        """Store a regenerated reply beside its conversation's transcript (a front end's
        regenerate): a candidate, not the conversation's next turn."""
        return self._record(conversation_id, info, "candidate", completion_id)

    def _record(
        self, conversation_id: int, info: ReplyInfo, kind: str, completion_id: str | None = None
    ) -> int:
        """Store a finished reply (or compare candidate) with how it was made."""
        try:
            return self.store.add_response(
                conversation_id=conversation_id,
                prompt=info.prompt,
                content=info.text,
                model=info.model_name,
                adapter_version=info.adapter_version,
                params=info.params,
                latency_ms=info.latency_ms,
                ttft_ms=info.ttft_ms,
                new_tokens=info.new_tokens,
                kind=kind,
                completion_id=completion_id,
            )
        except FeedbackError as err:
            raise ChatError(_not_saved(err)) from err

    def open(self, user: UserInfo, conversation_id: int) -> ChatState:
        """Reopen one of the user's own conversations (never someone else's)."""
        try:
            messages = self.store.conversation_messages(
                conversation_id=conversation_id, user_id=user.id
            )
        except FeedbackError as err:
            raise ChatError(str(err)) from err
        turns = [Turn(m.role, m.content, m.response_id) for m in messages]
        return ChatState(conversation_id=conversation_id, turns=turns)

    def conversations(self, user: UserInfo) -> list[tuple[str, int]]:
        """(label, id) pairs of the user's conversations, newest first."""
        return [
            (f"#{c.id} {c.title}", c.id) for c in self.store.list_conversations(user_id=user.id)
        ]

    # -- feedback ------------------------------------------------------------------------
    def _reply(self, state: ChatState, index: int | None) -> Turn:
        if index is None:
            index = state.last_reply_index()
        if index is None or not 0 <= index < len(state.turns):
            raise ChatError("There is no reply to give feedback on yet.")
        turn = state.turns[index]
        if turn.role != "assistant" or turn.response_id is None:
            raise ChatError("Pick one of the assistant's replies.")
        return turn

    def rate(
        self, user: UserInfo, state: ChatState, index: int | None, *, up: bool, reason: str = ""
    ) -> str:
        turn = self._reply(state, index)
        assert turn.response_id is not None
        return self.rate_response(user, turn.response_id, up=up, reason=reason)

    def rate_response(self, user: UserInfo, response_id: int, *, up: bool, reason: str = "") -> str:
        """👍/👎 on one of the user's replies (the page's buttons and the API's feedback)."""
        if len(reason) > self.max_reason_chars:
            raise ChatError(
                f"The reason is {len(reason):,} characters; the limit is "
                f"{self.max_reason_chars:,}. Shorten it and press again."
            )
        try:
            self.store.rate(
                response_id=response_id, user_id=user.id, up=up, reason=reason.strip() or None
            )
        except FeedbackError as err:
            raise ChatError(_not_saved(err)) from err
        shown = f" ({reason.strip()})" if reason.strip() else ""
        return f"Saved {'👍' if up else '👎'}" + shown

    def correct(self, user: UserInfo, state: ChatState, index: int | None, text: str) -> str:
        turn = self._reply(state, index)
        assert turn.response_id is not None
        return self.correct_response(user, turn.response_id, text)

    def correct_response(self, user: UserInfo, response_id: int, text: str) -> str:
        """Store the answer the user wanted instead of one of their replies."""
        text = (text or "").strip()
        if not text:
            raise ChatError("Write the answer you wanted before saving the correction.")
        if len(text) > self.max_message_chars:
            raise ChatError(f"The correction is over {self.max_message_chars:,} characters.")
        try:
            self.store.correct(response_id=response_id, user_id=user.id, content=text)
        except FeedbackError as err:
            raise ChatError(_not_saved(err)) from err
        return "Saved your corrected answer (the original reply is kept too)."

    def compare_choices(self) -> list[str]:
        return [COMPARE_SAMPLE, COMPARE_BASE, *self._versions()]

    def compare(
        self,
        user: UserInfo,
        state: ChatState,
        index: int | None,
        against: str = COMPARE_SAMPLE,
        rng: random.Random | None = None,
    ) -> Iterator[Comparison | str]:
        """Generate a second candidate for a reply; yields its text so far, then the pair.

        The candidate comes from another sampling of the serving version, or from the
        named version / the bare base. Which side is the original is random and recorded.
        """
        turn = self._reply(state, index)
        assert turn.response_id is not None  # _reply checked it
        original = self.store.response(response_id=turn.response_id)
        if against == COMPARE_SAMPLE:
            adapter: str | None = CURRENT
            params = SamplingParams(
                max_new_tokens=self.params.max_new_tokens,
                temperature=self.compare_temperature,
                top_p=self.params.top_p,
            )
        else:
            adapter = None if against == COMPARE_BASE else against
            params = self.params
        try:
            reply = self.engine.stream(original.prompt, params, adapter=adapter)
            for _ in reply:
                yield reply.text
        except ServingError as err:
            reason = without_paths(str(err))
            raise ChatError(f"Could not generate a second reply: {reason}") from err
        info = reply.info
        assert info is not None
        candidate_id = self._record(original.conversation_id, info, "candidate")
        original_is_a = (rng or random).random() < 0.5
        try:
            comparison_id = self.store.add_comparison(
                user_id=user.id,
                original_response_id=original.id,
                candidate_response_id=candidate_id,
                original_is_a=original_is_a,
            )
        except FeedbackError as err:
            raise ChatError(_not_saved(err)) from err
        a, b = (original.content, info.text) if original_is_a else (info.text, original.content)
        yield Comparison(comparison_id, a, b)

    def pick_between(self, user: UserInfo, first_id: int, second_id: int, choice: str) -> str:
        """Record a choice between two existing replies to the same prompt ("A" = first).

        The API's pick: the same comparison and decision the page's Compare makes, with
        the first reply shown as A.
        """
        if choice not in ("A", "B", "tie"):
            raise ChatError("Pick A, B or tie.")
        try:
            comparison_id = self.store.add_comparison(
                user_id=user.id,
                original_response_id=first_id,
                candidate_response_id=second_id,
                original_is_a=True,
            )
        except FeedbackError as err:
            raise ChatError(str(err)) from err
        return self.pick(user, comparison_id, choice)

    def pick(self, user: UserInfo, comparison_id: int | None, choice: str) -> str:
        if comparison_id is None:
            raise ChatError("Press Compare first to get two replies to pick from.")
        if choice not in ("A", "B", "tie"):
            raise ChatError("Pick A, B or tie.")
        try:
            self.store.decide_comparison(
                comparison_id=comparison_id, user_id=user.id, choice=choice
            )
        except FeedbackError as err:
            raise ChatError(_not_saved(err)) from err
        return "Saved: it's a tie." if choice == "tie" else f"Saved: {choice} is better."
