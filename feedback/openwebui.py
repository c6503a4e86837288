"""Open WebUI's feedback export in our terms: ratings, their scores, and picks. No I/O.

Open WebUI keeps its users' 👍/👎 (with a reason tag, a comment and a 1-10 score) in its own
database; its admin export (`GET /api/v1/evaluations/feedbacks/all/export`, or the file the
admin page saves) is a JSON array of entries `{id, user_id, updated_at, data: {rating,
model_id, reason, comment, details: {rating}}, meta: {chat_id, message_id}, snapshot: {chat:
{title, chat: {history: {messages: {id: {parentId, role, content}}}}}}}`.

Each rated assistant message becomes a `RatedReply`: who rated it (Open WebUI's user id),
which chat and message, up or down, the reason and comment kept as the rating's reason, the
score, and the conversation up to it (rebuilt from the snapshot by following `parentId`), so
a reply tuneloop never served can still be brought in. Two rated replies under the same
parent message (a regeneration, an arena's two models) become a `Pick`: the better rated one
over the other. The store applies both (`feedback.store.frontends`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from feedback.canonical import content_key
from feedback.errors import FeedbackError

SOURCE = "openwebui"
# Roles a snapshot path keeps; Open WebUI has no other roles in a chat history.
_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class RatedReply:
    """One Open WebUI rating of one assistant message."""

    feedback_id: str
    updated_at: int
    user_ref: str  # Open WebUI's user id
    chat_id: str
    message_id: str
    parent_id: str | None
    up: bool
    reason: str | None  # the reason tag and the comment, as one text
    score: int | None  # Open WebUI's 1-10 score of the reply
    model_id: str
    title: str
    prompt: list[dict[str, str]]  # the conversation before the reply ([] without a snapshot)
    content: str | None  # the reply's text (None without a snapshot)


@dataclass(frozen=True)
class Judged:
    """What a pick needs of one applied rating (kept by the store, so a later sync that sees
    only the sibling still makes the pick)."""

    feedback_id: str
    updated_at: int
    user_ref: str
    chat_id: str
    message_id: str
    parent_id: str | None
    up: bool
    score: int | None


@dataclass(frozen=True)
class Pick:
    """The better of two rated replies under one parent message, by one user."""

    user_ref: str
    chat_id: str
    chosen: Judged
    rejected: Judged

    @property
    def dedup_key(self) -> str:
        """The same two messages picked again (a repeated sync or import) give the same key."""
        return content_key(
            {
                "kind": "openwebui-pick",
                "chat": self.chat_id,
                "chosen": self.chosen.message_id,
                "rejected": self.rejected.message_id,
            }
        )


def judged(r: object) -> Judged:
    """The part of a rating that picks are made from: of one in an export (`RatedReply`) or
    of one the store has applied (its row carries the same fields)."""
    return Judged(**{f.name: getattr(r, f.name) for f in fields(Judged)})


def looks_like_export(head: str) -> bool:
    """Whether a file starting with `head` is an Open WebUI feedback export (a JSON array of
    objects with `meta` or `snapshot`), not JSON lines: what `--format auto` goes by."""
    text = head.lstrip("\ufeff \t\r\n")
    return text.startswith("[") and ('"meta"' in text or '"snapshot"' in text or text == "[]")


def parse_export(raw: Any, where: str = "the export") -> list[RatedReply]:
    """The ratings in an export (the parsed JSON array), oldest change first.

    An entry that is not a rating of a chat message (no chat id, a rating of 0) is left out;
    a malformed export raises FeedbackError naming the entry.
    """
    if not isinstance(raw, list):
        raise FeedbackError(f"{where}: an Open WebUI feedback export is a JSON array")
    out = []
    for index, entry in enumerate(raw):
        rated = _entry(entry, f"{where}: entry {index}")
        if rated is not None:
            out.append(rated)
    out.sort(key=lambda r: (r.updated_at, r.feedback_id))
    return out


def parse_text(text: str, where: str) -> list[RatedReply]:
    """`parse_export` of an export file's text."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise FeedbackError(
            f"{where}:{err.lineno}: not JSON ({err.msg}); save the export again"
        ) from None
    return parse_export(raw, where)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise FeedbackError(f"{what} must be a string")
    return value


