"""The Operator tab in a real browser: operators see it and can act, experts never see it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.server import add_user, serve
from tests.test_browser import browser, login  # noqa: F401 - the fixture is used by name

pytestmark = pytest.mark.browser


def test_operator_sees_the_operator_tab_and_an_expert_does_not(
    browser,  # noqa: F811
    _isolated_home: Path,
    tiny_model_dir: Path,
    tiny_adapters: dict[str, Path],
) -> None:
    from playwright.sync_api import expect

    from training.registry import Registry

    home = _isolated_home
    home.mkdir(parents=True, exist_ok=True)
    add_user(home, "olga", "operator", "pw-olga-secret")
    add_user(home, "erin", "expert", "pw-erin-secret")
    registry = Registry(home / "adapters")
    registry.register("v1", tiny_adapters["v1"])
    with serve(home, model=str(tiny_model_dir), TUNELOOP_MAX_NEW_TOKENS="16") as (url, _):
        page = login(browser, url, "olga", "pw-olga-secret")
        tab = page.get_by_role("tab", name="Operator")
        expect(tab).to_be_visible()
        tab.click()
        expect(page.locator("#op-summary")).to_contain_text("Serving")
        expect(page.locator("#op-summary")).to_contain_text("New since the last round")
        expect(page.locator("#op-progress")).to_contain_text("No round has run yet")
        page.screenshot(path="/tmp/operator-tab.png", full_page=True)

        # promote from the tab; the running server follows CURRENT
        page.locator("#op-version input").click()
        page.get_by_role("option", name="v1").click()
        page.locator("#op-promote").click()
        expect(page.locator("#op-notice")).to_contain_text("Now serving v1")
        expect(page.locator("#model-info")).to_contain_text("v1", timeout=30_000)
        assert registry.current() == "v1"
        page.locator("#op-rollback").click()
        expect(page.locator("#op-notice")).to_contain_text("bare base model")
        assert registry.current() is None

        expert = login(browser, url, "erin", "pw-erin-secret")
        expect(expert.locator("#model-info")).to_contain_text("erin")
        expert.wait_for_timeout(2_000)  # let every page-load event finish before looking
        expect(expert.get_by_role("tab", name="Operator")).to_have_count(0)
        expect(expert.locator("#op-start")).not_to_be_visible()
