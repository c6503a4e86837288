"""What a hostile or careless client can send to a real `tuneloop serve`, and what it gets back.

Every refused request is a one-line 400 (413 for an oversized body) in OpenAI's error shape,
nothing of it is stored, and serving goes on: other streams finish, a client that goes away
frees its slot, and `/v1/models` says how serving holds up. The same checks are run on
PostgreSQL (`postgres` tier), where a NUL character once reached the database as a 500.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.server import add_user, issue_key, serve

ASK = [{"role": "user", "content": "How do I water tomatoes?"}]
MAX_CHARS = 300
MAX_BODY = 65536


@contextmanager
def limited_server(home: Path, model: Path, **env: str) -> Iterator[dict[str, Any]]:
    add_user(home, "erin", "expert", "pw-erin-secret", **env)
    key = issue_key(home, "erin", **env)
    with serve(
        home,
        model=str(model),
        TUNELOOP_MAX_NEW_TOKENS="16",
        TUNELOOP_MAX_MESSAGE_CHARS=str(MAX_CHARS),
        TUNELOOP_API_MAX_BODY_BYTES=str(MAX_BODY),
        TUNELOOP_CONTEXT_TOKENS="512",
        **env,
    ) as (url, proc):
        yield {"url": url, "home": home, "key": key, "proc": proc}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    home = tmp_path_factory.mktemp("limits") / "home"
    home.mkdir()
    with limited_server(home, tiny_model_dir) as running:
        yield running


def post(server: dict[str, Any], body: Any, path: str = "chat/completions") -> httpx.Response:
    """POST a body as given: a dict as JSON, bytes exactly as they are."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        server["url"] + "v1/" + path,
        content=content,
        headers={"Authorization": f"Bearer {server['key']}", "Content-Type": "application/json"},
        timeout=60,
    )


def stored(home: Path) -> tuple[int, int]:
    """(user messages, responses) in the store."""
    with sqlite3.connect(home / "tuneloop.db") as conn:
        messages = conn.execute("select count(*) from messages").fetchone()[0]
        responses = conn.execute("select count(*) from responses").fetchone()[0]
    return int(messages), int(responses)


def assert_refused(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert "\n" not in error["message"] and len(error["message"]) < 300, error["message"]
    for word in words:
        assert word in error["message"], error["message"]
    return dict(error)


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "tuneloop", "messages": ASK, "max_tokens": 4, **fields}


# Each: the fields that break OpenAI's documented range (or ours), and the param named.
OUT_OF_RANGE = {
    "seed past int64": (body(seed=2**64), "seed"),
    "seed below int64": (body(seed=-(2**63) - 1), "seed"),
    "temperature above 2": (body(temperature=2.5), "temperature"),
    "temperature below 0": (body(temperature=-0.1), "temperature"),
    "top_p above 1": (body(top_p=1.5), "top_p"),
    "max_tokens 0": (body(max_tokens=0), "max_tokens"),
    "max_completion_tokens -1": (body(max_completion_tokens=-1), "max_completion_tokens"),
    "five stops": (body(stop=["a", "b", "c", "d", "e"]), "stop"),
    "empty stop": (body(stop=""), "stop"),
    "n 2": (body(n=2), "n"),
    "tool role": (body(messages=[{"role": "tool", "content": "x"}]), "messages.0.role"),
    "no messages": (body(messages=[]), "messages"),
    "presence_penalty 3": (body(presence_penalty=3), "presence_penalty"),
    "frequency_penalty -3": (body(frequency_penalty=-3), "frequency_penalty"),
    "top_logprobs 21": (body(top_logprobs=21), "top_logprobs"),
    "logit_bias 200": (body(logit_bias={"5": 200}), "logit_bias.5"),
    "an empty stop in a list": (body(stop=["\n", ""]), "stop.1"),
    "an image": (
        body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
        "messages.0.content.0.type",
    ),
    "model name 1k": (body(model="m" * 1000), "model"),
    "stream not a bool": (body(stream={"a": 1}), "stream"),
    "long message": (
        body(messages=[{"role": "user", "content": "x" * (MAX_CHARS + 1)}]),
        "messages.0.content",
    ),
    "long system message": (
        body(messages=[{"role": "system", "content": "s" * (MAX_CHARS + 1)}, *ASK]),
        "messages.0.content",
    ),
    "max_tokens past the context": (body(max_tokens=10**6), "messages"),
}


