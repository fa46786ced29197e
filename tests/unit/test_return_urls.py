"""Return URLs: only allowlisted destinations; hostile forms never pass."""

from __future__ import annotations

import pytest

from invoiced_connect.core.return_urls import ReturnUrlError, check_return_url, validate_allowlist_entry

ALLOW = ("https://app.example.com/settings", "http://127.0.0.1:8080")


@pytest.mark.parametrize(
    "url",
    [
        "https://app.example.com/settings",
        "https://app.example.com/settings/integrations?tab=invoiced",
        "https://APP.example.com:443/settings/x",
        "http://127.0.0.1:8080/anything",
    ],
)
def test_allowed_urls_pass_unchanged(url):
    assert check_return_url(url, ALLOW) == url


@pytest.mark.parametrize(
    "url",
    [
        "//evil.test",
        "/\\evil.test",
        "https:evil.test",
        "https:/evil.test",
        "a@evil.test",
        "https://a@evil.test/settings",
        "https://app.example.com@evil.test/settings",
        "%2F%2Fevil.test",
        "https://app.example.com%2F@evil.test/settings",
        "javascript:alert(1)",
        "JavaScript://app.example.com/settings%0aalert(1)",
        "data:text/html,<script>alert(1)</script>",
        "https://app.example.com/settings\r\nLocation: https://evil.test",
        "https://app.example.com/settings\n",
        "https://app.example.com/settings\t",
        "https://app.example.com\\@evil.test/settings",
        "https://аpp.example.com/settings",  # Cyrillic a: IDN look-alike
        "https://xn--pp-8cd.example.com/settings",
        "https://app.example.com.evil.test/settings",
        "https://evil.test/settings",
        "https://app.example.com/settingsX",
        "https://app.example.com/settings/../admin",
        "https://app.example.com/settings/%2e%2e/admin",
        "https://app.example.com/settings/%2E%2E/%2e%2e/admin",
        "https://app.example.com/settings%2f..%2fadmin",
        "https://app.example.com/settings/%5c..%5cadmin",
        "https://app.example.com//evil.test",
        "http://app.example.com/settings",
        "https://app.example.com:8443/settings",
        "http://127.0.0.1:9999/",
        "https://app.example.com/settings#frag",
        "",
        "https://" + "a" * 3000 + ".example.com/",
    ],
)
def test_hostile_or_foreign_urls_are_refused(url):
    with pytest.raises(ReturnUrlError):
        check_return_url(url, ALLOW)


def test_empty_allowlist_allows_nothing():
    with pytest.raises(ReturnUrlError):
        check_return_url("https://app.example.com/settings", ())


@pytest.mark.parametrize("entry", ["app.example.com", "http://example.com", "https://x.test/?q=1", "ftp://x.test"])
def test_malformed_allowlist_entries_are_refused(entry):
    with pytest.raises(ReturnUrlError):
        validate_allowlist_entry(entry)
