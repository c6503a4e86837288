"""Checking chat message lists ({"role", "content"} dicts) before they are stored."""

from __future__ import annotations

from typing import Any

from feedback.errors import FeedbackError

CHAT_ROLES = ("system", "user", "assistant")


def check_storable(text: str, what: str = "a string") -> str:
    """`text` if every database can store it; else FeedbackError saying what is wrong.

    PostgreSQL refuses a NUL character in text and no database encodes a lone surrogate,
    so both are refused here, before a transaction, the same way on SQLite and PostgreSQL.
    """
    if "\x00" in text:
        raise FeedbackError(f"{what} holds a NUL character (\\u0000); remove it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise FeedbackError(
            f"{what} holds a lone surrogate (e.g. \\ud800), which is not text"
        ) from None
    return text


def clean_messages(value: Any, *, what: str = "messages") -> list[dict[str, str]]:
    """Check a message list strictly (imports) and return plain {"role", "content"} dicts.

    Every message needs a role of system, user or assistant and non-empty text; other keys
    are dropped. Raises FeedbackError naming the first bad message.
    """
    if not isinstance(value, list) or not value:
        raise FeedbackError(f"{what} must be a non-empty list of {{role, content}} messages")
    cleaned = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise FeedbackError(f"{what}[{index}] must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES:
            raise FeedbackError(
                f"{what}[{index}] has role {role!r}; use 'user', 'assistant' or 'system'"
            )
        if not isinstance(content, str) or not content.strip():
            raise FeedbackError(f"{what}[{index}] ({role}) has empty content; give it text")
        cleaned.append({"role": role, "content": content})
    return cleaned


def check_prompt(value: Any) -> list[dict[str, str]]:
    """Check the message list sent to the model (loosely: empty text is allowed).

    The app records what it really sent, so only the shape is enforced here.
    """
    if not isinstance(value, list):
        raise FeedbackError("prompt must be a list of {role, content} messages")
    cleaned = []
    for index, message in enumerate(value):
        if (
            not isinstance(message, dict)
            or message.get("role") not in CHAT_ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise FeedbackError(
                f"prompt[{index}] must be {{role: system|user|assistant, content: text}}"
            )
        cleaned.append({"role": message["role"], "content": message["content"]})
    return cleaned


def check_conversation(messages: list[dict[str, str]], *, what: str = "messages") -> None:
    """Require an SFT conversation: at least one user turn, ending with an assistant turn."""
    if messages[-1]["role"] != "assistant":
        raise FeedbackError(f"{what} must end with an assistant message (the training target)")
    if not any(message["role"] == "user" for message in messages[:-1]):
        raise FeedbackError(f"{what} needs a user message before the final assistant message")
