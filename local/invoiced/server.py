"""`LocalInvoiced`: two real HTTP servers (app host and REST API host) around
the in-memory authorization server, plus the fault switches."""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import requests
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from .consent import submit_consent
from .errors import ACCESS_DENIED_MESSAGE, INVALID_REQUEST_MESSAGE, OAuthError
from .faults import Faults
from .listing import ListQueryError, select_invoices
from .models import DEFAULT_COMPANIES, Company, seed_invoices
from .oauth import DEFAULT_CLIENT_NAME, AuthorizationServer, OAuthClient
from .pages import PAGE_HEADERS, consent_page, error_page, gateway_page
from .signing import RS256Signer

log = logging.getLogger("local.invoiced")

API_CONCURRENCY_LIMIT = 20
MAX_PER_PAGE = 100
# Checked before the grant, in this order; the first armed one answers instead of the server.
_PRE_GRANT_FAULTS = ("timeout", "html", "server_error", "rate_limit")


@dataclass(frozen=True)
class TokenRequestRecord:
    """One `POST /oauth/access_token` as the server saw it.

    ``status`` is the outcome the server decided on. With ``fault`` set to
    ``"commit_then_drop"`` or ``"truncate"`` the grant was still committed
    (``status`` 200 if it succeeded) but the client never got a usable answer.
    """

    grant_type: str | None
    status: int
    time: float
    fault: str | None = None
    error: str | None = None


class _Handler(WSGIRequestHandler):
    """werkzeug's handler, logging to our logger and never logging query strings (codes, states)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = getattr(self, "path", "").split("?", 1)[0]
        log.info("%s %s %s -> %s", self.server.server_address[1], self.command, path, code)

    def log(self, type_: str, message: str, *args: Any) -> None:
        log.log(logging.ERROR if type_ == "error" else logging.DEBUG, message, *args)


class _ConcurrencyLimiter:
    """Invoiced's per-credential cap on requests in flight."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}

    @contextmanager
    def slot(self, key: str) -> Iterator[bool]:
        with self._lock:
            admitted = self._in_flight.get(key, 0) < self._limit
            if admitted:
                self._in_flight[key] = self._in_flight.get(key, 0) + 1
        try:
            yield admitted
        finally:
            if admitted:
                with self._lock:
                    self._in_flight[key] -= 1
                    if not self._in_flight[key]:
                        del self._in_flight[key]


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, headers=headers, content_type="application/json")


def _html(body: str, status: int = 200) -> Response:
    return Response(body, status=status, headers=PAGE_HEADERS, content_type="text/html; charset=utf-8")


