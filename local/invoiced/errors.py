"""OAuth errors and the two wire shapes Invoiced's token endpoint may use.

Invoiced wraps league/oauth2-server 8.5 and rewrites every failure as HTTP 400
``{"type": "invalid_request", "message": ...}``; stock league answers with
``{"error", "error_description", "hint", "message"}`` and varied statuses.
Both come from the same ``OAuthError`` so switching styles changes only the
rendering, never the decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

INVALID_REQUEST_MESSAGE = (
    "The request is missing a required parameter, includes an invalid parameter value, "
    "includes a parameter more than once, or is otherwise malformed."
)
INVALID_GRANT_MESSAGE = (
    "The provided authorization grant (e.g., authorization code, resource owner credentials) "
    "or refresh token is invalid, expired, revoked, does not match the redirection URI used "
    "in the authorization request, or was issued to another client."
)
ACCESS_DENIED_MESSAGE = "The resource owner or authorization server denied the request."


@dataclass(frozen=True)
class ErrorKind:
    """One league exception type and what Invoiced says instead."""

    error: str
    league_status: int
    league_message: str
    invoiced_message: str


INVALID_REQUEST = ErrorKind("invalid_request", 400, INVALID_REQUEST_MESSAGE, INVALID_REQUEST_MESSAGE)
INVALID_CLIENT = ErrorKind("invalid_client", 401, "Client authentication failed",
                           "Client authentication failed")
# league 8.x: a bad refresh token is `invalid_request` with 401 (9.x moved to invalid_grant).
INVALID_REFRESH_TOKEN = ErrorKind("invalid_request", 401, "The refresh token is invalid.",
                                  "The refresh token is invalid.")
UNSUPPORTED_GRANT_TYPE = ErrorKind(
    "unsupported_grant_type", 400,
    "The authorization grant type is not supported by the authorization server.",
    "The authorization grant type is not supported by the authorization server.",
)
INVALID_SCOPE = ErrorKind("invalid_scope", 400, "The requested scope is invalid, unknown, or malformed",
                          "The requested scope is invalid, unknown, or malformed")
PKCE_FAILED = ErrorKind("invalid_grant", 400, INVALID_GRANT_MESSAGE, "Failed to verify `code_verifier`.")
ACCESS_DENIED = ErrorKind("access_denied", 401, ACCESS_DENIED_MESSAGE, ACCESS_DENIED_MESSAGE)


class OAuthError(Exception):
    """A refused OAuth request: ``kind`` decides the wire shape, ``hint`` explains it."""

    def __init__(self, kind: ErrorKind, hint: str = "") -> None:
        super().__init__(f"{kind.error}: {kind.league_message} {hint}".strip())
        self.kind = kind
        self.hint = hint

    @classmethod
    def invalid_request(cls, parameter: str, hint: str | None = None) -> OAuthError:
        """league's `invalidRequest($parameter, $hint)`."""
        return cls(INVALID_REQUEST, hint if hint is not None else f"Check the `{parameter}` parameter")

    def status(self, style: str) -> int:
        """The HTTP status for ``style`` ("invoiced" or "league")."""
        return self.kind.league_status if style == "league" else 400

    def body(self, style: str) -> dict[str, Any]:
        """The JSON body for ``style``."""
        if style == "league":
            body: dict[str, Any] = {"error": self.kind.error, "error_description": self.kind.league_message}
            if self.hint:
                body["hint"] = self.hint
            body["message"] = self.kind.league_message
            return body
        return {"type": "invalid_request", "message": self.kind.invoiced_message}
