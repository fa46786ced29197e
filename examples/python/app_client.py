"""A client of the invoiced-connect app API with boto3 (and nothing else beyond the standard library).

The three app functions are invoked with Lambda Invoke and IAM, never over HTTP::

    from app_client import InvoicedConnect

    app = InvoicedConnect()
    link = app.create_link("acme-7", return_to="https://app.example.com/done")
    token = app.get_token("acme-7")             # access_token, api_url, expires_at, version, ...
    state = app.connection_state("acme-7")      # {"connection": {...}}

or from the command line, as ``examples/node/cli.mjs``::

    python app_client.py link CONNECTION_ID [--return-to URL] [--ttl SECONDS]
    python app_client.py token CONNECTION_ID      # the answer, access_token redacted
    python app_client.py company CONNECTION_ID    # GET /companies/current with the token
    python app_client.py state CONNECTION_ID

The functions are named by ``LINKS_FUNCTION_NAME``, ``TOKENS_FUNCTION_NAME``
and ``CONNECTION_STATE_FUNCTION_NAME`` (the stack's ``LinksFunctionName``,
``TokensFunctionName`` and ``ConnectionStateFunctionName`` outputs); the
region comes from ``AWS_REGION`` or ``AWS_DEFAULT_REGION``, credentials from
boto3's default chain, the endpoint from boto3's own ``AWS_ENDPOINT_URL_LAMBDA``
/ ``AWS_ENDPOINT_URL`` handling (set those only to reach a local stack).

An answer with ``error`` raises :class:`InvoicedConnectError` (``code``,
``retry_at``); so does a failed invocation (``code`` ``function_error``).
Nothing here prints or logs a token.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import boto3

API_VERSION = 1
FUNCTION_VARIABLES = {
    "links": "LINKS_FUNCTION_NAME",
    "tokens": "TOKENS_FUNCTION_NAME",
    "connection_state": "CONNECTION_STATE_FUNCTION_NAME",
}
HTTP_TIMEOUT_SECONDS = 30


class InvoicedConnectError(Exception):
    """An error answer of an app function (``code`` as in the contract), or a failed invocation."""

    def __init__(self, code: str, message: str, *, retry_at: int | None = None, function_name: str | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_at = retry_at
        self.function_name = function_name
        self.request_id = request_id

    @property
    def transient(self) -> bool:
        """Whether trying again later can succeed (the other codes need a change first)."""
        return self.code in {"unavailable", "token_rejected", "internal_error", "function_error"}


def region_from(env: Mapping[str, str]) -> str | None:
    """The region as the AWS CLI reads it: ``AWS_REGION``, then ``AWS_DEFAULT_REGION``."""
    return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None


class InvoicedConnect:
    """The links, tokens and connection-state functions of one stack."""

    def __init__(self, lambda_client: Any = None, env: Mapping[str, str] | None = None) -> None:
        self.env = os.environ if env is None else env
        self.lambda_client = lambda_client or boto3.client("lambda", region_name=region_from(self.env))

    def create_link(self, connection_id: str, *, return_to: str | None = None,
                    ttl_seconds: int | None = None) -> dict[str, Any]:
        """A connect link for the customer: ``{connection_id, url, expires_at}``."""
        return self._invoke("links", connection_id=connection_id, return_to=return_to, ttl_seconds=ttl_seconds)

    def get_token(self, connection_id: str, *, min_validity_seconds: int | None = None,
                  rejected_version: int | None = None) -> dict[str, Any]:
        """A valid access token: ``{access_token, token_type, expires_at, api_url, tenant_id, version, ...}``.

        After Invoiced answered 401 to a token, ask again with ``rejected_version=answer["version"]``.
        """
        return self._invoke("tokens", connection_id=connection_id, min_validity_seconds=min_validity_seconds,
                            rejected_version=rejected_version)

    def connection_state(self, connection_id: str) -> dict[str, Any]:
        """The stored connection: ``{connection: {connection_id, status, attention, ...}}``."""
        return self._invoke("connection_state", action="get", connection_id=connection_id)

    def _invoke(self, kind: str, **properties: Any) -> dict[str, Any]:
        variable = FUNCTION_VARIABLES[kind]
        function_name = self.env.get(variable)
        if not function_name:
            raise InvoicedConnectError("not_configured", f"{variable} is not set (the stack's function name)")
        # Absent options are left out: the functions refuse unknown or null properties.
        request = {"api_version": API_VERSION, **{k: v for k, v in properties.items() if v is not None}}
        response = self.lambda_client.invoke(FunctionName=function_name, Payload=json.dumps(request).encode())
        request_id = response.get("ResponseMetadata", {}).get("RequestId")
        try:
            answer = json.loads(response["Payload"].read() or b"null")
        except ValueError:
            answer = None
        if response.get("FunctionError"):
            # Lambda's own error document: {errorType, errorMessage, ...}. Only the type is kept.
            error_type = answer.get("errorType") if isinstance(answer, dict) else None
            raise InvoicedConnectError(
                "function_error",
                f"{function_name} failed ({response['FunctionError']}: {error_type or 'unknown error'}, "
                f"request {request_id or 'unknown'})",
                function_name=function_name, request_id=request_id,
            )
        if not isinstance(answer, dict):
            raise InvoicedConnectError("invalid_answer", f"{function_name} did not answer with a JSON object",
                                       function_name=function_name, request_id=request_id)
        if answer.get("error") is not None:
            retry_at = answer.get("retry_at")
            raise InvoicedConnectError(
                str(answer["error"]), str(answer.get("message") or answer["error"]),
                retry_at=retry_at if isinstance(retry_at, int) and not isinstance(retry_at, bool) else None,
                function_name=function_name, request_id=request_id,
            )
        return answer


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect must not carry the bearer token anywhere else."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201 - urllib's signature
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


class HttpError(Exception):
    """Invoiced's API answered with an error status."""

    def __init__(self, url: str, status: int) -> None:
        super().__init__(f"GET {url} answered {status}")
        self.status = status


