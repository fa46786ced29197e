"""Every response the connect and callback handlers give carries every
security header the pages promise: redirects, the outcome pages, each error
page, the 404 (Powertools answers a method it has no route for with the
same 404 page: there is no 405) and the 500 and 503 pages of the handlers'
own exception handlers.

Driven through the real handlers (a Lambda invocation, answers through
JSON) against the local stack. The expected headers are spelled out in
``tests.support``, so dropping one from the code fails here; every header of
``pages.SECURITY_HEADERS`` is checked as well, so a header added there is
checked on every response too.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from botocore.exceptions import ClientError

from invoiced_connect.connect import pages
from invoiced_connect.connect.links import LinkClaims, sign_link_token
from invoiced_connect.connect.pkce import fingerprint, new_verifier, random_token
from invoiced_connect.storage.store import FlowState, TokenStore
from local.gateway import api_event
from tests.support import RETURN_BASE, security_header_problems
from tests.support.handlers import COOKIE_NAME, RESULT_COOKIE_NAME, Handlers
from tests.support.overrides import bad_setting


class Responses:
    """The handlers' answers, each under a label, and every outcome page a 303 leads to."""

    def __init__(self, handlers: Handlers) -> None:
        self.handlers = handlers
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def add(self, label: str, response: dict[str, Any], status: int | None = None) -> dict[str, Any]:
        if status is not None:
            assert response["statusCode"] == status, (label, response["statusCode"], response.get("body", "")[:300])
        self.seen.append((label, response))
        cookies = response.get("cookies") or []
        if response["statusCode"] == 303 and any(c.startswith(RESULT_COOKIE_NAME + "=") for c in cookies):
            self.seen.append((f"{label}, its outcome page", self.handlers.outcome_page(response)))
        return response

    def problems(self) -> list[str]:
        found = []
        for label, response in self.seen:
            headers = response.get("headers") or {}
            found += [f"{label} ({response['statusCode']}): {problem}" for problem in security_header_problems(headers)]
            found += [f"{label} ({response['statusCode']}): {name} is {headers.get(name)!r}"
                      for name, value in pages.SECURITY_HEADERS.items() if headers.get(name) != value]
            if response.get("body"):
                content_type = headers.get("Content-Type", "")
                if not content_type.startswith("text/html"):
                    found.append(f"{label}: a body served as {content_type!r}")
        return found

    def statuses(self) -> set[int]:
        return {response["statusCode"] for _, response in self.seen}


@pytest.fixture
def responses(stack, invoiced) -> Responses:
    return Responses(Handlers(stack))


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def signing_key(stack) -> str:
    from invoiced_connect import runtime

    return runtime.current().secrets.get_field(stack.env["LINK_SIGNING_SECRET_ARN"], "current")


def link_for(stack, connection_id: str, return_to: str | None = None, expires_in: int = 600) -> str:
    return sign_link_token(LinkClaims(connection_id, return_to, int(time.time()) + expires_in), signing_key(stack))


def flow_cookie(response: dict[str, Any]) -> str:
    """The value of the ``__Host-`` cookie a /connect redirect sets."""
    (value,) = [c.split(";")[0].split("=", 1)[1] for c in response["cookies"] if c.startswith(COOKIE_NAME + "=")]
    return value


def consent(stack, location: str, **kwargs: Any) -> str:
    return urlsplit(stack.invoiced.consent(location, **kwargs)).query


def exploding_flow(method: str) -> Callable[[], object]:
    class Exploding:
        def __getattr__(self, name: str) -> Any:
            if name != method:
                raise AttributeError(name)

            def explode(*args: Any) -> Any:
                raise RuntimeError("boom")

            return explode

    return lambda: Exploding()


def test_every_connect_response_carries_every_promised_header(stack, responses, monkeypatch):
    from invoiced_connect.entry import web

    h = responses.handlers
    started = h.start(new_id("hdr-start"))
    responses.add("connect: to Invoiced", h.connect(started.link), 302)
    responses.add("connect: no link", h.get("connect", "/connect"), 403)
    version, body, signature = started.link.split(".")
    responses.add("connect: tampered link", h.connect(f"{version}.{body}.{'A' * len(signature)}"), 403)
    responses.add("connect: link given twice",
                  h.get("connect", "/connect", query=[("link", started.link), ("link", started.link)]), 400)
    responses.add("connect: link too long", h.connect("v1." + "A" * 5000 + ".B"), 400)
    responses.add("connect: expired link", h.connect(link_for(stack, new_id("hdr-old"), expires_in=-10)), 403)
    responses.add("connect: return URL not allowed",
                  h.connect(link_for(stack, new_id("hdr-ret"), "https://elsewhere.example/x")), 403)

    used = h.start(new_id("hdr-used"))
    assert h.callback(consent(stack, used.location), used.cookie)["statusCode"] == 303
    responses.add("connect: link already used", h.connect(used.link), 403)

    responses.add("connect: unknown path", h.get("connect", "/elsewhere"), 404)
    responses.add("connect: another method", h.invoke("connect", api_event("POST", "/connect")), 404)
    with bad_setting(monkeypatch):
        responses.add("connect: not configured", h.connect(started.link), 503)
    with monkeypatch.context() as patch:
        patch.setattr(web, "flow", exploding_flow("start"))
        responses.add("connect: unexpected error", h.connect(started.link), 500)

    problems = responses.problems()
    assert not problems, "\n".join(problems)
    assert responses.statuses() == {302, 400, 403, 404, 500, 503}


