"""Quick answers to Open WebUI's routine task prompts (app/serving/helper_answers.py), on
prompts shaped as Open WebUI 0.12 writes them (its default templates, shortened)."""

from __future__ import annotations

import json

from app.serving.helper_answers import quick_answer

HISTORY = (
    "<chat_history>\nUSER: How do I return a damaged kettle, please? It leaks.\n"
    "ASSISTANT: Send it back within 30 days.\nUSER: And without the receipt?\n</chat_history>"
)


def task(output: str) -> str:
    return f"### Task:\nDo the task.\n### Guidelines:\n- Be brief.\n### Output:\n{output}\n" + (
        f"### Chat History:\n{HISTORY}"
    )


def test_the_title_is_the_first_words_of_the_first_message() -> None:
    answer = quick_answer(task('JSON format: { "title": "your concise title here" }'))
    assert answer is not None
    assert json.loads(answer) == {"title": "How do I return a damaged"}


def test_tags_follow_ups_queries_and_completions_get_open_webuis_fallbacks() -> None:
    answers = {
        key: quick_answer(task(f'JSON format: {{ "{key}": [] }}'))
        for key in ("tags", "follow_ups", "queries", "text")
    }
    assert {k: json.loads(v or "null") for k, v in answers.items()} == {
        "tags": {"tags": ["General"]},
        "follow_ups": {"follow_ups": []},
        "queries": {"queries": []},
        "text": {"text": ""},
    }


def test_anything_else_is_left_to_the_model() -> None:
    assert quick_answer("How do I return a kettle?") is None  # a person's turn
    assert quick_answer(task("Strictly return one emoji.")) is None
    # the guidelines may quote another task's key: only the Output section counts
    tricky = '### Task:\nSay "title" twice.\n### Output:\nJSON format: { "prompt": "" }'
    assert quick_answer(tricky) is None


def test_a_chat_without_a_user_line_is_a_new_chat() -> None:
    answer = quick_answer(task('JSON format: { "title": "" }').replace("USER:", "SOMEONE:"))
    assert json.loads(answer or "null") == {"title": "New Chat"}
