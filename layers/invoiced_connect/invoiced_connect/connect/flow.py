"""The connect flow: ``GET /connect`` starts it, ``GET /callback`` finishes it.

``/connect`` accepts only a signed link, remembers the flow server-side
(state hash, PKCE verifier, issuer, connection id, return URL, and the hash
of a value kept in a ``__Host-`` cookie) and sends the browser to Invoiced.

``/callback`` consumes that state in one conditional delete which also checks
the cookie and the expiry, so a replayed, foreign or double-submitted
callback never reaches the token endpoint. The link is claimed (one
connection per link), the code is exchanged exactly once, and the tokens are
encrypted and stored before anything else. A reconnect then revokes the
grant it replaced at Invoiced (nobody holds its tokens any more; a failure
there is logged and counted, never the connect's). The browser is then sent to the
allowlisted return URL, or to the bare ``/callback``, which shows the outcome
without the code and state in the address bar. Every failure is a plain page
with a reference.

What a request came to (started, connected, reconnected, or failed and why)
is written to the :class:`FlowReport` the handler passes in, for its metrics
and log keys.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from invoiced_connect.cloud import events as connection_events
from invoiced_connect.cloud.events import EventPublisher
from invoiced_connect.cloud.secrets import SecretError
from invoiced_connect.connect import messages, pages
from invoiced_connect.connect.links import LinkClaims, LinkError, LinkExpired, LinkSignatureError, verify_link_token
from invoiced_connect.connect.outcome_cookie import (
    CLEAR_RESULT_COOKIE,
    RESULT_COOKIE_NAME,
    decode_outcome,
    outcome_cookie,
)
from invoiced_connect.connect.pages import HttpResult
from invoiced_connect.connect.pkce import fingerprint, new_verifier, random_token, s256_challenge
from invoiced_connect.core.metrics import (
    CONNECT_FAILED,
    CONNECT_STARTED,
    CONNECTED,
    RECONNECTED,
    REPLACED_GRANT_REVOKE_FAILED,
    REPLACED_GRANT_REVOKED,
)
from invoiced_connect.core.models import Connection, TokenSet
from invoiced_connect.core.return_urls import ReturnUrlError, check_return_url
from invoiced_connect.core.settings import Settings, SettingsError
from invoiced_connect.invoiced.client import (
    ClientAuthError,
    InvalidGrantError,
    InvalidTokenResponseError,
    InvoicedClient,
    InvoicedError,
)
from invoiced_connect.lifecycle.refresh import RefreshPolicy
from invoiced_connect.storage.crypto import SealedTokens, TokenCipher
from invoiced_connect.storage.store import CompanyMismatch, FlowState, LinkAlreadyUsed, StateRejected, TokenStore

logger = logging.getLogger(__name__)

COOKIE_NAME = "__Host-invoiced-connect"
STATE_TTL_SECONDS = 600
#: A link no cached key verifies makes the flow re-read the keys at most this often.
LINK_KEYS_REREAD_SECONDS = 60
MAX_PARAM_LENGTH = 4096
_COOKIE_ATTRIBUTES = "Path=/; Secure; HttpOnly; SameSite=Lax"
CLEAR_COOKIE = f"{COOKIE_NAME}=; Max-Age=0; {_COOKIE_ATTRIBUTES}"
COMPANY_LOOKUP_TIMEOUT = 3.0
#: Revoking the grant a reconnect replaced: best effort, so it never holds the page up long.
REPLACED_GRANT_REVOKE_TIMEOUT = 3.0
#: Authorize errors that mean Invoiced could not answer (RFC 6749 s4.1.2.1): the outage page.
OUTAGE_AUTHORIZE_ERRORS = frozenset({"server_error", "temporarily_unavailable"})
# RFC 6749 s4.1.2.1: logged by name; anything else a browser sends is "other".
KNOWN_AUTHORIZE_ERRORS = frozenset(
    {
        "invalid_request",
        "unauthorized_client",
        "access_denied",
        "unsupported_response_type",
        "invalid_scope",
        "server_error",
        "temporarily_unavailable",
    }
)

Query = Mapping[str, Sequence[str]]


class RequestRefused(Exception):
    """Input the flow refuses; becomes a 4xx page, never a 5xx. ``return_to``:
    an allowlisted return URL the refused link carried, for the page's "Back to" link."""

    def __init__(self, status: int, title: str, message: str, reason: str, *, return_to: str | None = None) -> None:
        super().__init__(message)
        self.status, self.title, self.message, self.reason = status, title, message, reason
        self.return_to = return_to

    @classmethod
    def of(cls, status: int, message: messages.Message, reason: str, *,
           return_to: str | None = None) -> RequestRefused:
        return cls(status, message.title, message.text, reason, return_to=return_to)


