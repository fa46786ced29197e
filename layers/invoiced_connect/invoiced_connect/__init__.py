"""invoiced-connect: Invoiced OAuth connections for an AWS application.

What a consumer's Lambda imports (the layer's public SDK)::

    from invoiced_connect import get_access_token, get_token, InvoicedApi

    token = get_token("acme-7")        # .access_token, .api_url, .expires_at, ...
    with InvoicedApi("acme-7") as api:
        for invoice in api.list_invoices(status="past_due"):
            ...

The names below are loaded on first use, so importing the package (which
every function of the stack does) costs nothing. The subpackages, by role:

* ``sdk``: the token reader and the REST API session a consumer uses;
* ``connect``: the hosted connect flow (links, PKCE, pages);
* ``lifecycle``: refreshing, scheduling, the refresh worker, disconnecting;
* ``app_api``: the contracts the app calls over Lambda Invoke;
* ``storage`` (the token table, token encryption), ``invoiced`` (the OAuth
  client), ``cloud`` (AWS clients, secrets, events): the adapters;
* ``core``: plain values and configuration;
* ``entry``: the glue each function's handler calls;
* ``runtime``: the composition root that builds the long-lived objects;
  ``facade``: the SDK wired to it (what is re-exported here).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "get_token": "invoiced_connect.facade",
    "get_access_token": "invoiced_connect.facade",
    "disconnect": "invoiced_connect.facade",
    "create_connect_link": "invoiced_connect.facade",
    "InvoicedApi": "invoiced_connect.facade",
    "add_token_metrics": "invoiced_connect.entry.observability",
    "InvalidConnectionId": "invoiced_connect.core.models",
    "TransientError": "invoiced_connect.invoiced.client",
    "AccessToken": "invoiced_connect.sdk.tokens",
    "TokenReader": "invoiced_connect.sdk.tokens",
    "TokenError": "invoiced_connect.sdk.tokens",
    "ConnectionNotFound": "invoiced_connect.sdk.tokens",
    "ConnectionRevoked": "invoiced_connect.sdk.tokens",
    "NeedsReauthorization": "invoiced_connect.sdk.tokens",
    "TokenRejected": "invoiced_connect.sdk.tokens",
    "TokenUnavailable": "invoiced_connect.sdk.tokens",
    "ApiSession": "invoiced_connect.sdk.api",
    "TokenSource": "invoiced_connect.sdk.api",
    "ApiError": "invoiced_connect.sdk.api",
    "ApiAuthError": "invoiced_connect.sdk.api",
    "ApiConnectionError": "invoiced_connect.sdk.api",
    "ApiEnvironmentError": "invoiced_connect.sdk.api",
    "ApiNotFoundError": "invoiced_connect.sdk.api",
    "ApiRateLimitError": "invoiced_connect.sdk.api",
    "ApiRequestError": "invoiced_connect.sdk.api",
    "ApiResponseError": "invoiced_connect.sdk.api",
    "ApiServerError": "invoiced_connect.sdk.api",
    "ApiStatusError": "invoiced_connect.sdk.api",
    "ApiUnknownOutcomeError": "invoiced_connect.sdk.api",
    "ApiUrlError": "invoiced_connect.sdk.api",
}

__all__ = [
    "AccessToken",
    "ApiAuthError",
    "ApiConnectionError",
    "ApiEnvironmentError",
    "ApiError",
    "ApiNotFoundError",
    "ApiRateLimitError",
    "ApiRequestError",
    "ApiResponseError",
    "ApiServerError",
    "ApiSession",
    "ApiStatusError",
    "ApiUnknownOutcomeError",
    "ApiUrlError",
    "ConnectionNotFound",
    "ConnectionRevoked",
    "InvalidConnectionId",
    "InvoicedApi",
    "NeedsReauthorization",
    "TokenError",
    "TokenReader",
    "TokenRejected",
    "TokenSource",
    "TokenUnavailable",
    "TransientError",
    "add_token_metrics",
    "create_connect_link",
    "disconnect",
    "get_access_token",
    "get_token",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'invoiced_connect' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from invoiced_connect.core.models import (
        InvalidConnectionId,
    )
    from invoiced_connect.entry.observability import (
        add_token_metrics,
    )
    from invoiced_connect.facade import (
        InvoicedApi,
        create_connect_link,
        disconnect,
        get_access_token,
        get_token,
    )
    from invoiced_connect.invoiced.client import (
        TransientError,
    )
    from invoiced_connect.sdk.api import (
        ApiAuthError,
        ApiConnectionError,
        ApiEnvironmentError,
        ApiError,
        ApiNotFoundError,
        ApiRateLimitError,
        ApiRequestError,
        ApiResponseError,
        ApiServerError,
        ApiSession,
        ApiStatusError,
        ApiUnknownOutcomeError,
        ApiUrlError,
        TokenSource,
    )
    from invoiced_connect.sdk.tokens import (
        AccessToken,
        ConnectionNotFound,
        ConnectionRevoked,
        NeedsReauthorization,
        TokenError,
        TokenReader,
        TokenRejected,
        TokenUnavailable,
    )
