"""One sanitiser for everything the chat page shows that a person or the model wrote.

Messages, replies and compare candidates are Markdown: rendered here, on the server, with
raw HTML off (markdown-it), and the result cleaned by a maintained HTML sanitiser (nh3,
the Ammonia library) with an allowlist of formatting tags. Links and images are shown as
text (`text (url)`, `[image: alt (url)]`) unless `TUNELOOP_PAGE_REMOTE_CONTENT` is on, so
a reply cannot make the browser fetch anything or send the expert elsewhere; `<style>`,
`<script>` and every attribute but a link's `href` and an image's `src`/`alt`/`title` are
dropped whatever the setting. The page shows this HTML as it is (the chatbot's own
Markdown rendering is off), so nothing is rendered twice.

Short texts set into the page's Markdown lines (a reason, a user name, an error) go
through `plain`: every character Markdown or HTML could read as markup is escaped, so
they show exactly as typed.
"""

from __future__ import annotations

import html
import re
from functools import cache
from typing import Any

import nh3
from markdown_it import MarkdownIt

# Formatting a reply may use; anything else is removed (its text kept, except in
# <script> and <style>, whose content goes too).
TAGS = {
    "p", "br", "hr", "strong", "em", "del", "s", "code", "pre", "blockquote",
    "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
    "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
REMOTE_TAGS = {"a", "img"}
REMOTE_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title"}}
URL_SCHEMES = {"http", "https", "mailto"}


def _link_as_text(self: Any, tokens: list[Any], idx: int, options: Any, env: Any) -> str:
    """link_open without remote content: nothing (the link's text follows as text)."""
    return ""


def _link_close_as_text(self: Any, tokens: list[Any], idx: int, options: Any, env: Any) -> str:
    """link_close without remote content: the address in parentheses, as text."""
    depth, open_idx = 0, idx
    while open_idx > 0:  # find the link_open this closes
        open_idx -= 1
        if tokens[open_idx].type == "link_close":
            depth += 1
        elif tokens[open_idx].type == "link_open":
            if depth == 0:
                break
            depth -= 1
    opener = tokens[open_idx]
    if opener.markup in ("autolink", "linkify"):
        return ""  # the text is the address already
    return f" ({html.escape(str(opener.attrGet('href') or ''))})"


def _image_as_text(self: Any, tokens: list[Any], idx: int, options: Any, env: Any) -> str:
    token = tokens[idx]
    alt = "".join(child.content for child in token.children or [])
    src = str(token.attrGet("src") or "")
    return html.escape(f"[image: {alt} ({src})]" if alt else f"[image: {src}]")


@cache
def _markdown(remote: bool) -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "breaks": True})
    md.enable(["table", "strikethrough"])
    if not remote:
        md.add_render_rule("link_open", _link_as_text)
        md.add_render_rule("link_close", _link_close_as_text)
        md.add_render_rule("image", _image_as_text)
    return md


def page_html(text: str, *, remote: bool = False) -> str:
    """`text` (Markdown) as the HTML the page shows: rendered, then sanitised."""
    rendered = _markdown(remote).render(text)
    return nh3.clean(
        rendered,
        tags=TAGS | REMOTE_TAGS if remote else TAGS,
        attributes=REMOTE_ATTRIBUTES if remote else {},
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )


_MARKUP = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character


def plain(text: str) -> str:
    """`text` for a Markdown line of the page: shown exactly as typed, never as markup.

    CommonMark lets any ASCII punctuation be backslash-escaped, which leaves no code span,
    link, image, emphasis, entity or HTML tag to form, however the text is arranged.
    """
    return _MARKUP.sub(r"\\\1", text)
