"""A loopback stand-in for API Gateway (HTTP API, payload format 2.0) and Lambda.

Each request becomes the 2.0 event API Gateway would send, the route's
function runs in-process, and its 2.0 response becomes the HTTP response.

Lambda runs one request at a time per execution environment, and handler
modules keep per-request state at module level (Powertools' resolver holds
the current event on ``app``). So each function has a pool of environments,
each a separately imported copy of its handler module: a request takes an
idle one or imports a new one (a cold start), and concurrent requests run
concurrently, never sharing a module. What the copies do share is the
process: its environment variables and the ``invoiced_connect`` package's
caches (settings, boto3 clients, secrets) behave like one warm environment.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import itertools
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from local.template import (
    ACCOUNT_ID,
    FunctionSpec,
    Resolver,
    RouteSpec,
    function_spec,
    http_routes,
    load_template,
    resources_of_type,
)

logger = logging.getLogger(__name__)

NOT_FOUND = (404, [("Content-Type", "application/json")], b'{"message":"Not Found"}')
INTERNAL_ERROR = (500, [("Content-Type", "application/json")], b'{"message":"Internal Server Error"}')

HttpResponse = tuple[int, list[tuple[str, str]], bytes]


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


# ---------------------------------------------------------------- Lambda
@dataclass
class LambdaContext:
    """The parts of Lambda's context object that handlers and Powertools read."""

    function_name: str
    memory_limit_in_mb: int
    invoked_function_arn: str
    aws_request_id: str
    timeout_s: float = 3.0
    function_version: str = "$LATEST"
    started: float = field(default_factory=time.monotonic)

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return f"{time.strftime('%Y/%m/%d')}/[$LATEST]local"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.started + self.timeout_s - time.monotonic()) * 1000))


_module_counter = itertools.count(1)
_import_lock = threading.Lock()


