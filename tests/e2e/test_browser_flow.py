"""A person's path through the flow, in a real headless Chromium: open the
connect link, approve (or deny) on the local Invoiced, land on our page."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.page_tour import launched_chromium

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with launched_chromium() as instance:
        yield instance


@pytest.fixture(scope="module")
def e2e_stack() -> Iterator[object]:
    from local.stack import LocalStack

    with LocalStack() as running:
        yield running


@pytest.fixture
def page(browser):
    context = browser.new_context()
    yield context.new_page()
    context.close()


def test_approving_lands_on_the_connected_page_with_tokens_stored(e2e_stack, page, tmp_path):
    from invoiced_connect.core.models import ConnectionStatus
    from invoiced_connect.storage.store import TokenStore

    page.goto(e2e_stack.make_link("browser-approve"))
    assert page.url.startswith(e2e_stack.invoiced.base_url)
    page.get_by_role("button", name="Approve").click()
    page.wait_for_url(e2e_stack.callback_url)  # the outcome page: no code or state in the address

    assert page.locator("h1").inner_text() == "Connected to Acme Corporation"
    page.screenshot(path=str(tmp_path / "connected.png"))
    connection, ciphertext = TokenStore(e2e_stack.table_name).get_connection("browser-approve")
    assert connection.status is ConnectionStatus.ACTIVE
    assert ciphertext
    # The final URL and page carry no code, state or token, and no flow cookie is left.
    assert "code=" not in page.content() and "state=" not in page.url
    assert not [c for c in page.context.cookies() if c["name"].startswith("__Host-invoiced-connect")]


def test_denying_lands_on_a_not_connected_page_and_stores_nothing(e2e_stack, page):
    from invoiced_connect.storage.store import TokenStore

    page.goto(e2e_stack.make_link("browser-deny"))
    page.get_by_role("button", name="Deny").click()
    page.wait_for_url(e2e_stack.callback_url)

    assert page.locator("h1").inner_text() == "Not connected"
    assert "You declined access" in page.locator("main").inner_text()
    assert TokenStore(e2e_stack.table_name).get_connection("browser-deny") is None


# ------------------------------------------------------------------ reconnects and the company picker
def _consent_with(e2e_stack, page, link: str, company_id: int) -> None:
    """Open ``link`` and approve on the local Invoiced with the company picked."""
    page.goto(link)
    assert page.url.startswith(e2e_stack.invoiced.base_url)
    page.locator("select#company").select_option(str(company_id))
    page.get_by_role("button", name="Approve").click()


def _connected(e2e_stack, page, connection_id: str, company_id: int):
    from invoiced_connect.storage.store import TokenStore

    _consent_with(e2e_stack, page, e2e_stack.make_link(connection_id), company_id)
    page.wait_for_url(e2e_stack.callback_url)
    return TokenStore(e2e_stack.table_name).get_connection(connection_id)


def _events_of(e2e_stack, connection_id: str) -> list[dict]:
    return [e for e in e2e_stack.published_events() if e["detail"].get("connection_id") == connection_id]


def test_the_consent_page_names_the_app(e2e_stack, page):
    from local.stack import LOCAL_APP_NAME

    page.goto(e2e_stack.make_link("browser-named"))
    assert f"{LOCAL_APP_NAME} wants access to your Invoiced account" in page.locator("body").inner_text()


def test_a_reconnect_with_the_same_company_is_accepted(e2e_stack, page):
    first, _ = _connected(e2e_stack, page, "browser-same", 167)
    again, _ = _connected(e2e_stack, page, "browser-same", 167)
    assert page.locator("h1").inner_text() == "Connected to Acme Corporation"
    assert (again.tenant_id, again.version) == ("167", first.version + 1)
    assert e2e_stack.invoiced.live_grant_count(167) >= 1


def test_a_reconnect_with_another_company_is_refused_and_changes_nothing(e2e_stack, page):
    from invoiced_connect.connect import messages
    from invoiced_connect.storage.store import TokenStore
    from local.stack import LOCAL_APP_NAME

    before = _connected(e2e_stack, page, "browser-other", 167)
    live = e2e_stack.invoiced.live_grant_count(168)
    _consent_with(e2e_stack, page, e2e_stack.make_link("browser-other"), 168)
    page.wait_for_url(e2e_stack.callback_url)
    expected = messages.company_mismatch("Acme Corporation", "Globex Ltd", LOCAL_APP_NAME)
    assert page.locator("h1").inner_text() == expected.title
    assert expected.text in page.locator("main").inner_text()
    assert TokenStore(e2e_stack.table_name).get_connection("browser-other") == before
    assert e2e_stack.invoiced.live_grant_count(168) == live  # the refused grant is revoked at Invoiced
    assert _events_of(e2e_stack, "browser-other")[-1]["detail-type"] == "Connection Reconnect Refused"


def test_a_reconnect_with_another_company_under_an_allowing_link_is_accepted(e2e_stack, page):
    first, _ = _connected(e2e_stack, page, "browser-move", 167)
    _consent_with(e2e_stack, page, e2e_stack.make_link("browser-move", allow_company_change=True), 168)
    page.wait_for_url(e2e_stack.callback_url)
    assert page.locator("h1").inner_text() == "Connected to Globex Ltd"
    event = _events_of(e2e_stack, "browser-move")[-1]
    assert event["detail-type"] == "Connection Reconnected"
    assert (event["detail"]["tenant_id"], event["detail"]["company_name"], event["detail"]["previous_tenant_id"],
            event["detail"]["previous_company_name"]) == ("168", "Globex Ltd", "167", "Acme Corporation")
    assert event["detail"]["version"] == first.version + 1
