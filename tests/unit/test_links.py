"""Signed connect links: what verifies, and every way a link must not."""

from __future__ import annotations

from datetime import timedelta

import pytest

from invoiced_connect.connect.links import (
    LinkClaims,
    LinkError,
    build_claims,
    link_url,
    sign_link_token,
    verify_link_token,
)
from invoiced_connect.core.models import InvalidConnectionId
from invoiced_connect.core.return_urls import ReturnUrlError

KEY = "k" * 48
OTHER_KEY = "o" * 48
NOW = 1_800_000_000


LINK_ID = "0123456789abcdef0123456789abcdef"


def make_token(connection_id="acme-42", return_to=None, expires_at=NOW + 3600, key=KEY) -> str:
    return sign_link_token(LinkClaims(connection_id, return_to, expires_at, LINK_ID), key)


def test_round_trip_returns_the_signed_claims():
    token = make_token(return_to="https://app.example.com/done")
    claims = verify_link_token(token, [KEY], now=NOW)
    assert claims == LinkClaims("acme-42", "https://app.example.com/done", NOW + 3600, LINK_ID)


def test_every_link_gets_its_own_random_id():
    ids = {LinkClaims("acme-42", None, NOW).link_id for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 32 for i in ids)


def test_previous_key_still_verifies_during_rotation():
    token = make_token(key=OTHER_KEY)
    assert verify_link_token(token, [KEY, OTHER_KEY], now=NOW).connection_id == "acme-42"


def test_link_signed_with_another_key_is_refused():
    with pytest.raises(LinkError, match="signature"):
        verify_link_token(make_token(key=OTHER_KEY), [KEY], now=NOW)


def test_expired_link_is_refused():
    with pytest.raises(LinkError, match="expired"):
        verify_link_token(make_token(expires_at=NOW), [KEY], now=NOW)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t.replace("v1.", "v2.", 1),
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),
        lambda t: t.split(".")[0] + "." + t.split(".")[1][:-1] + "A." + t.split(".")[2],
        lambda t: t.rsplit(".", 1)[0],  # unsigned
        lambda t: "",
        lambda t: t + ".extra",
        lambda t: t.replace("v1.", "v1.\u00e9", 1),  # non-ASCII
    ],
)
def test_tampered_or_unsigned_links_are_refused(tamper):
    with pytest.raises(LinkError):
        verify_link_token(tamper(make_token()), [KEY], now=NOW)


def test_payload_swapped_from_another_link_is_refused():
    mine = make_token("acme-42").split(".")
    theirs = make_token("victim-1").split(".")
    with pytest.raises(LinkError, match="signature"):
        verify_link_token(f"v1.{theirs[1]}.{mine[2]}", [KEY], now=NOW)


def test_short_signing_key_is_rejected_when_signing():
    with pytest.raises(ValueError, match="at least"):
        make_token(key="short")


def test_build_claims_validates_connection_id_ttl_and_return_url():
    allow = ("https://app.example.com/integrations",)
    claims = build_claims("acme-42", "https://app.example.com/integrations/done", timedelta(hours=2), allow, now=NOW)
    assert claims.expires_at == NOW + 7200
    with pytest.raises(InvalidConnectionId):
        build_claims("bad id/../x", None, timedelta(hours=1), allow, now=NOW)
    with pytest.raises(ReturnUrlError):
        build_claims("acme-42", "https://evil.test/", timedelta(hours=1), allow, now=NOW)
    with pytest.raises(LinkError, match="ttl"):
        build_claims("acme-42", None, timedelta(days=31), allow, now=NOW)
    with pytest.raises(LinkError, match="ttl"):
        build_claims("acme-42", None, timedelta(seconds=5), allow, now=NOW)


def test_link_url_carries_only_the_token():
    url = link_url("https://api.example.com/connect", "v1.abc.def")
    assert url == "https://api.example.com/connect?link=v1.abc.def"
