"""Invoiced's two environments, each an OAuth issuer with its own REST API.

A connection records the issuer that granted it (and, since it was made,
the API URL the callback used), so whoever holds its token sends it to the
API of the same environment: a sandbox token never goes to production.
"""

from __future__ import annotations

#: issuer (the app host: authorize, token, revoke) -> REST API base URL.
KNOWN_ISSUERS = {
    "https://invoiced.com": "https://api.invoiced.com",
    "https://sandbox.invoiced.com": "https://api.sandbox.invoiced.com",
}


def api_url_for_issuer(issuer: str) -> str | None:
    """The REST API of a known Invoiced environment, or ``None`` for another issuer."""
    return KNOWN_ISSUERS.get(issuer.rstrip("/"))


class EnvironmentMismatch(ValueError):
    """A configured API URL and a connection's own environment disagree."""

    def __init__(self, connection_id: str, configured: str, connection_api_url: str) -> None:
        super().__init__(
            f"connection {connection_id!r} belongs to the Invoiced environment at {connection_api_url}, "
            f"but the API URL configured here is {configured}; nothing was sent. Remove the configured "
            "URL (the connection knows its own) or use a connection of that environment."
        )
        self.connection_id = connection_id
        self.configured = configured
        self.connection_api_url = connection_api_url