@pytest.mark.parametrize("case", OUT_OF_RANGE, ids=list(OUT_OF_RANGE))
def test_out_of_range_fields_are_one_line_400s_and_store_nothing(
    server: dict[str, Any], case: str
) -> None:
    request, param = OUT_OF_RANGE[case]
    before = stored(server["home"])
    error = assert_refused(post(server, request), 400)
    assert error["param"] == param
    assert stored(server["home"]) == before


# Bodies no JSON-to-database path may choke on: (raw bytes, words of the message).
HOSTILE = {
    "NUL in a message": (
        json.dumps(body(messages=[{"role": "user", "content": "a\x00b"}])).encode(),
        ("messages.0.content", "NUL"),
    ),
    "lone surrogate": (
        b'{"model": "tuneloop", "messages": [{"role": "user", "content": "\\ud800"}]}',
        ("messages.0.content", "surrogate"),
    ),
    "surrogate in a key": (
        b'{"model": "tuneloop", "messages": [{"role": "user", "content": "hi"}], "\\udc00": 1}',
        ("surrogate",),
    ),
    "nested 30k deep": (b"[" * 30_000 + b"]" * 30_000, ("nests deeper",)),
    "nested 40 deep in an ignored field": (
        json.dumps(body(extra=json.loads("[" * 40 + "]" * 40))).encode(),
        ("nests deeper",),
    ),
    "NaN temperature": (
        b'{"model": "tuneloop", "messages": [], "temperature": NaN}',
        ("NaN",),
    ),
    "a 5000-digit seed": (
        b'{"model": "tuneloop", "messages": [], "seed": ' + b"9" * 5000 + b"}",
        ("unusable value",),
    ),
    "not UTF-8": (b'{"model": "\xff"}', ("UTF-8",)),
    "not JSON": (b"{'model': 1}", ("not valid JSON",)),
    "not an object": (b"[1, 2]", ("JSON object",)),
}


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_hostile_bodies_are_one_line_400s(server: dict[str, Any], case: str) -> None:
    raw, words = HOSTILE[case]
    before = stored(server["home"])
    assert_refused(post(server, raw), 400, *words)
    assert stored(server["home"]) == before


def test_feedback_text_is_checked_the_same_way(server: dict[str, Any]) -> None:
    feedback = {"completion_id": "chatcmpl-x", "rating": -1, "reason": "bad\x00"}
    assert_refused(post(server, feedback, "feedback"), 400, "reason", "NUL")
    raw = b'{"completion_id": "chatcmpl-x", "correction": "\\udfff"}'
    assert_refused(post(server, raw, "feedback"), 400, "correction", "surrogate")


