"""What a chat holds, without the service that moves it: the turns of a conversation, a
browser session's state, a side-by-side comparison, and text cut free of server paths."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Roles allowed into the chat app; annotators work in Argilla.
CHAT_ROLES = ("expert", "operator")
# "Compare against" choices besides registered versions.
COMPARE_SAMPLE = "another sample"
COMPARE_BASE = "base (no adapter)"


class ChatError(Exception):
    """A user-facing problem with a chat action; the message says what to do."""


@dataclass
class Turn:
    """One visible message; assistant turns carry the stored response id."""

    role: str
    content: str
    response_id: int | None = None
    adapter_version: str | None = None


@dataclass
class ChatState:
    """Per-browser-session state: the open conversation and its transcript."""

    conversation_id: int | None = None
    turns: list[Turn] = field(default_factory=list)

    def history(self) -> list[dict[str, str]]:
        return [{"role": t.role, "content": t.content} for t in self.turns]

    def last_reply_index(self) -> int | None:
        for i in range(len(self.turns) - 1, -1, -1):
            if self.turns[i].role == "assistant" and self.turns[i].response_id is not None:
                return i
        return None


@dataclass
class Comparison:
    """Two candidate replies shown side by side, in the (random) order shown."""

    comparison_id: int
    a: str
    b: str


_PATH = re.compile(r"/(?:[^\s/'\"()]+/)+([^\s/'\"()]+)")


def without_paths(text: str) -> str:
    """`text` with every absolute path cut to its last part: the page shows no server paths."""
    return _PATH.sub(r"\1", text)
