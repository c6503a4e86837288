"""The real Open WebUI 0.12.4 (`.venv-openwebui`, built by `.ci/setup test`) as the chat page of
a real `tuneloop serve`, driven over Open WebUI's own HTTP API as its page drives it.

A user chats two turns, rates the first reply 👍 (score 8), the second 👎 with a comment,
regenerates the second and rates the new reply 👍 (score 9); Open WebUI meanwhile sends its
title, tag and follow-up requests. Then `tuneloop openwebui sync` brings the ratings in, and
`tuneloop export sft|kto|dpo` hold exactly the rows those ratings make, attributed to that
user; the helper calls left no conversation; a second sync adds nothing; a sync killed part
way and run again loses nothing and counts nothing twice.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_cli
from tests.openwebui import missing, serve_behind_openwebui
from tests.server import add_user, issue_key
from tests.tiny import build_tiny_model

pytestmark = [
    pytest.mark.openwebui,
    pytest.mark.skipif(missing() is not None, reason=missing() or ""),
]


def tuneloop(home: Path, *args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args],
        env={**os.environ, "TUNELOOP_HOME": str(home), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(capsys: Any, home: Path, *args: str, env: dict[str, str]) -> dict[str, Any]:
    """`tuneloop ARGS --json` through its entry point in this process (a second of start-up
    saved per command; the sync killed part way below is a process of its own)."""
    capsys.readouterr()  # what the test printed before (a library's notes) is not the command's
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"TUNELOOP_HOME": str(home), **env}.items():
            mp.setenv(key, value)
        code, out, err = run_cli(mp, capsys, *args, "--json")
    assert code == 0, err
    return dict(json.loads(out))


def query(home: Path, sql: str, *args: Any) -> list[tuple]:
    with sqlite3.connect(home / "tuneloop.db") as conn:
        return conn.execute(sql, args).fetchall()


def exported(capsys: Any, home: Path, kind: str, env: dict[str, str]) -> list[dict[str, Any]]:
    out = home / f"{kind}.jsonl"
    run(capsys, home, "export", kind, "--out", str(out), "--raw", env=env)
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_open_webui_chat_rate_regenerate_sync(tmp_path: Path, capsys) -> None:
    model = build_tiny_model(tmp_path / "tiny")
    # Open WebUI's helper prompts run to ~700 tokens of the tiny vocabulary.
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4096}))
    home = tmp_path / "home"
    home.mkdir()
    add_user(home, "owui", "expert", "pw-owui-secret")
    key = issue_key(home, "owui")
    with serve_behind_openwebui(
        tmp_path / "owui",
        home,
        model=str(model),
        api_key=key,
        TUNELOOP_MAX_NEW_TOKENS="12",
        TUNELOOP_TRUSTED_FRONTENDS="owui",
    ) as (url, owui):
        admin, _ = owui.signup("Admin", "admin@example.org", "pw-admin-1")
        token, dana = owui.add_user(admin, "Dana Expert", "dana@example.org", "pw-dana-1")
        assert "tuneloop" in owui.models(token)
        first = owui.send(token, "How do I return a damaged kettle?")
        first_rating = owui.rate(token, first, 1, score=8)
        second = owui.send(
            token, "And if I lost the receipt?", chat_id=first.chat_id, after=first.reply_id
        )
        owui.rate(token, second, -1, reason="Not helpful", comment="It ignores the receipt")
        third = owui.regenerate(token, second)
        owui.rate(token, third, 1, score=9)
        texts = {
            m_id: m["content"].strip()
            for m_id, m in owui.chat_record(token, first.chat_id)["chat"]["history"][
                "messages"
            ].items()
        }

        token_file = tmp_path / "owui-token"
        token_file.write_text(admin)
        token_file.chmod(0o600)
        env = {"TUNELOOP_OPENWEBUI_URL": owui.url, "TUNELOOP_OPENWEBUI_TOKEN_FILE": str(token_file)}
        report = run(capsys, home, "openwebui", "sync", env=env)
        assert (report["entries"], report["rated"], report["brought_in"], report["picks"]) == (
            3,
            3,
            0,
            1,
        ), report

        # Attributed to Dana's own account; the conversation is hers, and it is the only
        # one: Open WebUI's title, tag and follow-up requests left none.
        name = f"openwebui-{dana}"
        assert query(
            home,
            "select u.name, count(*) from ratings r join users u on u.id = "
            "r.user_id group by u.name",
        ) == [(name, 3)]
        assert query(
            home, "select u.name from conversations c join users u on u.id = c.user_id"
        ) == [(name,)]
        assert query(home, "select count(*) from conversations where title like '%### Task%'") == [
            (0,)
        ]

        sft = exported(capsys, home, "sft", env)
        kto = exported(capsys, home, "kto", env)
        dpo = exported(capsys, home, "dpo", env)
        assert sorted(r["messages"][-1]["content"].strip() for r in sft) == sorted(
            [texts[first.reply_id], texts[third.reply_id]]
        )
        assert [(r["completion"][0]["content"].strip(), r["label"]) for r in kto] == [
            (texts[first.reply_id], True)
        ]
        assert [
            (r["chosen"][0]["content"].strip(), r["rejected"][0]["content"].strip()) for r in dpo
        ] == [(texts[third.reply_id], texts[second.reply_id])]

        counts = run(capsys, home, "status", env=env)["counts"]
        again = run(capsys, home, "openwebui", "sync", env=env)
        assert (again["entries"], again["picks"]) == (0, 0)
        assert run(capsys, home, "status", env=env)["counts"] == counts

        # More ratings; a sync killed (SIGKILL) the moment its batch of ratings is committed,
        # before it makes its picks and reports; then run again.
        fourth = owui.send(token, "Thanks!", chat_id=first.chat_id, after=third.reply_id)
        owui.rate(token, fourth, -1, comment="too short", tags=False)
        time.sleep(1.1)  # Open WebUI's updated_at counts whole seconds
        owui.rate(token, first, -1, comment="changed my mind", tags=False, change=first_rating)
        applied = len(query(home, "select id from openwebui_feedback"))
        proc = tuneloop(home, "openwebui", "sync", env=env)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if len(query(home, "select id from openwebui_feedback")) > applied:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, "the sync ended before it could be killed"
        run(capsys, home, "openwebui", "sync", env=env)
        latest = dict(
            query(
                home,
                "select s.content, r.up from ratings r join responses s on s.id = r.response_id "
                "where r.id in (select max(id) from ratings group by response_id, user_id)",
            )
        )
        assert len(latest) == 4
        assert latest[next(c for c in latest if c.strip() == texts[first.reply_id])] == 0
        assert query(home, "select count(*) from openwebui_feedback") == [(4,)]
        assert query(home, "select count(*) from preferences") == [(1,)]
        assert query(home, "select count(*) from conversations") == [(1,)]
