"""The chat app: Gradio 6 Blocks wired to `app.serving.chat.ChatService`. No logic lives here.

Experts and operators log in (Gradio's login page, checked against the store), chat with
the served model, and give feedback on any reply: click a reply to select it (the newest is
selected by default), then 👍/👎 with an optional reason, edit it, or compare it with a
second candidate and pick the better one. The like/dislike icons under each reply record
thumbs too.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr

from app.serving.chat import ChatService
from app.serving.conversation import COMPARE_SAMPLE, ChatError, ChatState, Comparison
from app.web.operator import OperatorService, build_operator_tab
from app.web.sanitize import page_html, plain

T = TypeVar("T")
TITLE = "tuneloop"
# While a reply streams, the page is updated at most this often (the first text at once,
# the final text always): each update is a full render and a message to every open tab.
STREAM_INTERVAL_S = 0.1


def _warn(err: ChatError) -> str:
    gr.Warning(html.escape(str(err)))  # the toast shows HTML; error texts can quote users
    return f"⚠️ {plain(str(err))}"


def display(state: ChatState, *, remote: bool = False) -> list[dict[str, str]]:
    """The transcript in Gradio's message format, as sanitised HTML (`app.web.sanitize`)."""
    return [{"role": t.role, "content": page_html(t.content, remote=remote)} for t in state.turns]


def _throttled(items: Iterable[T], interval: float = STREAM_INTERVAL_S) -> Iterator[T]:
    """Pass on the first item, then one at most every `interval` seconds, and the last."""
    last_sent: float | None = None
    held: list[T] = []
    for item in items:
        now = time.monotonic()
        if last_sent is None or now - last_sent >= interval:
            held.clear()
            last_sent = now
            yield item
        else:
            held[:] = [item]
    yield from held


def _sent(outputs: list[Any], *values: Any) -> list[Any]:
    """`values` as Gradio would send them to `outputs`: each component's own postprocess."""
    sent = []
    for component, value in zip(outputs, values, strict=True):
        if isinstance(component, gr.State):  # kept on the server as it is
            sent.append(value)
            continue
        value = component.postprocess(value)
        sent.append(value.model_dump() if hasattr(value, "model_dump") else value)
    return sent


def _selected_text(state: ChatState, index: int | None) -> tuple[str, str]:
    """(description, reply text) of the selected reply, or a hint when there is none."""
    if index is None or not 0 <= index < len(state.turns):
        return "_No reply selected yet: send a message, or click a reply._", ""
    turn = state.turns[index]
    number = sum(1 for t in state.turns[: index + 1] if t.role == "assistant")
    preview = turn.content[:80] + ("…" if len(turn.content) > 80 else "")
    return f"**Selected: reply {number}** — {plain(preview)}", turn.content


