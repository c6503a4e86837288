"""`slow`: the real embedded SmolLM2 answers through the app, as the quick start serves it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from gradio_client import Client

from tests.server import add_user, serve

pytestmark = pytest.mark.slow


def test_embedded_model_answers_a_chat_through_the_app(
    _isolated_home: Path, smollm2_dir: Path
) -> None:
    home = _isolated_home
    add_user(home, "erin", "expert", "pw-erin-secret")
    # no TUNELOOP_MODEL: the quick start's path, on its second start (the GGUF's conversion
    # under HOME/models is made once per run: tests/real.py; checked in test_serving_slow.py)
    with serve(home, model=None, TUNELOOP_MAX_NEW_TOKENS="40", TUNELOOP_TEMPERATURE="0") as (
        url,
        _,
    ):
        client = Client(url, auth=("erin", "pw-erin-secret"), verbose=False)
        chat = client.predict("What is the capital of France?", api_name="/chat")[0]
        thumbs = client.predict("fine", api_name="/rate_up")
    content = chat[-1]["content"]  # Gradio 6 sends content as a list of parts
    parts = content if isinstance(content, list) else [content]
    reply = " ".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in parts)
    assert chat[-1]["role"] == "assistant"
    assert len(reply.split()) >= 3, reply  # a real answer in words, streamed by the real model
    assert "Saved" in str(thumbs)
    assert "Converting" not in (home / "serve.log").read_text()  # the cached conversion
    with sqlite3.connect(home / "tuneloop.db") as conn:
        model, tokens = conn.execute("select model, new_tokens from responses").fetchone()
        ratings = conn.execute("select up from ratings").fetchall()
    assert "SmolLM2" in model and tokens > 0
    assert ratings == [(1,)]
