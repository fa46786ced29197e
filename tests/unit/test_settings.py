"""Settings: validated once, with errors that name the variable."""

from __future__ import annotations

import pytest

from invoiced_connect.core.settings import SettingsError, load_settings

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


@pytest.mark.parametrize("name", ["TABLE_NAME", "KMS_KEY_ID"])
def test_missing_required_variable_is_named(name):
    env = {k: v for k, v in BASE.items() if k != name}
    with pytest.raises(SettingsError, match=name):
        load_settings(env)


def test_public_base_url_is_needed_only_by_the_connect_flow():
    settings = load_settings({k: v for k, v in BASE.items() if k != "PUBLIC_BASE_URL"})
    assert settings.table_name  # readers and the refresher load fine
    with pytest.raises(SettingsError, match="PUBLIC_BASE_URL"):
        _ = settings.redirect_uri


def test_lifecycle_settings_have_defaults_and_bounds():
    settings = load_settings(BASE)
    assert (settings.refresh_window_seconds, settings.keepalive_seconds, settings.active_use_seconds) == (
        900, 30 * 86400, 24 * 3600)
    custom = load_settings({**BASE, "REFRESH_WINDOW_MINUTES": "20", "KEEPALIVE_DAYS": "7", "ACTIVE_USE_HOURS": "0"})
    assert (custom.refresh_window_seconds, custom.keepalive_seconds, custom.active_use_seconds) == (1200, 604800, 0)
    for name, value in [("KEEPALIVE_DAYS", "366"), ("REFRESH_WINDOW_MINUTES", "2"), ("ACTIVE_USE_HOURS", "x")]:
        with pytest.raises(SettingsError, match=name):
            load_settings({**BASE, name: value})


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


# ------------------------------------------------------------------ Invoiced's two environments
def test_the_api_url_follows_the_environment_of_the_base_url_when_unset():
    settings = load_settings({**BASE, "INVOICED_BASE_URL": "https://sandbox.invoiced.com"})
    assert settings.invoiced_api_url == "https://api.sandbox.invoiced.com"
    assert settings.configured_api_url is None


def test_an_api_url_of_the_other_environment_is_refused_naming_both():
    with pytest.raises(SettingsError) as caught:
        load_settings({**BASE, "INVOICED_BASE_URL": "https://sandbox.invoiced.com",
                       "INVOICED_API_URL": "https://api.invoiced.com"})
    assert "https://api.invoiced.com" in str(caught.value) and "https://api.sandbox.invoiced.com" in str(caught.value)


def test_a_reader_needs_no_invoiced_settings_and_pins_nothing():
    settings = load_settings({"TABLE_NAME": "t", "KMS_KEY_ID": "k", "TOKENS_FUNCTION_NAME": "stack-tokens"})
    assert settings.configured_api_url is None and settings.tokens_function_name == "stack-tokens"
    assert settings.rejected_token_window_seconds == 300


def test_a_connection_knows_its_api_from_its_issuer_or_what_the_callback_recorded():
    from invoiced_connect.core.models import Connection, ConnectionStatus

    def connection(issuer: str, api_url: str | None = None) -> Connection:
        return Connection("c", "1", None, (), issuer, ConnectionStatus.ACTIVE, 0, 1, 0, 0, api_url=api_url)

    assert connection("https://sandbox.invoiced.com").api_base_url == "https://api.sandbox.invoiced.com"
    assert connection("https://invoiced.com").api_base_url == "https://api.invoiced.com"
    assert connection("http://127.0.0.1:9000", "http://127.0.0.1:9001").api_base_url == "http://127.0.0.1:9001"
    assert connection("https://invoiced.example").api_base_url is None


# ------------------------------------------------------------------ what the pages say about the app
PAGES = {**BASE, "RETURN_URL_ALLOWLIST": "https://app.example.com/integrations"}


def test_the_pages_texts_are_optional():
    settings = load_settings(BASE)
    assert (settings.app_name, settings.support_contact, settings.default_return_url) == (None, None, None)
    blank = load_settings({**BASE, "APP_NAME": "  ", "SUPPORT_CONTACT": " ", "DEFAULT_RETURN_URL": ""})
    assert (blank.app_name, blank.support_contact, blank.default_return_url) == (None, None, None)


def test_the_pages_texts_are_read_and_trimmed():
    settings = load_settings({**PAGES, "APP_NAME": " Example App ", "SUPPORT_CONTACT": " help@example.com ",
                              "DEFAULT_RETURN_URL": " https://app.example.com/integrations/invoiced "})
    assert settings.app_name == "Example App"
    assert settings.support_contact == "help@example.com"
    assert settings.default_return_url == "https://app.example.com/integrations/invoiced"


def test_an_app_name_is_at_most_60_printable_characters():
    assert load_settings({**BASE, "APP_NAME": "A" * 60}).app_name == "A" * 60
    assert load_settings({**BASE, "APP_NAME": "Café & Co <3"}).app_name == "Café & Co <3"
    with pytest.raises(SettingsError, match="APP_NAME must be at most 60 characters, got 61"):
        load_settings({**BASE, "APP_NAME": "A" * 61})
    for hidden in ("Ex\x07ample", "Ex\u200bample", "Ex\nample"):
        with pytest.raises(SettingsError, match="APP_NAME must not contain control or invisible characters"):
            load_settings({**BASE, "APP_NAME": hidden})


@pytest.mark.parametrize("value", ["https://help.example.com", "https://help.example.com/connect?from=invoiced",
                                   "support@example.com", "first.last+tag@mail.example.co.uk"])
def test_support_is_an_https_url_or_an_e_mail_address(value):
    assert load_settings({**BASE, "SUPPORT_CONTACT": value}).support_contact == value


@pytest.mark.parametrize("value", ["http://help.example.com", "help.example.com", "mailto:support@example.com",
                                   "support@localhost", "https://", "https://user:pw@help.example.com/",
                                   "https://help.example.com/a b", 'https://help.example.com/"x', "javascript:x",
                                   "https:help.example.com", "support@example.com\x00"])
def test_other_support_contacts_are_refused_clearly(value):
    with pytest.raises(SettingsError, match="SUPPORT_CONTACT must be an https URL or an e-mail address"):
        load_settings({**BASE, "SUPPORT_CONTACT": value})


def test_a_support_contact_is_at_most_200_characters():
    fits = "https://help.example.com/" + "x" * 175
    assert load_settings({**BASE, "SUPPORT_CONTACT": fits}).support_contact == fits
    with pytest.raises(SettingsError, match="SUPPORT_CONTACT must be at most 200 characters"):
        load_settings({**BASE, "SUPPORT_CONTACT": fits + "x"})


def test_the_default_return_url_must_pass_the_allowlist():
    assert load_settings({**PAGES, "DEFAULT_RETURN_URL": "https://app.example.com/integrations"}).default_return_url
    for refused in ("https://evil.example.com/integrations", "https://app.example.com/other", "//evil.test",
                    "javascript:alert(1)"):
        with pytest.raises(SettingsError, match="DEFAULT_RETURN_URL .* is refused .*RETURN_URL_ALLOWLIST"):
            load_settings({**PAGES, "DEFAULT_RETURN_URL": refused})
    with pytest.raises(SettingsError, match="not in the allowlist"):
        load_settings({**BASE, "DEFAULT_RETURN_URL": "https://app.example.com/integrations"})
