"""A refused link says which way it failed, so the pages can tell the
customer: malformed (not one of our links), a signature no key verifies
(tampered or foreign), or expired (genuine, with the claims it carried)."""

from __future__ import annotations

import pytest

from invoiced_connect.connect.links import (
    LinkClaims,
    LinkError,
    LinkExpired,
    LinkMalformed,
    LinkSignatureError,
    sign_link_token,
    verify_link_token,
)

KEY = "k" * 43
NOW = 1_800_000_000
CLAIMS = LinkClaims("acme-42", "https://app.example.com/done", NOW + 600, "0123456789abcdef0123")


def refusal(token: str, now: float = NOW) -> LinkError:
    with pytest.raises(LinkError) as caught:
        verify_link_token(token, [KEY], now=now)
    return caught.value


def test_an_expired_link_is_its_own_error_and_keeps_its_claims():
    error = refusal(sign_link_token(CLAIMS, KEY), now=NOW + 600)
    assert type(error) is LinkExpired
    assert error.claims == CLAIMS
    assert str(error) == "the connect link has expired"


@pytest.mark.parametrize("token", ["", "v1.x", "v2.a.b", "v1.e30.!!", "x" * 5000], ids=[
    "empty", "two parts", "other version", "bad signature encoding", "too long"])
def test_a_malformed_link_is_malformed(token):
    error = refusal(token)
    assert type(error) is LinkMalformed
    assert str(error) == "the connect link is malformed"


def test_a_signed_payload_that_does_not_parse_is_malformed():
    import hashlib
    import hmac

    from invoiced_connect.core import b64url

    signed_part = "v1." + b64url.encode(b'{"cid":"acme-42"}')
    mac = b64url.encode(hmac.new(KEY.encode(), signed_part.encode(), hashlib.sha256).digest())
    assert type(refusal(f"{signed_part}.{mac}")) is LinkMalformed


def test_a_tampered_or_foreign_link_is_a_signature_error_not_an_expiry():
    tampered = sign_link_token(CLAIMS, KEY).replace("v1.", "v1.e", 1)
    assert type(refusal(tampered)) is LinkSignatureError
    # Even when expired: an unverified expiry says nothing about the link.
    foreign = sign_link_token(CLAIMS, "f" * 43)
    assert type(refusal(foreign, now=NOW + 3600)) is LinkSignatureError


def test_each_refusal_is_a_link_error():
    assert issubclass(LinkExpired, LinkError) and issubclass(LinkMalformed, LinkError)
    assert issubclass(LinkSignatureError, LinkError)
