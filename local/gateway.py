"""The local API Gateway: an HTTP API (payload format 2.0) on loopback.

Each request is matched against the template's HTTP API routes
(:class:`Router`: literal paths before parameters, greedy parameters and
``$default``), becomes the 2.0 event API Gateway would send
(:func:`api_event`), the route's function runs in-process (a
:class:`local.lambda_runtime.LocalFunction`, one execution environment per
concurrent request), and its 2.0 response becomes the HTTP response
(:func:`http_response`); no route is API Gateway's 404, a failing function
its 500. The socket is a :class:`local.http_server.LoopbackServer`.

:mod:`local.stack` serves the template's API with it (``make run``);
:func:`gateway_for_template` serves one without provisioning anything, for
tests of the gateway itself; tests and benchmarks that call handlers
directly build their events with :func:`api_event`.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from local.http_server import HttpResponse, LoopbackServer
from local.lambda_runtime import LocalFunction, local_functions
from local.template import ACCOUNT_ID, Resolver, RouteSpec, http_routes, load_template, resources_of_type

logger = logging.getLogger(__name__)

NOT_FOUND = (404, [("Content-Type", "application/json")], b'{"message":"Not Found"}')
INTERNAL_ERROR = (500, [("Content-Type", "application/json")], b'{"message":"Internal Server Error"}')


# ---------------------------------------------------------------- events and responses
def new_request_id() -> str:
    """An id shaped like API Gateway's (``requestContext.requestId``)."""
    return base64.b64encode(os.urandom(10)).decode("ascii")


def api_event(
    method: str = "GET",
    path: str = "/",
    *,
    query: str | Mapping[str, str | Sequence[str]] | Sequence[tuple[str, str]] = "",
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    cookies: Mapping[str, str] | Sequence[str] = (),
    body: str | bytes | None = None,
    route_key: str | None = None,
    path_parameters: Mapping[str, str] | None = None,
    source_ip: str = "127.0.0.1",
    domain_name: str = "localhost",
    api_id: str = "local",
    account_id: str = ACCOUNT_ID,
    forwarded_proto: str = "https",
    forwarded_port: int = 443,
    now: float | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload format 2.0) event.

    ``query`` is the raw query string, or pairs/a mapping to encode.
    ``headers`` may repeat a name (pairs); repeated headers are comma-joined,
    names lower-cased, and ``Cookie`` headers move to the ``cookies`` list,
    as API Gateway does. ``path`` is the decoded path.
    """
    method = method.upper()
    raw_query = query if isinstance(query, str) else urlencode(
        list(query.items()) if isinstance(query, Mapping) else list(query), doseq=True
    )
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    cookie_list = [f"{name}={value}" for name, value in cookies.items()] if isinstance(cookies, Mapping) else list(cookies)
    joined: dict[str, str] = {}
    for name, value in pairs:
        name = name.lower()
        if name == "cookie":
            cookie_list.extend(part.strip() for part in value.split(";") if part.strip())
        else:
            joined[name] = f"{joined[name]},{value}" if name in joined else str(value)
    joined.setdefault("host", domain_name)
    joined["x-forwarded-for"] = f"{joined['x-forwarded-for']}, {source_ip}" if "x-forwarded-for" in joined else source_ip
    joined.setdefault("x-forwarded-proto", forwarded_proto)
    joined.setdefault("x-forwarded-port", str(forwarded_port))
    joined.setdefault("x-amzn-trace-id", f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}")

    now = time.time() if now is None else now
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key or f"{method} {path}",
        "rawPath": path,
        "rawQueryString": raw_query,
    }
    if cookie_list:
        event["cookies"] = cookie_list
    event["headers"] = joined
    parameters: dict[str, str] = {}
    for name, value in parse_qsl(raw_query, keep_blank_values=True):
        parameters[name] = f"{parameters[name]},{value}" if name in parameters else value
    if parameters:
        event["queryStringParameters"] = parameters
    event["requestContext"] = {
        "accountId": account_id,
        "apiId": api_id,
        "domainName": domain_name,
        "domainPrefix": domain_name.split(".", 1)[0],
        "http": {
            "method": method,
            "path": path,
            "protocol": "HTTP/1.1",
            "sourceIp": source_ip,
            "userAgent": joined.get("user-agent", ""),
        },
        "requestId": request_id or new_request_id(),
        "routeKey": route_key or f"{method} {path}",
        "stage": "$default",
        "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
        "timeEpoch": int(now * 1000),
    }
    if body is not None:
        if isinstance(body, bytes):
            try:
                event["body"], event["isBase64Encoded"] = body.decode("utf-8"), False
            except UnicodeDecodeError:
                event["body"], event["isBase64Encoded"] = base64.b64encode(body).decode("ascii"), True
        else:
            event["body"], event["isBase64Encoded"] = body, False
    else:
        event["isBase64Encoded"] = False
    if path_parameters:
        event["pathParameters"] = dict(path_parameters)
    return event


class InvalidResponse(ValueError):
    """The function's result is not a response API Gateway can send."""


