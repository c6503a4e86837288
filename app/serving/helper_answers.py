"""Quick answers to a front end's routine helper calls, made without the model.

Open WebUI asks the chat model after every reply and rating for a title, tags and
follow-up suggestions, each a prompt of several hundred tokens whose answer must be one
JSON object. Measured on the embedded SmolLM2-135M, the model cannot do these tasks (it
repeats the title and follow-up prompts' instructions until its token cap, and echoes the
tags template), while each prompt costs as much to read as a person's turn. With
TUNELOOP_HELPER_ANSWERS=quick (the default) those tasks get an answer at once: the title
is the first words of the user's first message (what Open WebUI shows when it has no
title), tags are Open WebUI's own fallback ["General"], and no follow-ups, queries or
completions are offered. Any other helper call, and every one with `model`, is decoded.
"""

from __future__ import annotations

import json
import re

TITLE_WORDS = 6
_HISTORY = re.compile(r"<chat_history>\s*(.*?)\s*</chat_history>", re.S)
# Open WebUI's task prompts name the JSON key their answer must carry.
_EMPTY = {
    '"tags"': {"tags": ["General"]},
    '"follow_ups"': {"follow_ups": []},
    '"queries"': {"queries": []},
    '"text"': {"text": ""},
}


def quick_answer(prompt: str) -> str | None:
    """The answer to Open WebUI's task prompt `prompt`, or None when it is not one of the
    tasks answered here (the model answers it then)."""
    if not prompt.lstrip().startswith("### Task:"):
        return None
    output = prompt.split("### Output:", 1)[-1]
    if '"title"' in output:
        return json.dumps({"title": _title(prompt)})
    for key, answer in _EMPTY.items():
        if key in output:
            return json.dumps(answer)
    return None


def _title(prompt: str) -> str:
    """The first words of the chat's first user message (Open WebUI writes the history as
    `USER: ...` / `ASSISTANT: ...` lines)."""
    found = _HISTORY.search(prompt)
    history = found.group(1) if found else ""
    first = next(
        (line.split(":", 1)[1] for line in history.splitlines() if line.startswith("USER:")),
        "",
    )
    words = re.sub(r"\s+", " ", first).strip().split(" ")
    title = " ".join(words[:TITLE_WORDS]).strip(" .,;:!?")
    return title or "New Chat"
