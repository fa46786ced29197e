"""Settings: validated once, with errors that name the variable."""

from __future__ import annotations

import pytest

from invoiced_connect.settings import SettingsError, load_settings

BASE = {
    "TABLE_NAME": "tokens",
    "KMS_KEY_ID": "arn:aws:kms:us-east-1:123456789012:key/abc",
    "PUBLIC_BASE_URL": "https://abc.execute-api.us-east-1.amazonaws.com",
}


def test_defaults_point_at_production_invoiced():
    settings = load_settings(BASE)
    assert settings.invoiced_base_url == "https://invoiced.com"
    assert settings.invoiced_api_url == "https://api.invoiced.com"
    assert settings.scope == "read_write"
    assert settings.redirect_uri == "https://abc.execute-api.us-east-1.amazonaws.com/callback"
    assert settings.connect_url == "https://abc.execute-api.us-east-1.amazonaws.com/connect"
    assert settings.issuer == "https://invoiced.com"


@pytest.mark.parametrize("name", ["TABLE_NAME", "KMS_KEY_ID", "PUBLIC_BASE_URL"])
def test_missing_required_variable_is_named(name):
    env = {k: v for k, v in BASE.items() if k != name}
    with pytest.raises(SettingsError, match=name):
        load_settings(env)


@pytest.mark.parametrize(
    "name,value",
    [
        ("INVOICED_BASE_URL", "http://sandbox.invoiced.com"),
        ("INVOICED_API_URL", "http://10.0.0.5:8080"),
        ("PUBLIC_BASE_URL", "http://example.com"),
        ("INVOICED_BASE_URL", "invoiced.com"),
        ("INVOICED_BASE_URL", "https://user:pw@invoiced.com"),
    ],
)
def test_non_loopback_urls_must_be_https(name, value):
    with pytest.raises(SettingsError, match=name):
        load_settings({**BASE, name: value})


def test_loopback_http_is_allowed_for_local_use():
    settings = load_settings({**BASE, "INVOICED_BASE_URL": "http://127.0.0.1:9000/", "PUBLIC_BASE_URL": "http://localhost:3000"})
    assert settings.invoiced_base_url == "http://127.0.0.1:9000"
    assert settings.redirect_uri == "http://localhost:3000/callback"


def test_scope_and_allowlist_are_validated():
    with pytest.raises(SettingsError, match="INVOICED_SCOPE"):
        load_settings({**BASE, "INVOICED_SCOPE": "admin"})
    with pytest.raises(SettingsError, match="RETURN_URL_ALLOWLIST entry 'javascript:alert"):
        load_settings({**BASE, "RETURN_URL_ALLOWLIST": "https://ok.test,javascript:alert(1)"})
    settings = load_settings({**BASE, "RETURN_URL_ALLOWLIST": " https://a.test/x , https://b.test "})
    assert settings.return_url_allowlist == ("https://a.test/x", "https://b.test")


def test_client_id_is_required_only_where_used():
    settings = load_settings(BASE)
    with pytest.raises(SettingsError, match="INVOICED_CLIENT_ID"):
        settings.require_client_id()
    with pytest.raises(SettingsError, match="CLIENT_SECRET_ARN"):
        settings.require("client_secret_arn")