def test_every_callback_response_carries_every_promised_header(stack, responses, monkeypatch):
    from invoiced_connect.entry import web

    h = responses.handlers
    started = h.start(new_id("hdr-ok"))
    replayed = consent(stack, started.location)
    responses.add("callback: connected", h.callback(replayed, started.cookie), 303)
    responses.add("callback: replayed state", h.callback(replayed, started.cookie), 303)
    responses.add("callback: no cookie", h.callback(replayed, None), 303)
    responses.add("callback: no state", h.callback("code=abc", started.cookie), 303)
    responses.add("callback: state given twice", h.callback("state=a&state=b&code=c", started.cookie), 303)

    with_return = h.connect(link_for(stack, new_id("hdr-back"), f"{RETURN_BASE}/done"))
    back = responses.add("callback: connected, to the return URL",
                         h.callback(consent(stack, with_return["headers"]["Location"]), flow_cookie(with_return)), 303)
    assert back["headers"]["Location"].startswith(f"{RETURN_BASE}/done?")
    denied_back = h.connect(link_for(stack, new_id("hdr-deny-back"), f"{RETURN_BASE}/done"))
    back = responses.add("callback: denied, to the return URL",
                         h.callback(consent(stack, denied_back["headers"]["Location"], approve=False),
                                    flow_cookie(denied_back)), 303)
    assert "status=denied" in back["headers"]["Location"]

    denied = h.start(new_id("hdr-deny"))
    responses.add("callback: denied", h.callback(consent(stack, denied.location, approve=False), denied.cookie), 303)
    refused = h.start(new_id("hdr-scope"))
    responses.add("callback: authorize error",
                  h.callback(urlencode({"state": refused.state, "error": "invalid_scope"}), refused.cookie), 303)

    first = h.start(new_id("hdr-twice"))
    second = h.connect(first.link)  # the same link opened again before the first one finished
    assert h.callback(consent(stack, first.location), first.cookie)["statusCode"] == 303
    responses.add("callback: link already used",
                  h.callback(consent(stack, second["headers"]["Location"]), flow_cookie(second)), 303)

    rejected = h.start(new_id("hdr-code"))
    state = parse_qs(consent(stack, rejected.location))["state"][0]
    responses.add("callback: code rejected",
                  h.callback(urlencode({"code": "def50200" + "0" * 64, "state": state}), rejected.cookie), 303)

    failing = h.start(new_id("hdr-5xx"))
    query = consent(stack, failing.location)
    stack.invoiced.faults.server_error_next = 1
    responses.add("callback: exchange failed", h.callback(query, failing.cookie), 303)

    state, binding = random_token(), random_token()
    TokenStore(stack.table_name).put_state(FlowState(
        state_hash=fingerprint(state), connection_id=new_id("hdr-issuer"), code_verifier=new_verifier(),
        binding_hash=fingerprint(binding), issuer="https://invoiced.com", redirect_uri=stack.callback_url,
        scope="read_write", return_to=None, expires_at=int(time.time()) + 600,
        link_hash=fingerprint(random_token()), link_expires_at=int(time.time()) + 3600))
    responses.add("callback: another environment's state",
                  h.callback(urlencode({"state": state, "code": "def50200abc"}), binding), 303)

    responses.add("callback: nothing to show", h.get("callback", "/callback"), 400)
    responses.add("callback: a forged outcome", h.get("callback", "/callback", cookies={RESULT_COOKIE_NAME: "e30"}),
                  400)
    responses.add("callback: unknown path", h.get("callback", "/elsewhere"), 404)
    responses.add("callback: another method", h.invoke("callback", api_event("POST", "/callback")), 404)

    def kms_down(*args: Any, **kwargs: Any) -> Any:
        raise ClientError({"Error": {"Code": "KMSInternalException", "Message": "down"}}, "Encrypt")

    storing = h.start(new_id("hdr-store"))
    query = consent(stack, storing.location)
    with monkeypatch.context() as patch:
        patch.setattr(web.flow().cipher, "encrypt", kms_down)
        responses.add("callback: tokens not stored", h.callback(query, storing.cookie), 500)
    configuring = h.start(new_id("hdr-config"))
    query = consent(stack, configuring.location)
    with bad_setting(monkeypatch):
        responses.add("callback: not configured", h.callback(query, configuring.cookie), 503)
    with monkeypatch.context() as patch:
        patch.setattr(web, "flow", exploding_flow("callback"))
        responses.add("callback: unexpected error", h.callback(query, configuring.cookie), 500)

    problems = responses.problems()
    assert not problems, "\n".join(problems)
    # redirects, the connected and denied pages, each refusal's page, 404, the provider's failure, 500 and 503
    assert responses.statuses() == {200, 303, 400, 404, 500, 502, 503}
    assert len(responses.seen) >= 30
