"""A fake transport for ``InvoicedApi`` (invoiced_connect.sdk.api): no network.

The fake is a requests transport adapter mounted on a real ``requests.Session``,
so requests itself prepares every request (params, headers, JSON) exactly as
it would for the network; the adapter records what would have been sent and
answers from a script. Sleeps are recorded through the injected ``sleep``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from requests.adapters import BaseAdapter

from invoiced_connect import InvoicedApi

API = "https://api.invoiced.test"
CID = "acme-42"
TOKEN = "CANARY-access-token-one-" + "a" * 20
NEW_TOKEN = "CANARY-access-token-two-" + "b" * 20

Answer = tuple[int, Any, dict[str, str]] | BaseException


@dataclass
class Sent:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    timeout: Any
    allow_redirects: bool | None = None

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.url).query)

    @property
    def token(self) -> str | None:
        value = self.headers.get("Authorization", "")
        return value.removeprefix("Bearer ") if value.startswith("Bearer ") else None


class FakeTransport(BaseAdapter):
    """Answers from ``route(sent) -> (status, body, headers)`` or raises the exception it returns."""

    def __init__(self, route: Callable[[Sent], Answer]) -> None:
        super().__init__()
        self.route = route
        self.sent: list[Sent] = []

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: Any = True, cert: Any = None, proxies: Any = None, **kwargs: Any) -> requests.Response:
        body = request.body.encode() if isinstance(request.body, str) else request.body
        sent = Sent(request.method or "", request.url or "", dict(request.headers), body, timeout)
        self.sent.append(sent)
        answer = self.route(sent)
        if isinstance(answer, BaseException):
            raise answer
        status, payload, headers = answer
        response = requests.Response()
        response.status_code = status
        response.url = request.url or ""
        response.request = request
        response.headers.update(headers)
        if payload is None:
            response._content = b""
        elif isinstance(payload, bytes):
            response._content = payload
        else:
            response._content = json.dumps(payload).encode()
            response.headers.setdefault("Content-Type", "application/json")
        return response

    def close(self) -> None:
        pass


def scripted(*answers: Answer) -> Callable[[Sent], Answer]:
    """Answer the requests in order; a request beyond the script fails the test."""
    queue = list(answers)

    def route(sent: Sent) -> Answer:
        assert queue, f"unexpected extra request {sent.method} {sent.url}"
        return queue.pop(0)

    return route


def ok(body: Any = None, **headers: str) -> Answer:
    return (200, {"ok": True} if body is None else body, headers)


def error(status: int, type_: str, message: str, param: str | None = None, **headers: str) -> Answer:
    body = {"type": type_, "message": message}
    if param is not None:
        body["param"] = param
    return (status, body, headers)


UNAUTHORIZED = error(401, "invalid_request", "The resource owner or authorization server denied the request.")
TOO_MANY = error(429, "rate_limit_error", "Too many concurrent requests! Please wait for your other requests "
                                          "to finish before retrying.")
SERVER_ERROR = error(500, "api_error", "An unknown error occurred. Please try again later.")


@dataclass
class FakeTokens:
    """A TokenSource that records its calls; ``on_rejected`` may raise."""

    token: str = TOKEN
    fresh: str = NEW_TOKEN
    on_rejected: BaseException | None = None
    gets: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def get_token(self, connection_id: str) -> str:
        self.gets.append(connection_id)
        return self.token  # a plain token: these tests pin api_url

    def token_rejected(self, connection_id: str, access_token: str) -> str:
        self.rejected.append((connection_id, access_token))
        if self.on_rejected is not None:
            raise self.on_rejected
        self.token = self.fresh
        return self.fresh


@dataclass
class Harness:
    api: InvoicedApi
    transport: FakeTransport
    tokens: FakeTokens
    sleeps: list[float]


def make(route: Callable[[Sent], Answer], *, api_url: str = API, tokens: FakeTokens | None = None,
         rng: Callable[[], float] = lambda: 0.5, **kwargs: Any) -> Harness:
    transport = FakeTransport(route)
    session = requests.Session()
    session.trust_env = False
    session.mount("https://", transport)
    session.mount("http://", transport)
    tokens = tokens or FakeTokens()
    sleeps: list[float] = []
    api = InvoicedApi(CID, tokens=tokens, api_url=api_url, session=session, sleep=sleeps.append, rng=rng, **kwargs)
    return Harness(api, transport, tokens, sleeps)


def assert_no_token(*texts: object) -> None:
    for text in texts:
        for token in (TOKEN, NEW_TOKEN, "CANARY"):
            assert token not in str(text), f"a token leaked into {text!r}"
