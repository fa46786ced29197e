"""What each page says, how it is styled and what it hands on: the title, the
success or error look, the cookies, an empty redirect body."""

from __future__ import annotations

import re

from invoiced_connect.connect import pages

COOKIE = "__Host-invoiced-connect=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Lax"


def _main_class(body: str) -> str:
    return re.search(r'<main class="([^"]*)">', body).group(1)


def _title(body: str) -> str:
    return re.search(r"<title>(.*?)</title>", body).group(1)


def test_the_connected_page_is_titled_connected_and_styled_as_success():
    result = pages.connected_page("Acme")
    assert result.status == 200
    assert _title(result.body) == "Connected - Connect to Invoiced"
    assert _main_class(result.body) == "ok"
    assert "<p>Your Invoiced account is now connected. You can close this window.</p>" in result.body


def test_the_error_page_is_titled_by_its_title_and_styled_as_an_error():
    result = pages.error_page(502, "Invoiced is unavailable", "Try again.", "ref-1")
    assert _title(result.body) == "Invoiced is unavailable - Connect to Invoiced"
    assert _title(pages.error_page(502, "Invoiced is unavailable", "m", "r", branding=pages.Branding("App")).body) == (
        "Invoiced is unavailable - Connect App to Invoiced")
    assert _main_class(result.body) == "err"
    assert "<h1>Invoiced is unavailable</h1><p>Try again.</p>" in result.body


def test_the_success_and_error_looks_are_the_styled_ones():
    style = re.search(r"<style>(.*?)</style>", pages.connected_page(None).body).group(1)
    assert ".ok h1{" in style and ".err h1{" in style


def test_the_style_keeps_margins_on_small_screens_follows_dark_mode_and_shows_focus():
    style = re.search(r"<style>(.*?)</style>", pages.connected_page(None).body).group(1)
    assert "body{margin:0;padding:1rem;" in style  # the card never touches the screen's edges
    assert "@media (max-width:26rem){body{padding:.75rem}" in style
    assert ".card{width:100%;max-width:34rem;" in style
    assert "overflow-wrap:anywhere" in style  # long names and references wrap instead of scrolling
    assert "@media (prefers-color-scheme:dark){" in style
    assert "a:focus-visible{outline:3px solid" in style


def test_pages_and_outcomes_pass_their_cookies_on():
    assert pages.connected_page("Acme", (COOKIE,)).cookies == (COOKIE,)
    assert pages.error_page(400, "t", "m", "r", (COOKIE,)).cookies == (COOKIE,)
    assert pages.OutcomePage(400, "t", "m", "r").render((COOKIE,)).cookies == (COOKIE,)
    assert pages.OutcomePage(200, "t", "", "r", company="Acme", connected=True).render((COOKIE,)).cookies == (COOKIE,)
    assert pages.redirect("https://app.example.test/", cookies=(COOKIE,)).cookies == (COOKIE,)


def test_a_redirect_has_an_empty_body_and_the_location():
    result = pages.redirect("https://app.example.test/done")
    assert result.body == ""
    assert result.status == 303
    assert result.headers["Location"] == "https://app.example.test/done"
