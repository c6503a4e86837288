"""The chat page's streaming updates: the first text at once, then at most 10 a second, and
always the final text (app/ui.py `_throttled`)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from app.ui import _throttled


def _paced(items: list[str], gap: float) -> Iterator[str]:
    for item in items:
        yield item
        time.sleep(gap)


def test_a_burst_shows_its_first_and_last_item_only() -> None:
    assert list(_throttled(iter(["a", "ab", "abc", "abcd"]), interval=10.0)) == ["a", "abcd"]


def test_slow_items_all_pass() -> None:
    items = ["a", "ab", "abc"]
    assert list(_throttled(_paced(items, 0.05), interval=0.01)) == items


def test_nothing_in_nothing_out_and_one_item_passes_once() -> None:
    assert list(_throttled(iter([]), interval=1.0)) == []
    assert list(_throttled(iter(["only"]), interval=1.0)) == ["only"]


def test_the_last_item_is_never_dropped_after_a_gap() -> None:
    def items() -> Iterator[str]:
        yield "a"
        time.sleep(0.6)
        yield "ab"  # after the interval: passes
        yield "abc"  # at once: held...
        yield "abcd"  # ...replaced, and passed at the end

    # a generous interval, so that a loaded machine's stalls cannot let "abc" through
    assert list(_throttled(items(), interval=0.5)) == ["a", "ab", "abcd"]
