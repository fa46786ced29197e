"""What the connect flow's pages say about the integrating app: its name in
the texts, its support contact on error pages, and where "Back to <app>"
leads (a verified link's own return URL while it is allowed, else the
configured default, else nowhere)."""

from __future__ import annotations

import re

from invoiced_connect.connect import messages
from invoiced_connect.connect.flow import COOKIE_NAME, RESULT_COOKIE_NAME, outcome_cookie
from invoiced_connect.connect.links import LinkClaims, sign_link_token
from invoiced_connect.connect.pages import Branding, OutcomePage
from invoiced_connect.connect.pkce import fingerprint
from tests.unit.test_flow_rules import CID, ENV, KEY, LINK_ID, RETURN_TO, make_flow, outcome_of, signed_link, started

APP_NAME = "Example & Co"
SUPPORT = "help@example.com"
DEFAULT_RETURN = "https://app.example.com/integrations"
BRANDED = {**ENV, "APP_NAME": APP_NAME, "SUPPORT_CONTACT": SUPPORT, "DEFAULT_RETURN_URL": DEFAULT_RETURN}
EXPIRED = 1_800_000_000  # NOW is 1_800_000_000.75


def back_links(body: str) -> list[tuple[str, str]]:
    return re.findall(r'<p class="back"><a href="([^"]*)">([^<]*)</a></p>', body)


def test_the_flow_brands_its_pages_from_settings():
    assert make_flow(env=BRANDED).flow.branding() == Branding("Example & Co", SUPPORT, DEFAULT_RETURN)
    assert make_flow(env=BRANDED).flow.branding(RETURN_TO) == Branding("Example & Co", SUPPORT, RETURN_TO)
    assert make_flow().flow.branding() == Branding(None, None, None)
    assert make_flow().flow.branding(RETURN_TO) == Branding(None, None, RETURN_TO)


def test_an_expired_link_is_titled_so_and_offers_its_own_return_url():
    t = make_flow(env=BRANDED)
    result = t.flow.start({"link": [signed_link(RETURN_TO, expires_at=EXPIRED)]}, "ref")
    assert result.status == 403
    assert "<h1>Link expired</h1>" in result.body
    assert "Ask Example &amp; Co for a new link" in result.body
    assert back_links(result.body) == [("https://app.example.com/done?tab=x", "Back to Example &amp; Co")]
    assert f'<a href="mailto:{SUPPORT}">{SUPPORT}</a>' in result.body
    assert t.store.calls == []


def test_an_expired_link_whose_return_url_is_no_longer_allowed_offers_the_default():
    t = make_flow(env={**BRANDED, "RETURN_URL_ALLOWLIST": "https://app.example.com/integrations"})
    result = t.flow.start({"link": [signed_link(RETURN_TO, expires_at=EXPIRED)]}, "ref")
    assert back_links(result.body) == [(DEFAULT_RETURN, "Back to Example &amp; Co")]


def test_an_expired_link_without_a_return_url_offers_the_default_or_nothing():
    assert back_links(make_flow(env=BRANDED).flow.start({"link": [signed_link(expires_at=EXPIRED)]}, "r").body) == [
        (DEFAULT_RETURN, "Back to Example &amp; Co")]
    assert back_links(make_flow().flow.start({"link": [signed_link(expires_at=EXPIRED)]}, "r").body) == []


def test_a_link_that_does_not_verify_never_offers_what_it_carries():
    t = make_flow(env=BRANDED)
    foreign = sign_link_token(LinkClaims(CID, RETURN_TO, 1_800_009_000, LINK_ID), "f" * 43)
    result = t.flow.start({"link": [foreign]}, "ref")
    assert "<h1>Invalid link</h1>" in result.body
    assert back_links(result.body) == [(DEFAULT_RETURN, "Back to Example &amp; Co")]
    body, signature = sign_link_token(LinkClaims(CID, RETURN_TO, EXPIRED, LINK_ID), KEY).rsplit(".", 1)
    tampered = t.flow.start({"link": [f"{body}x.{signature}"]}, "ref")
    assert "<h1>Invalid link</h1>" in tampered.body
    assert back_links(tampered.body) == [(DEFAULT_RETURN, "Back to Example &amp; Co")]