def _entry(entry: Any, what: str) -> RatedReply | None:
    if not isinstance(entry, dict):
        raise FeedbackError(f"{what} is not a JSON object")
    data = entry.get("data") or {}
    meta = entry.get("meta") or {}
    if not isinstance(data, dict) or not isinstance(meta, dict):
        raise FeedbackError(f"{what}: data and meta must be objects")
    rating = data.get("rating")
    chat_id, message_id = meta.get("chat_id"), meta.get("message_id")
    if not chat_id or not message_id or rating in (None, 0, "0", ""):
        return None  # not a rating of a chat message (or a rating taken back)
    try:
        up = int(rating) > 0
    except (TypeError, ValueError):
        raise FeedbackError(f"{what}: data.rating must be 1 or -1, not {rating!r}") from None
    details = data.get("details") or {}
    score = details.get("rating") if isinstance(details, dict) else None
    if score is not None:
        try:
            score = int(score)
        except (TypeError, ValueError):
            raise FeedbackError(f"{what}: data.details.rating must be 1-10") from None
        if not 1 <= score <= 10:
            raise FeedbackError(f"{what}: data.details.rating must be 1-10, not {score}")
    reason = " — ".join(
        str(part).strip() for part in (data.get("reason"), data.get("comment")) if part
    )
    chat = (entry.get("snapshot") or {}).get("chat") or {}
    messages = ((chat.get("chat") or {}).get("history") or {}).get("messages") or {}
    if not isinstance(messages, dict):
        raise FeedbackError(f"{what}: snapshot history.messages must be an object")
    message_id = _text(message_id, f"{what}: meta.message_id")
    prompt, content, parent = _path(messages, message_id, what)
    return RatedReply(
        feedback_id=_text(entry.get("id"), f"{what}: id"),
        updated_at=int(entry.get("updated_at") or entry.get("created_at") or 0),
        user_ref=_text(entry.get("user_id"), f"{what}: user_id"),
        chat_id=_text(chat_id, f"{what}: meta.chat_id"),
        message_id=message_id,
        parent_id=parent,
        up=up,
        reason=reason or None,
        score=score,
        model_id=str(data.get("model_id") or ""),
        title=str(chat.get("title") or (chat.get("chat") or {}).get("title") or ""),
        prompt=prompt,
        content=content,
    )


def _path(
    messages: dict[str, Any], message_id: str, what: str
) -> tuple[list[dict[str, str]], str | None, str | None]:
    """(the turns before the message, its text, its parent id) from a snapshot's history."""
    message = messages.get(message_id)
    if not isinstance(message, dict):
        return [], None, None  # rated without a snapshot (e.g. through Open WebUI's API)
    parent = message.get("parentId")
    turns: list[dict[str, str]] = []
    seen = {message_id}
    current = parent
    while current:
        if current in seen or len(seen) > 10_000:
            raise FeedbackError(f"{what}: the snapshot's parentId links loop")
        seen.add(current)
        node = messages.get(current)
        if not isinstance(node, dict):
            raise FeedbackError(f"{what}: the snapshot has no message {current!r}")
        if node.get("role") in _ROLES:
            turns.append({"role": str(node["role"]), "content": str(node.get("content") or "")})
        current = node.get("parentId")
    turns.reverse()
    if message.get("role") != "assistant":
        raise FeedbackError(f"{what}: the rated message is not an assistant reply")
    return turns, str(message.get("content") or ""), parent if isinstance(parent, str) else None


def picks(ratings: Iterable[Judged]) -> list[Pick]:
    """The picks the ratings make: under each parent message, one user's best rated reply
    over their worst, when they rated at least two replies there differently.

    Better means 👍 over 👎, then the higher score. Equal ratings make no pick (a tie trains
    nothing). Each user's latest rating of a message counts.
    """
    latest: dict[tuple[str, str], Judged] = {}
    for r in sorted(ratings, key=lambda r: (r.updated_at, r.feedback_id)):
        latest[(r.user_ref, r.message_id)] = r
    siblings: dict[tuple[str, str, str], list[Judged]] = {}
    for r in latest.values():
        if r.parent_id is not None:
            siblings.setdefault((r.user_ref, r.chat_id, r.parent_id), []).append(r)
    out = []
    for (user_ref, chat_id, _), group in siblings.items():
        if len(group) < 2:
            continue
        ranked = sorted(group, key=_merit, reverse=True)
        best, worst = ranked[0], ranked[-1]
        if _merit(best) != _merit(worst):
            out.append(Pick(user_ref=user_ref, chat_id=chat_id, chosen=best, rejected=worst))
    return out


def _merit(r: Judged) -> tuple[int, int]:
    return (1 if r.up else 0, r.score if r.score is not None else 0)
