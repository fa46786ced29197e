"""The page's document as a browser parses it: a doctype first (standards
mode), English, UTF-8, the mobile viewport, and no stray text outside the
title, the style, the banner and the main content; one heading; what each
outcome renders."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from invoiced_connect.connect import pages


class _Document(HTMLParser):
    def __init__(self, body: str):
        super().__init__(convert_charrefs=True)
        self.events: list[tuple] = []
        self.open: list[str] = []
        self.stray_text: list[str] = []
        self.feed(body)
        self.close()

    def handle_decl(self, decl):
        self.events.append(("decl", decl))

    def handle_starttag(self, tag, attrs):
        self.events.append(("start", tag, dict(attrs)))
        if tag != "meta":
            self.open.append(tag)

    def handle_endtag(self, tag):
        self.events.append(("end", tag))
        self.open.pop()

    def handle_data(self, data):
        if data.strip() and not {"title", "style", "header", "main"} & set(self.open):
            self.stray_text.append(data)


def _main(body: str) -> str:
    return re.search(r"<main [^>]*>(.*)</main>", body, re.S).group(1)


def _landmarks(body: str) -> list[str]:
    """The page's elements in order, from <body> on."""
    return [event[1] for event in _Document(body).events if event[0] == "start"][6:]


@pytest.mark.parametrize(
    "render",
    [lambda: pages.connected_page("Acme"), lambda: pages.error_page(502, "Invoiced is unavailable", "Try again.", "r")],
    ids=["connected", "error"],
)
def test_the_document_starts_with_its_doctype_and_declares_language_charset_and_viewport(render):
    result = render()  # built in the test, not at collection
    document = _Document(result.body)
    assert result.body.lower().startswith("<!doctype html>")
    assert document.events[0][0] == "decl" and document.events[0][1].lower() == "doctype html"
    kind, tag, attrs = document.events[1]
    assert (kind, tag, attrs["lang"].lower()) == ("start", "html", "en")
    assert document.events[2][:2] == ("start", "head")
    kind, tag, attrs = document.events[3]
    assert (kind, tag, attrs["charset"].lower()) == ("start", "meta", "utf-8")
    kind, tag, attrs = document.events[4]
    assert (kind, tag, attrs["name"].lower()) == ("start", "meta", "viewport")
    assert attrs["content"].lower() == "width=device-width, initial-scale=1"
    assert document.stray_text == []
    assert document.open == []
    # A banner and the main content (landmarks), in one card; one heading.
    assert _landmarks(result.body)[:5] == ["body", "div", "header", "p", "main"]
    assert [tag for tag in _landmarks(result.body) if tag in {"h1", "h2", "h3", "header", "main"}] == [
        "header", "main", "h1"]


def test_the_connected_page_says_what_happened_and_nothing_else():
    assert _main(pages.connected_page("Acme").body) == (
        "<h1>Connected to Acme</h1><p>Your Invoiced account is now connected. You can close this window.</p>"
    )


def test_an_error_page_shows_title_message_and_reference_only():
    assert _main(pages.error_page(502, "Invoiced is unavailable", "Try again.", "ref-1").body) == (
        '<h1>Invoiced is unavailable</h1><p>Try again.</p><p class="ref">Reference: <code>ref-1</code></p>'
    )


BRAND = pages.Branding("Example App", "support@example.com", "https://app.example.com/settings")


def test_a_branded_error_page_offers_the_way_back_then_help_then_the_reference():
    assert _main(pages.error_page(403, "Link expired", "Ask for a new one.", "ref-1", branding=BRAND).body) == (
        '<h1>Link expired</h1><p>Ask for a new one.</p>'
        '<p class="back"><a href="https://app.example.com/settings">Back to Example App</a></p>'
        '<p class="help">Need help? Contact <a href="mailto:support@example.com">support@example.com</a>.</p>'
        '<p class="ref">Reference: <code>ref-1</code></p>'
    )


def test_a_support_page_is_linked_by_the_app_s_name_and_an_unnamed_app_by_support():
    web = pages.Branding("Example App", "https://help.example.com/connect?x=1&y=2")
    assert '<p class="help">Need help? Contact <a href="https://help.example.com/connect?x=1&amp;y=2">' \
           "Example App support</a>.</p>" in pages.error_page(400, "t", "m", "r", branding=web).body
    unnamed = pages.Branding(None, "https://help.example.com/")
    assert '<a href="https://help.example.com/">support</a>.</p>' in pages.error_page(
        400, "t", "m", "r", branding=unnamed).body


def test_a_url_with_an_at_sign_is_still_a_support_page():
    at = pages.Branding(None, "https://example.com/@team")
    assert '<a href="https://example.com/@team">support</a>' in pages.error_page(400, "t", "m", "r", branding=at).body


def test_the_connected_page_offers_the_way_back_but_no_help():
    assert _main(pages.connected_page("Acme", branding=BRAND).body) == (
        "<h1>Connected to Acme</h1><p>Your Invoiced account is now connected. You can close this window.</p>"
        '<p class="back"><a href="https://app.example.com/settings">Back to Example App</a></p>'
    )


def test_the_banner_names_the_app_or_says_connect_to_invoiced():
    assert '<header><p class="brand">Connect Example App to Invoiced</p></header>' in pages.connected_page(
        "Acme", branding=BRAND).body
    assert '<header><p class="brand">Connect to Invoiced</p></header>' in pages.connected_page("Acme").body
    unnamed_back = pages.Branding(return_url="https://app.example.com/")
    assert '<a href="https://app.example.com/">Back to the application</a>' in pages.error_page(
        400, "t", "m", "r", branding=unnamed_back).body


def test_returning_to_replaces_the_way_back_only_with_a_url():
    assert BRAND.returning_to("https://app.example.com/x") == pages.Branding(
        "Example App", "support@example.com", "https://app.example.com/x")
    assert BRAND.returning_to(None) is BRAND
    assert BRAND.returning_to("") is BRAND


def test_a_connected_outcome_renders_the_company_it_connected():
    result = pages.OutcomePage(200, "Connected", "", "ref-1", company="Acme", connected=True).render()
    assert result.status == 200
    assert "<h1>Connected to Acme</h1>" in result.body


@pytest.mark.parametrize("status", [400, 409, 502])
def test_an_error_outcome_renders_with_its_status_title_message_and_reference(status):
    result = pages.OutcomePage(status, "Could not connect", "Start again.", "ref-2").render()
    assert result.status == status
    assert _main(result.body) == (
        '<h1>Could not connect</h1><p>Start again.</p><p class="ref">Reference: <code>ref-2</code></p>'
    )


def test_outcomes_render_with_the_branding_given():
    connected = pages.OutcomePage(200, "Connected", "", "r", company="Acme", connected=True).render(branding=BRAND)
    assert '<a href="https://app.example.com/settings">Back to Example App</a>' in connected.body
    failed = pages.OutcomePage(502, "Could not connect", "m", "r").render(branding=BRAND)
    assert '<a href="https://app.example.com/settings">Back to Example App</a>' in failed.body
    assert 'href="mailto:support@example.com"' in failed.body
