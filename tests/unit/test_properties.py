"""Property-based checks of the two parsers that face attackers: connect
links and return URLs."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from invoiced_connect.connect.links import LinkClaims, LinkError, sign_link_token, verify_link_token
from invoiced_connect.core.return_urls import ReturnUrlError, check_return_url

KEY = "k" * 48
NOW = 1_800_000_000
ALLOW = ("https://app.example.com/settings",)

connection_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}", fullmatch=True)


@given(connection_ids)
def test_any_valid_connection_id_round_trips(connection_id):
    token = sign_link_token(LinkClaims(connection_id, None, NOW + 60), KEY)
    assert verify_link_token(token, [KEY], now=NOW).connection_id == connection_id


@settings(max_examples=300)
@given(st.data())
def test_changing_any_single_character_of_a_link_breaks_it(data):
    token = sign_link_token(LinkClaims("acme-42", "https://app.example.com/settings", NOW + 60), KEY)
    position = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.characters(codec="ascii").filter(lambda c: c != token[position]))
    tampered = token[:position] + replacement + token[position + 1 :]
    with pytest.raises(LinkError):
        verify_link_token(tampered, [KEY], now=NOW)


@given(st.text(alphabet="!$*~=.", min_size=1, max_size=3))
def test_stray_characters_after_the_signature_break_it(junk):
    token = sign_link_token(LinkClaims("acme-42", None, NOW + 60), KEY)
    with pytest.raises(LinkError):
        verify_link_token(token + junk, [KEY], now=NOW)


@settings(max_examples=500)
@given(
    st.one_of(
        st.text(max_size=80),
        st.builds(lambda tail: "https://app.example.com/settings" + tail, st.text(max_size=40)),
        st.builds(lambda head, tail: head + "app.example.com/settings" + tail, st.text(max_size=12), st.text(max_size=12)),
    )
)
def test_an_accepted_return_url_always_stays_on_the_allowlisted_origin_and_prefix(url):
    try:
        accepted = check_return_url(url, ALLOW)
    except ReturnUrlError:
        return
    parts = urlsplit(accepted)
    assert (parts.scheme, parts.hostname, parts.port) == ("https", "app.example.com", None)
    assert parts.path == "/settings" or parts.path.startswith("/settings/")
    assert accepted.isascii() and accepted.isprintable()
    assert not any(c in accepted for c in "\\\r\n\t <>\"'@")
