"""A helper call that must answer in JSON ends when its object closes, or when none begins:
the rule (app/serving/json_answer.py), then a reply streamed by the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.serving.engine import ChatEngine, SamplingParams
from app.serving.frontends import asks_for_json, helper_params
from app.serving.json_answer import OPENS_WITHIN, json_answer_over
from training.registry import Registry


@pytest.mark.parametrize(
    ("text", "over"),
    [
        ('{ "title": "Router Reset" }', True),
        ('```json\n{"tags": ["Tech", "Home"]}', True),
        ('{"follow_ups": ["What if {it} fails?", "Why \\"red\\"?"]', False),  # still open
        ('{"follow_ups": ["What if {it} fails?", "Why \\"red\\"?"]}', True),
        ('{"a": {"b": 1}', False),
        ('{"a": {"b": 1}} and then more', True),
        ("Sure! Here is the JSON", False),  # may still begin
        ("x" * (OPENS_WITHIN + 1), True),  # it is not coming
        ("", False),
    ],
)
def test_when_a_json_answer_is_over(text: str, over: bool) -> None:
    assert json_answer_over(text) is over


def test_only_helper_prompts_that_ask_for_json_end_early() -> None:
    person = SamplingParams(max_new_tokens=300, temperature=0)
    title = [("user", '### Task:\nGenerate a title.\n### Output:\nJSON format: { "title": "" }')]
    emoji = [("user", "Your task is to reflect the speaker's likely facial expression")]
    assert asks_for_json(title) and not asks_for_json(emoji)
    capped = helper_params(person, 128, json=asks_for_json(title))
    assert (capped.max_new_tokens, capped.json_answer, capped.priority) == (128, True, 1)
    assert not helper_params(person, 128, json=asks_for_json(emoji)).json_answer


def test_the_decoding_loop_ends_a_json_answer_that_never_begins(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The tiny model writes no `{`: a JSON helper call ends after OPENS_WITHIN characters,
    the same request without the rule runs to its cap; a person beside it is untouched."""
    engine = ChatEngine(tiny_model_dir, Registry(tmp_path / "adapters"), context_tokens=512)
    ask = [{"role": "user", "content": "tags, please"}]
    plain = SamplingParams(max_new_tokens=120, temperature=0)
    try:
        helper = engine.stream(ask, helper_params(plain, 120, json=True))
        person = engine.stream(ask, plain)
        text = "".join(helper)
        whole = "".join(person)
    finally:
        engine.close()
    assert helper.info is not None and person.info is not None
    assert helper.info.finish_reason == "stop" and person.info.finish_reason == "length"
    assert OPENS_WITHIN < len(text.strip()) and helper.info.new_tokens < 60
    assert "{" not in text and whole.startswith(text)  # the same greedy reply, cut short
