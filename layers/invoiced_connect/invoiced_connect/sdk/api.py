"""A session on Invoiced's REST API for one connection, for consumer Lambdas.

    from invoiced_connect import InvoicedApi

    api = InvoicedApi("my-customer-42")
    for invoice in api.list_invoices(status="past_due"):
        ...

:class:`ApiSession` gets the connection's access token from a
:class:`TokenSource` (``invoiced_connect.InvoicedApi`` is an ApiSession whose
source is this process's token reader, see :mod:`invoiced_connect.facade`), sends it as a Bearer token to
the REST API of the connection's own Invoiced environment (the token says
which: sandbox or production; an ``api_url`` given here, or
``INVOICED_API_URL``, must agree, or :class:`ApiEnvironmentError` names both
and nothing is sent), and deals with what Invoiced can answer:

* **401**: the token was refreshed (rotated) elsewhere or expired. The session
  calls :meth:`TokenSource.token_rejected` once and retries once with the token
  it returns; a second 401 raises :class:`ApiAuthError`. Errors raised by the
  token source (connection not found, needs re-authorization, and
  ``TokenRejected`` when the token was already replaced once for a 401
  within the window: no rotation storm) propagate unchanged.
* **429**: Invoiced allows 20 concurrent requests per credential and sends no
  ``Retry-After``. The session backs off exponentially with full jitter
  (honouring ``Retry-After`` if one appears) and raises
  :class:`ApiRateLimitError` when its retries are spent. A 429 means the
  request was not processed, so every method is retried.
* **5xx and network failures**: retried with backoff for idempotent methods
  (GET, HEAD, PUT, DELETE) only; POST and PATCH are never sent twice.
* **other 4xx**: :class:`ApiRequestError` with Invoiced's error ``type``,
  ``message`` and ``param``.

Every error derives from :class:`invoiced_connect.invoiced.client.ApiError`; the
retryable ones also from :class:`~invoiced_connect.invoiced.client.TransientError`.
The access token is never stored on the session, logged, or put into an
exception; requests only ever go to the API's own origin (a ``Link`` header
pointing elsewhere is refused), and redirects are not followed.
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable
from urllib.parse import urljoin, urlsplit

import requests
from urllib3.util import parse_url

from invoiced_connect.core.environments import EnvironmentMismatch
from invoiced_connect.core.models import validate_connection_id
from invoiced_connect.invoiced.client import (
    ApiError,
    TransientError,
    UnknownOutcomeError,
    no_retry_session,
    was_not_sent,
)

if TYPE_CHECKING:
    from invoiced_connect.sdk.tokens import AccessToken

log = logging.getLogger(__name__)

_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

#: Methods that may be sent again after a 5xx or a lost answer.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE"})
#: First backoff step and the largest one (seconds); full jitter picks a delay in [0, step).
BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0
#: A ``Retry-After`` is honoured up to this many seconds.
MAX_RETRY_AFTER = 60.0
#: Invoiced's default and largest page size.
MAX_PER_PAGE = 100
#: ``list_invoices`` keywords that are top-level query parameters; any other keyword is a ``filter[...]``.
INVOICE_LIST_PARAMS = frozenset(
    {"sort", "updated_after", "updated_before", "start_date", "end_date", "expand", "include", "payment_plan"}
)


# ---------------------------------------------------------------- token source
@runtime_checkable
class TokenSource(Protocol):
    """Where an :class:`ApiSession` gets access tokens.

    The layer's token reader (:class:`invoiced_connect.sdk.tokens.TokenReader`)
    is the real implementation; tests pass a fake.
    """

    def get_token(self, connection_id: str) -> AccessToken:
        """A currently valid access token for the connection, with its API URL."""
        ...

    def token_rejected(self, connection_id: str, access_token: str) -> AccessToken | str:
        """Invoiced answered 401 to ``access_token``: return a token to retry with.

        Re-reads the stored connection and returns its token if it changed,
        otherwise asks for a locked refresh and returns the new token. Raises
        the token SDK's own errors when the connection needs re-authorization.
        """
        ...


# ---------------------------------------------------------------- errors
class ApiStatusError(ApiError):
    """Invoiced answered with an error status.

    Carries the status and Invoiced's error body (``{"type","message","param"?}``)
    as ``error_type``, ``error_message`` and ``param``; never the request, its
    headers or the token.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        error_type: str | None = None,
        error_message: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, status=status, reason=error_type or f"http_{status}")
        self.error_type = error_type
        self.error_message = error_message
        self.param = param


