"""Every page a customer can land on, reached the way a browser reaches it,
against a running local stack: the /connect refusals, each /callback outcome
and the pages of the handlers themselves. The accessibility tests
(tests/e2e/test_accessibility.py) check each one; `make screenshots`
(tests/support/screenshots.py) photographs each one.

A visit takes a fresh Playwright browser context (its own cookies) and the
stack, leaves a page showing what it names and returns that page.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass(frozen=True)
class Viewport:
    name: str
    width: int
    height: int
    color_scheme: str = "light"

    def new_context(self, browser: Any) -> Any:
        # bypass_csp: the pages' CSP allows no script, and axe is one (the
        # tests inject it; nothing of it reaches the pages themselves).
        return browser.new_context(viewport={"width": self.width, "height": self.height},
                                   color_scheme=self.color_scheme, bypass_csp=True)


DESKTOP = Viewport("desktop", 1280, 800)
MOBILE = Viewport("mobile", 360, 740)
DESKTOP_DARK = Viewport("desktop-dark", 1280, 800, "dark")
SMALLEST = Viewport("320", 320, 640)


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def launched_chromium() -> Iterator[Any]:
    """Headless Chromium for a test module: skipped where there is none, a failure in CI."""
    import pytest

    executable = chromium_path()
    if not executable:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser tests, but no chromium was found (make test installs it)")
        pytest.skip("no chromium on this machine; `make test` installs Debian's package when it can")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            yield instance
        finally:
            instance.close()


_ids = itertools.count(1)


def _new_id(prefix: str) -> str:
    return f"tour-{prefix}-{os.getpid()}-{next(_ids)}"


def _signing_key() -> str:
    from invoiced_connect import runtime

    settings = runtime.current().settings
    return runtime.current().secrets.get_field(settings.require("link_signing_secret_arn"), "current")


def _open(context: Any, url: str) -> Any:
    page = context.new_page()
    page.goto(url)
    return page


def _to_consent(context: Any, stack: Any, connection_id: str) -> Any:
    page = _open(context, stack.make_link(connection_id))
    assert page.url.startswith(stack.invoiced.base_url), page.url
    return page


def _answer(page: Any, stack: Any, button: str) -> Any:
    page.get_by_role("button", name=button).click()
    page.wait_for_url(stack.callback_url)
    return page


# ------------------------------------------------------------------ /connect
def connect_without_link(context: Any, stack: Any) -> Any:
    return _open(context, stack.connect_url)


def connect_malformed_link(context: Any, stack: Any) -> Any:
    return _open(context, f"{stack.connect_url}?link=v1.not-a-link")


def connect_tampered_link(context: Any, stack: Any) -> Any:
    link = stack.make_link(_new_id("tampered"))
    head, _, tail = link.rpartition(".")
    return _open(context, f"{head}.{'A' if tail[0] != 'A' else 'B'}{tail[1:]}")


def connect_expired_link(context: Any, stack: Any) -> Any:
    import time

    from invoiced_connect.connect.links import LinkClaims, sign_link_token

    claims = LinkClaims(_new_id("expired"), None, int(time.time()) - 60)
    return _open(context, f"{stack.connect_url}?{urlencode({'link': sign_link_token(claims, _signing_key())})}")


def connect_used_link(context: Any, stack: Any) -> Any:
    link = stack.make_link(_new_id("used"))
    page = _open(context, link)
    _answer(page, stack, "Approve")
    page.goto(link)
    return page


def connect_repeated_parameter(context: Any, stack: Any) -> Any:
    return _open(context, f"{stack.connect_url}?link=a&link=b")


# ------------------------------------------------------------------ /callback
def callback_connected(context: Any, stack: Any) -> Any:
    return _answer(_to_consent(context, stack, _new_id("approve")), stack, "Approve")


def callback_declined(context: Any, stack: Any) -> Any:
    return _answer(_to_consent(context, stack, _new_id("deny")), stack, "Deny")


def callback_link_used(context: Any, stack: Any) -> Any:
    """One link opened in two browsers: the second to approve finds it used."""
    link = stack.make_link(_new_id("twice"))
    other = context.browser.new_context()
    try:
        first = other.new_page()
        first.goto(link)
        second = _open(context, link)
        _answer(first, stack, "Approve")
    finally:
        other.close()
    return _answer(second, stack, "Approve")


def callback_sign_in_expired(context: Any, stack: Any) -> Any:
    page = _to_consent(context, stack, _new_id("stale"))  # this browser holds a flow cookie
    page.goto(f"{stack.callback_url}?{urlencode({'state': 'x' * 43, 'code': 'c'})}")
    return page


def callback_session_not_found(context: Any, stack: Any) -> Any:
    return _open(context, f"{stack.callback_url}?{urlencode({'state': 'x' * 43, 'code': 'c'})}")


def callback_invoiced_unavailable(context: Any, stack: Any) -> Any:
    page = _to_consent(context, stack, _new_id("down"))
    stack.invoiced.faults.server_error_next = 1
    return _answer(page, stack, "Approve")


def callback_company_mismatch(context: Any, stack: Any) -> Any:
    """A reconnect on which the customer picks another company than the connection's."""
    connection_id = _new_id("mismatch")
    _answer(_to_consent(context, stack, connection_id), stack, "Approve")  # Acme Corporation (167)
    page = _to_consent(context, stack, connection_id)
    page.locator("select#company").select_option("168")  # Globex Ltd
    return _answer(page, stack, "Approve")


def callback_nothing_to_show(context: Any, stack: Any) -> Any:
    return _open(context, stack.callback_url)


#: name -> (visit, the page's heading)
TOUR: dict[str, tuple[Callable[[Any, Any], Any], str]] = {
    "connect-no-link": (connect_without_link, "Connect link needed"),
    "connect-malformed-link": (connect_malformed_link, "Invalid link"),
    "connect-tampered-link": (connect_tampered_link, "Invalid link"),
    "connect-expired-link": (connect_expired_link, "Link expired"),
    "connect-used-link": (connect_used_link, "Link already used"),
    "connect-invalid-request": (connect_repeated_parameter, "Invalid request"),
    "callback-connected": (callback_connected, "Connected to Acme Corporation"),
    "callback-declined": (callback_declined, "Not connected"),
    "callback-link-used": (callback_link_used, "Link already used"),
    "callback-sign-in-expired": (callback_sign_in_expired, "Sign-in expired"),
    "callback-session-not-found": (callback_session_not_found, "Session not found"),
    "callback-invoiced-unavailable": (callback_invoiced_unavailable, "Invoiced is unavailable"),
    "callback-company-mismatch": (callback_company_mismatch, "Different company chosen"),
    "callback-nothing-to-show": (callback_nothing_to_show, "Nothing to show"),
}


def visit(name: str, browser: Any, stack: Any, viewport: Viewport) -> tuple[Any, Any]:
    """(context, page) showing the named page; the caller closes the context."""
    how, heading = TOUR[name]
    context = viewport.new_context(browser)
    page = how(context, stack)
    shown = page.locator("h1").inner_text()
    assert shown == heading, f"{name}: expected the heading {heading!r}, got {shown!r}"
    return context, page


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's violations on ``page`` (every rule axe runs by default)."""
    page.add_script_tag(path=str(AXE))
    return page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations")


def describe(violations: list[dict[str, Any]]) -> str:
    lines = []
    for violation in violations:
        lines.append(f"{violation['id']} ({violation['impact']}): {violation['help']} [{violation['helpUrl']}]")
        lines += [f"    {' '.join(node['target'])}: {node['failureSummary']}" for node in violation["nodes"]]
    return "\n".join(lines)