class FlowOutcome(StrEnum):
    """What one ``/connect`` or ``/callback`` request came to (see FlowReport), each
    counted by its metric; for a failure, one of a small fixed set of reasons
    (invoiced_connect.core.metrics.CONNECT_FAILURE_REASONS); the logs keep the
    finer RequestRefused reason."""

    STARTED = "started"
    CONNECTED = "connected"
    RECONNECTED = "reconnected"
    FAILED = "failed"

    @property
    def metric_name(self) -> str:
        return _FLOW_METRICS[self]


_FLOW_METRICS = {FlowOutcome.STARTED: CONNECT_STARTED, FlowOutcome.CONNECTED: CONNECTED,
                 FlowOutcome.RECONNECTED: RECONNECTED, FlowOutcome.FAILED: CONNECT_FAILED}
_FAILURE_REASON = {
    "no_link": "link_invalid",
    "bad_link": "link_invalid",
    "bad_signature": "link_invalid",
    "link_expired": "link_invalid",
    "return_to": "return_url_refused",
    "link_used": "link_used",
    "duplicate_param": "bad_request",
    "param_too_long": "bad_request",
    "param_not_text": "bad_request",
    "no_state": "bad_request",
    "no_code": "bad_request",
    "no_cookie": "state_rejected",
    "state_rejected": "state_rejected",
    "issuer": "state_rejected",
    "code_invalid": "code_rejected",
}


class ReplacedGrant(StrEnum):
    """What became of the grant a reconnect replaced, at Invoiced."""

    REVOKED = "revoked"
    REVOKE_FAILED = "revoke_failed"

    @property
    def metric_name(self) -> str:
        return REPLACED_GRANT_REVOKED if self is ReplacedGrant.REVOKED else REPLACED_GRANT_REVOKE_FAILED


@dataclass
class FlowReport:
    """What one ``/connect`` or ``/callback`` request came to, for the handler's metrics and logs.

    ``outcome``: ``started``, ``connected``, ``reconnected`` or ``failed``
    (with a ``reason``), or ``None`` when the request did none of these (the
    outcome page). ``connection_id`` is set (and ``on_connection_id`` called)
    as soon as it is known from a verified link or a consumed state; nothing
    else from the request is kept.
    """

    on_connection_id: Callable[[str], None] | None = None
    outcome: FlowOutcome | None = None
    reason: str | None = None
    connection_id: str | None = None
    #: What became of a reconnect's replaced grant at Invoiced.
    replaced_grant: ReplacedGrant | None = None

    def identify(self, connection_id: str) -> None:
        self.connection_id = connection_id
        if self.on_connection_id is not None:
            self.on_connection_id(connection_id)

    @property
    def failed(self) -> bool:
        return self.outcome is FlowOutcome.FAILED

    def succeed(self, outcome: FlowOutcome) -> None:
        self.outcome, self.reason = outcome, None

    def fail(self, reason: str) -> None:
        """Record a failure, unless the request already succeeded or failed (the first word stands)."""
        if self.outcome is None:
            self.outcome, self.reason = FlowOutcome.FAILED, reason

    def refused(self, exc: RequestRefused) -> None:
        self.fail(_FAILURE_REASON.get(exc.reason, "bad_request"))


def parse_query(raw_query: str) -> dict[str, list[str]]:
    """Parse a raw query string, keeping repeated parameters visible."""
    parsed: dict[str, list[str]] = {}
    for key, value in parse_qsl(raw_query or "", keep_blank_values=True):
        parsed.setdefault(key, []).append(value)
    return parsed


def parse_cookies(cookie_values: Sequence[str]) -> dict[str, str]:
    """API Gateway v2 gives cookies as ``name=value`` strings."""
    jar: dict[str, str] = {}
    for raw in cookie_values:
        for part in raw.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep:
                jar[name] = value
    return jar


