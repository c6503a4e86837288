"""The chat page's streaming updates: the first text at once, then at most 10 a second, and
always the final text (app/web/ui.py `_throttled`); each update post-processed by us exactly as
Gradio would have done it (`_sent`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import gradio as gr
from gradio.state_holder import SessionState

from app.serving.conversation import ChatState, Turn
from app.web.ui import _sent, _throttled, display


def _paced(items: list[str], gap: float) -> Iterator[str]:
    for item in items:
        yield item
        time.sleep(gap)


def test_a_burst_shows_its_first_and_last_item_only() -> None:
    assert list(_throttled(iter(["a", "ab", "abc", "abcd"]), interval=10.0)) == ["a", "abcd"]


def test_slow_items_all_pass() -> None:
    items = ["a", "ab", "abc"]
    assert list(_throttled(_paced(items, 0.05), interval=0.01)) == items


def test_nothing_in_nothing_out_and_one_item_passes_once() -> None:
    assert list(_throttled(iter([]), interval=1.0)) == []
    assert list(_throttled(iter(["only"]), interval=1.0)) == ["only"]


def test_the_last_item_is_never_dropped_after_a_gap() -> None:
    def items() -> Iterator[str]:
        yield "a"
        time.sleep(0.6)
        yield "ab"  # after the interval: passes
        yield "abc"  # at once: held...
        yield "abcd"  # ...replaced, and passed at the end

    # a generous interval, so that a loaded machine's stalls cannot let "abc" through
    assert list(_throttled(items(), interval=0.5)) == ["a", "ab", "abcd"]


def test_our_postprocessing_sends_what_gradios_own_would() -> None:
    """The streaming chat event runs with postprocess=False and calls `_sent` instead; the
    browser must get the same data either way (checked against Gradio's real pipeline)."""
    with gr.Blocks() as demo:
        outputs = [
            gr.Chatbot(sanitize_html=True, render_markdown=False, allow_tags=False),
            gr.State(None),
            gr.Textbox(),
            gr.Markdown(),
            gr.State(False),
        ]
        gr.Button().click(lambda: None, None, outputs)
    (event,) = demo.fns.values()
    state = ChatState(turns=[Turn("user", "<b>hi</b>\n  there"), Turn("assistant", "Hello! `x<y`")])
    for values in (
        [display(state), state, "", "", False],
        [display(state), state, "kept text", "  ⚠️ Type a message first.\n", True],
        [[], ChatState(), "", "", False],
    ):
        gradio_sent = asyncio.run(demo.postprocess_data(event, list(values), SessionState(demo)))
        ours = _sent(outputs, *values)
        # Gradio keeps State values on the server and sends None for them
        shown = [None if isinstance(o, gr.State) else v for o, v in zip(outputs, ours, strict=True)]
        assert shown == gradio_sent
        assert ours[1] is values[1]  # the state object itself, for the next event
