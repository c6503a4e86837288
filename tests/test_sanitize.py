"""The one sanitiser for what the chat page shows (app/web/sanitize.py): Markdown rendered on
the server, then cleaned by nh3; remote links and images off unless the setting allows them."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from markdown_it import MarkdownIt

from app.web.sanitize import page_html, plain

# The payload of issue 29: escaped backticks around HTML got past the old escaping.
ESCAPED_BACKTICKS = (
    "\\`<img src=http://203.0.113.9/pixel.png>\\` "
    "\\`<a href=http://203.0.113.9/x>go</a>\\` \\`<style>body{display:none}</style>\\`"
)
HOSTILE = [
    ESCAPED_BACKTICKS,
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    "[click](javascript:alert(1))",
    "[click](http://203.0.113.9/x)",
    "![pixel](http://203.0.113.9/p.png)",
    "<http://203.0.113.9/auto>",
    "- item\n\n  ```\n  code\n\n  ![x](http://203.0.113.9/i.png)\n  ```",
    "<style>*{color:red}</style>",
    '<svg onload="alert(1)"></svg>',
    "&lt;img src=http://203.0.113.9/e.png&gt;",
]


class Elements(HTMLParser):
    """Every element a browser would build from some HTML: (tag, attributes)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, dict(attrs)))


def tags(html: str) -> set[str]:
    return {tag for tag, _ in Elements(html).found}


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_makes_no_remote_content_link_or_style(text: str) -> None:
    shown = page_html(text)
    elements = Elements(shown).found
    assert {tag for tag, _ in elements} <= {"p", "code", "pre", "ul", "li"}, shown
    assert all(not attrs for _, attrs in elements), shown  # no href, src, style, on*


def test_the_escaped_backtick_payload_shows_as_text() -> None:
    shown = page_html(ESCAPED_BACKTICKS)
    assert "&lt;img src=http://203.0.113.9/pixel.png&gt;" in shown
    assert "&lt;style&gt;body{display:none}&lt;/style&gt;" in shown


def test_links_and_images_show_their_address_as_text_by_default() -> None:
    shown = page_html("see [the policy](http://example.test/p) and ![logo](http://e.test/l.png)")
    assert shown == (
        "<p>see the policy (http://example.test/p) and [image: logo (http://e.test/l.png)]</p>\n"
    )
    assert page_html("<http://e.test/a>") == "<p>http://e.test/a</p>\n"


def test_remote_content_setting_allows_safe_links_and_images_only() -> None:
    shown = page_html(
        "[ok](https://e.test/a) ![i](https://e.test/i.png) [bad](javascript:alert(1))",
        remote=True,
    )
    assert '<a href="https://e.test/a" rel="noopener noreferrer nofollow">ok</a>' in shown
    assert '<img src="https://e.test/i.png" alt="i">' in shown
    assert "javascript:" not in shown.replace("[bad](javascript:alert(1))", "")
    assert "<style" not in page_html("<style>x</style>", remote=True)


def test_markdown_still_renders() -> None:
    shown = page_html("**Restart** it:\n1. unplug\n2. wait `30 s`\n\n```\nif a<b:\n  go()\n```")
    assert "<strong>Restart</strong>" in shown and "<ol>" in shown and "<code>30 s</code>" in shown
    assert "<pre><code>if a&lt;b:\n  go()\n</code></pre>" in shown
    assert page_html("one\ntwo") == "<p>one<br>\ntwo</p>\n"  # a line break stays one


@pytest.mark.parametrize(
    "text",
    [ESCAPED_BACKTICKS, "**not bold** [l](http://x/) ![i](http://x/i)", "a & b < c", "`code`"],
)
def test_plain_shows_text_exactly_as_typed(text: str) -> None:
    md = MarkdownIt("commonmark")  # what a Markdown line of the page does with it
    rendered = md.render(plain(text))
    assert tags(rendered) == {"p"}, rendered
    assert md.renderInline(plain(text)) == md.utils.escapeHtml(text)
