"""Chat front ends in front of the API (Open WebUI): whose turn a request is, and which
requests are not a person's turn at all.

- **Trusted front ends.** An operator names the accounts whose API keys a front end uses
  (TUNELOOP_TRUSTED_FRONTENDS). For those keys only, the forwarded `X-OpenWebUI-User-Id`
  header says which end user is chatting: the conversation belongs to that user's own
  expert account (made on first sight, never an existing account, never more than an
  expert whatever `X-OpenWebUI-User-Role` says), and `X-OpenWebUI-Chat-Id` keeps the turns
  of one chat in one conversation. Any other key's headers are ignored.
- **Helper calls.** Open WebUI asks the chat model for titles, tags, follow-up suggestions,
  search queries and autocompletions, each a single user message starting `### Task:`.
  Such a request, any request with OpenAI's `"store": false`, and any request for the
  `tuneloop:task` model (an admin can make it Open WebUI's task model) is answered but
  never stored, never trained on, capped at TUNELOOP_HELPER_MAX_TOKENS, decoded after
  people's turns when the batch is full, and, when it asks for a JSON answer, ended as soon
  as its object closes (or when none begins).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote

from app.serving.replies import SamplingParams
from feedback.openwebui import SOURCE
from feedback.records import UserInfo
from feedback.store import Store

TASK_MODEL = "tuneloop:task"
USER_ID_HEADER = "x-openwebui-user-id"
CHAT_ID_HEADER = "x-openwebui-chat-id"
# How Open WebUI's helper prompts begin (its title, tags, follow-up, query, autocomplete and
# image-prompt templates; the emoji and mixture-of-agents ones), as of 0.12.
HELPER_PROMPT_STARTS = (
    "### Task:",
    "Your task is to reflect the speaker's likely facial expression",
    "You have been provided with a set of responses from various models",
)
HELPER_PRIORITY = 1


def is_helper(*, model: str, store: bool | None, texts: Sequence[tuple[str, str]]) -> bool:
    """Whether a completion request is a front end's helper call, not a person's turn.

    `texts`: the request's (role, text) messages.
    """
    if model == TASK_MODEL or store is False:
        return True
    users = [text for role, text in texts if role == "user"]
    return len(users) == 1 and users[0].lstrip().startswith(HELPER_PROMPT_STARTS)


def asks_for_json(texts: Sequence[tuple[str, str]]) -> bool:
    """Whether a helper call's prompt asks for a JSON answer (Open WebUI's title, tags,
    follow-up, query and autocomplete prompts do; its emoji prompt does not)."""
    return any(role == "user" and "JSON" in text for role, text in texts)


def helper_params(params: SamplingParams, max_tokens: int, *, json: bool) -> SamplingParams:
    """A helper call's sampling: its token budget capped, behind people in the batch, and,
    when it asks for JSON, over once its object is (app/serving/json_answer.py)."""
    return replace(
        params,
        max_new_tokens=min(params.max_new_tokens, max_tokens),
        priority=HELPER_PRIORITY,
        json_answer=json,
    )


@dataclass(frozen=True)
class Caller:
    """Whose turn a request is: the account the conversation belongs to, and the front
    end's chat id when a trusted front end sent one."""

    user: UserInfo
    chat_id: str | None = None


class Frontends:
    """Who a request is for (see the module)."""

    def __init__(self, store: Store, *, trusted: frozenset[str]) -> None:
        self.store = store
        self.trusted = trusted

    def caller(self, key_owner: UserInfo, headers: Any) -> Caller:
        """The key's owner, or for a trusted front end's key the end user it forwarded."""
        if key_owner.name not in self.trusted:
            return Caller(key_owner)
        end_user = unquote(headers.get(USER_ID_HEADER, "") or "").strip()
        chat_id = unquote(headers.get(CHAT_ID_HEADER, "") or "").strip() or None
        if not end_user:
            return Caller(key_owner, chat_id)  # forwarding is off: the key owner's chats
        user = self.store.frontend_user(source=SOURCE, external_id=end_user)
        return Caller(user, chat_id)

    def conversation(
        self, caller: Caller, history: list[tuple[str, str]], title: str
    ) -> tuple[int | None, bool]:
        """(conversation id, whether the request continues its transcript) for a request
        whose turns before the new message are `history` ((role, text), system included).

        No chat id: (None, True), a new conversation as before. A chat's next turn continues
        its transcript; a regenerated or edited turn does not, and its reply is stored beside
        the transcript as a candidate (its own prompt kept exactly).
        """
        if caller.chat_id is None:
            return None, True
        conversation_id, transcript = self.store.frontend_chat(
            source=SOURCE, chat_id=caller.chat_id, user_id=caller.user.id, title=title
        )
        shown = [(m.role, m.content.strip()) for m in transcript]
        asked = [(role, text.strip()) for role, text in history if role != "system"]
        return conversation_id, shown == asked
