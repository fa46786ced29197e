"""What a consumer's Lambda calls: the SDK wired to this process's runtime.

``from invoiced_connect import get_token, InvoicedApi, ...`` comes from here
(the package re-exports it lazily, so importing the package costs nothing).
The SDK's classes (:mod:`invoiced_connect.sdk`) take their collaborators as
arguments; these functions give them the ones :mod:`invoiced_connect.runtime`
builds from the environment (``TABLE_NAME``, ``KMS_KEY_ID``,
``TOKENS_FUNCTION_NAME``, ...), once per execution environment.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from invoiced_connect import runtime
from invoiced_connect.connect.links import DEFAULT_TTL
from invoiced_connect.core.models import validate_connection_id
from invoiced_connect.sdk.api import ApiSession
from invoiced_connect.sdk.tokens import AccessToken


def get_token(connection_id: str, *, min_validity_seconds: int | None = None) -> AccessToken:
    """A valid access token for ``connection_id`` and its API URL; see
    :class:`~invoiced_connect.sdk.tokens.TokenReader`."""
    return runtime.current().reader.get_token(connection_id, min_validity_seconds=min_validity_seconds)


def get_access_token(connection_id: str) -> str:
    """A valid access token for ``connection_id``; see :class:`~invoiced_connect.sdk.tokens.TokenReader`."""
    return runtime.current().reader.get_access_token(connection_id)


def disconnect(connection_id: str) -> dict[str, Any]:
    """Revoke ``connection_id`` at Invoiced and erase its tokens, through the connections
    function (an operator's call: needs ``ConnectionsOperatorPolicyArn`` and
    ``CONNECTIONS_FUNCTION_NAME``)."""
    validate_connection_id(connection_id)
    current = runtime.current()
    current.reader.forget(connection_id)
    return current.connections_invoker()({"action": "disconnect", "connection_id": connection_id})


def create_connect_link(connection_id: str, return_to: str | None = None, ttl: timedelta = DEFAULT_TTL, *,
                        allow_company_change: bool = False) -> str:
    """Make a hosted connect link for one of your customers.

    ``connection_id`` is your own id for the customer (1-128 characters of
    letters, digits and ``. _ : @ -``); the tokens are stored under it.
    ``return_to``, if given, must match ``RETURN_URL_ALLOWLIST``; the browser
    is sent there after connecting, with ``connection_id`` and ``status``.
    The link expires after ``ttl`` (default one hour, at most 30 days) and
    completes at most one connection.

    A reconnect (an id already connected) must authorize the same Invoiced
    company as before, or it is refused and the connection stays as it is;
    ``allow_company_change=True`` lets this link's reconnect pick another.

    Needs the deployment's environment (``PUBLIC_BASE_URL``,
    ``LINK_SIGNING_SECRET_ARN``, ...) and permission to read the signing key
    (cached for 5 minutes). Raises ``ValueError`` for bad input.
    """
    from invoiced_connect.connect.links import build_claims, link_url, sign_link_token

    current = runtime.current()
    settings = current.settings
    claims = build_claims(connection_id, return_to, ttl, settings.return_url_allowlist,
                          allow_company_change=allow_company_change)
    return link_url(settings.connect_url, sign_link_token(claims, current.link_signing_key()))


class InvoicedApi(ApiSession):
    """An :class:`~invoiced_connect.sdk.api.ApiSession` that reads tokens through this
    process's reader unless given ``tokens``; ``api_url`` then defaults to
    ``INVOICED_API_URL`` if set (it only pins the connection's own)."""

    def __init__(self, connection_id: str, *, tokens: Any = None, api_url: str | None = None, **options: Any) -> None:
        if tokens is None:
            current = runtime.current()
            tokens = current.reader
            if api_url is None:
                api_url = current.settings.configured_api_url
        super().__init__(connection_id, tokens=tokens, api_url=api_url, **options)