def http_response(result: Any) -> HttpResponse:
    """Turn a function's (JSON-round-tripped) 2.0 result into status, headers and body.

    Without a ``statusCode`` API Gateway sends the whole result as a JSON 200;
    each entry of ``cookies`` becomes its own ``Set-Cookie`` header.
    """
    if not (isinstance(result, dict) and "statusCode" in result):
        return 200, [("Content-Type", "application/json")], json.dumps(result).encode("utf-8")
    status = result["statusCode"]
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise InvalidResponse(f"statusCode {status!r} is not an HTTP status")
    headers = [(str(name), _header_value(value)) for name, value in (result.get("headers") or {}).items()]
    headers += [("Set-Cookie", str(cookie)) for cookie in result.get("cookies") or []]
    body = result.get("body")
    if body is None:
        data = b""
    elif result.get("isBase64Encoded"):
        try:
            data = base64.b64decode(body, validate=True)
        except ValueError as exc:
            raise InvalidResponse("body is not valid base64") from exc
    else:
        data = str(body).encode("utf-8")
    return status, headers, data


def _header_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ---------------------------------------------------------------- routing
@dataclass(frozen=True)
class _CompiledRoute:
    route: RouteSpec
    pattern: re.Pattern[str] | None
    rank: tuple[int, ...]


def _compile(route: RouteSpec) -> _CompiledRoute:
    if route.path is None:
        return _CompiledRoute(route, None, (1, 0, 0, 0))
    parts, params, greedy = [], 0, 0
    for segment in route.path.strip("/").split("/") if route.path != "/" else []:
        match = re.fullmatch(r"\{(\w+)(\+?)\}", segment)
        if match and match.group(2):
            parts.append(f"(?P<{match.group(1)}>.+)")
            greedy = 1
        elif match:
            parts.append(f"(?P<{match.group(1)}>[^/]+)")
            params += 1
        else:
            parts.append(re.escape(segment))
    pattern = re.compile("/" + "/".join(parts))
    # Most specific first: literal paths, then parameters, then greedy, then $default;
    # a route with a method beats ANY on the same path.
    return _CompiledRoute(route, pattern, (0, greedy, params, int(route.method == "ANY")))


class Router:
    def __init__(self, routes: Iterable[RouteSpec]) -> None:
        self.routes = sorted((_compile(route) for route in routes), key=lambda compiled: compiled.rank)

    def match(self, method: str, path: str) -> tuple[RouteSpec, dict[str, str]] | None:
        for compiled in self.routes:
            if compiled.route.method not in ("ANY", method.upper()):
                continue
            if compiled.pattern is None:
                return compiled.route, {}
            found = compiled.pattern.fullmatch(path)
            if found:
                return compiled.route, found.groupdict()
        return None