def _single(query: Query, name: str) -> str | None:
    values = query.get(name) or []
    if len(values) > 1:
        raise RequestRefused.of(400, messages.parameter_repeated(name), "duplicate_param")
    if values and len(values[0]) > MAX_PARAM_LENGTH:
        raise RequestRefused.of(400, messages.parameter_too_long(name), "param_too_long")
    if values and not values[0].isascii():
        try:
            values[0].encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: it could be neither stored nor sent on
            raise RequestRefused.of(400, messages.parameter_not_text(name), "param_not_text") from None
    return values[0] if values else None


def with_query(url: str, params: Mapping[str, str]) -> str:
    """Append parameters to an (already validated) URL, keeping its own query as written."""
    parts = urlsplit(url)
    query = "&".join(filter(None, (parts.query, urlencode(params))))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


@dataclass
class ConnectFlow:
    settings: Settings
    store: TokenStore
    cipher: TokenCipher
    #: ``(force) -> [current, previous?]``; ``force`` reads the secret again.
    link_keys: Callable[[bool], list[str]]
    client_secret: Callable[[bool], str]
    #: The Invoiced client (the runtime's: one HTTP connection pool per execution environment).
    invoiced: Callable[[], InvoicedClient]
    #: When a connection's tokens are due for refresh (the refresher's policy).
    policy: RefreshPolicy
    clock: Callable[[], float] = time.time
    events: EventPublisher | None = None
    _keys_reread_at: float = dataclasses.field(default=float("-inf"), init=False, repr=False)

    # ------------------------------------------------------------------ the pages
    @property
    def _app(self) -> str:
        """The integrating app, as a sentence names it."""
        return messages.app_label(self.settings.app_name)

    def branding(self, return_to: str | None = None) -> pages.Branding:
        """What the pages say about the integrating app; "Back to" leads to
        ``return_to`` (an allowlisted URL) when given, else to the configured default."""
        settings = self.settings
        return pages.Branding(settings.app_name, settings.support_contact, return_to or settings.default_return_url)

    # ------------------------------------------------------------------ /connect
    def start(self, query: Query, reference: str, report: FlowReport | None = None) -> HttpResult:
        report = report or FlowReport()
        try:
            return self._start(query, report)
        except RequestRefused as exc:
            report.refused(exc)
            logger.info("connect refused", extra={"reason": exc.reason, "reference": reference})
            return pages.error_page(exc.status, exc.title, exc.message, reference,
                                    branding=self.branding(exc.return_to))
        except (SettingsError, SecretError) as exc:
            report.fail("not_configured")
            logger.error("connect not configured", extra={"error": str(exc), "reference": reference})
            message = messages.not_configured()
            return pages.error_page(503, message.title, message.text, reference, branding=self.branding())

    def _verify_link(self, token: str) -> LinkClaims:
        try:
            return verify_link_token(token, self.link_keys(False), now=self.clock())
        except LinkSignatureError:
            # The signing key may have been rotated after this process cached
            # it: read it again, but at most once a minute, whatever strangers
            # send, so bad links cannot make every request a Secrets Manager call.
            now = self.clock()
            if now - self._keys_reread_at < LINK_KEYS_REREAD_SECONDS:
                raise
            self._keys_reread_at = now
            return verify_link_token(token, self.link_keys(True), now=now)

    def _allowed(self, return_to: str | None) -> str | None:
        """``return_to`` if the allowlist still allows it, else ``None``."""
        if return_to is None:
            return None
        try:
            check_return_url(return_to, self.settings.return_url_allowlist)
        except ReturnUrlError:
            return None
        return return_to

    def _start(self, query: Query, report: FlowReport) -> HttpResult:
        client = self.invoiced()  # fails early, before any write, if unconfigured
        token = _single(query, "link")
        if not token:
            raise RequestRefused.of(403, messages.link_missing(self._app), "no_link")
        try:
            claims = self._verify_link(token)
        except LinkExpired as exc:
            # Signed by the app, so its return URL is the app's (when still allowed).
            raise RequestRefused.of(403, messages.link_expired(self._app), "link_expired",
                                    return_to=self._allowed(exc.claims.return_to)) from None
        except LinkSignatureError:
            raise RequestRefused.of(403, messages.link_invalid(self._app), "bad_signature") from None
        except LinkError:
            raise RequestRefused.of(403, messages.link_invalid(self._app), "bad_link") from None
        report.identify(claims.connection_id)
        if claims.return_to is not None and self._allowed(claims.return_to) is None:
            raise RequestRefused.of(403, messages.return_address_refused(self._app), "return_to")
        link_hash = fingerprint(claims.link_id)
        if self.store.is_link_used(link_hash):
            raise RequestRefused.of(403, messages.link_used(self._app), "link_used", return_to=claims.return_to)

        state, binding, verifier = random_token(32), random_token(32), new_verifier()
        now = int(self.clock())
        self.store.put_state(
            FlowState(
                state_hash=fingerprint(state),
                connection_id=claims.connection_id,
                code_verifier=verifier,
                binding_hash=fingerprint(binding),
                issuer=self.settings.issuer,
                redirect_uri=self.settings.redirect_uri,
                scope=self.settings.scope,
                return_to=claims.return_to,
                expires_at=now + STATE_TTL_SECONDS,
                link_hash=link_hash,
                link_expires_at=claims.expires_at,
                allow_company_change=claims.allow_company_change,
            )
        )
        logger.info("connect started", extra={"connection_id": claims.connection_id})
        location = client.authorize_url(
            redirect_uri=self.settings.redirect_uri,
            scope=self.settings.scope,
            state=state,
            code_challenge=s256_challenge(verifier),
        )
        cookie = f"{COOKIE_NAME}={binding}; Max-Age={STATE_TTL_SECONDS}; {_COOKIE_ATTRIBUTES}"
        report.succeed(FlowOutcome.STARTED)
        return pages.redirect(location, status=302, cookies=(cookie,))

    # ------------------------------------------------------------------ /callback
    def callback(self, query: Query, cookies: Mapping[str, str], reference: str,
                 report: FlowReport | None = None) -> HttpResult:
        """Finish the flow, then redirect (303) to ``/callback`` without the
        code and state, where the outcome is shown: the address bar and the
        history never keep the one-time values (post/redirect/get)."""
        if not query:
            return self._show_outcome(cookies, reference)
        report = report or FlowReport()
        try:
            result = self._callback(query, cookies, reference, report)
        except RequestRefused as exc:
            report.refused(exc)
            logger.info("callback refused", extra={"reason": exc.reason, "reference": reference})
            result = pages.OutcomePage(exc.status, exc.title, exc.message, reference)
        except (SettingsError, SecretError) as exc:
            report.fail("not_configured")
            logger.error("callback not configured", extra={"error": str(exc), "reference": reference})
            message = messages.not_configured()
            result = pages.OutcomePage(503, message.title, message.text, reference)
        if isinstance(result, HttpResult):
            return result
        return pages.redirect(self.settings.redirect_uri, cookies=(CLEAR_COOKIE, outcome_cookie(result)))

    def _show_outcome(self, cookies: Mapping[str, str], reference: str) -> HttpResult:
        outcome = decode_outcome(cookies.get(RESULT_COOKIE_NAME, ""))
        if outcome is None:
            message = messages.nothing_to_show(self._app)
            return pages.error_page(400, message.title, message.text, reference, branding=self.branding())
        return outcome.render(cookies=(CLEAR_RESULT_COOKIE,), branding=self.branding())

    def _callback(self, query: Query, cookies: Mapping[str, str], reference: str,
                  report: FlowReport) -> pages.OutcomePage | HttpResult:
        state = _single(query, "state")
        code = _single(query, "code")
        error = _single(query, "error")
        error_description = _single(query, "error_description")
        if not state:
            raise RequestRefused.of(400, messages.no_state(), "no_state")
        binding = cookies.get(COOKIE_NAME)
        if not binding:
            raise RequestRefused.of(400, messages.session_not_found(), "no_cookie")
        client = self.invoiced()
        if code:
            self.client_secret(False)  # unconfigured? fail before spending the state
        try:
            flow = self.store.consume_state(fingerprint(state), fingerprint(binding), int(self.clock()))
        except StateRejected:
            raise RequestRefused.of(400, messages.sign_in_expired(), "state_rejected") from None
        report.identify(flow.connection_id)
        if flow.issuer != self.settings.issuer:
            raise RequestRefused.of(400, messages.other_environment(), "issuer")

        if error is not None or (error_description is not None and not code):
            return self._denied(flow, error, error_description, reference, report)
        if not code:
            raise RequestRefused.of(400, messages.no_code(), "no_code")

        now = int(self.clock())
        try:
            self.store.claim_link(flow.link_hash, connection_id=flow.connection_id, expires_at=flow.link_expires_at, now=now)
        except LinkAlreadyUsed:
            raise RequestRefused.of(400, messages.link_used(self._app), "link_used") from None
        try:
            tokens = client.exchange_code(code=code, redirect_uri=flow.redirect_uri, code_verifier=flow.code_verifier)
        except InvoicedError as exc:
            self.store.release_link(flow.link_hash)  # nothing was connected: the link stays usable
            return self._exchange_failure(exc, reference, report)

        # Store first: the code is spent, and these tokens exist nowhere else.
        try:
            ciphertext = self.cipher.encrypt(flow.connection_id, tokens.access_token, tokens.refresh_token)
            # Just connected: the app is about to use it, so keep it fresh for a while.
            active_until = now + self.policy.active_use_seconds
            saved = self.store.save_replacing(
                connection_id=flow.connection_id,
                tokens=tokens,
                ciphertext=ciphertext,
                company_name=None,
                issuer=flow.issuer,
                api_url=self.settings.invoiced_api_url,
                now=now,
                refresh_at=self.policy.next_refresh_at(expires_at=tokens.expires_at, now=now,
                                                        active_until=active_until, lifetime=tokens.lifetime),
                active_until=active_until,
                allow_company_change=flow.allow_company_change,
            )
        except CompanyMismatch as mismatch:
            return self._company_mismatch(client, flow, tokens, mismatch.stored, reference, report)
        except Exception:
            report.fail("store_failed")  # the 500 page and its log line come from the handler
            raise
        connection = saved.connection
        report.succeed(FlowOutcome.CONNECTED if saved.previous is None else FlowOutcome.RECONNECTED)
        logger.info(
            "connection saved",
            extra={"connection_id": connection.connection_id, "tenant_id": connection.tenant_id, "version": connection.version},
        )
        if saved.replaced is not None:
            report.replaced_grant = self._revoke_replaced(client, connection.connection_id, saved.replaced)
        company_name = self._label(client, tokens.access_token, connection.connection_id, connection.version)
        if self.events is not None:
            self._announce(dataclasses.replace(connection, company_name=company_name), saved.previous)
        if flow.return_to:
            return pages.redirect(
                with_query(flow.return_to, {"connection_id": flow.connection_id, "status": "connected"}),
                cookies=(CLEAR_COOKIE,),
            )
        return pages.OutcomePage(200, "Connected", "", reference, company=company_name, connected=True)

    def _announce(self, connection: Connection, previous: Connection | None) -> None:
        """The events of a saved connection: created or reconnected (with the company it
        had, when it changed), and recovered when it was in trouble before."""
        assert self.events is not None
        if previous is None:
            self.events.publish(connection_events.CONNECTION_CREATED, connection)
            return
        if previous.tenant_id != connection.tenant_id:  # allowed by the link
            self.events.publish(connection_events.CONNECTION_RECONNECTED, connection, extra={
                "previous_tenant_id": previous.tenant_id, "previous_company_name": previous.company_name})
        else:
            self.events.publish(connection_events.CONNECTION_RECONNECTED, connection)
        if previous.trouble is not None:
            self.events.publish(connection_events.CONNECTION_RECOVERED, connection, reason=previous.trouble)

    def _company_mismatch(self, client: InvoicedClient, flow: FlowState, tokens: TokenSet, stored: Connection,
                          reference: str, report: FlowReport) -> pages.OutcomePage | HttpResult:
        """A reconnect authorized another company than the connection's: nothing was
        stored. The new grant is revoked at Invoiced (nobody will hold its tokens), the
        link stays usable (to try again with the right company), and the app hears of it."""
        report.fail("company_mismatch")
        connection_id = flow.connection_id
        try:
            chosen = client.current_company(tokens.access_token, timeout=COMPANY_LOOKUP_TIMEOUT).name or None
        except InvoicedError:
            chosen = None
        try:
            client.revoke(tokens.access_token, timeout=REPLACED_GRANT_REVOKE_TIMEOUT)
        except InvoicedError as exc:
            logger.warning("the refused grant could not be revoked at Invoiced; it stays valid there until it "
                           "expires", extra={"connection_id": connection_id, "reason": exc.reason})
        self.store.release_link(flow.link_hash)
        logger.warning("reconnect refused: another Invoiced company was chosen",
                       extra={"connection_id": connection_id, "tenant_id": stored.tenant_id,
                              "chosen_tenant_id": tokens.tenant_id})
        if self.events is not None:
            self.events.publish(connection_events.CONNECTION_RECONNECT_REFUSED, stored, reason="company_mismatch",
                                extra={"chosen_tenant_id": tokens.tenant_id, "chosen_company_name": chosen})
        if flow.return_to:
            return pages.redirect(
                with_query(flow.return_to, {"connection_id": connection_id, "status": "company_mismatch"}),
                cookies=(CLEAR_COOKIE,),
            )
        message = messages.company_mismatch(stored.company_name, chosen, self._app)
        return pages.OutcomePage(409, message.title, message.text, reference)

    def _denied(
        self, flow: FlowState, error: str | None, description: str | None, reference: str, report: FlowReport
    ) -> pages.OutcomePage | HttpResult:
        # Invoiced's own deny redirect has only error_description; stock
        # servers send error=access_denied. Both mean the user said no.
        denied = error in (None, "access_denied")
        report.fail("denied" if denied else "authorize_error")
        logged_error = error if error in KNOWN_AUTHORIZE_ERRORS else ("denied" if error is None else "other")
        logger.info("authorization not granted", extra={"connection_id": flow.connection_id, "error": logged_error})
        if flow.return_to:
            status = "denied" if denied else "error"
            return pages.redirect(
                with_query(flow.return_to, {"connection_id": flow.connection_id, "status": status}),
                cookies=(CLEAR_COOKIE,),
            )
        if denied:
            # Invoiced's own wording ("The resource owner or authorization
            # server denied the request.") is not for people.
            declined = messages.declined(self._app)
            return pages.OutcomePage(200, declined.title, declined.text, reference)
        if error in OUTAGE_AUTHORIZE_ERRORS:
            outage = messages.invoiced_unavailable()
            return pages.OutcomePage(503, outage.title, outage.text, reference)
        reported = messages.authorize_error(description or error or "")
        return pages.OutcomePage(400, reported.title, reported.text, reference)

    def _exchange_failure(self, exc: InvoicedError, reference: str, report: FlowReport) -> pages.OutcomePage:
        if isinstance(exc, InvalidGrantError):
            raise RequestRefused.of(400, messages.authorization_expired(), "code_invalid")
        report.fail("client_auth_failed" if isinstance(exc, ClientAuthError) else "exchange_failed")
        if isinstance(exc, InvalidTokenResponseError):
            message = messages.invoiced_answer_unusable()
        elif isinstance(exc, ClientAuthError):
            message = messages.credentials_refused(self._app)
        else:
            message = messages.invoiced_unavailable()
        logger.error("code exchange failed", extra={"reason": exc.reason, "status": exc.status, "reference": reference})
        return pages.OutcomePage(502, message.title, message.text, reference)

    def _revoke_replaced(self, client: InvoicedClient, connection_id: str, replaced: SealedTokens) -> str:
        """Revoke the grant a reconnect replaced (nobody holds its tokens any more).

        After the new tokens are stored, and best effort: a failure is logged
        and counted (``ReplacedGrantRevokeFailed``), and the connect stands.
        """
        try:
            if not replaced.split:
                raise ValueError("the replaced tokens are in the pre-split format, which this role cannot open")
            client.revoke(self.cipher.decrypt_access(connection_id, replaced), timeout=REPLACED_GRANT_REVOKE_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - never at the new connection's expense
            logger.warning("the replaced grant could not be revoked at Invoiced; it stays valid there until it "
                           "expires", extra={"connection_id": connection_id, "error_type": type(exc).__name__,
                                             "reason": getattr(exc, "reason", None) or None})
            return ReplacedGrant.REVOKE_FAILED
        logger.info("the replaced grant was revoked at Invoiced", extra={"connection_id": connection_id})
        return ReplacedGrant.REVOKED

    def _label(self, client: InvoicedClient, access_token: str, connection_id: str, version: int) -> str | None:
        """Name the connection after its company; best effort, never at the tokens' expense."""
        try:
            name = client.current_company(access_token, timeout=COMPANY_LOOKUP_TIMEOUT).name
        except InvoicedError as exc:
            logger.warning("company lookup failed", extra={"reason": exc.reason, "connection_id": connection_id})
            return None
        if name and self.store.set_company_name(connection_id, name, version=version):
            return name
        return name or None