class ApiAuthError(ApiStatusError):
    """Invoiced rejected the access token, and the fresh one it was retried with."""


class ApiRequestError(ApiStatusError):
    """Invoiced refused the request itself (a 4xx other than 401 and 429)."""


class ApiNotFoundError(ApiRequestError):
    """404: the object or route does not exist (or is not visible to this company)."""


class ApiRateLimitError(ApiStatusError, TransientError):
    """Still 429 (too many concurrent requests) after every allowed retry."""


class ApiServerError(ApiStatusError, TransientError):
    """A 5xx (after the retries an idempotent method is allowed)."""


class ApiConnectionError(ApiError, TransientError):
    """No answer from Invoiced; for an idempotent method, after its retries.

    For POST and PATCH this means the request never left (connection refused
    or connect timeout); see :class:`ApiUnknownOutcomeError` otherwise.
    """


class ApiUnknownOutcomeError(ApiError, UnknownOutcomeError):
    """A POST or PATCH was sent but no answer came back: Invoiced may have acted on it."""


class ApiUrlError(ApiError):
    """A URL outside the API's origin (for example from a ``Link`` header); nothing was sent."""


class ApiEnvironmentError(ApiUrlError):
    """The configured API URL is not the API of the connection's own Invoiced
    environment (a sandbox token to production, say); nothing was sent.
    ``configured`` and ``connection_api_url`` name both."""

    def __init__(self, mismatch: EnvironmentMismatch) -> None:
        super().__init__(str(mismatch), reason="environment_mismatch")
        self.configured = mismatch.configured
        self.connection_api_url = mismatch.connection_api_url


class ApiResponseError(ApiError):
    """A successful status with a body that is not what the call expects."""