def build_ui(service: ChatService, rounds_dir: Path, *, remote_content: bool = False) -> gr.Blocks:
    """The Blocks app, its Operator tab over the rounds in `rounds_dir`. Launch it with
    `app.web.server.launch` so login is enforced.

    `remote_content`: show links and remote images in messages (off: as text).
    """
    engine = service.engine

    def transcript(st: ChatState) -> list[dict[str, str]]:
        return display(st, remote=remote_content)

    def header(request: gr.Request) -> str:
        version = engine.serving_version()
        adapter = f"adapter **{plain(version)}**" if version else "**base model** (no adapter)"
        who = plain(request.username or "?")
        return (
            f"### tuneloop · answering: `{engine.model_name}` · {adapter}\n"
            f"Signed in as **{who}** · [Log out](/logout)"
        )

    with gr.Blocks(title=TITLE) as demo:
        state = gr.State(ChatState())
        selected = gr.State(None)
        comparison = gr.State(None)
        replied = gr.State(False)  # did the last chat event add a reply (see `settle`)

        model_info = gr.Markdown(elem_id="model-info")
        with gr.Row():
            with gr.Column(scale=1, min_width=220):
                new_chat = gr.Button("New chat", elem_id="new-chat")
                conversations = gr.Dropdown(
                    label="Your conversations", choices=[], value=None, elem_id="conversations"
                )
            with gr.Column(scale=4):
                chatbot = gr.Chatbot(
                    label="Chat",
                    elem_id="chat",
                    height=420,
                    sanitize_html=True,  # a second guard behind `page_html`
                    render_markdown=False,  # messages arrive rendered and sanitised
                    allow_tags=False,
                    # Gradio's copy buttons would copy that HTML, not the text; a reply's
                    # text is in the Edit box once it is selected.
                    buttons=[],
                    feedback_options=("Like", "Dislike"),
                )
                notice = gr.Markdown(elem_id="notice")
                with gr.Row():
                    message = gr.Textbox(
                        placeholder="Ask the assistant…",
                        show_label=False,
                        elem_id="message",
                        scale=5,
                        lines=1,
                        max_lines=8,
                    )
                    send = gr.Button("Send", variant="primary", elem_id="send", scale=1)
                with gr.Accordion("Feedback on the selected reply", open=True):
                    selected_info = gr.Markdown(elem_id="selected")
                    with gr.Row():
                        thumb_up = gr.Button("👍 Good", elem_id="thumb-up")
                        thumb_down = gr.Button("👎 Bad", elem_id="thumb-down")
                        reason = gr.Textbox(
                            label="Reason (optional)", elem_id="reason", scale=3, max_lines=2
                        )
                    correction = gr.Textbox(
                        label="Edit: write the answer you wanted",
                        lines=3,
                        max_lines=12,
                        elem_id="correction",
                    )
                    save_correction = gr.Button("Save correction", elem_id="save-correction")
                    with gr.Row():
                        against = gr.Dropdown(
                            label="Compare against",
                            choices=service.compare_choices(),
                            value=COMPARE_SAMPLE,
                            elem_id="compare-against",
                            scale=3,
                        )
                        compare = gr.Button("Compare", elem_id="compare", scale=1)
                    with gr.Row(visible=False, elem_id="pair") as pair:
                        with gr.Column():
                            gr.Markdown("**A**")
                            cand_a = gr.HTML(elem_id="cand-a")
                        with gr.Column():
                            gr.Markdown("**B**")
                            cand_b = gr.HTML(elem_id="cand-b")
                    with gr.Row(visible=False) as picks:
                        pick_a = gr.Button("A is better", elem_id="pick-a")
                        pick_tie = gr.Button("Tie", elem_id="pick-tie")
                        pick_b = gr.Button("B is better", elem_id="pick-b")

        # Operators only: training rounds, promotion, rollback (app/web/operator.py).
        build_operator_tab(
            OperatorService(store=service.store, registry=engine.registry, rounds_dir=rounds_dir),
            demo,
        )

        # -- page load and the model line ---------------------------------------------
        def on_load(request: gr.Request) -> tuple[Any, ...]:
            try:
                user = service.user(request.username)
            except ChatError as err:
                return header(request), gr.update(choices=[]), gr.update(), _warn(err)
            return (
                header(request),
                gr.update(choices=service.conversations(user), value=None),
                gr.update(choices=service.compare_choices(), value=COMPARE_SAMPLE),
                "",
            )

        demo.load(on_load, None, [model_info, conversations, against, notice])
        gr.Timer(2.0).tick(header, None, model_info, show_progress="hidden", queue=False)

        # -- chatting ------------------------------------------------------------------
        # A reply streams as many small updates, and Gradio's own post-processing of an
        # update hops to a worker thread once per output (~0.7 ms and three thread wake-ups
        # for these outputs, taken from the cores the model is generating on). So the
        # streaming event carries only what changes while a reply streams, is registered
        # with postprocess=False, and post-processes its values itself, in the thread it
        # already runs in, with the components' own `postprocess` (see `_sent`). The
        # selection, the edit box and the conversation list follow once, in `settle`.
        streamed = [chatbot, state, message, notice, replied]

        def respond(text: str, st: ChatState, request: gr.Request) -> Iterator[list[Any]]:
            try:
                user = service.user(request.username)
                service.check_message(text)
            except ChatError as err:  # nothing was sent: keep the text so it can be fixed
                yield _sent(streamed, transcript(st), st, text, _warn(err), False)
                return
            try:
                for partial in _throttled(service.send(user, st, text)):
                    # send() stores the reply and adds its turn just before its last item
                    done = st.turns[-1].role == "assistant"
                    chat = transcript(st)
                    if not done:
                        partial_html = page_html(partial, remote=remote_content)
                        chat.append({"role": "assistant", "content": partial_html})
                    yield _sent(streamed, chat, st, "", "", done)
            except ChatError as err:
                yield _sent(streamed, transcript(st), st, "", _warn(err), False)

        def settle(st: ChatState, added: bool, request: gr.Request) -> tuple[Any, ...]:
            """After a reply: select it, put its text in the edit box, list the conversation."""
            if not added:  # nothing new (refused or failed): leave the selection alone
                return gr.update(), gr.update(), gr.update(), gr.update()
            index = st.last_reply_index()
            info, text = _selected_text(st, index)
            try:
                user = service.user(request.username)
                convs = gr.update(choices=service.conversations(user), value=st.conversation_id)
            except ChatError:
                convs = gr.update()
            return index, info, text, convs

        # The send button is the /chat endpoint; Enter in the box runs the same, privately.
        for trigger, api, shown in (
            (send.click, "chat", "public"),
            (message.submit, None, "private"),
        ):
            trigger(
                respond,
                [message, state],
                streamed,
                api_name=api,
                api_visibility=shown,
                postprocess=False,
            ).then(
                settle,
                [state, replied],
                [selected, selected_info, correction, conversations],
                api_visibility="private",
            )

        def start_new() -> tuple[Any, ...]:
            st = ChatState()
            info, _ = _selected_text(st, None)
            return [], st, None, info, "", "", gr.update(visible=False), gr.update(visible=False)

        fresh = [chatbot, state, selected, selected_info, correction, notice, pair, picks]
        new_chat.click(start_new, None, fresh, api_name="new_chat").then(
            lambda: gr.update(value=None), None, conversations, api_visibility="private"
        )
        # The chatbot's own "clear" icon starts a new conversation too (nothing is deleted).
        chatbot.clear(start_new, None, fresh, api_visibility="private")

        def reopen(conversation_id: int | None, request: gr.Request) -> tuple[Any, ...]:
            if conversation_id is None:
                return (gr.update(),) * 6
            try:
                user = service.user(request.username)
                st = service.open(user, int(conversation_id))
            except ChatError as err:
                return gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), _warn(err)
            index = st.last_reply_index()
            info, text = _selected_text(st, index)
            return transcript(st), st, index, info, text, ""

        conversations.input(
            reopen,
            [conversations],
            [chatbot, state, selected, selected_info, correction, notice],
        )

        # -- choosing a reply ----------------------------------------------------------
        def select_reply(st: ChatState, evt: gr.SelectData) -> tuple[Any, ...]:
            index = evt.index if isinstance(evt.index, int) else evt.index[0]
            if not 0 <= index < len(st.turns) or st.turns[index].role != "assistant":
                return gr.update(), gr.update(), gr.update()
            info, text = _selected_text(st, index)
            return index, info, text

        chatbot.select(select_reply, [state], [selected, selected_info, correction])

        # -- feedback ------------------------------------------------------------------
        def rate(up: bool) -> Any:
            def handler(
                st: ChatState, index: int | None, why: str, request: gr.Request
            ) -> tuple[str, Any]:
                try:
                    user = service.user(request.username)
                    return plain(service.rate(user, st, index, up=up, reason=why or "")), ""
                except ChatError as err:
                    return _warn(err), gr.update()

            return handler

        thumb_up.click(rate(True), [state, selected, reason], [notice, reason], api_name="rate_up")
        thumb_down.click(
            rate(False), [state, selected, reason], [notice, reason], api_name="rate_down"
        )

        def like(st: ChatState, why: str, evt: gr.LikeData, request: gr.Request) -> tuple[str, Any]:
            index = evt.index if isinstance(evt.index, int) else evt.index[0]
            liked = evt.liked if isinstance(evt.liked, bool) else evt.liked == "Like"
            try:
                user = service.user(request.username)
                return plain(service.rate(user, st, index, up=liked, reason=why or "")), ""
            except ChatError as err:
                return _warn(err), gr.update()

        chatbot.like(like, [state, reason], [notice, reason])

        def save_edit(st: ChatState, index: int | None, text: str, request: gr.Request) -> str:
            try:
                user = service.user(request.username)
                return plain(service.correct(user, st, index, text))
            except ChatError as err:
                return _warn(err)

        save_correction.click(save_edit, [state, selected, correction], notice, api_name="correct")

        def run_compare(
            st: ChatState, index: int | None, choice: str, request: gr.Request
        ) -> Iterator[tuple[Any, ...]]:
            hidden = gr.update(visible=False)
            # Visibility is sent only when it changes: a visibility update on every streamed
            # chunk makes the server rebuild the hidden rows each time (seconds per compare
            # under load), which delays every other expert's clicks.
            shown: tuple[bool, bool] | None = None
            try:
                user = service.user(request.username)
                candidates = service.compare(user, st, index, choice or COMPARE_SAMPLE)
                for item in _throttled(candidates):
                    done = isinstance(item, Comparison)
                    wanted = (True, done)
                    rows = [
                        gr.update(visible=v) if shown is None or v != s else gr.update()
                        for v, s in zip(wanted, shown or wanted, strict=True)
                    ]
                    shown = wanted
                    if isinstance(item, Comparison):
                        yield (
                            page_html(item.a, remote=remote_content),
                            page_html(item.b, remote=remote_content),
                            item.comparison_id,
                            *rows,
                            "Which reply is better?",
                        )
                    else:
                        waiting = "<p><em>generating a second reply…</em></p>"
                        yield ("<p>…</p>", waiting, None, *rows, "")
            except ChatError as err:
                yield "", "", None, hidden, hidden, _warn(err)

        compare.click(
            run_compare,
            [state, selected, against],
            [cand_a, cand_b, comparison, pair, picks, notice],
            api_name="compare",
        )

        def pick(choice: str) -> Any:
            def handler(cid: int | None, request: gr.Request) -> tuple[Any, ...]:
                try:
                    user = service.user(request.username)
                    saved = service.pick(user, cid, choice)
                except ChatError as err:
                    return _warn(err), gr.update(), gr.update()
                return plain(saved), None, gr.update(visible=False)

            return handler

        for button, choice in ((pick_a, "A"), (pick_b, "B"), (pick_tie, "tie")):
            button.click(
                pick(choice), [comparison], [notice, comparison, picks], api_name=f"pick_{choice}"
            )

    return demo
