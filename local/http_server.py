"""The loopback HTTP server the local drivers serve on.

:class:`LoopbackServer` is a threaded stdlib HTTP server on a loopback
port that hands every request to one function (a :data:`Responder`) and
writes back the status, headers and body it returns (an
:data:`HttpResponse`), with the framing (``Content-Length``, chunked request
bodies, ``HEAD``) done here. It keeps no access log of its own: each user
logs requests its way, without query strings.

The local API Gateway (:class:`local.gateway.Gateway`) and the local Lambda
Invoke API (:class:`local.lambda_api.LambdaApi`) each serve on one, and
:mod:`local.stack` builds pages (``HttpResponse``) for the gateway.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger(__name__)

HttpResponse = tuple[int, list[tuple[str, str]], bytes]


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
