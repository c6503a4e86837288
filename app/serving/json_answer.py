"""When a reply that must be one JSON object is over.

A front end's helper prompts (Open WebUI's title, tags, follow-ups, queries, autocomplete)
ask for a single raw JSON object, and the front end reads the text from the first `{` to
the last `}`. Decoding past the object's closing brace, or on and on when no object has
begun, costs the people waiting in the same batch and gives the front end nothing: a small
model often repeats the prompt's instructions until its token cap instead.
"""

from __future__ import annotations

# Characters of text a reply may write before its `{` (a "```json" fence, "Here it is:")
# before it counts as not answering in JSON at all.
OPENS_WITHIN = 32


def json_answer_over(text: str) -> bool:
    """True once `text` holds a whole JSON object (its outer braces balanced, braces in
    strings not counted), or has gone OPENS_WITHIN characters without starting one."""
    start = text.find("{")
    if start < 0:
        return len(text.strip()) > OPENS_WITHIN
    depth, in_string, escaped = 0, False, False
    for char in text[start:]:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return True
    return False