# ---------------------------------------------------------------- helpers
def _origin(url: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` as urllib3 will connect, or None if unusable."""
    authority = _ABSOLUTE.sub("", url, count=1).split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    # Characters that parsers disagree about have no business in an API host.
    if "\\" in authority or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in authority):
        return None
    try:
        parts = parse_url(url)
    except ValueError:
        return None
    scheme = (parts.scheme or "").lower()
    if scheme not in ("http", "https") or not parts.host or parts.auth:
        return None
    return scheme, parts.host.lower(), parts.port or (443 if scheme == "https" else 80)


def _is_absolute(path: str) -> bool:
    """A URL with a scheme and authority, or scheme-relative; ``invoices:1`` stays a path."""
    return path.startswith("//") or _ABSOLUTE.match(path) is not None


def _path_only(url: str) -> str:
    """The URL's path, for messages and logs (no query: it may carry filters)."""
    return urlsplit(url).path or "/"


def _redact(text: str | None, secret: str) -> str | None:
    if text is None or not secret:
        return text
    return text.replace(secret, "[redacted]")


def _error_body(response: requests.Response) -> tuple[str | None, str | None, str | None]:
    """Invoiced's ``type``, ``message`` and ``param``, when the body is its error shape."""
    try:
        body = response.json()
    except ValueError:
        return None, None, None
    if not isinstance(body, dict):
        return None, None, None

    def text(key: str) -> str | None:
        value = body.get(key)
        return value[:500] if isinstance(value, str) else None

    return text("type"), text("message"), text("param")


def _retry_after(response: requests.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta or HTTP date), capped; None if absent or unreadable."""
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def positive_int(name: str, value: object, *, maximum: int | None = None) -> int:
    """``value`` if it is an int in ``[1, maximum]`` (bools refused), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (maximum is not None and value > maximum):
        bound = f" and at most {maximum}" if maximum is not None else ""
        raise ValueError(f"{name} must be an integer of at least 1{bound}")
    return value


# ---------------------------------------------------------------- the session
class ApiSession:
    """Invoiced's REST API on behalf of one connection.

    ``tokens``: where access tokens come from (``invoiced_connect.InvoicedApi``
    gives this process's reader). The API URL is the connection's own (from
    its token); ``api_url`` only pins it, and a connection of another
    environment is then refused. ``sleep`` and ``rng`` are injectable so
    tests can record backoff without waiting. Not thread-safe in the sense of
    requests' ``Session``: use one per thread if you fan out.
    """

    def __init__(
        self,
        connection_id: str,
        *,
        tokens: TokenSource,
        api_url: str | None = None,
        session: requests.Session | None = None,
        timeout: float = 10.0,
        max_rate_limit_retries: int = 5,
        max_transient_retries: int = 2,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.connection_id = validate_connection_id(connection_id)
        #: The pinned API URL, if any; else the connection's, once its token is read.
        self._pinned = api_url.rstrip("/") if api_url else None
        self.api_url: str | None = self._pinned
        self._origin: tuple[str, str, int] | None = None
        if self._pinned is not None:
            self._origin = _origin(self._pinned)
            if self._origin is None:
                raise ValueError("api_url must be an absolute http(s) URL without credentials")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        if max_rate_limit_retries < 0 or max_transient_retries < 0:
            raise ValueError("retry counts must not be negative")
        self._tokens = tokens
        self._owns_session = session is None
        self._session = session if session is not None else no_retry_session()
        self._timeout = (min(3.05, timeout), timeout)
        self.max_rate_limit_retries = max_rate_limit_retries
        self.max_transient_retries = max_transient_retries
        self._sleep = sleep
        self._rng = rng

    def __repr__(self) -> str:
        return f"{type(self).__name__}(connection_id={self.connection_id!r}, api_url={self.api_url!r})"

    def close(self) -> None:
        """Close the HTTP session if this object created it."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------ public calls
    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
    ) -> requests.Response:
        """Send one API request, with the retries described in the module docs.

        ``path`` is relative to ``api_url`` (``"/invoices"``) or an absolute
        URL on the same origin (scheme, host and port) as ``api_url``; any
        other URL raises :class:`ApiUrlError` before a token is even read.
        Returns the 2xx response; raises an :class:`ApiError` subclass or the
        token source's own errors otherwise.
        """
        method = method.upper()
        if self._origin is not None and _is_absolute(path):
            self._prepare(method, path, params, json)  # a foreign URL is refused before any token is read
        token = self._use(self._tokens.get_token(self.connection_id))
        prepared = self._prepare(method, path, params, json)
        label = f"{method} {_path_only(prepared.url or '')}"
        idempotent = method in IDEMPOTENT_METHODS
        token_retried = False
        rate_limited = transient = 0
        while True:
            prepared.headers["Authorization"] = f"Bearer {token}"
            response, failure = self._send(prepared)
            if response is None:
                if idempotent and transient < self.max_transient_retries:
                    transient += 1
                    self._wait(label, failure, transient, self.max_transient_retries, None)
                    continue
                raise self._network_error(label, failure, idempotent)
            status = response.status_code
            if 200 <= status < 300:
                return response
            response.close()
            if status == 401:
                if token_retried:
                    raise self._status_error(ApiAuthError, label, response, token)
                token_retried = True
                log.info("Invoiced rejected the access token; asking for a fresh one",
                         extra={"connection_id": self.connection_id, "request": label})
                token = self._use(self._tokens.token_rejected(self.connection_id, token))
                continue
            if status == 429:
                if rate_limited >= self.max_rate_limit_retries:
                    raise self._status_error(ApiRateLimitError, label, response, token)
                rate_limited += 1
                self._wait(label, "429", rate_limited, self.max_rate_limit_retries, _retry_after(response))
                continue
            if status >= 500:
                if idempotent and transient < self.max_transient_retries:
                    transient += 1
                    self._wait(label, str(status), transient, self.max_transient_retries, _retry_after(response))
                    continue
                raise self._status_error(ApiServerError, label, response, token)
            error_class = ApiNotFoundError if status == 404 else ApiRequestError
            raise self._status_error(error_class, label, response, token)

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """``GET path`` and return the parsed JSON body (None for an empty 2xx)."""
        response = self.request("GET", path, params=params)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiResponseError(
                f"GET {_path_only(response.url)} answered {response.status_code} without a JSON body",
                status=response.status_code, reason="not_json",
            ) from None

    def iterate(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        per_page: int = MAX_PER_PAGE,
        max_pages: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yield every object of a paginated list, page by page.

        Invoiced answers a list as a bare JSON array and links the next page
        in the ``Link`` header (``rel="next"``); this follows it until there
        is none, or ``max_pages`` pages were read. The next URL must be on the
        API's origin (:class:`ApiUrlError` otherwise). ``per_page`` is 1-100.
        """
        per_page = positive_int("per_page", per_page, maximum=MAX_PER_PAGE)
        if max_pages is not None:
            max_pages = positive_int("max_pages", max_pages)
        query = {**(params or {}), "per_page": per_page}
        target: str | None = path
        page_params: Mapping[str, Any] | None = query
        seen: set[str] = set()
        pages = 0
        while target is not None and (max_pages is None or pages < max_pages):
            response = self.request("GET", target, params=page_params)
            pages += 1
            seen.add(response.url)
            try:
                body = response.json()
            except ValueError:
                body = None
            if not isinstance(body, list):
                raise ApiResponseError(
                    f"GET {_path_only(response.url)} did not answer a JSON array",
                    status=response.status_code, reason="not_a_list",
                )
            for item in body:
                if not isinstance(item, dict):
                    raise ApiResponseError(
                        f"GET {_path_only(response.url)} listed a non-object", status=response.status_code,
                        reason="not_an_object",
                    )
                yield item
            next_link = response.links.get("next", {}).get("url")
            if not body or not next_link:
                return
            # A relative reference resolves against the page that carried it (RFC 8288).
            target, page_params = urljoin(response.url, next_link), None
            if target in seen:
                raise ApiResponseError("the Link header's next page repeats a page already read",
                                       status=response.status_code, reason="pagination_loop")

    def list_invoices(
        self,
        *,
        per_page: int = MAX_PER_PAGE,
        max_pages: int | None = None,
        **filters: Any,
    ) -> Iterator[dict[str, Any]]:
        """Yield the company's invoices (``GET /invoices``), every page.

        Keywords in :data:`INVOICE_LIST_PARAMS` (``sort``, ``updated_after``,
        ``start_date``, ...) are sent as they are; ``metadata={"k": "v"}``
        becomes ``metadata[k]=v``; every other keyword is a filter:
        ``list_invoices(status="past_due", customer=123)`` sends
        ``filter[status]=past_due&filter[customer]=123``. None values are left out.
        """
        params: dict[str, Any] = {}
        for key, value in filters.items():
            if value is None:
                continue
            if key == "metadata" and isinstance(value, Mapping):
                params.update({f"metadata[{k}]": v for k, v in value.items()})
            elif key in INVOICE_LIST_PARAMS:
                params[key] = value
            else:
                params[f"filter[{key}]"] = value
        return self.iterate("/invoices", params, per_page=per_page, max_pages=max_pages)

    # ------------------------------------------------------------ plumbing
    def _use(self, token: AccessToken | str) -> str:
        """The token's text, after checking (and, unpinned, adopting) the API URL it belongs to."""
        if isinstance(token, str):  # a plain TokenSource that knows no environments
            if self._origin is None:
                raise ApiUrlError("no API URL: pass api_url, or use a token source that knows the connection's",
                                  reason="no_api_url")
            return token
        connection_url = token.api_url.rstrip("/") if token.api_url else None
        if self._pinned is not None:
            if connection_url is not None and connection_url != self._pinned:
                raise ApiEnvironmentError(EnvironmentMismatch(self.connection_id, self._pinned, connection_url))
        elif connection_url is None:
            raise ApiUrlError(f"the API URL of connection {self.connection_id!r} is unknown (it was made before "
                              "it was recorded, with an unknown issuer): pass api_url", reason="no_api_url")
        elif connection_url != self.api_url:
            origin = _origin(connection_url)
            if origin is None:
                raise ApiUrlError("the connection's API URL is not usable", reason="bad_api_url")
            self.api_url, self._origin = connection_url, origin
        return token.access_token

    def _prepare(self, method: str, path: str, params: Mapping[str, Any] | None, body: Any) -> requests.PreparedRequest:
        assert self.api_url is not None and self._origin is not None
        url = path if _is_absolute(path) else f"{self.api_url}/{path.lstrip('/')}"
        if url.startswith("//"):
            url = f"{self._origin[0]}:{url}"
        if _origin(url) != self._origin:
            raise ApiUrlError("refusing a URL outside the Invoiced API's origin", reason="foreign_origin")
        request = requests.Request(
            method, url, params=dict(params) if params else None, json=body,
            headers={"Accept": "application/json"},
        )
        prepared = self._session.prepare_request(request)
        # Checked again on what will really be sent: requests normalises the URL.
        if _origin(prepared.url or "") != self._origin:
            raise ApiUrlError("refusing a URL outside the Invoiced API's origin", reason="foreign_origin")
        # Never let session defaults (auth, netrc) add or replace credentials.
        prepared.headers.pop("Authorization", None)
        return prepared

    def _send(self, prepared: requests.PreparedRequest) -> tuple[requests.Response | None, str]:
        """Send once; ``(response, "")`` or ``(None, what went wrong)``. Never raises requests' errors."""
        settings = self._session.merge_environment_settings(prepared.url, {}, None, None, None)
        try:
            response = self._session.send(prepared, timeout=self._timeout, allow_redirects=False, **settings)
        except requests.RequestException as exc:
            # The exception holds the request (and its Authorization header):
            # keep only its kind, and raise our own error outside this block.
            return None, ("not_sent:" if was_not_sent(exc) else "sent:") + type(exc).__name__
        return response, ""

    def _wait(self, label: str, what: str, attempt: int, limit: int, retry_after: float | None) -> None:
        if retry_after is not None:
            delay = retry_after
        else:
            delay = self._rng() * min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1))
        log.warning(
            "Invoiced API %s failed (%s); retry %d of %d in %.2f s", label, what.split(":")[-1], attempt, limit,
            delay, extra={"connection_id": self.connection_id},
        )
        self._sleep(delay)

    def _network_error(self, label: str, failure: str, idempotent: bool) -> ApiError:
        sent, _, kind = failure.partition(":")
        if sent == "sent" and not idempotent:
            return ApiUnknownOutcomeError(
                f"{label} was sent but no answer came back ({kind}); Invoiced may have acted on it",
                reason=kind,
            )
        return ApiConnectionError(f"{label} got no answer from Invoiced ({kind})", reason=kind)

    @staticmethod
    def _status_error(
        error_class: type[ApiStatusError], label: str, response: requests.Response, token: str
    ) -> ApiStatusError:
        error_type, error_message, param = (_redact(v, token) for v in _error_body(response))
        status = response.status_code
        detail = f" ({error_type})" if error_type else ""
        text = f": {error_message}" if error_message else ""
        return error_class(
            f"{label} answered {status}{detail}{text}",
            status=status, error_type=error_type, error_message=error_message, param=param,
        )

