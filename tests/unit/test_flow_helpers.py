"""PKCE, random values, query and cookie parsing used by the flow."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from invoiced_connect.flow import BadRequest, _single, parse_cookies, parse_query, with_query
from invoiced_connect.pkce import new_verifier, random_token, s256_challenge


def test_verifier_is_43_chars_of_the_rfc7636_alphabet_and_unique():
    verifiers = {new_verifier() for _ in range(200)}
    assert len(verifiers) == 200
    assert all(re.fullmatch(r"[A-Za-z0-9\-._~]{43}", v) for v in verifiers)


def test_s256_is_unpadded_base64url_of_sha256():
    verifier = new_verifier()
    raw = hashlib.sha256(verifier.encode("ascii")).digest()
    challenge = s256_challenge(verifier)
    assert challenge == base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    assert len(challenge) == 43 and "=" not in challenge


def test_state_carries_at_least_128_bits():
    token = random_token(32)
    assert len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) * 8 >= 128


def test_parse_query_keeps_repeats_and_single_refuses_them():
    query = parse_query("state=a&state=b&code=c&empty=")
    assert query == {"state": ["a", "b"], "code": ["c"], "empty": [""]}
    assert _single(query, "code") == "c"
    assert _single(query, "missing") is None
    with pytest.raises(BadRequest) as info:
        _single(query, "state")
    assert info.value.status == 400


def test_parse_cookies_reads_api_gateway_v2_cookie_list():
    assert parse_cookies(["a=1", "__Host-invoiced-connect=xyz; b=2"]) == {
        "a": "1",
        "__Host-invoiced-connect": "xyz",
        "b": "2",
    }


def test_with_query_keeps_existing_parameters_as_written_and_encodes_new_ones():
    url = with_query("https://app.test/done?tab=x", {"connection_id": "acme:1", "status": "connected"})
    assert url == "https://app.test/done?tab=x&connection_id=acme%3A1&status=connected"
    assert with_query("https://app.test/d?flag&x=a%20b", {"s": "1"}) == "https://app.test/d?flag&x=a%20b&s=1"
    assert with_query("https://app.test/d", {"s": "1"}) == "https://app.test/d?s=1"