# ---------------------------------------------------------------- the HTTP API
class Gateway:
    """The HTTP API on ``host:port``; ``bind()`` reserves the port, ``start()`` serves."""

    def __init__(
        self,
        routes: Iterable[RouteSpec] = (),
        functions: Mapping[str, LocalFunction] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_id: str = "local",
        access_log: bool = False,
    ) -> None:
        self.host, self.port = host, port
        self.api_id = api_id
        self.access_log = access_log
        self._server: LoopbackServer | None = None
        # Local-only pages outside the API (path -> handler of the raw query).
        self.extra_pages: dict[str, Callable[[str], HttpResponse]] = {}
        self.mount(routes, functions or {})

    def mount(self, routes: Iterable[RouteSpec], functions: Mapping[str, LocalFunction]) -> None:
        """Set the routes and the functions behind them (before :meth:`start`)."""
        routes = list(routes)
        missing = {route.function for route in routes} - set(functions)
        if missing:
            raise ValueError(f"routes name functions that were not given: {', '.join(sorted(missing))}")
        self.router = Router(routes)
        self.functions = dict(functions)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def bind(self) -> Gateway:
        """Listen on the port (connections queue until :meth:`start`)."""
        if self._server is None:
            self._server = LoopbackServer(
                (self.host, self.port),
                lambda request, body: self.handle(request.command, request.path, list(request.headers.items()),
                                                  body, request.client_address[0]),
                name="local-apigw",
            )
            self.port = self._server.server_address[1]
        return self

    def start(self) -> Gateway:
        self.bind()
        assert self._server is not None
        self._server.serve_in_background()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._server = None

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def handle(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | None,
        source_ip: str,
    ) -> HttpResponse:
        """One request, start to finish (also callable without the socket)."""
        started = time.monotonic()
        parts = urlsplit(target)
        path = unquote(parts.path or "/")  # HTTP APIs hand the function a decoded path
        host = next((value for name, value in headers if name.lower() == "host"), self.host)
        rid = new_request_id()
        found = self.router.match(method, path)
        if found is None and method == "GET" and path in self.extra_pages:
            response = self.extra_pages[path](parts.query)
            target_name = "local page"
        elif found is None:
            response = NOT_FOUND
            target_name = "no route"
        else:
            route, path_parameters = found
            target_name = route.function
            event = api_event(
                method,
                path,
                query=parts.query,
                headers=headers,
                body=body or None,
                route_key=route.route_key,
                path_parameters=path_parameters,
                source_ip=source_ip,
                domain_name=host.rsplit(":", 1)[0] if not host.endswith("]") else host,
                api_id=self.api_id,
                forwarded_proto="http",
                forwarded_port=self.port,
                request_id=rid,
            )
            response = self._invoke(self.functions[route.function], event)
        status, response_headers, data = response
        response_headers = [*response_headers, ("Apigw-Requestid", rid)]
        if self.access_log:
            # Path only, never the query string: it carries links, codes and state.
            logger.info("%s %s -> %s (%s, %d ms)", method, path, status, target_name,
                        (time.monotonic() - started) * 1000)
        return status, response_headers, data

    @staticmethod
    def _invoke(function: LocalFunction, event: dict[str, Any]) -> HttpResponse:
        try:
            return http_response(function.invoke(event))
        except Exception:  # noqa: BLE001 - any function error is API Gateway's 500
            print(f"[local gateway] {function.spec.logical_id} failed:\n{traceback.format_exc()}", file=sys.stderr)
            return INTERNAL_ERROR


# ---------------------------------------------------------------- from a template
def gateway_for_template(
    template_path: str | Path,
    *,
    parameters: Mapping[str, Any] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    access_log: bool = False,
) -> Gateway:
    """A gateway serving a template's HTTP API routes, nothing else provisioned.

    For handlers that need no AWS resources (tests of the gateway itself);
    the stack uses the same pieces with its resources created first.
    """
    template_path = Path(template_path)
    template = load_template(template_path)
    resolver = Resolver(template, parameters)
    functions = local_functions(template, template_path.parent, resolver)
    return Gateway(http_routes(template, resolver), functions, host=host, port=port,
                   api_id=resolver.ref(api_logical_id(template)) if api_logical_id(template) else "local",
                   access_log=access_log)


def api_logical_id(template: Mapping[str, Any]) -> str | None:
    """The logical id of the template's (first) HTTP API, if it declares one."""
    return next(iter(resources_of_type(template, "AWS::ApiGatewayV2::Api")), None)
