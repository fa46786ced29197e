"""PKCE, random values, query and cookie parsing, and link-key re-reads used by the flow."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from invoiced_connect.connect.flow import (
    LINK_KEYS_REREAD_SECONDS,
    ConnectFlow,
    RequestRefused,
    _single,
    parse_cookies,
    parse_query,
    with_query,
)
from invoiced_connect.connect.links import LinkClaims, LinkError, LinkSignatureError, sign_link_token
from invoiced_connect.connect.pkce import new_verifier, random_token, s256_challenge


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
    with pytest.raises(RequestRefused) as info:
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


# ------------------------------------------------------------------ link key rotation
class RotatingKeys:
    """The link signing secret as Secrets Manager holds it, and what this
    process has cached of it (re-read only when forced)."""

    def __init__(self, current: str) -> None:
        self.stored = [current]
        self.cached = list(self.stored)
        self.forced_reads = 0

    def rotate(self, new: str) -> None:
        self.stored = [new, self.stored[0]]

    def __call__(self, force: bool) -> list[str]:
        if force:
            self.forced_reads += 1
            self.cached = list(self.stored)
        return self.cached


def rotation_flow(keys: RotatingKeys, clock: list[float]) -> ConnectFlow:
    # _verify_link uses the keys and the clock only.
    return ConnectFlow(settings=None, store=None, cipher=None, link_keys=keys,  # type: ignore[arg-type]
                       client_secret=lambda force: "unused", invoiced=lambda: None,  # type: ignore[arg-type, return-value]
                       policy=None, clock=lambda: clock[0])


OLD_KEY, NEW_KEY, FOREIGN_KEY = "o" * 43, "n" * 43, "f" * 43


def link(key: str, now: float) -> str:
    return sign_link_token(LinkClaims("acme-42", None, int(now) + 600), key)


def test_a_link_signed_with_a_freshly_rotated_key_is_accepted_at_once():
    clock, keys = [1_000_000.0], RotatingKeys(OLD_KEY)
    flow = rotation_flow(keys, clock)
    assert flow._verify_link(link(OLD_KEY, clock[0])).connection_id == "acme-42"
    assert keys.forced_reads == 0  # a good link never re-reads
    keys.rotate(NEW_KEY)  # the cache still holds only the old key
    assert flow._verify_link(link(NEW_KEY, clock[0])).connection_id == "acme-42"
    assert keys.forced_reads == 1
    assert flow._verify_link(link(OLD_KEY, clock[0])).connection_id == "acme-42"  # now "previous"


def test_bad_signatures_re_read_the_keys_at_most_once_a_minute():
    clock, keys = [1_000_000.0], RotatingKeys(OLD_KEY)
    flow = rotation_flow(keys, clock)
    for _ in range(20):
        with pytest.raises(LinkSignatureError):
            flow._verify_link(link(FOREIGN_KEY, clock[0]))
        clock[0] += 1
    assert keys.forced_reads == 1
    clock[0] += LINK_KEYS_REREAD_SECONDS
    with pytest.raises(LinkSignatureError):
        flow._verify_link(link(FOREIGN_KEY, clock[0]))
    assert keys.forced_reads == 2


def test_expired_and_malformed_links_never_re_read_the_keys():
    clock, keys = [1_000_000.0], RotatingKeys(OLD_KEY)
    flow = rotation_flow(keys, clock)
    with pytest.raises(LinkError, match="expired"):
        flow._verify_link(sign_link_token(LinkClaims("acme-42", None, int(clock[0]) - 1), OLD_KEY))
    with pytest.raises(LinkError, match="malformed"):
        flow._verify_link("v1.not-a-link")
    assert keys.forced_reads == 0