def _get_json(url: str, access_token: str) -> Any:
    if urlsplit(url).scheme not in ("https", "http"):
        raise ValueError(f"not an http(s) URL: {url}")
    headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s) only, checked above
    try:
        with _OPENER.open(request, timeout=HTTP_TIMEOUT_SECONDS) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        exc.close()
        raise HttpError(url, exc.code) from None


def current_company(app: InvoicedConnect, connection_id: str) -> dict[str, Any]:
    """``GET {api_url}/companies/current`` with a fresh token; once more with a new one after a 401."""
    token = app.get_token(connection_id)
    for attempt in range(2):
        if not isinstance(token.get("api_url"), str):
            raise ValueError("the token answer has no api_url")
        url = token["api_url"].rstrip("/") + "/companies/current"
        try:
            company = _get_json(url, token["access_token"])
        except HttpError as exc:
            if exc.status != 401 or attempt:
                raise
            token = app.get_token(connection_id, rejected_version=token["version"])
            continue
        return {"id": company["id"], "name": company["name"]}
    raise AssertionError("unreachable")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="app_client.py", description="Call the invoiced-connect app API (links, tokens, connection state).",
        epilog="Needs LINKS_FUNCTION_NAME, TOKENS_FUNCTION_NAME, CONNECTION_STATE_FUNCTION_NAME (the stack's "
        "outputs), a region (AWS_REGION) and AWS credentials.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    link = commands.add_parser("link", help="make a connect link")
    link.add_argument("connection_id")
    link.add_argument("--return-to", help="where the browser goes after connecting (under the allowlist)")
    link.add_argument("--ttl", type=int, metavar="SECONDS", help="how long the link works (default 3600)")
    for name, text in (("token", "a valid access token (printed redacted)"),
                       ("company", "the connected company, from Invoiced's API"),
                       ("state", "the stored connection")):
        commands.add_parser(name, help=text).add_argument("connection_id")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        app = InvoicedConnect()
        if args.command == "link":
            answer = app.create_link(args.connection_id, return_to=args.return_to, ttl_seconds=args.ttl)
        elif args.command == "token":
            answer = {**app.get_token(args.connection_id), "access_token": "[redacted]"}
        elif args.command == "company":
            answer = current_company(app, args.connection_id)
        else:
            answer = app.connection_state(args.connection_id)
    except InvoicedConnectError as exc:
        report: dict[str, Any] = {"error": exc.code, "message": str(exc)}
        if exc.retry_at is not None:
            report["retry_at"] = exc.retry_at
        print(json.dumps(report), file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the command reports any failure as one line
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}), file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
