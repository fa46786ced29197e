"""Every text the connect pages show, word for word: sentence case, what
happened and what the customer can do next, the app named where it helps."""

from __future__ import annotations

import pytest

from invoiced_connect.connect import messages
from invoiced_connect.connect.messages import Message

APP = "Example App"


def test_the_app_is_named_or_called_the_application():
    assert messages.app_label("Example App") == "Example App"
    assert messages.app_label(None) == messages.app_label("") == "the application"
    assert messages.banner("Example App") == "Connect Example App to Invoiced"
    assert messages.banner(None) == messages.banner("") == "Connect to Invoiced"
    assert messages.back_link("Example App") == "Back to Example App"
    assert messages.back_link(None) == "Back to the application"
    assert messages.support_link_text("Example App") == "Example App support"
    assert messages.support_link_text(None) == "support"
    assert (messages.HELP_PREFIX, messages.REFERENCE_LABEL) == ("Need help? Contact", "Reference")


PINNED = {
    "link_missing": (messages.link_missing(APP), Message(
        "Connect link needed", "This page only works with a connect link. Start connecting from Example App again.")),
    "link_invalid": (messages.link_invalid(APP), Message(
        "Invalid link", "This connect link is incomplete or has been changed. Open the link again exactly as you "
        "received it, or ask Example App for a new one.")),
    "link_expired": (messages.link_expired(APP), Message(
        "Link expired", "This connect link has expired. Ask Example App for a new link, then open it.")),
    "link_used": (messages.link_used(APP), Message(
        "Link already used", "This connect link has already been used, and each link works once. "
        "Ask Example App for a new one.")),
    "return_address_refused": (messages.return_address_refused(APP), Message(
        "Invalid link", "This connect link returns to an address that is no longer allowed. "
        "Ask Example App for a new link.")),
    "parameter_repeated": (messages.parameter_repeated("code"), Message(
        "Invalid request", "The code parameter was given more than once. Start again from your connect link.")),
    "parameter_too_long": (messages.parameter_too_long("state"), Message(
        "Invalid request", "The state parameter is too long. Start again from your connect link.")),
    "no_state": (messages.no_state(), Message(
        "Invalid request", "The sign-in response has no state. Start again from your connect link.")),
    "no_code": (messages.no_code(), Message(
        "Invalid request", "The sign-in response has no authorization code. Start again from your connect link.")),
    "session_not_found": (messages.session_not_found(), Message(
        "Session not found", "This browser did not start the connection, or its cookie expired. "
        "Open the connect link again in this browser.")),
    "sign_in_expired": (messages.sign_in_expired(), Message(
        "Sign-in expired", "This sign-in attempt has expired, was already used, or was started in another "
        "browser. Start again from your connect link.")),
    "other_environment": (messages.other_environment(), Message(
        "Invalid request", "This sign-in was started against another Invoiced environment. "
        "Start again from your connect link.")),
    "authorization_expired": (messages.authorization_expired(), Message(
        "Sign-in expired", "Invoiced did not accept the sign-in, because it expired or was already used. "
        "Start again from your connect link.")),
    "connected": (messages.connected("Acme"), Message(
        "Connected to Acme", "Your Invoiced account is now connected. You can close this window.")),
    "connected_unnamed": (messages.connected(None), Message(
        "Connected to your Invoiced account", "Your Invoiced account is now connected. You can close this window.")),
    "declined": (messages.declined(APP), Message(
        "Not connected", "You declined access to your Invoiced account, so nothing was connected. "
        "To connect after all, open a new connect link from Example App.")),
    "authorize_error": (messages.authorize_error("Down for maintenance"), Message(
        "Not connected", "Invoiced could not complete the sign-in and reported: Down for maintenance. "
        "Start again from your connect link.")),
    "invoiced_unavailable": (messages.invoiced_unavailable(), Message(
        "Invoiced is unavailable", "Invoiced did not answer in time, so nothing was connected. "
        "Wait a few minutes, then open your connect link again.")),
    "invoiced_answer_unusable": (messages.invoiced_answer_unusable(), Message(
        "Could not connect", "Invoiced's answer could not be used, so nothing was connected. "
        "Open your connect link again; if this keeps happening, contact support.")),
    "credentials_refused": (messages.credentials_refused(APP), Message(
        "Could not connect", "Invoiced did not accept the credentials of Example App, so nothing was connected. "
        "Contact Example App support.")),
    "company_mismatch": (messages.company_mismatch("Acme Corporation", "Globex", APP), Message(
        "Different company chosen", "This link reconnects Acme Corporation, but Globex was chosen on Invoiced, "
        "so nothing was changed. Start again from your connect link and choose Acme Corporation, or ask "
        "Example App for a link that may connect the other company.")),
    "nothing_to_show": (messages.nothing_to_show(APP), Message(
        "Nothing to show", "There is no connection result to show here. To connect, open the connect link "
        "from Example App.")),
    "not_configured": (messages.not_configured(), Message(
        "Not available", "This connection service is not set up yet. Try again later, or contact support.")),
    "not_found": (messages.not_found(), Message(
        "Page not found", "There is nothing at this address. Open the connect link you were given.")),
    "unexpected": (messages.unexpected(), Message(
        "Something went wrong", "Nothing was connected. Wait a few minutes, then open your connect link again.")),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_each_text_is_pinned(name):
    given, expected = PINNED[name]
    assert given == expected


@pytest.mark.parametrize("name", sorted(PINNED))
def test_texts_are_sentence_case_and_end_as_sentences(name):
    message, _ = PINNED[name]
    assert message.title[0].isupper() and message.text[0].isupper()
    later_words = message.title.split()[1:]
    assert all(word.islower() or word in {"Invoiced", "Acme"} for word in later_words), message.title
    assert message.text.endswith(".")


def test_an_unnamed_app_reads_as_the_application_mid_sentence():
    assert messages.link_expired(messages.app_label(None)).text == (
        "This connect link has expired. Ask the application for a new link, then open it.")


def test_company_mismatch_without_names_and_with_long_ones():
    unnamed = messages.company_mismatch(None, None, "the application")
    assert unnamed.text.startswith("This link reconnects the company it connected before, but another company was "
                                   "chosen on Invoiced")
    text = messages.company_mismatch("x" * 200, "y" * 40, "a" * 60).text
    assert "x" * 39 + "\u2026" in text and "x" * 40 not in text
    assert "y" * 40 in text and "y" * 41 not in text
    assert len(text) < 400  # fits the outcome cookie's message limit, with the longest app name