def _api_error(status: int, message: str, type_: str = "invalid_request", param: str | None = None) -> Response:
    body = {"type": type_, "message": message}
    if param is not None:
        body["param"] = param
    return _json(body, status)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class LocalInvoiced:
    """A local, faithful stand-in for Invoiced's OAuth server and REST API.

    ``base_url`` serves `/oauth/authorize`, `/oauth/access_token`,
    `/oauth/revoke` and the `/_admin` fault endpoints; ``api_url`` (another
    port, so code calling the wrong host fails) serves `/companies/current`
    and `/invoices`. ``client_name`` is the registered application's name the
    consent page shows. ``clock`` drives every expiry, so tests can jump time.
    """

    def __init__(self, *, client_id: str, client_secret: str, redirect_uris: list[str],
                 client_name: str = DEFAULT_CLIENT_NAME,
                 companies: list[Company] | None = None, host: str = "127.0.0.1",
                 app_port: int = 0, api_port: int = 0, access_token_ttl: int = 3600,
                 code_ttl: int = 600, clock: Callable[[], float] = time.time) -> None:
        self.host = host
        self.faults = Faults()
        self.token_requests: list[TokenRequestRecord] = []
        self.companies: tuple[Company, ...] = tuple(companies) if companies else DEFAULT_COMPANIES
        self._ports = (app_port, api_port)
        self._clock = clock
        self._signer = RS256Signer.generate()
        self._oauth = AuthorizationServer(
            client=OAuthClient(client_id, client_secret, tuple(redirect_uris), client_name),
            companies=self.companies, signer=self._signer, clock=clock,
            access_token_ttl=access_token_ttl, code_ttl=code_ttl)
        self._records_lock = threading.Lock()
        self._limiter = _ConcurrencyLimiter(API_CONCURRENCY_LIMIT)
        self._invoices: dict[int, list[dict[str, Any]]] = {}
        self._invoices_lock = threading.Lock()
        # Set on stop() so held requests (latency, timeout fault) give up at once.
        self._stopping = threading.Event()
        self._servers: list[BaseWSGIServer] = []
        self._threads: list[threading.Thread] = []
        self._base_url: str | None = None
        self._api_url: str | None = None
        self._app_routes = Map([
            Rule("/oauth/authorize", methods=["GET"], endpoint=self._authorize_page),
            Rule("/oauth/authorize", methods=["POST"], endpoint=self._authorize_decision),
            Rule("/oauth/access_token", methods=["POST"], endpoint=self._token),
            Rule("/oauth/revoke", methods=["POST"], endpoint=self._revoke),
            Rule("/_admin/faults", methods=["GET", "POST"], endpoint=self._admin_faults),
            Rule("/_admin/reset", methods=["POST"], endpoint=self._admin_reset),
        ])
        self._api_routes = Map([
            Rule("/companies/current", methods=["GET"], endpoint=self._current_company),
            Rule("/invoices", methods=["GET"], endpoint=self._list_invoices),
        ])

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> LocalInvoiced:
        """Listen on both ports (0 picks free ones) in daemon threads; returns self."""
        if self._servers:
            raise RuntimeError("already started")
        self._stopping.clear()
        try:
            for port, app in zip(self._ports, (self._app_wsgi, self._api_wsgi), strict=True):
                try:
                    server = make_server(self.host, port, app, threaded=True, request_handler=_Handler)
                except SystemExit as exc:  # werkzeug exits the process when it cannot bind
                    raise OSError(f"cannot listen on {self.host}:{port}") from exc
                self._servers.append(server)
        except BaseException:
            self.stop()
            raise
        app_server, api_server = self._servers
        self._base_url = _url(self.host, app_server.server_port)
        self._api_url = _url(self.host, api_server.server_port)
        for server, name in zip(self._servers, ("app", "api"), strict=True):
            # A short poll keeps stop() quick: shutdown() waits up to one poll interval per server.
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                      name=f"local-invoiced-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop both servers; requests still being held are abandoned."""
        self._stopping.set()
        # Only servers whose thread runs serve_forever may be shut down; shutdown() on the
        # others would wait forever (this matters when start() failed halfway).
        for server in self._servers[: len(self._threads)]:
            server.shutdown()
        for thread in self._threads:
            thread.join(timeout=5)
        for server in self._servers:
            server.server_close()
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> LocalInvoiced:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """The app host, e.g. ``http://127.0.0.1:PORT`` (authorize, token, revoke)."""
        if self._base_url is None:
            raise RuntimeError("LocalInvoiced is not started")
        return self._base_url

    @property
    def api_url(self) -> str:
        """The REST API host, on a different port from ``base_url``."""
        if self._api_url is None:
            raise RuntimeError("LocalInvoiced is not started")
        return self._api_url

    # -- inspection for tests ------------------------------------------------------

    @property
    def public_key_pem(self) -> str:
        """PEM of the key that verifies access tokens (new on every instance)."""
        return self._signer.public_key_pem

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The verification key as a JWK set."""
        return {"keys": [self._signer.jwk()]}

    def token_request_count(self, grant_type: str | None = None) -> int:
        """How many token requests arrived (of ``grant_type``, if given)."""
        with self._records_lock:
            return sum(1 for r in self.token_requests if grant_type is None or r.grant_type == grant_type)

    def is_refresh_token_valid(self, refresh_token: str) -> bool:
        """Whether a refresh with ``refresh_token`` would succeed now."""
        return self._oauth.is_refresh_token_valid(refresh_token)

    def is_access_token_valid(self, access_token: str) -> bool:
        """Whether the REST API would accept ``access_token`` now."""
        return self._oauth.authenticate_bearer(access_token) is not None

    def live_grant_count(self, company_id: int) -> int:
        """How many access tokens of ``company_id`` are live (neither expired nor revoked)."""
        return self._oauth.live_grant_count(company_id)

    def consent(self, authorize_url: str, *, approve: bool = True, company_id: int | None = None,
                session: requests.Session | None = None) -> str:
        """Act as the user on the consent page; return the redirect back to the client.

        GETs ``authorize_url``, submits the form (Approve or Deny, with
        ``company_id`` or the first listed company) and returns the redirect's
        ``Location`` without following it. Raises ``ConsentError`` if Invoiced
        showed an error page instead.
        """
        return submit_consent(authorize_url, approve=approve, company_id=company_id, session=session)

    # -- plumbing ----------------------------------------------------------------

    def _hold(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _apply_latency(self) -> None:
        self._hold(self.faults.latency_ms / 1000)

    def _dispatch(self, routes: Map, environ: dict[str, Any], start_response: Any,
                  not_found: Callable[[HTTPException], Response]) -> Iterable[bytes]:
        request = Request(environ)
        try:
            endpoint, args = routes.bind_to_environ(environ).match()
        except HTTPException as exc:
            response = not_found(exc)
        else:
            response = endpoint(request, **args)
        return response(environ, start_response)

    def _app_wsgi(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if not environ.get("PATH_INFO", "").startswith("/_admin/"):
            self._apply_latency()
        return self._dispatch(self._app_routes, environ, start_response,
                              lambda exc: _html(error_page(exc.name), exc.code or 404))

    def _api_wsgi(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        # Routing happens after authentication inside _api_request, like the real API.
        return self._api_request(Request(environ))(environ, start_response)

    # -- app host: authorize -------------------------------------------------------

    def _authorize_page(self, request: Request) -> Response:
        try:
            auth_request = self._oauth.validate_authorization_request(request.args)
        except OAuthError as exc:
            return _html(error_page(exc.kind.league_message, exc.hint), 400)
        pending_id = self._oauth.hold_for_consent(auth_request)
        companies = self.companies if auth_request.needs_company else None
        return _html(consent_page(client_name=self._oauth.client.name, scopes=auth_request.scopes,
                                  redirect_uri=auth_request.redirect_uri, companies=companies,
                                  pending_id=pending_id))

    def _authorize_decision(self, request: Request) -> Response:
        auth_request = self._oauth.take_pending(request.form.get("request_id", ""))
        if auth_request is None:
            return _html(error_page("This authorization request has expired or was already answered.",
                                    "Start again from the application."), 400)
        decision = request.form.get("decision")
        if decision == "deny":
            location = self._oauth.deny(auth_request, self.faults.error_style)
        elif decision == "approve":
            raw_company = request.form.get("company", "")
            company_id = int(raw_company) if raw_company.isdigit() else None
            try:
                location = self._oauth.approve(auth_request, company_id)
            except ValueError as exc:
                return _html(error_page(str(exc)), 400)
        else:
            return _html(error_page("Choose Approve or Deny."), 400)
        return Response(status=302, headers={"Location": location, **PAGE_HEADERS})

    # -- app host: token and revoke ------------------------------------------------

    def _token(self, request: Request) -> Response:
        received = self._clock()
        form = {key: request.form[key] for key in request.form}
        grant_type = form.get("grant_type")
        style = self.faults.error_style
        for fault in _PRE_GRANT_FAULTS:
            if self.faults.consume(f"{fault}_next"):
                return self._pre_grant_fault(fault, grant_type, received, style)

        auth = request.authorization
        basic = (auth.username or "", auth.password or "") if auth is not None and auth.type == "basic" else None
        error = None
        try:
            tokens = self._oauth.exchange(form, basic)
            response = _json(tokens.as_json(), headers={"Cache-Control": "no-store", "Pragma": "no-cache"})
        except OAuthError as exc:
            error = exc.kind.error
            headers = {"Cache-Control": "no-store"}
            if style == "league" and exc.kind.league_status == 401 and basic is not None:
                headers["WWW-Authenticate"] = 'Basic realm="OAuth"'
            response = _json(exc.body(style), exc.status(style), headers)

        if self.faults.consume("commit_then_drop_next"):
            self._record(grant_type, response.status_code, received, "commit_then_drop", error)
            return self._drop_connection(request)
        if self.faults.consume("commit_then_hold_next"):
            self._record(grant_type, response.status_code, received, "commit_then_hold", error)
            self._hold(self.faults.timeout_seconds)
            return response
        if self.faults.consume("truncate_next"):
            self._record(grant_type, response.status_code, received, "truncate", error)
            body = response.get_data()
            response.set_data(body[: len(body) // 2])
            return response
        self._record(grant_type, response.status_code, received, None, error)
        return response

    def _pre_grant_fault(self, fault: str, grant_type: str | None, received: float, style: str) -> Response:
        if fault == "timeout":
            # Recorded before the wait so a test whose client gave up can already see it.
            self._record(grant_type, 504, received, fault)
            self._hold(self.faults.timeout_seconds)
            return _html(gateway_page(504, "Gateway Time-out"), 504)
        if fault == "html":
            response = _html(gateway_page(502, "Bad Gateway"), 502)
        elif fault == "server_error":
            body: dict[str, Any] = {"type": "api_error",
                                    "message": "An unknown error occurred. Please try again later."}
            if style == "league":
                message = ("The authorization server encountered an unexpected condition which "
                           "prevented it from fulfilling the request: injected fault")
                body = {"error": "server_error", "error_description": message, "message": message}
            response = _json(body, 500)
        else:
            response = _json({"type": "rate_limit_error",
                              "message": "Too many requests. Please slow down and try again."}, 429)
        self._record(grant_type, response.status_code, received, fault)
        return response

    @staticmethod
    def _drop_connection(request: Request) -> Response:
        sock = request.environ.get("werkzeug.socket")
        if sock is None:
            raise RuntimeError("the server does not expose its socket; cannot drop the connection")
        with suppress(OSError):  # the client already being gone is fine: that is the point
            sock.shutdown(socket.SHUT_RDWR)
        # werkzeug's write now fails with a broken pipe, which it treats as a dropped client.
        return Response(status=200)

    def _record(self, grant_type: str | None, status: int, received: float,
                fault: str | None = None, error: str | None = None) -> None:
        with self._records_lock:
            self.token_requests.append(TokenRequestRecord(grant_type, status, received, fault, error))

    def _revoke(self, request: Request) -> Response:
        token = request.form.get("token")
        if not token:
            return _api_error(400, INVALID_REQUEST_MESSAGE, param="token")
        if self.faults.consume("revoke_error_next"):
            return _html(gateway_page(503, "Service Unavailable"), 503)
        self._oauth.revoke(token)
        return Response(status=204)

    # -- app host: admin -----------------------------------------------------------

    def _admin_faults(self, request: Request) -> Response:
        if request.method == "POST":
            changes = request.get_json(silent=True)
            if not isinstance(changes, dict):
                return _api_error(400, "Send a JSON object of fault switches.")
            try:
                self.faults.set(**changes)
            except ValueError as exc:
                return _api_error(400, str(exc))
        return _json(self.faults.snapshot())

    def _admin_reset(self, request: Request) -> Response:
        self.faults.reset()
        return _json(self.faults.snapshot())

    # -- API host ------------------------------------------------------------------

    def _api_request(self, request: Request) -> Response:
        if self.faults.consume("api_gateway_error_next"):
            return _html(gateway_page(502, "Bad Gateway"), 502)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        grant = self._oauth.authenticate_bearer(token) if scheme.lower() == "bearer" and token else None
        # An openid-only token names a user, not a company, and cannot read company data.
        if grant is None or grant.company_id is None:
            self._apply_latency()
            return _api_error(401, ACCESS_DENIED_MESSAGE)
        with self._limiter.slot(token) as admitted:
            # Latency inside the slot: a slow request keeps its place, as on the real API.
            self._apply_latency()
            if not admitted:
                return _api_error(429, "Too many concurrent requests! Please wait for your other "
                                       "requests to finish before retrying.", "rate_limit_error")
            if self.faults.consume("api_server_error_next"):
                return _api_error(500, "An unknown error occurred. Please try again later.", "api_error")
            try:
                endpoint, args = self._api_routes.bind_to_environ(request.environ).match()
            except HTTPException as exc:
                return _api_error(exc.code or 404, exc.description or "Not found")
            response: Response = endpoint(request, grant.company_id, **args)
            return response

    def _company(self, company_id: int) -> Company:
        return next(company for company in self.companies if company.id == company_id)

    def _current_company(self, request: Request, company_id: int) -> Response:
        return _json(self._company(company_id).as_json())

    def _list_invoices(self, request: Request, company_id: int) -> Response:
        numbers = {}
        for name, default in (("page", 1), ("per_page", MAX_PER_PAGE)):
            raw = request.args.get(name)
            if raw is None:
                numbers[name] = default
            elif raw.isdigit():
                numbers[name] = int(raw)
            else:
                return _api_error(400, f"{name} must be a positive integer", param=name)
        page = max(numbers["page"], 1)
        per_page = min(max(numbers["per_page"], 1), MAX_PER_PAGE)
        with self._invoices_lock:
            if company_id not in self._invoices:
                self._invoices[company_id] = seed_invoices(self._company(company_id), self.base_url)
            invoices = self._invoices[company_id]
        try:
            invoices = select_invoices(invoices, request.args)
        except ListQueryError as exc:
            return _api_error(400, str(exc))
        total = len(invoices)
        last = max(1, math.ceil(total / per_page))

        kept = [(k, v) for k, v in request.args.items(multi=True) if k not in ("page", "per_page")]
        def link(n: int, rel: str) -> str:
            query = urlencode([*kept, ("per_page", per_page), ("page", n)])
            return f'<{self.api_url}/invoices?{query}>; rel="{rel}"'
        links = [link(page, "self"), link(1, "first")]
        if page > 1:
            links.append(link(min(page - 1, last), "previous"))
        if page < last:
            links.append(link(page + 1, "next"))
        links.append(link(last, "last"))
        start = (page - 1) * per_page
        return _json(invoices[start:start + per_page],
                     headers={"Link": ", ".join(links), "X-Total-Count": str(total)})
