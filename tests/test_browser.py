"""The chat app in a real browser: Playwright driving Debian chromium against `tuneloop serve`."""

from __future__ import annotations

import shutil
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.server import add_user, serve

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian chromium: apt-get install chromium chromium-driver")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=30_000)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def login(browser, url: str, name: str, password: str):
    from playwright.sync_api import expect

    page = browser.new_context().new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    page.locator("input[type=text]").first.fill(name)
    page.locator("input[type=password]").fill(password)
    page.get_by_role("button", name="Login").click()
    expect(page.locator("#model-info")).to_contain_text("answering", timeout=60_000)
    return page


def send(page, text: str, replies_before: int) -> None:
    from playwright.sync_api import expect

    page.locator("#message textarea").fill(text)
    page.locator("#send").click()
    expect(page.locator("#chat [data-testid=bot]")).to_have_count(replies_before + 1)
    expect(page.locator("#selected")).to_contain_text(f"reply {replies_before + 1}")


def test_expert_chats_and_gives_every_kind_of_feedback(
    browser, _isolated_home: Path, tiny_model_dir: Path
) -> None:
    from playwright.sync_api import expect

    home = _isolated_home
    home.mkdir(parents=True, exist_ok=True)
    add_user(home, "erin", "expert", "pw-erin-secret")
    add_user(home, "olga", "expert", "pw-olga-secret")
    # the tiny model has a 512-token window: keep replies short
    with serve(home, model=str(tiny_model_dir), TUNELOOP_MAX_NEW_TOKENS="32") as (url, _):
        page = login(browser, url, "erin", "pw-erin-secret")
        expect(page.locator("#model-info")).to_contain_text("base model")
        expect(page.locator("#model-info")).to_contain_text("erin")

        # HTML in a message is shown as text and never runs
        xss = 'router <img src=x onerror="window.__xss=1"> <script>window.__xss=2</script>'
        try:
            send(page, xss, 0)
        finally:
            page.screenshot(path=str(home / "after-send.png"))
        expect(page.locator("#chat [data-testid=user]").first).to_contain_text("<img src=x")
        assert page.evaluate("window.__xss") is None

        # thumbs down with a reason, on the selected (newest) reply
        page.locator("#reason textarea").fill("no policy id")
        page.locator("#thumb-down").click()
        expect(page.locator("#notice")).to_contain_text("Saved 👎")

        # edit: the box holds the reply; write the answer wanted
        expect(page.locator("#correction textarea")).not_to_have_value("")
        page.locator("#correction textarea").fill("Hello, unplug it for 30 seconds (POL-7).")
        page.locator("#save-correction").click()
        expect(page.locator("#notice")).to_contain_text("corrected answer")

        # compare and pick
        page.locator("#compare").click()
        expect(page.locator("#pick-b")).to_be_visible(timeout=60_000)
        page.locator("#pick-b").click()
        expect(page.locator("#notice")).to_contain_text("B is better")

        # the like icon under a reply records a thumbs up too
        send(page, "second question", 1)
        page.locator("#chat button[aria-label=Like]").last.click()
        expect(page.locator("#notice")).to_contain_text("Saved 👍")

        # empty and over-long messages: a clear notice, nothing lost, and the reply the
        # expert had selected (the first) stays selected
        page.locator("#chat [data-testid=bot]").first.click()
        expect(page.locator("#selected")).to_contain_text("reply 1")
        page.locator("#message textarea").fill("   ")
        page.locator("#send").click()
        expect(page.locator("#notice")).to_contain_text("Type a message first")
        page.locator("#message textarea").fill("x" * 4001)
        page.locator("#send").click()
        expect(page.locator("#notice")).to_contain_text("the limit is")
        expect(page.locator("#chat [data-testid=bot]")).to_have_count(2)
        expect(page.locator("#message textarea")).to_have_value("x" * 4001)
        expect(page.locator("#selected")).to_contain_text("reply 1")

        # a second user sees none of the first user's conversations
        other = login(browser, url, "olga", "pw-olga-secret")
        expect(other.locator("#chat [data-testid=user]")).to_have_count(0)
        other.locator("#conversations input").click()
        expect(other.locator("[role=option]")).to_have_count(0)
        page.locator("#conversations input").click()
        expect(page.locator("[role=option]")).to_have_count(1)

    db = home / "tuneloop.db"
    assert rows(db, "select up, reason from ratings order by id") == [
        (0, "no policy id"),
        (1, None),
    ]
    assert rows(db, "select content from corrections") == [
        ("Hello, unplug it for 30 seconds (POL-7).",)
    ]
    sources = sorted(s for (s,) in rows(db, "select source from preferences"))
    assert sources == ["chat-compare", "edit"]
    ((choice,),) = rows(db, "select choice from comparisons")
    assert choice == "B"
    users = dict(
        rows(db, "select c.id, u.name from conversations c join users u on u.id=c.user_id")
    )
    assert set(users.values()) == {"erin"}


def test_annotators_are_sent_to_argilla_and_reasons_stay_text(
    browser, tmp_path: Path, tiny_model_dir: Path
) -> None:
    from playwright.sync_api import expect

    home = tmp_path / "home"
    home.mkdir()
    add_user(home, "ann", "annotator", "pw-ann-secret")
    add_user(home, "erin", "expert", "pw-erin-secret")
    with serve(home, model=str(tiny_model_dir), TUNELOOP_ARGILLA_PORT="6977") as (url, _):
        # the login page names Argilla's address and the lockout rule
        page = browser.new_context().new_page()
        page.goto(url)
        expect(page.get_by_text("http://127.0.0.1:6977").first).to_be_visible()
        expect(page.get_by_text("failed attempts").first).to_be_visible()
        page.close()
        ann = login(browser, url, "ann", "pw-ann-secret")
        expect(ann.locator("#notice")).to_contain_text("Annotators rank pairs in Argilla")
        expect(ann.locator("#notice")).to_contain_text("http://127.0.0.1:6977")

        erin = login(browser, url, "erin", "pw-erin-secret")
        send(erin, "hello", 0)
        erin.locator("#reason textarea").fill('<img src=x id="pwned"> wrong')
        erin.locator("#thumb-down").click()
        expect(erin.locator("#notice")).to_contain_text('<img src=x id="pwned"> wrong')
        assert erin.locator("#pwned").count() == 0

        # Past the page: the login note at Gradio's config route, and an annotator calling
        # the rating endpoint directly gets the same notice and rates nothing.
        from gradio_client import Client

        with pytest.raises(urllib.error.HTTPError) as config:
            urllib.request.urlopen(url + "config", timeout=30)
        assert config.value.code == 401
        assert "http://127.0.0.1:6977" in config.value.read().decode()
        reply = Client(url, auth=("ann", "pw-ann-secret"), verbose=False).predict(
            "", api_name="/rate_up"
        )
    shown = str(reply[0]).replace("\\", "")  # the notice is Markdown with every mark escaped
    assert "Argilla" in shown and "http://127.0.0.1:6977" in shown
    with sqlite3.connect(home / "tuneloop.db") as db:
        assert db.execute("select count(*) from ratings").fetchone() == (1,)  # erin's only