def test_a_body_over_the_limit_is_refused_before_it_is_read(server: dict[str, Any]) -> None:
    big = json.dumps(body(messages=[{"role": "user", "content": "x" * MAX_BODY}])).encode()
    assert_refused(post(server, big), 413, "TUNELOOP_API_MAX_BODY_BYTES")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        yield b'{"model": "tuneloop", "messages": [{"role": "user", "content": "'
        for _ in range(MAX_BODY // 4096 + 2):
            yield b"y" * 4096
        yield b'"}]}'

    response = httpx.post(
        server["url"] + "v1/chat/completions",
        content=chunks(),
        headers={"Authorization": f"Bearer {server['key']}"},
        timeout=60,
    )
    assert_refused(response, 413, "bytes")


def test_every_signed_64_bit_seed_and_top_p_0_are_served(server: dict[str, Any]) -> None:
    client = OpenAI(base_url=server["url"] + "v1", api_key=server["key"], max_retries=0)
    for seed in (2**63 - 1, -(2**63), -1):
        done = client.chat.completions.create(
            model="tuneloop", messages=ASK, seed=seed, temperature=1.0, max_tokens=6
        )
        again = client.chat.completions.create(
            model="tuneloop", messages=ASK, seed=seed, temperature=1.0, max_tokens=6
        )
        assert done.choices[0].message.content == again.choices[0].message.content
    greedy = client.chat.completions.create(
        model="tuneloop", messages=ASK, temperature=0, max_tokens=6
    )
    top_only = client.chat.completions.create(
        model="tuneloop", messages=ASK, temperature=1.5, top_p=0, max_tokens=6
    )
    assert top_only.choices[0].message.content == greedy.choices[0].message.content


def read_stream(server: dict[str, Any], out: dict[str, Any], max_tokens: int = 200) -> None:
    """Stream a completion to its end; `out` gets the chunks and whether [DONE] came."""
    request = body(stream=True, max_tokens=max_tokens, temperature=0)
    out["chunks"], out["done"] = 0, False
    with httpx.stream(
        "POST",
        server["url"] + "v1/chat/completions",
        json=request,
        headers={"Authorization": f"Bearer {server['key']}"},
        timeout=120,
    ) as response:
        for line in response.iter_lines():
            if line == "data: [DONE]":
                out["done"] = True
            elif line.startswith("data: "):
                assert "error" not in json.loads(line[6:]), line
                out["chunks"] += 1


def test_streams_finish_while_hostile_requests_arrive(server: dict[str, Any]) -> None:
    results: list[dict[str, Any]] = [{} for _ in range(3)]
    streams = [threading.Thread(target=read_stream, args=(server, r)) for r in results]
    for thread in streams:
        thread.start()
    time.sleep(0.3)
    for raw, _ in HOSTILE.values():
        assert post(server, raw).status_code == 400
    for request, _ in OUT_OF_RANGE.values():
        assert post(server, request).status_code == 400
    for thread in streams:
        thread.join(timeout=120)
    assert all(r["done"] and r["chunks"] > 2 for r in results), results
    models = httpx.get(
        server["url"] + "v1/models", headers={"Authorization": f"Bearer {server['key']}"}
    ).json()
    assert models["serving"]["decoder_restarts"] == 0
    assert models["serving"]["active"] == 0


def serving(server: dict[str, Any]) -> dict[str, Any]:
    return dict(
        httpx.get(
            server["url"] + "v1/models", headers={"Authorization": f"Bearer {server['key']}"}
        ).json()["serving"]
    )


def drop_whole_request(server: dict[str, Any], request: dict[str, Any]) -> None:
    """Send a non-streamed request on a plain connection and close that connection as soon
    as serve has started the reply (the user's message is stored), before any answer.

    Closing at a moment serve's own state shows, not after a fixed client timeout, keeps the
    test about the server: a timeout makes it a race between that timeout and how fast the
    machine decodes, and a reply that ends first is rightly stored."""
    before = stored(server["home"])[0]
    address = httpx.URL(server["url"])
    conn = http.client.HTTPConnection(address.host, address.port, timeout=60)
    headers = {"Authorization": f"Bearer {server['key']}", "Content-Type": "application/json"}
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(request), headers=headers)
        deadline = time.monotonic() + 30
        while stored(server["home"])[0] == before:
            assert time.monotonic() < deadline, "serve never started the reply"
            time.sleep(0.005)
        assert conn.sock is not None
        answered, _, _ = select.select([conn.sock], [], [], 0)
        assert not answered, "the reply ended before the client left: make it longer"
    finally:
        conn.close()  # closes the socket: serve sees the connection end


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_client_that_goes_away_cancels_its_reply_and_frees_its_slot(
    server: dict[str, Any], stream: bool
) -> None:
    """A 450-token reply takes the tiny model over half a second here; the client leaves long
    before: a whole reply's client once the reply has started, a stream's after two chunks."""
    before = stored(server["home"])
    log = server["home"] / "serve.log"
    cancelled = log.read_text().count("the client went away")
    short = [{"role": "system", "content": "Be brief."}, *ASK]  # room for 450 tokens
    request = body(messages=short, max_tokens=450, temperature=0, stream=stream)
    if stream:
        with httpx.stream(
            "POST",
            server["url"] + "v1/chat/completions",
            json=request,
            headers={"Authorization": f"Bearer {server['key']}"},
            timeout=60,
        ) as response:
            assert response.status_code == 200, response.read()
            lines = response.iter_lines()
            assert next(lines).startswith("data: ") and next(lines) == ""
    else:
        drop_whole_request(server, request)
    deadline = time.monotonic() + 30  # generous: the machine may be busy with other tests
    while log.read_text().count("the client went away") == cancelled:
        assert time.monotonic() < deadline, "serve never noticed the client leave"
        time.sleep(0.05)
    while serving(server)["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert serving(server)["active"] == 0 and time.monotonic() < deadline
    messages, responses = stored(server["home"])
    assert (messages, responses) == (before[0] + 1, before[1])  # the half reply is not kept


def test_a_client_that_leaves_before_its_body_is_read_is_no_server_error(
    server: dict[str, Any],
) -> None:
    """Half a body, then the connection closes: serve logs that the client went away, not
    an internal error, and stores nothing."""
    before = stored(server["home"])
    log = server["home"] / "serve.log"
    gone = log.read_text().count("the client went away")
    failed = log.read_text().count("API request failed")
    address = httpx.URL(server["url"])
    with socket.create_connection((address.host, address.port), timeout=60) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {server['key']}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            + b'{"model": "tuneloop"'
        )
        time.sleep(0.2)  # serve is reading the body when the connection ends
    deadline = time.monotonic() + 30
    while log.read_text().count("the client went away") == gone:
        assert time.monotonic() < deadline, "serve never noticed the client leave"
        time.sleep(0.05)
    assert log.read_text().count("API request failed") == failed
    assert stored(server["home"]) == before
    assert serving(server)["active"] == 0


