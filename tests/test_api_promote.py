"""A promotion while 8 API streams run on the batched engine of a real `tuneloop serve`
(and a ninth request meanwhile is refused with 429: the admission limit is 8 here).

Greedy decoding makes a reply a pure function of (prompt, version), so "the stored reply
names the version that wrote it" is checked by comparing each stored text with the same
request answered by that version alone.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.server import add_user, issue_key, serve
from training.registry import Registry

QUESTIONS = [
    "How do I water tomatoes?",
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Which month comes after June?",
    "I would like a recipe for soup.",
    "A bicycle chain needs what?",
    "Is rain likely this evening?",
    "How do I make bread?",
]
MAX_TOKENS = 300


def test_promotion_during_eight_streams_breaks_none(
    tiny_model_dir: Path, tiny_adapters: dict[str, Path], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    add_user(home, "erin", "expert", "pw-erin-secret")
    registry = Registry(home / "adapters")
    for version, path in tiny_adapters.items():
        registry.register(version, path)
    registry.set_current("v1")
    key = issue_key(home, "erin")
    empty_data = tmp_path / "data"  # no system prompt: short prompts, long replies
    empty_data.mkdir()
    env = {
        "TUNELOOP_DATA_DIR": str(empty_data),
        "TUNELOOP_MAX_BATCH": "8",
        "TUNELOOP_API_MAX_ACTIVE": "8",
        # the ninth request below is refused at once, not after waiting for a stream to end
        "TUNELOOP_API_WAIT_SECONDS": "0",
    }
    with serve(home, model=str(tiny_model_dir), **env) as (url, proc):
        api = OpenAI(base_url=url + "v1", api_key=key, max_retries=0)
        results: list[dict[str, Any]] = [{} for _ in QUESTIONS]
        started = threading.Barrier(len(QUESTIONS) + 1)

        def run(i: int) -> None:
            out = results[i]
            try:
                stream = api.chat.completions.create(
                    model="tuneloop",
                    messages=[{"role": "user", "content": QUESTIONS[i]}],
                    temperature=0,
                    max_tokens=MAX_TOKENS,
                    stream=True,
                )
                text, first = "", True
                for chunk in stream:
                    out["id"] = chunk.id
                    if chunk.choices and chunk.choices[0].delta.content:
                        text += chunk.choices[0].delta.content
                        if first:
                            first = False
                            started.wait(timeout=120)
                    if chunk.choices and chunk.choices[0].finish_reason:
                        out["finish"] = chunk.choices[0].finish_reason
                out["text"], out["ended"] = text, time.monotonic()
            except Exception as err:  # counted as a failed stream below
                out["error"] = repr(err)
                if first:
                    started.abort()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(QUESTIONS))]
        for t in threads:
            t.start()
        started.wait(timeout=120)  # every stream has its first text: promote now
        # A ninth request while eight are in flight is turned away, not queued or dropped.
        with pytest.raises(openai.RateLimitError) as busy:
            api.chat.completions.create(
                model="tuneloop", messages=[{"role": "user", "content": "hi"}]
            )
        assert busy.value.status_code == 429 and busy.value.code == "server_busy"
        assert busy.value.response.headers["retry-after"] == "1"
        promote = subprocess.run(
            [sys.executable, "-m", "app.cli", "promote", "v2"],
            env={**os.environ, "TUNELOOP_HOME": str(home)},
            capture_output=True,
            text=True,
            check=True,
        )
        promoted_at = time.monotonic()
        assert "Serving v2" in promote.stdout
        for t in threads:
            t.join(timeout=300)
        assert [r.get("error") for r in results] == [None] * len(QUESTIONS)
        assert all(r.get("finish") in ("stop", "length") for r in results)
        assert any(r["ended"] > promoted_at for r in results), "the switch came too late"

        # The server switched (new requests get v2) without a restart.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            probe = api.chat.completions.create(
                model="tuneloop", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
            if probe.system_fingerprint == "tuneloop-v2":
                break
            time.sleep(0.3)
        assert probe.system_fingerprint == "tuneloop-v2"
        assert proc.poll() is None

        with sqlite3.connect(home / "tuneloop.db") as db:
            stored = {
                cid: (text, version)
                for cid, text, version in db.execute(
                    "select completion_id, content, adapter_version from responses"
                )
            }
        for question, result in zip(QUESTIONS, results, strict=True):
            text, version = stored[result["id"]]
            assert text == result["text"] and version in ("v1", "v2")
            alone = api.chat.completions.create(
                model=version,
                messages=[{"role": "user", "content": question}],
                temperature=0,
                max_tokens=MAX_TOKENS,
            )
            assert alone.choices[0].message.content == text, (question, version)
