"""A loopback stand-in for Lambda's Invoke API, for code that invokes functions with boto3.

moto's Lambda runs function code only in Docker; this runs the template's
functions in-process (:class:`local.lambda_runtime.LocalFunction`, the same
execution environments the HTTP gateway uses), behind the one operation
callers use::

    POST /2015-03-31/functions/{FunctionName}/invocations[?Qualifier=...]

``FunctionName`` is the name, the full ARN or a partial ARN
(``123456789012:function:name``), with or without a qualifier, which is
ignored: every function is ``$LATEST``. ``X-Amz-Invocation-Type`` is

* ``RequestResponse`` (default): 200 with the JSON result and
  ``X-Amz-Executed-Version: $LATEST``; if the handler raises, still 200, with
  ``X-Amz-Function-Error: Unhandled`` and Lambda's error document
  (``errorMessage``, ``errorType``, ``requestId``, ``stackTrace``) as body;
* ``Event``: 202 at once, the function runs on a background thread (no
  retries: Lambda's two retries of a failed asynchronous invocation are not
  played);
* ``DryRun``: 204, nothing runs.

An unknown function is a 404 ``ResourceNotFoundException`` and a body that is
not JSON a 400 ``InvalidRequestContentException``, with Lambda's error shapes,
so boto3 raises what it raises against AWS. Signatures are not checked.

boto3 (>= 1.28) sends Lambda calls here when ``AWS_ENDPOINT_URL_LAMBDA`` is
this server's URL; the local stack puts it in the functions' environment.
Logs name the exception type and where it was raised, never its message
(which could hold a token or a secret).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import traceback
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from local.http_server import HttpResponse, LoopbackServer
from local.lambda_runtime import Activity, LocalFunction, error_location
from local.template import ACCOUNT_ID, REGION

logger = logging.getLogger(__name__)

INVOKE_PATH = re.compile(r"/2015-03-31/functions/(?P<name>[^/]+)/invocations/?")
EXECUTED_VERSION = "$LATEST"
_LOCAL_PACKAGE = Path(__file__).resolve().parent


def error_document(exc: BaseException, request_id: str) -> dict[str, Any]:
    """The body Lambda's Python runtime returns for an unhandled exception.

    The stack trace leaves out the local runtime's own frames, as Lambda's
    leaves out its bootstrap.
    """
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__)
              if Path(frame.filename).resolve().parent != _LOCAL_PACKAGE]
    return {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "requestId": request_id,
        "stackTrace": traceback.format_list(frames),
    }


def function_name_of(identifier: str) -> tuple[str, str | None, str | None]:
    """``(name, region, account)`` from a name, a full ARN or a partial ARN; qualifiers dropped.

    Region and account are ``None`` where the identifier does not say.
    """
    parts = identifier.split(":")
    if identifier.startswith("arn:") and len(parts) >= 7 and parts[5] == "function":
        return parts[6], parts[3] or None, parts[4] or None
    if len(parts) >= 3 and parts[1] == "function" and re.fullmatch(r"\d{12}", parts[0]):
        return parts[2], None, parts[0]
    return parts[0], None, None


def _json_error(status: int, error_type: str, message: str, request_id: str) -> HttpResponse:
    body = json.dumps({"Type": "User", "message": message}).encode("utf-8")
    return status, [("Content-Type", "application/json"), ("x-amzn-ErrorType", error_type),
                    ("x-amzn-RequestId", request_id)], body


class LambdaApi:
    """The Invoke API on ``host:port`` for ``functions`` (by logical id).

    ``bind()`` reserves the port (so the URL can go into the functions'
    environment before they are known), ``mount()`` sets the functions,
    ``start()`` serves. ``activity`` counts invocations in flight (shared
    with the queue pollers and schedules); ``counts`` holds invocations per
    logical id and invocation type.
    """

    def __init__(
        self,
        functions: Mapping[str, LocalFunction] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        region: str = REGION,
        account_id: str = ACCOUNT_ID,
        activity: Activity | None = None,
        access_log: bool = False,
    ) -> None:
        self.host, self.port = host, port
        self.region, self.account_id = region, account_id
        self.activity = activity or Activity()
        self.access_log = access_log
        self.functions: dict[str, LocalFunction] = {}
        self.counts: dict[tuple[str, str], int] = {}
        self._counts_lock = threading.Lock()
        self._server: LoopbackServer | None = None
        self._background: set[threading.Thread] = set()
        self._background_lock = threading.Lock()
        self.mount(functions or {})

    # ---------------------------------------------------------------- lifecycle
    def mount(self, functions: Mapping[str, LocalFunction]) -> LambdaApi:
        self.functions = dict(functions)
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def bind(self) -> LambdaApi:
        if self._server is None:
            self._server = LoopbackServer(
                (self.host, self.port),
                lambda request, body: self.handle(request.command, request.path, dict(request.headers.items()), body),
                name="local-lambda",
            )
            self.port = self._server.server_address[1]
        return self

    def start(self) -> LambdaApi:
        self.bind()
        assert self._server is not None
        self._server.serve_in_background()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving, then wait up to ``timeout`` for asynchronous invocations still running."""
        if self._server is not None:
            self._server.close()
        self._server = None
        deadline = time.monotonic() + timeout
        with self._background_lock:
            running = list(self._background)
        for thread in running:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in running):
            logger.warning("stopped with asynchronous invocations still running")

    def __enter__(self) -> LambdaApi:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- lookup
    def lookup(self, identifier: str) -> LocalFunction | None:
        """The function a ``FunctionName`` (name, ARN or partial ARN) names, if any."""
        name, region, account = function_name_of(identifier)
        if (region and region != self.region) or (account and account != self.account_id):
            return None
        return next((function for function in self.functions.values() if function.function_name == name), None)

    # ---------------------------------------------------------------- requests
    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes | None) -> HttpResponse:
        """One HTTP request to the API (also callable without the socket)."""
        started = time.monotonic()
        request_id = str(uuid.uuid4())
        parts = urlsplit(target)
        match = INVOKE_PATH.fullmatch(parts.path)
        if method != "POST" or match is None:
            return _json_error(404, "UnknownOperationException", f"{method} {parts.path} is not an operation "
                               "of the local Lambda API (only Invoke is)", request_id)
        identifier = unquote(match.group("name"))
        invocation_type = _header(headers, "X-Amz-Invocation-Type") or "RequestResponse"
        function = self.lookup(identifier)
        if function is None:
            response = _json_error(
                404, "ResourceNotFoundException",
                f"Function not found: {self._arn_for(identifier)}", request_id,
            )
        elif invocation_type not in ("RequestResponse", "Event", "DryRun"):
            response = _json_error(400, "InvalidParameterValueException",
                                   f"Unsupported invocation type {invocation_type!r}", request_id)
        else:
            try:
                event = json.loads(body) if body else {}
            except ValueError as exc:
                response = _json_error(400, "InvalidRequestContentException",
                                       f"Could not parse request body into json: {type(exc).__name__}", request_id)
            else:
                response = self._invoke(function, invocation_type, event, request_id)
        if self.access_log:
            logger.info("Invoke %s (%s) -> %s (%d ms)", function.spec.logical_id if function else identifier,
                        invocation_type, response[0], (time.monotonic() - started) * 1000)
        return response

    def _invoke(self, function: LocalFunction, invocation_type: str, event: Any, request_id: str) -> HttpResponse:
        headers = [("x-amzn-RequestId", request_id)]
        if invocation_type == "DryRun":
            return 204, headers, b""
        self._count(function, invocation_type)
        if invocation_type == "Event":
            self._start_background(function, event, request_id)
            return 202, headers, b""
        headers += [("Content-Type", "application/json"), ("X-Amz-Executed-Version", EXECUTED_VERSION)]
        self.activity.begin()
        try:
            result = function.invoke(event, request_id=request_id)
        except Exception as exc:  # noqa: BLE001 - any handler error is Lambda's function error
            log_failure(function, exc, request_id)
            body = json.dumps(error_document(exc, request_id)).encode("utf-8")
            return 200, [*headers, ("X-Amz-Function-Error", "Unhandled")], body
        finally:
            self.activity.end()
        return 200, headers, json.dumps(result).encode("utf-8")

    def _start_background(self, function: LocalFunction, event: Any, request_id: str) -> None:
        self.activity.begin()  # before the 202: whoever waits for quiet sees this one

        def run() -> None:
            try:
                function.invoke(event, request_id=request_id)
            except Exception as exc:  # noqa: BLE001 - asynchronous: nobody to answer, so log it
                log_failure(function, exc, request_id)
            finally:
                self.activity.end()
                with self._background_lock:
                    self._background.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=f"lambda-event-{function.spec.logical_id}", daemon=True)
        with self._background_lock:
            self._background.add(thread)
        try:
            thread.start()
        except BaseException:
            with self._background_lock:
                self._background.discard(thread)
            self.activity.end()
            raise

    def _count(self, function: LocalFunction, invocation_type: str) -> None:
        with self._counts_lock:
            key = (function.spec.logical_id, invocation_type)
            self.counts[key] = self.counts.get(key, 0) + 1

    def _arn_for(self, identifier: str) -> str:
        if identifier.startswith("arn:"):
            return identifier
        name, _, account = function_name_of(identifier)
        return f"arn:aws:lambda:{self.region}:{account or self.account_id}:function:{name}"


def log_failure(function: LocalFunction, exc: BaseException, request_id: str) -> None:
    """Log a failed invocation: the exception's type and location, never its message."""
    logger.warning("%s failed: %s at %s (request %s)", function.spec.logical_id, type(exc).__name__,
                   error_location(exc), request_id)


def _header(headers: Mapping[str, str], name: str) -> str:
    lowered = name.lower()
    return next((value for key, value in headers.items() if key.lower() == lowered), "")
