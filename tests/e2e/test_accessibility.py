"""Every page a customer can land on, checked with axe-core in a real headless
Chromium at desktop width, at 360 px and in dark mode: no violation of any
rule axe runs by default (WCAG 2 A/AA and best practices: landmarks, one
heading, contrast, link names, ...). And down to 320 px the card keeps its
margins and nothing scrolls sideways.

axe-core comes from npm, pinned in package.json / package-lock.json at the
repository root (`make test` runs `npm ci`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import page_tour
from tests.support.page_tour import DESKTOP, DESKTOP_DARK, MOBILE, SMALLEST, TOUR

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not page_tour.AXE.is_file():
        pytest.fail(f"{page_tour.AXE} is missing: run `npm ci` at the repository root (make test does)")
    with page_tour.launched_chromium() as instance:
        yield instance


@pytest.fixture(scope="module")
def tour_stack() -> Iterator[object]:
    from local.stack import LocalStack

    with LocalStack() as running:
        yield running


@pytest.mark.parametrize("viewport", [DESKTOP, MOBILE, DESKTOP_DARK], ids=lambda v: v.name)
@pytest.mark.parametrize("name", sorted(TOUR))
def test_the_page_has_no_accessibility_violations(name, viewport, browser, tour_stack):
    context, page = page_tour.visit(name, browser, tour_stack, viewport)
    try:
        violations = page_tour.axe_violations(page)
    finally:
        context.close()
    report = page_tour.describe(violations)
    if violations:
        print(f"axe violations on {name} ({viewport.name}):\n{report}")
    assert violations == [], f"{name} ({viewport.name}):\n{report}"


def test_axe_finds_what_it_is_meant_to_find(browser):
    """The check itself works: a page with a nameless link and no landmark fails it."""
    context = DESKTOP.new_context(browser)
    try:
        page = context.new_page()
        page.set_content('<!doctype html><html lang="en"><head><title>t</title></head>'
                         '<body><a href="https://example.com/"></a><p style="color:#ccc">faint</p></body></html>')
        found = {violation["id"] for violation in page_tour.axe_violations(page)}
    finally:
        context.close()
    assert {"link-name", "color-contrast", "region"} <= found, found


@pytest.mark.parametrize("name", ["connect-expired-link", "callback-connected", "callback-invoiced-unavailable"])
def test_at_320_px_the_card_keeps_its_margins_and_nothing_scrolls_sideways(name, browser, tour_stack):
    context, page = page_tour.visit(name, browser, tour_stack, SMALLEST)
    try:
        box = page.locator(".card").bounding_box()
        scroll_width = page.evaluate("document.documentElement.scrollWidth")
    finally:
        context.close()
    assert box["x"] >= 8 and box["x"] + box["width"] <= 320 - 8, box
    assert scroll_width <= 320


def test_keyboard_focus_reaches_each_link_and_shows_it(browser, tour_stack):
    context, page = page_tour.visit("connect-expired-link", browser, tour_stack, DESKTOP)
    try:
        names = []
        for _ in range(2):
            page.keyboard.press("Tab")
            names.append(page.evaluate("document.activeElement.textContent"))
            outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
            assert outline == "solid", outline
    finally:
        context.close()
    assert names == ["Back to Example App", "support@example.com"]