class _CurrentStream(io.TextIOBase):
    """Writes to whatever ``sys.<name>`` is at the time of writing.

    Handler modules keep the stream they saw at import (Powertools' Logger
    holds ``sys.stdout``). In Lambda stdout never changes; in a local
    process it does (pytest captures per test) while environments stay warm,
    so each import sees this stand-in and logs go where stdout is now.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name
        self.fallback: Any = getattr(sys, name)

    def _target(self) -> Any:
        current = getattr(sys, self._name)
        return self.fallback if current is self else current

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self._target().isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._target(), "encoding", "utf-8")


_STDOUT = _CurrentStream("stdout")
_STDERR = _CurrentStream("stderr")


def import_handler(handler_file: Path, handler_name: str, label: str) -> tuple[ModuleType, Callable[..., Any]]:
    """Import a fresh, private copy of a handler module (one execution environment)."""
    if not handler_file.is_file():
        raise FileNotFoundError(f"{label}: handler file {handler_file} does not exist")
    safe_label = re.sub(r"\W", "_", label)
    module_name = f"_local_lambda_{safe_label}_{next(_module_counter)}"
    spec = importlib.util.spec_from_file_location(module_name, handler_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and typing look modules up here
    with _import_lock:  # sys.stdout is process-wide: one import at a time swaps it
        _STDOUT.fallback, _STDERR.fallback = saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _STDOUT, _STDERR
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
        finally:
            sys.stdout, sys.stderr = saved
    handler = getattr(module, handler_name, None)
    if not callable(handler):
        raise AttributeError(f"{label}: {handler_file} has no function {handler_name}")
    return module, handler


class LocalFunction:
    """One function and its pool of execution environments."""

    def __init__(self, spec: FunctionSpec, *, function_name: str, arn: str) -> None:
        self.spec = spec
        self.function_name = function_name
        self.arn = arn
        self._idle: list[Callable[..., Any]] = []
        self._lock = threading.Lock()
        self.cold_starts = 0

    def context(self, request_id: str | None = None) -> LambdaContext:
        return LambdaContext(
            function_name=self.function_name,
            memory_limit_in_mb=self.spec.memory_mb,
            invoked_function_arn=self.arn,
            aws_request_id=request_id or str(uuid.uuid4()),
            timeout_s=self.spec.timeout_s,
        )

    def invoke(self, event: Mapping[str, Any], *, request_id: str | None = None) -> Any:
        """Run the handler in an idle environment (or a new one); return its JSON result.

        ``request_id`` becomes the context's ``aws_request_id`` (default: a new one).
        """
        with self._lock:
            handler = self._idle.pop() if self._idle else None
            if handler is None:
                self.cold_starts += 1
        if handler is None:
            _, handler = import_handler(self.spec.handler_file, self.spec.handler_name, self.spec.logical_id)
        try:
            context = self.context(request_id)
            # Through JSON both ways, as Lambda does: no shared objects, and a
            # result Lambda could not serialise fails here as it would there.
            result = json.loads(json.dumps(handler(json.loads(json.dumps(event)), context)))
            elapsed = time.monotonic() - context.started
            if elapsed > self.spec.timeout_s:
                logger.warning("%s ran %.1fs, longer than its %ss timeout", self.spec.logical_id, elapsed,
                               self.spec.timeout_s)
            return result
        finally:
            with self._lock:
                self._idle.append(handler)


class Activity:
    """Invocations in flight, shared by everything that invokes functions in the background.

    ``started`` only grows, so a caller can tell "nothing ran in between"
    from "something started and finished in between" (see
    :meth:`local.queues.QueuePollers.wait_drained`).
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self.in_flight = 0
        self.started = 0

    def begin(self) -> None:
        with self._condition:
            self.in_flight += 1
            self.started += 1

    def end(self) -> None:
        with self._condition:
            self.in_flight -= 1
            self._condition.notify_all()

    def snapshot(self) -> tuple[int, int]:
        """``(in_flight, started)`` at one instant."""
        with self._condition:
            return self.in_flight, self.started

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is in flight; ``False`` if ``timeout`` passed first."""
        with self._condition:
            return self._condition.wait_for(lambda: self.in_flight == 0, timeout)


def error_location(exc: BaseException) -> str:
    """Where ``exc`` was raised (``file:line in function``): loggable, unlike its message."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown location"
    frame = frames[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"


def load_handler(template_path: str | Path, logical_id: str) -> Callable[..., Any]:
    """A fresh environment of ``logical_id``'s handler: ``handler(event, context=None)``.

    For tests that call a handler directly; the process environment must
    already hold what the function needs. ``context`` defaults to a
    :class:`LambdaContext` for the function.
    """
    template_path = Path(template_path)
    template = load_template(template_path)
    resolver = Resolver(template, unchecked_patterns=set(template.get("Parameters") or {}))
    spec = function_spec(template, logical_id, template_path.parent, resolver)
    physical = resolver.resource(logical_id)
    function = LocalFunction(spec, function_name=physical.ref, arn=physical.attributes["Arn"])
    _, handler = import_handler(spec.handler_file, spec.handler_name, logical_id)

    def invoke(event: Mapping[str, Any], context: Any = None) -> Any:
        return handler(event, context if context is not None else function.context())

    return invoke


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


# ---------------------------------------------------------------- the HTTP server
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


#: Turns one request (the stdlib handler, for its method, path, headers and
#: peer) and its body into status, headers and body.
Responder = Callable[[BaseHTTPRequestHandler, bytes | None], HttpResponse]


class LoopbackServer(ThreadingHTTPServer):
    """A threaded HTTP server that hands every request to ``respond``
    (the local API Gateway and the local Lambda API are both one)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], respond: Responder, *, name: str) -> None:
        self.respond, self.name = respond, name
        self._thread: threading.Thread | None = None
        super().__init__(address, _Handler)

    def serve_in_background(self) -> None:
        """Serve from a daemon thread (once; the port is already bound)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                            name=self.name, daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop serving (if it was) and release the port."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LoopbackServer

    def version_string(self) -> str:
        return self.server.name

    def _serve(self) -> None:
        status, headers, data = self.server.respond(self, read_request_body(self))
        send_http_response(self, status, headers, data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # each server keeps its own access log, without query strings

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        logger.debug(self.server.name + ": " + format, *args)


def read_request_body(handler: BaseHTTPRequestHandler) -> bytes | None:
    """The request's body (``Content-Length`` or chunked), ``None`` without one."""
    length = handler.headers.get("Content-Length")
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline().strip():  # trailers
                    pass
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    if length:
        return handler.rfile.read(int(length))
    return None


def send_http_response(handler: BaseHTTPRequestHandler, status: int, headers: Iterable[tuple[str, str]],
                       data: bytes) -> None:
    """Write status, headers (framing ones replaced by ours) and body."""
    handler.send_response(status)
    for name, value in headers:
        if name.lower() not in ("content-length", "connection", "transfer-encoding"):
            handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(data)


# ---------------------------------------------------------------- from a template
def local_functions(template: Mapping[str, Any], base_dir: Path, resolver: Resolver) -> dict[str, LocalFunction]:
    """Every ``AWS::Serverless::Function`` of the template, ready to invoke."""
    functions = {}
    for logical_id in resources_of_type(template, "AWS::Serverless::Function"):
        physical = resolver.resource(logical_id)
        functions[logical_id] = LocalFunction(
            function_spec(template, logical_id, base_dir, resolver),
            function_name=physical.ref,
            arn=physical.attributes["Arn"],
        )
    return functions


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
