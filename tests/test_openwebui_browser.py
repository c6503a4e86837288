"""Open WebUI's own page in a real browser (Playwright, Debian chromium) in front of a real
`tuneloop serve`: a user chats, rates a reply 👍 with a score, another 👎 with a comment,
regenerates it and rates the new one; `tuneloop openwebui sync` brings all of it in."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.openwebui import missing, serve_behind_openwebui
from tests.server import add_user, issue_key
from tests.test_browser import ARGS, CHROMIUM
from tests.tiny import build_tiny_model

pytestmark = [
    pytest.mark.browser,
    pytest.mark.openwebui,
    pytest.mark.skipif(missing() is not None, reason=missing() or ""),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian chromium"),
]


def query(home: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(home / "tuneloop.db") as conn:
        return conn.execute(sql).fetchall()


def rate(page: Any, thumb: str, *, score: str | None = None, comment: str | None = None) -> None:
    """Press 👍/👎 under the newest reply, fill the form the page opens, save it."""
    page.get_by_role("button", name=thumb).last.click()
    if score:
        page.get_by_role("button", name=f"Rate {score} out of 10").click()
    if comment:
        page.get_by_placeholder("Feel free to add specific details").fill(comment)
    page.get_by_role("button", name="Save", exact=True).click()


def test_chat_rate_and_regenerate_on_open_webuis_page(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    model = build_tiny_model(tmp_path / "tiny")
    config = json.loads((model / "config.json").read_text())  # Open WebUI's long task prompts
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4096}))
    home = tmp_path / "home"
    home.mkdir()
    add_user(home, "owui", "expert", "pw-owui-secret")
    key = issue_key(home, "owui")
    with (
        serve_behind_openwebui(
            tmp_path / "owui", home, model=str(model), api_key=key,
            TUNELOOP_MAX_NEW_TOKENS="12", TUNELOOP_TRUSTED_FRONTENDS="owui",
        ) as (url, owui),
        sync_playwright() as p,
    ):  # fmt: skip
        admin, _ = owui.signup("Admin", "admin@example.org", "pw-admin-1")
        token, dana = owui.add_user(admin, "Dana Expert", "dana@example.org", "pw-dana-1")
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.set_default_timeout(60_000)
        expect.set_options(timeout=60_000)
        page.goto(owui.url + "/auth")
        page.locator("input[type=email]").fill("dana@example.org")
        page.locator("input[type=password]").fill("pw-dana-1")
        page.get_by_role("button", name="Sign in").click()

        good = page.get_by_role("button", name="Good Response")
        for n, text in enumerate(["How do I return a damaged kettle?", "And the receipt?"], 1):
            page.locator("#chat-input").click()
            page.keyboard.type(text)
            page.keyboard.press("Enter")
            expect(good).to_have_count(n)  # the buttons come when the reply is done
            if n == 1:
                rate(page, "Good Response", score="8")
        rate(page, "Bad Response", comment="It ignores the receipt")
        page.get_by_role("button", name="Regenerate").last.click()
        page.get_by_text("Try Again", exact=True).click()  # the menu's plain regenerate
        chat_id = page.url.rstrip("/").rsplit("/", 1)[-1]
        owui.wait_regenerated(token, chat_id)
        expect(good).to_have_count(2)
        rate(page, "Good Response", score="9")
        deadline = time.monotonic() + 60  # the page saves the form in the background
        while not any(
            (e["data"].get("details") or {}).get("rating") == 9 for e in owui.export(admin)
        ):
            assert time.monotonic() < deadline, "the page did not save the score"
            time.sleep(0.5)
        browser.close()

        token_file = tmp_path / "owui-token"
        token_file.write_text(admin)
        token_file.chmod(0o600)
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", "openwebui", "sync", "--json"],
            env={
                **os.environ,
                "TUNELOOP_HOME": str(home),
                "TUNELOOP_OPENWEBUI_URL": owui.url,
                "TUNELOOP_OPENWEBUI_TOKEN_FILE": str(token_file),
            },
            capture_output=True,
            text=True,
            check=True,
        )
        report = json.loads(done.stdout)
        assert (report["rated"], report["brought_in"], report["picks"]) == (3, 0, 1), report
    name = f"openwebui-{dana}"
    ratings = query(
        home,
        "select u.name, r.up, r.reason from ratings r join users u on u.id = r.user_id "
        "order by r.id",
    )
    assert {r[0] for r in ratings} == {name}
    assert sorted((up, reason) for _, up, reason in ratings) == [
        (0, "It ignores the receipt"),
        (1, None),
        (1, None),
    ], ratings
    assert query(
        home, "select score from openwebui_feedback where score is not null order by score"
    ) == [(8,), (9,)]
    assert query(home, "select count(*) from conversations") == [(1,)]
    assert query(home, "select count(*) from preferences") == [(1,)]
