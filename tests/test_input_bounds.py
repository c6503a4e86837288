"""Inputs parsed with bounded memory and refused the same way on both databases:
`tuneloop import` of what is not a regular file or has an over-long line, and text no
database stores (NUL, lone surrogates) through the Store on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from feedback.errors import FeedbackError
from feedback.store import Store
from tests.cli import run_cli

GOOD = b'{"prompt": "fine", "chosen": "yes", "rejected": "no"}\n'


def one_error(out: str) -> str:
    """The `error` of stdout's single JSON object (and nothing else on stdout)."""
    assert out.count("\n") == 1, out
    value = json.loads(out)
    assert set(value) == {"error", "exit_code"} and value["exit_code"] == 1, value
    return str(value["error"])


def imported(monkeypatch, capsys) -> int:
    code, out, _ = run_cli(monkeypatch, capsys, "status", "--json")
    assert code == 0
    return int(json.loads(out)["counts"]["preferences_total"])


@pytest.mark.parametrize("kind", ["device", "fifo", "folder", "link to a device"])
def test_import_refuses_what_is_not_a_regular_file(
    tmp_path: Path, monkeypatch, capsys, kind: str
) -> None:
    path = {
        "device": Path("/dev/zero"),
        "fifo": tmp_path / "pipe",
        "folder": tmp_path,
        "link to a device": tmp_path / "zero.jsonl",
    }[kind]
    if kind == "fifo":
        os.mkfifo(path)  # no writer: opening it for reading would block
    if kind == "link to a device":
        path.symlink_to("/dev/zero")
    code, out, err = run_cli(monkeypatch, capsys, "import", str(path), "--json")
    message = one_error(out)
    assert code == 1 and message.startswith(str(path)), message
    assert ("folder" if kind == "folder" else "not a regular file") in message
    assert err.count("\n") == 1 and err.startswith("error: ")
    code, out, err = run_cli(monkeypatch, capsys, "import", str(path))
    assert code == 1 and out == "" and err.count("\n") == 1


def test_import_refuses_a_line_over_the_limit_by_number(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("TUNELOOP_IMPORT_MAX_LINE_KB", "1")
    path = tmp_path / "in.jsonl"
    fits = b'{"prompt": "' + b"p" * 900 + b'", "chosen": "yes", "rejected": "no"}\n'
    assert len(fits) <= 1024
    path.write_bytes(GOOD + fits + b'{"prompt": "' + b"x" * 5_000_000)  # no newline at all
    code, out, _ = run_cli(monkeypatch, capsys, "import", str(path), "--json")
    message = one_error(out)
    assert code == 1 and message.startswith(f"{path}:3: ") and "longer than 1 KiB" in message
    assert imported(monkeypatch, capsys) == 0  # all or nothing
    path.write_bytes(GOOD + fits)
    code, out, _ = run_cli(monkeypatch, capsys, "import", str(path), "--json")
    assert code == 0 and json.loads(out)["added"] == 2


def test_a_line_exactly_at_the_limit_is_read(tmp_path: Path) -> None:
    from feedback.formats import read_file

    row = b'{"prompt": "p", "chosen": "yes", "rejected": "no"}'
    path = tmp_path / "in.jsonl"
    path.write_bytes(row + b"\n" + row)
    assert len(read_file(path, max_line_bytes=len(row))[1]) == 2
    with pytest.raises(FeedbackError, match=r":1: the line is longer"):
        read_file(path, max_line_bytes=len(row) - 1)


# -- text no database stores, through the Store ------------------------------------------


@pytest.fixture(scope="module")
def pg_server() -> Iterator[str]:
    from tests.pgcluster import ClusterUnavailable, throwaway_cluster

    try:
        with throwaway_cluster() as base:
            yield base
    except ClusterUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        yield Store.open(f"sqlite:///{tmp_path / 'store.db'}")
        return
    from sqlalchemy import create_engine, text

    server = request.getfixturevalue("pg_server")
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield Store.open(f"{server}/{name}")
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.parametrize("bad", ["a\x00b", "a\ud800b"])
def test_the_store_refuses_unstorable_text_alike_on_both_databases(store: Store, bad: str) -> None:
    user = store.add_user(name="erin", role="expert", password="pw")
    cid = store.start_conversation(user_id=user.id, title="t")
    store.add_user_message(conversation_id=cid, content="hello")
    rid = store.add_response(
        conversation_id=cid,
        prompt=[{"role": "user", "content": "hello"}],
        content="hi",
        model="m",
        adapter_version=None,
        params={},
        latency_ms=1.0,
    )
    before = store.counts()
    what = "NUL" if "\x00" in bad else "lone surrogate"
    writes = {
        "message": lambda: store.add_user_message(conversation_id=cid, content=bad),
        "title": lambda: store.start_conversation(user_id=user.id, title=bad),
        "reason": lambda: store.rate(response_id=rid, user_id=user.id, up=False, reason=bad),
        "correction": lambda: store.correct(response_id=rid, user_id=user.id, content=bad),
        "reply": lambda: store.add_response(
            conversation_id=cid,
            prompt=[{"role": "user", "content": bad}],
            content="x",
            model="m",
            adapter_version=None,
            params={},
            latency_ms=1.0,
        ),
    }
    for field, write in writes.items():
        with pytest.raises(FeedbackError) as refused:
            write()
        assert what in str(refused.value) and "\n" not in str(refused.value), field
    assert store.counts() == before
    assert len(store.conversation_messages(conversation_id=cid, user_id=user.id)) == 2


def test_the_api_refuses_unstorable_text_in_any_message(
    _isolated_home: Path, tiny_model_dir: Path
) -> None:
    import httpx
    import openai
    from openai import OpenAI

    from tests.server import add_user, issue_key, serve

    home = _isolated_home
    home.mkdir(parents=True, exist_ok=True)
    add_user(home, "erin", "expert", "pw-erin-secret")
    key = issue_key(home, "erin")
    ask = {"role": "user", "content": "How do I water tomatoes?"}
    with serve(home, model=str(tiny_model_dir), TUNELOOP_MAX_NEW_TOKENS="8") as (url, _):
        api = OpenAI(base_url=url + "v1", api_key=key, max_retries=0)
        for messages in (
            [{"role": "user", "content": "water\x00"}],
            [{"role": "system", "content": "be\x00brief"}, ask],
            [ask, {"role": "assistant", "content": "x\x00"}, ask],
        ):
            with pytest.raises(openai.BadRequestError) as refused:
                api.chat.completions.create(model="tuneloop", messages=messages)  # type: ignore[arg-type]
            assert "NUL" in refused.value.message
        raw = httpx.post(
            url + "v1/chat/completions",
            content=b'{"model": "tuneloop", "messages": [{"role": "user", "content": "a\\ud800"}]}',
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            timeout=60,
        )
        assert raw.status_code == 400 and "Traceback" not in raw.text
        reply = api.chat.completions.create(model="tuneloop", messages=[ask])
        assert reply.choices[0].message.content is not None
    store = Store.open(f"sqlite:///{home / 'tuneloop.db'}")
    assert store.counts()["messages"] == 2  # the one good question and its reply
