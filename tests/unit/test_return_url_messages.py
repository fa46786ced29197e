"""Return URLs: each refusal rule on its own, with the exact message the caller
sees; the length limit at its boundary; how ports, schemes and path prefixes
are matched against the allowlist."""

from __future__ import annotations

import re

import pytest

from invoiced_connect.core.return_urls import (
    MAX_RETURN_URL_LENGTH,
    ReturnUrlError,
    check_return_url,
    validate_allowlist_entry,
)

ALLOW = ("https://app.example.com/settings", "http://127.0.0.1:8080")
NOT_ALLOWED = "return URL is not in the allowlist; allowed: https://app.example.com/settings, http://127.0.0.1:8080"


def refusal(url: str, allowlist: tuple[str, ...] = ALLOW) -> str:
    with pytest.raises(ReturnUrlError) as caught:
        check_return_url(url, allowlist)
    return str(caught.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "return URL is empty"),
        (None, "return URL is empty"),
        ("https://" + "a" * 3000 + ".example.com/", "return URL is too long"),
        ("https://app.example.com/settings\n", "return URL contains characters that are not allowed"),
        ("https://app.example.com/set tings", "return URL contains characters that are not allowed"),
        ("https://app.example.com\\@evil.test/settings", "return URL contains characters that are not allowed"),
        ("javascript:alert(1)", "return URL must be an absolute https URL"),
        ("ftp://app.example.com/settings", "return URL must be an absolute https URL"),
        ("https:app.example.com/settings", "return URL must be an absolute https URL"),
        ("https:/app.example.com/settings", "return URL must be an absolute https URL"),
        ("https://a@app.example.com/settings", "return URL must not contain user information"),
        ("https://app%2eexample.com/settings", "return URL host must not be percent-encoded"),
        ("https:///settings", "return URL has no valid host"),
        ("https://:443/settings", "return URL has no valid host"),
        ("https://app_1.example.com/settings", "return URL has no valid host"),
        ("https://xn--pp-8cd..example.com/settings", "return URL has no valid host"),
        ("http://app.example.com/settings", "return URL must use https"),
        ("https://app.example.com:99999/settings", "return URL has an invalid port"),
        ("https://app.example.com:abc/settings", "return URL has an invalid port"),
        ("https://app.example.com/settings/%2e%2e/admin", "return URL path must not percent-encode dots or slashes"),
        ("https://app.example.com/settings/%2E%2E/admin", "return URL path must not percent-encode dots or slashes"),
        ("https://app.example.com/settings%2Fadmin", "return URL path must not percent-encode dots or slashes"),
        ("https://app.example.com/settings/%5Cadmin", "return URL path must not percent-encode dots or slashes"),
        ("https://app.example.com/settings//x", "return URL path is not canonical"),
        ("https://app.example.com/settings/./x", "return URL path is not canonical"),
        ("https://app.example.com/settings/../admin", "return URL path is not canonical"),
        ("https://app.example.com/settings/..", "return URL path is not canonical"),
        ("https://app.example.com/settings/.", "return URL path is not canonical"),
        ("https://app.example.com/settings#frag", "return URL must not have a fragment"),
        ("https://evil.test/settings", NOT_ALLOWED),
        ("https://app.example.com/settingsX", NOT_ALLOWED),
    ],
)
def test_each_bad_return_url_gets_its_own_clear_message(url, message):
    assert refusal(url) == message


def test_an_empty_allowlist_says_that_it_is_empty():
    assert refusal("https://app.example.com/settings", ()) == (
        "return URL is not in the allowlist; allowed: nothing (RETURN_URL_ALLOWLIST is empty)"
    )


def test_a_return_url_of_exactly_the_maximum_length_is_allowed_and_one_longer_is_not():
    prefix = "https://app.example.com/settings/"
    longest = prefix + "a" * (MAX_RETURN_URL_LENGTH - len(prefix))
    assert len(longest) == MAX_RETURN_URL_LENGTH == 2048
    assert check_return_url(longest, ALLOW) == longest
    assert refusal(longest + "a") == "return URL is too long"


@pytest.mark.parametrize(
    ("url", "allowlist"),
    [
        ("http://[::1]:8080/done", ("http://[::1]:8080",)),
        ("http://localhost/done", ("http://localhost:80",)),
        ("http://localhost:80/done", ("http://localhost",)),
        ("https://app.example.com/done", ("https://app.example.com:443",)),
        ("https://app.example.com:443/done", ("https://app.example.com",)),
        ("https://app.example.com/settings", ("https://app.example.com/settings/",)),
        ("https://app.example.com/inboX/done", ("https://app.example.com/inboX",)),
    ],
)
def test_default_ports_loopback_hosts_and_path_prefixes_match_as_written(url, allowlist):
    assert check_return_url(url, allowlist) == url


@pytest.mark.parametrize(
    ("url", "allowlist"),
    [
        ("http://localhost/done", ("http://localhost:443",)),
        ("http://localhost/done", ("http://localhost:81",)),
        ("https://app.example.com/done", ("https://app.example.com:80",)),
        ("http://127.0.0.1:8443/done", ("https://127.0.0.1:8443",)),
        ("https://127.0.0.1:8443/done", ("http://127.0.0.1:8443",)),
        ("https://app.example.com/inbo/done", ("https://app.example.com/inboX",)),
    ],
)
def test_a_different_port_scheme_or_path_prefix_is_not_allowed(url, allowlist):
    assert refusal(url, allowlist) == f"return URL is not in the allowlist; allowed: {allowlist[0]}"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("https://x.test/?q=1", "allowlist entry 'https://x.test/?q=1' must not have a query or fragment"),
        ("https://x.test/#top", "allowlist entry 'https://x.test/#top' must not have a query or fragment"),
        ("app.example.com", "return URL must be an absolute https URL"),
        ("http://example.com", "return URL must use https"),
    ],
)
def test_each_bad_allowlist_entry_gets_a_clear_message(entry, message):
    with pytest.raises(ReturnUrlError, match=re.escape(message) + "$"):
        validate_allowlist_entry(entry)


def test_a_good_allowlist_entry_is_accepted():
    assert validate_allowlist_entry("https://app.example.com/settings/integrations") is None