def test_status_shows_the_running_serve(server: dict[str, Any]) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "TUNELOOP_HOME": str(server["home"])}
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    shown = json.loads(out)["serving"]
    assert shown["pid"] == server["proc"].pid
    assert shown["decoder_restarts"] == 0 and shown["max_active"] == 16


@pytest.mark.postgres
def test_postgres_refuses_the_same_bodies_the_same_way(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from tests.pgcluster import ClusterUnavailable, throwaway_cluster

    try:
        cluster = throwaway_cluster()
        base = cluster.__enter__()
    except ClusterUnavailable as err:
        pytest.skip(str(err))
    try:
        url = f"{base}/postgres"
        home = tmp_path / "home"
        home.mkdir()
        with limited_server(home, tiny_model_dir, TUNELOOP_DATABASE_URL=url) as running:
            for case in ("NUL in a message", "lone surrogate", "nested 30k deep"):
                raw, words = HOSTILE[case]
                assert_refused(post(running, raw), 400, *words)
            feedback = {"completion_id": "chatcmpl-x", "rating": -1, "reason": "bad\x00"}
            assert_refused(post(running, feedback, "feedback"), 400, "NUL")
            client = OpenAI(base_url=running["url"] + "v1", api_key=running["key"])
            done = client.chat.completions.create(model="tuneloop", messages=ASK, max_tokens=4)
            assert done.choices[0].message.content is not None
    finally:
        cluster.__exit__(None, None, None)


def test_a_whole_reply_that_fails_keeps_its_own_error() -> None:
    """Unit test of the disconnect watch around a whole reply: the model's failure must
    come out as the ApiError it is (a 500 saying the model failed), not as a task group's
    wrapper that the routes would answer with a generic internal error."""
    import anyio

    from app.serving.api_models import ApiError
    from app.serving.api_routes import complete_unless_gone

    class Failing:
        def complete(self, call: Any) -> dict[str, Any]:
            raise ApiError(500, "The model failed: boom", type="server_error")

    class Connected:  # a client that stays: its disconnect message never comes
        async def receive(self) -> dict[str, Any]:
            import anyio

            await anyio.sleep_forever()
            raise AssertionError("unreachable")

    async def run() -> None:
        await complete_unless_gone(Failing(), object(), Connected())  # type: ignore[arg-type]

    with pytest.raises(ApiError, match="The model failed: boom"):
        anyio.run(run)
