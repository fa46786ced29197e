"""Glue of the app API's three functions (links, tokens, connection-state):
the request logic of :mod:`invoiced_connect.app_api.service` with this
execution environment's parts (:mod:`invoiced_connect.runtime`)."""

from __future__ import annotations

from typing import Any

from invoiced_connect import runtime
from invoiced_connect.app_api.service import answer, connection_state, create_link


def handle_create_link(event: Any) -> dict[str, Any]:
    """The links function: a link signed with the key from Secrets Manager (cached)."""
    current = runtime.current()
    # current.settings inside the call: a missing setting is an error answer, not an exception.
    return answer(lambda: create_link(event, settings=current.settings, signing_key=current.link_signing_key))


def handle_get_token(event: Any, remaining_seconds: float) -> dict[str, Any]:
    """The tokens function (its vendor's cache lives as long as the execution environment)."""
    return answer(lambda: runtime.current().vendor.get_token(event, remaining_seconds))


def handle_connection_state(event: Any) -> dict[str, Any]:
    """The connection-state function."""
    return answer(lambda: connection_state(event, store=runtime.current().store))
