"""The OpenAI-compatible API of a real `tuneloop serve`, driven by the official `openai` client.

One server on the tiny model serves the whole module (starting one takes most of a test's
time); keys come from the real `tuneloop users key` command.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.server import add_user, issue_key, serve
from training.registry import Registry

ASK = [{"role": "user", "content": "How do I water tomatoes?"}]


def rows(db: Path, sql: str, *args: Any) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        text=True,
        capture_output=True,
        env={**os.environ, "TUNELOOP_HOME": str(home)},
        check=False,
    )


@pytest.fixture(scope="module")
def server(
    tiny_model_dir: Path, tiny_adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("api") / "home"
    home.mkdir()
    add_user(home, "erin", "expert", "pw-erin-secret")
    add_user(home, "otto", "operator", "pw-otto-secret")
    add_user(home, "ann", "annotator", "pw-ann-secret")
    registry = Registry(home / "adapters")
    registry.register("v1", tiny_adapters["v1"])
    keys = {  # through the real command, as its output is shown
        name: json.loads(cli(home, "users", "key", name, "--json").stdout)["api_key"]
        for name in ("erin", "otto", "ann")
    }
    with serve(home, model=str(tiny_model_dir), TUNELOOP_MAX_NEW_TOKENS="24") as (url, proc):
        yield {"url": url, "home": home, "keys": keys, "proc": proc}


def client(server: dict[str, Any], who: str = "erin", key: str | None = None) -> OpenAI:
    return OpenAI(base_url=server["url"] + "v1", api_key=key or server["keys"][who], max_retries=0)


def test_models_lists_serving_base_and_every_version(server: dict[str, Any]) -> None:
    ids = [m.id for m in client(server).models.list()]
    assert ids == ["tuneloop", "tuneloop:base", "v1", "tuneloop:task"]


def test_completion_is_stored_as_the_users_turn(server: dict[str, Any]) -> None:
    done = client(server).chat.completions.create(
        model="v1", messages=ASK, temperature=0, max_tokens=12
    )
    text = done.choices[0].message.content
    assert done.id.startswith("chatcmpl-") and text
    assert done.choices[0].finish_reason in ("stop", "length")
    assert done.usage is not None and done.usage.completion_tokens <= 12
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    stored = rows(
        server["home"] / "tuneloop.db",
        "select r.content, r.adapter_version, r.new_tokens, u.name from responses r "
        "join conversations c on c.id = r.conversation_id join users u on u.id = c.user_id "
        "where r.completion_id = ?",
        done.id,
    )
    assert stored == [(text, "v1", done.usage.completion_tokens, "erin")]
    # The transcript holds the user's message and the reply, like a chat on the page.
    turns = rows(
        server["home"] / "tuneloop.db",
        "select m.role, m.content from messages m join responses r "
        "on r.conversation_id = m.conversation_id where r.completion_id = ? order by m.position",
        done.id,
    )
    assert turns == [("user", ASK[0]["content"]), ("assistant", text)]


def test_streaming_completion_ends_and_matches_the_stored_reply(server: dict[str, Any]) -> None:
    api = client(server)
    chunks = list(
        api.chat.completions.create(
            model="tuneloop:base",
            messages=ASK,
            temperature=0,
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    ids = {c.id for c in chunks}
    assert len(ids) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and set(finishes[:-1]) == {None}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    (stored,) = rows(
        server["home"] / "tuneloop.db",
        "select content, adapter_version from responses where completion_id = ?",
        ids.pop(),
    )
    assert stored == (text, None)
    # Greedy: the same request without streaming gives the same text.
    again = api.chat.completions.create(
        model="tuneloop:base", messages=ASK, temperature=0, max_tokens=16
    )
    assert again.choices[0].message.content == text


def test_stop_sequence_cuts_the_reply(server: dict[str, Any]) -> None:
    api = client(server)
    full = api.chat.completions.create(model="tuneloop:base", messages=ASK, temperature=0)
    text = full.choices[0].message.content or ""
    assert len(text) > 6
    stop = text[3:6]
    cut = api.chat.completions.create(
        model="tuneloop:base", messages=ASK, temperature=0, stop=[stop]
    )
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_errors_have_openai_shape_and_status(server: dict[str, Any]) -> None:
    with pytest.raises(openai.AuthenticationError) as bad:
        client(server, key="tl-not-a-key").models.list()
    assert bad.value.status_code == 401 and bad.value.code == "invalid_api_key"
    with pytest.raises(openai.PermissionDeniedError) as annotator:
        client(server, "ann").chat.completions.create(model="tuneloop", messages=ASK)
    assert annotator.value.status_code == 403
    with pytest.raises(openai.NotFoundError) as unknown:
        client(server).chat.completions.create(model="nope", messages=ASK)
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad_param:
        client(server).chat.completions.create(model="tuneloop", messages=ASK, temperature=7)
    assert "temperature" in str(bad_param.value.param)
    with pytest.raises(openai.BadRequestError) as too_long:
        client(server).chat.completions.create(model="tuneloop", messages=ASK, max_tokens=5000)
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client(server).chat.completions.create(
            model="tuneloop", messages=[*ASK, {"role": "assistant", "content": "hi"}]
        )
    raw = httpx.post(
        server["url"] + "v1/chat/completions",
        content=b"{not json",
        headers={"Authorization": f"Bearer {server['keys']['erin']}"},
    )
    assert raw.status_code == 400 and "JSON" in raw.json()["error"]["message"]
    assert "Traceback" not in raw.text


def test_revoked_key_is_refused(server: dict[str, Any]) -> None:
    key = issue_key(server["home"], "otto")
    assert [m.id for m in client(server, key=key).models.list()][0] == "tuneloop"
    out = cli(server["home"], "users", "key", "otto", "--revoke")
    assert out.returncode == 0 and key not in out.stdout + out.stderr
    with pytest.raises(openai.AuthenticationError):
        client(server, key=key).models.list()


def feedback(api: OpenAI, body: dict[str, Any]) -> dict[str, Any]:
    return api.post("/feedback", body=body, cast_to=httpx.Response).json()


def test_feedback_reaches_the_exports_exactly_once(server: dict[str, Any], tmp_path: Path) -> None:
    api = client(server)
    home = server["home"]
    question = [{"role": "user", "content": "Which month comes after June?"}]
    liked, fixed, other, named = (
        api.chat.completions.create(
            model="tuneloop:base", messages=question, temperature=1.0, seed=seed, max_tokens=10
        )
        for seed in (1, 2, 3, 4)
    )
    assert feedback(api, {"completion_id": liked.id, "rating": 1, "reason": "clear"})["kind"] == (
        "rating"
    )
    feedback(api, {"completion_id": fixed.id, "correction": "July comes after June."})
    picked = feedback(api, {"completion_ids": [liked.id, other.id], "choice": "first"})
    assert picked["kind"] == "pick"
    # A 👎 whose reason names the answer trains as that rater's correction.
    feedback(api, {"completion_id": named.id, "rating": -1, "reason": "Wrong, the answer is July"})

    # Someone else's completion, an unknown id, and a malformed body are refused.
    with pytest.raises(openai.NotFoundError):
        stranger = client(server, key=issue_key(home, "otto"))  # a key of their own
        feedback(stranger, {"completion_id": liked.id, "rating": -1})
    with pytest.raises(openai.NotFoundError):
        feedback(api, {"completion_id": "chatcmpl-nope", "rating": -1})
    with pytest.raises(openai.BadRequestError):
        feedback(api, {"completion_id": liked.id, "rating": 2})
    with pytest.raises(openai.BadRequestError):
        feedback(api, {"completion_id": liked.id, "rating": 1, "correction": "both"})

    def export(kind: str) -> list[dict[str, Any]]:
        out = tmp_path / f"{kind}.jsonl"
        done = cli(home, "export", kind, "--out", str(out))
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in out.read_text().splitlines()]

    sft = export("sft")
    assert [r["messages"][-1]["content"] for r in sft].count("July comes after June.") == 1
    assert [r["messages"][-1]["content"] for r in sft].count("July") == 1
    liked_text = liked.choices[0].message.content
    assert [r["messages"][-1]["content"] for r in sft].count(liked_text) == 1
    assert all(r["messages"][-2] == question[0] for r in sft)
    dpo = export("dpo")
    fixed_text, other_text = fixed.choices[0].message.content, other.choices[0].message.content
    edits = [r for r in dpo if r["chosen"][0]["content"] == "July comes after June."]
    assert len(edits) == 1 and edits[0]["rejected"][0]["content"] == fixed_text
    picks = [
        r
        for r in dpo
        if r["chosen"][0]["content"] == liked_text and r["rejected"][0]["content"] == other_text
    ]
    assert len(picks) == 1
    named_text = named.choices[0].message.content
    assert [(r["rejected"][0]["content"]) for r in dpo if r["chosen"][0]["content"] == "July"] == [
        named_text
    ]
    assert named_text not in [r["completion"][0]["content"] for r in export("kto")]
    db = home / "tuneloop.db"
    sources = dict(rows(db, "select source, count(*) from preferences group by 1"))
    assert sources == {"edit": 1, "chat-compare": 1}


def test_admission_refuses_beyond_the_limit_and_frees_slots() -> None:
    """The 429 rule on its own (a real server needs many long replies in flight for it):
    a request waits `wait_seconds` for a slot, and helper calls have a pool of their own."""
    import time
    from types import SimpleNamespace

    import anyio

    from app.serving.api import ApiError, OpenAIApi

    service = SimpleNamespace(store=None)
    api = OpenAIApi(service, versions=list, max_active=2, wait_seconds=0.3)  # type: ignore[arg-type]

    async def scenario() -> None:
        await api.admit()
        await api.admit()
        await api.admit(helper=True)  # a chat's title request: not one of people's slots
        started = time.monotonic()
        with pytest.raises(ApiError) as busy:
            await api.admit()
        assert time.monotonic() - started >= 0.3  # it waited before refusing
        assert busy.value.status == 429 and busy.value.body()["error"]["code"] == "server_busy"
        assert busy.value.response().headers["retry-after"] == "1"
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(api.admit)  # waits ...
            await anyio.sleep(0.1)
            api.release()  # ... and gets the slot freed meanwhile

    anyio.run(scenario)


def test_replies_are_decoded_below_the_servers_priority(server: dict[str, Any]) -> None:
    """TUNELOOP_MODEL_NICE (5 by default): the threads that decode run 5 nice steps below
    the server's others, so clicks and saves go first when the CPU is short."""
    client(server).chat.completions.create(model="v1", messages=ASK, temperature=0, max_tokens=4)
    pid = server["proc"].pid
    nices = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        nices[task.name] = int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
    normal = nices.pop(str(pid))  # the web server's own threads: where serve started
    lowered = min(19, normal + 5)
    assert lowered in nices.values() and set(nices.values()) <= {normal, lowered}, nices
