"""What the chat page shows cannot reach out: the escaped-backtick payload of issue 29 and
Markdown links and images, sent as a message in a real browser against a real serve, load
nothing remote, make no live link and land no <style> (app/web/sanitize.py)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.server import add_user, serve
from tests.test_browser import browser, login, send  # noqa: F401 - `browser` is a fixture

pytestmark = pytest.mark.browser


class _Remote(BaseHTTPRequestHandler):
    """A stand-in for a remote host: it only counts what asks it for anything."""

    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_page_shows_hostile_markup_as_text(
    browser,  # noqa: F811 - the fixture imported above
    _isolated_home: Path,
    tiny_model_dir: Path,
) -> None:
    from playwright.sync_api import expect

    remote = ThreadingHTTPServer(("127.0.0.1", 0), _Remote)
    threading.Thread(target=remote.serve_forever, daemon=True).start()
    host = f"http://127.0.0.1:{remote.server_address[1]}"
    payload = (
        f"\\`<img src={host}/pixel.png>\\` \\`<a href={host}/live>go</a>\\` "
        "\\`<style>.tuneloop-pwned{color:red}</style>\\` "
        f"![md]({host}/md.png) [link]({host}/link) <{host}/auto>"
    )
    home = _isolated_home
    home.mkdir(parents=True, exist_ok=True)
    add_user(home, "erin", "expert", "pw-erin-secret")
    try:
        with serve(home, model=str(tiny_model_dir), TUNELOOP_MAX_NEW_TOKENS="8") as (url, _):
            page = login(browser, url, "erin", "pw-erin-secret")
            asked: list[str] = []
            page.on("request", lambda request: asked.append(request.url))
            send(page, payload, 0)
            message = page.locator("#chat [data-testid=user]").first
            expect(message).to_contain_text(f"<img src={host}/pixel.png>")
            expect(message).to_contain_text("<style>.tuneloop-pwned{color:red}</style>")
            expect(message).to_contain_text(f"link ({host}/link)")
            assert message.locator("a, img, style").count() == 0
            landed = page.evaluate(
                "[...document.querySelectorAll('style')]"
                ".some(s => s.textContent.includes('tuneloop-pwned'))"
            )
            assert landed is False
            page.wait_for_timeout(500)  # anything the message asked for would be on its way
    finally:
        remote.shutdown()
    assert [u for u in asked if u.startswith(host)] == [] and _Remote.hits == []
