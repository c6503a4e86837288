"""The training chat template: the model's own template plus `{% generation %}` markers.

TRL's `assistant_only_loss=True` finds the assistant tokens through `{% generation %}` /
`{% endgeneration %}` blocks in the chat template; most shipped templates (SmolLM2's
included) have none, and SFTTrainer then refuses them. For ChatML templates (the
`<|im_start|>role\\ncontent<|im_end|>\\n` shape) the per-message expression is rewritten so
that an assistant message's content and its `<|im_end|>` sit inside a generation block;
the result is checked to render exactly the same text as the original before it is used.
Any other template needs markers of its own (the error says so).
"""

from __future__ import annotations

import re
from typing import Any

GENERATION_TAG = "{% generation %}"

# The ChatML per-message expression as SmolLM2 / Qwen-style templates write it.
_CHATML_MESSAGE = re.compile(
    r"\{\{-?\s*'<\|im_start\|>'\s*\+\s*message\['role'\]\s*\+\s*'(?:\\n|\n)'\s*\+\s*"
    r"message\['content'\]\s*\+\s*'<\|im_end\|>'\s*\+\s*'(?:\\n|\n)'\s*-?\}\}"
)
_CHATML_TRAINING = (
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endif %}"
)
_PROBE = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello?"},
    {"role": "assistant", "content": "Hi there."},
    {"role": "user", "content": "And again?"},
    {"role": "assistant", "content": "Hi again."},
]


class TemplateError(Exception):
    """The model's chat template cannot be turned into a training template."""


def training_chat_template(tokenizer: Any) -> str:
    """A chat template with generation markers that renders like `tokenizer`'s own."""
    original = getattr(tokenizer, "chat_template", None)
    if not isinstance(original, str) or not original:
        raise TemplateError(
            "the model has no chat template; add one (with {% generation %} markers around "
            "assistant replies) to its tokenizer_config.json"
        )
    if GENERATION_TAG in original:
        return original
    patched, n = _CHATML_MESSAGE.subn(lambda _: _CHATML_TRAINING, original)
    if n != 1:
        raise TemplateError(
            "the model's chat template is not ChatML and has no {% generation %} markers; "
            "training needs a template that marks assistant replies (see TRL's "
            "assistant_only_loss)"
        )
    for probe in (_PROBE, _PROBE[1:]):
        before = tokenizer.apply_chat_template(probe, tokenize=False)
        after = tokenizer.apply_chat_template(probe, tokenize=False, chat_template=patched)
        if before != after:
            raise TemplateError("the training chat template renders differently from the model's")
    return patched


def use_training_template(tokenizer: Any) -> Any:
    """Set the training template on `tokenizer` (in place) and return it."""
    tokenizer.chat_template = training_chat_template(tokenizer)
    return tokenizer