def test_a_used_link_offers_its_own_return_url():
    t = make_flow(env=BRANDED)
    t.store.used_links.add(fingerprint(LINK_ID))
    result = t.flow.start({"link": [signed_link(RETURN_TO)]}, "ref")
    assert "<h1>Link already used</h1>" in result.body
    assert back_links(result.body) == [("https://app.example.com/done?tab=x", "Back to Example &amp; Co")]


def test_a_refused_return_url_offers_the_default_only():
    t = make_flow(env={**BRANDED, "RETURN_URL_ALLOWLIST": "https://app.example.com/integrations"})
    result = t.flow.start({"link": [signed_link(RETURN_TO)]}, "ref")
    assert messages.return_address_refused("Example & Co").text.replace("&", "&amp;") in result.body
    assert back_links(result.body) == [(DEFAULT_RETURN, "Back to Example &amp; Co")]


def test_texts_name_the_app_and_error_pages_its_support():
    t = make_flow(env=BRANDED)
    result = t.flow.start({}, "ref")
    assert "Start connecting from Example &amp; Co again." in result.body
    assert '<p class="brand">Connect Example &amp; Co to Invoiced</p>' in result.body
    assert f'<p class="help">Need help? Contact <a href="mailto:{SUPPORT}">{SUPPORT}</a>.</p>' in result.body


def test_the_unconfigured_page_is_branded_too():
    from invoiced_connect.core.settings import SettingsError

    t = make_flow(env=BRANDED, invoiced_error=SettingsError("no client id"))
    result = t.flow.start({"link": [signed_link()]}, "ref")
    assert result.status == 503
    assert f"mailto:{SUPPORT}" in result.body and back_links(result.body) == [(DEFAULT_RETURN, "Back to Example &amp; Co")]


def test_the_outcome_page_is_branded_with_the_default_return_url():
    t = make_flow(env=BRANDED)
    cookie = outcome_cookie(OutcomePage(502, "Could not connect", "Try again.", "r"))
    shown = t.flow.callback({}, {RESULT_COOKIE_NAME: cookie.split(";")[0].split("=", 1)[1]}, "ref")
    assert shown.status == 502
    assert back_links(shown.body) == [(DEFAULT_RETURN, "Back to Example &amp; Co")]
    assert f"mailto:{SUPPORT}" in shown.body
    nothing = t.flow.callback({}, {}, "ref")
    assert "open the connect link from Example &amp; Co." in nothing.body
    assert back_links(nothing.body) == [(DEFAULT_RETURN, "Back to Example &amp; Co")]


def test_callback_texts_name_the_app():
    from invoiced_connect.invoiced.client import ClientAuthError

    t = make_flow(env=BRANDED)
    state, binding = started(t)
    denied = t.flow.callback({"state": [state], "error": ["access_denied"]}, {COOKIE_NAME: binding}, "ref")
    assert outcome_of(denied).message == messages.declined("Example & Co").text
    state, binding = started(t)
    t.client.exchange_error = ClientAuthError("no", status=401, reason="invalid_client")
    refused = outcome_of(t.flow.callback({"state": [state], "code": ["c"]}, {COOKIE_NAME: binding}, "ref"))
    assert refused.message == messages.credentials_refused("Example & Co").text
    state, binding = started(t)
    t.store.used_links.add(fingerprint(LINK_ID))
    used = outcome_of(t.flow.callback({"state": [state], "code": ["c"]}, {COOKIE_NAME: binding}, "ref"))
    assert used.message == messages.link_used("Example & Co").text
