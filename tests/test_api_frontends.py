"""A chat front end (Open WebUI) in front of a real `tuneloop serve`, through the same HTTP
calls Open WebUI makes, with the official `openai` client and the headers Open WebUI forwards
(`ENABLE_FORWARD_USER_INFO_HEADERS=true`): helper calls answered but not stored, end users
kept apart, one conversation per chat, and its feedback export attached to what was served.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from feedback.openwebui import parse_export
from feedback.openwebui_sync import apply
from feedback.store import Store
from tests.server import add_user, issue_key, serve

# Open WebUI's title prompt (its default template, shortened), as it sends it.
TITLE_TASK = (
    "### Task:\nGenerate a concise title summarizing the chat history.\n### Chat History:\n"
    "<chat_history>\nUSER: How do I return a kettle?\n</chat_history>"
)
HELPER_CAP = 5


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    home = tmp_path_factory.mktemp("frontends") / "home"
    home.mkdir()
    add_user(home, "owui", "expert", "pw-owui-secret")  # the key Open WebUI is given
    add_user(home, "erin", "expert", "pw-erin-secret")  # an expert's own key
    keys = {name: issue_key(home, name) for name in ("owui", "erin")}
    with serve(
        home,
        model=str(tiny_model_dir),
        TUNELOOP_MAX_NEW_TOKENS="12",
        TUNELOOP_TRUSTED_FRONTENDS="owui",
        TUNELOOP_HELPER_MAX_TOKENS=str(HELPER_CAP),
    ) as (url, _):
        yield {"url": url, "home": home, "keys": keys}


def client(server: dict[str, Any], who: str = "owui") -> OpenAI:
    return OpenAI(base_url=server["url"] + "v1", api_key=server["keys"][who], max_retries=0)


def forwarded(user_id: str, chat_id: str | None, *, role: str = "user") -> dict[str, str]:
    """The headers Open WebUI 0.12 adds to every backend call."""
    headers = {
        "X-OpenWebUI-User-Name": "Dana%20Expert",
        "X-OpenWebUI-User-Id": user_id,
        "X-OpenWebUI-User-Email": f"{user_id[:6]}@example.org",
        "X-OpenWebUI-User-Role": role,
    }
    if chat_id:
        headers["X-OpenWebUI-Chat-Id"] = chat_id
    return headers


def rows(server: dict[str, Any], sql: str, *args: Any) -> list[tuple]:
    with sqlite3.connect(server["home"] / "tuneloop.db") as conn:
        return conn.execute(sql, args).fetchall()


def conversations(server: dict[str, Any]) -> int:
    return int(rows(server, "select count(*) from conversations")[0][0])


def ask(server: dict[str, Any], messages: list[dict[str, str]], headers: dict[str, str]) -> Any:
    return client(server).chat.completions.create(
        model="tuneloop",
        messages=messages,
        temperature=0,
        extra_headers=headers,  # type: ignore[arg-type]
    )


def test_helper_calls_are_answered_capped_and_not_stored(server: dict[str, Any]) -> None:
    before = conversations(server)
    user = str(uuid.uuid4())
    title = client(server).chat.completions.create(
        model="tuneloop",
        messages=[{"role": "user", "content": TITLE_TASK}],
        max_tokens=1000,  # what Open WebUI asks for a title
        extra_headers=forwarded(user, str(uuid.uuid4())),
    )
    assert title.choices[0].message.content is not None
    assert title.usage is not None and title.usage.completion_tokens <= HELPER_CAP
    unstored = client(server, "erin").chat.completions.create(
        model="tuneloop", messages=[{"role": "user", "content": "Just a quick check"}], store=False
    )
    task_model = client(server, "erin").chat.completions.create(
        model="tuneloop:task", messages=[{"role": "user", "content": "Summarise: kettles"}]
    )
    assert unstored.choices[0].message.content is not None
    assert task_model.choices[0].message.content is not None
    assert conversations(server) == before  # none of the three was stored
    stored = rows(
        server,
        "select count(*) from responses where completion_id in (?, ?, ?)",
        title.id,
        unstored.id,
        task_model.id,
    )
    assert stored == [(0,)]
    assert "tuneloop:task" in [m.id for m in client(server).models.list()]


def test_open_webuis_routine_tasks_are_answered_without_the_model(
    server: dict[str, Any],
) -> None:
    """Its title and tags prompts (default TUNELOOP_HELPER_ANSWERS=quick), as Open WebUI
    sends them: whole and streamed, no token decoded, nothing stored."""
    before = conversations(server)
    history = "<chat_history>\nUSER: How do I return a kettle?\n</chat_history>"
    title = f'### Task:\nGenerate a title.\n### Output:\nJSON format: {{ "title": "" }}\n{history}'
    tags = f'### Task:\nGenerate tags.\n### Output:\nJSON format: {{ "tags": [] }}\n{history}'
    answer = client(server).chat.completions.create(
        model="tuneloop",
        messages=[{"role": "user", "content": title}],
        max_tokens=1000,
        extra_headers=forwarded(str(uuid.uuid4()), str(uuid.uuid4())),
    )
    assert answer.choices[0].message.content == '{"title": "How do I return a kettle"}'
    assert answer.usage is not None and answer.usage.completion_tokens == 0
    stream = client(server).chat.completions.create(
        model="tuneloop", messages=[{"role": "user", "content": tags}], stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == '{"tags": ["General"]}'
    assert conversations(server) == before


def test_a_trusted_front_ends_users_are_kept_apart_one_conversation_per_chat(
    server: dict[str, Any],
) -> None:
    dana, lee = str(uuid.uuid4()), str(uuid.uuid4())
    chat = str(uuid.uuid4())
    first = ask(server, [{"role": "user", "content": "Where is my parcel?"}], forwarded(dana, chat))
    reply = first.choices[0].message.content or ""
    history = [
        {"role": "user", "content": "Where is my parcel?"},
        {"role": "assistant", "content": reply.strip()},  # Open WebUI keeps it stripped
        {"role": "user", "content": "It is late."},
    ]
    ask(server, history, forwarded(dana, chat, role="admin"))  # the role header raises nothing
    regenerated = ask(server, history, forwarded(dana, chat))  # the page's regenerate
    ask(server, [{"role": "user", "content": "Hello from Lee"}], forwarded(lee, str(uuid.uuid4())))

    owners = rows(
        server,
        "select u.name, u.role, count(distinct c.id) from conversations c "
        "join users u on u.id = c.user_id where u.name in (?, ?) group by u.name, u.role",
        f"openwebui-{dana}",
        f"openwebui-{lee}",
    )
    assert sorted(owners) == sorted(
        [(f"openwebui-{dana}", "expert", 1), (f"openwebui-{lee}", "expert", 1)]
    )
    transcript = rows(
        server,
        "select m.role, m.content from messages m join conversations c on c.id = m.conversation_id "
        "join users u on u.id = c.user_id where u.name = ? order by m.position",
        f"openwebui-{dana}",
    )
    assert [r[0] for r in transcript] == ["user", "assistant", "user", "assistant"]
    kinds = rows(
        server,
        "select r.kind, r.completion_id from responses r join conversations c "
        "on c.id = r.conversation_id join users u on u.id = c.user_id where u.name = ? "
        "order by r.id",
        f"openwebui-{dana}",
    )
    assert [k for k, _ in kinds] == ["reply", "reply", "candidate"]
    assert kinds[-1][1] == regenerated.id
    # The key's own account owns none of them.
    assert rows(
        server,
        "select count(*) from conversations c join users u on u.id = c.user_id where u.name='owui'",
    ) == [(0,)]


def test_an_untrusted_keys_headers_are_ignored(server: dict[str, Any]) -> None:
    mallory = str(uuid.uuid4())
    client(server, "erin").chat.completions.create(
        model="tuneloop",
        messages=[{"role": "user", "content": "Attribute me to someone else"}],
        extra_headers=forwarded(mallory, str(uuid.uuid4()), role="admin"),
    )
    assert rows(server, "select count(*) from users where name = ?", f"openwebui-{mallory}") == [
        (0,)
    ]
    owner = rows(
        server,
        "select u.name from conversations c join users u on u.id = c.user_id "
        "order by c.id desc limit 1",
    )
    assert owner == [("erin",)]


def test_its_feedback_export_attaches_to_the_replies_served(server: dict[str, Any]) -> None:
    """The ratings of a chat tuneloop served land on the stored replies, attributed to the
    end user; nothing is brought in twice, and the served conversation stays the only one."""
    dana, chat = str(uuid.uuid4()), str(uuid.uuid4())
    question = [{"role": "user", "content": "Can I pay by card?"}]
    done = ask(server, question, forwarded(dana, chat))
    text = (done.choices[0].message.content or "").strip()
    entry = {
        "id": str(uuid.uuid4()),
        "user_id": dana,
        "version": 0,
        "type": "rating",
        "data": {"rating": -1, "model_id": "tuneloop", "reason": "Wrong", "comment": "no"},
        "meta": {"chat_id": chat, "message_id": "m2", "message_index": 2},
        "snapshot": {
            "chat": {
                "title": "Card",
                "chat": {
                    "history": {
                        "messages": {
                            "m1": {
                                "parentId": None,
                                "role": "user",
                                "content": "Can I pay by card?",
                            },
                            "m2": {"parentId": "m1", "role": "assistant", "content": text},
                        }
                    }
                },
            }
        },
        "created_at": 1,
        "updated_at": 1,
    }
    store = Store.open(f"sqlite:///{server['home'] / 'tuneloop.db'}")
    before = conversations(server)
    report = apply(store, parse_export([entry]))
    assert (report.rated, report.brought_in) == (1, 0)
    assert conversations(server) == before
    rated = rows(
        server,
        "select u.name, r.up, r.reason, s.completion_id from ratings r join users u "
        "on u.id = r.user_id join responses s on s.id = r.response_id",
    )
    assert (f"openwebui-{dana}", 0, "Wrong — no", done.id) in rated


def test_tuneloop_import_cli_is_on_path() -> None:
    """`tuneloop import --format openwebui` is listed by the real command's help."""
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "import", "--help"],
        text=True,
        capture_output=True,
        env={**os.environ},
        check=True,
    ).stdout
    assert "openwebui" in out


def test_an_end_user_the_operator_disabled_is_refused(server: dict[str, Any]) -> None:
    import openai

    sam = str(uuid.uuid4())
    ask(server, [{"role": "user", "content": "hi"}], forwarded(sam, str(uuid.uuid4())))
    subprocess.run(
        [sys.executable, "-m", "app.cli", "users", "disable", f"openwebui-{sam}"],
        env={**os.environ, "TUNELOOP_HOME": str(server["home"])},
        check=True,
        capture_output=True,
    )
    with pytest.raises(openai.PermissionDeniedError, match="disabled"):
        ask(server, [{"role": "user", "content": "again"}], forwarded(sam, str(uuid.uuid4())))
