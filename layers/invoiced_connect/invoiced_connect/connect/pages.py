"""The HTML the browser sees, and the headers every response carries.

Pages are self-contained (one inline style, allowed by its hash in the CSP;
no scripts, images, fonts or third-party assets) and every value placed in
them is HTML-escaped.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from html import escape

_STYLE = (
    "body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;background:#f5f6f8;"
    "color:#1d2330;margin:0;display:flex;min-height:100vh;align-items:center;justify-content:center}"
    "main{background:#fff;border-radius:12px;box-shadow:0 2px 12px rgba(0,0,0,.08);padding:2.5rem;"
    "max-width:32rem;width:calc(100% - 4rem)}"
    "h1{font-size:1.4rem;margin:0 0 1rem}p{line-height:1.5;margin:.5rem 0}"
    ".ok h1{color:#17794a}.err h1{color:#b42318}.ref{color:#667085;font-size:.85rem;margin-top:1.5rem}"
    "code{font-family:ui-monospace,monospace}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode("utf-8")).digest()).decode("ascii")

CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)

SECURITY_HEADERS: dict[str, str] = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
}


@dataclass(frozen=True)
class HttpResult:
    """A response, independent of API Gateway's event format."""

    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    cookies: tuple[str, ...] = ()
    content_type: str = "text/html; charset=utf-8"


def _document(title: str, css_class: str, inner_html: str) -> str:
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f'<body><main class="{css_class}">{inner_html}</main></body></html>\n'
    )


def page(status: int, title: str, css_class: str, inner_html: str, cookies: tuple[str, ...] = ()) -> HttpResult:
    return HttpResult(status, _document(title, css_class, inner_html), dict(SECURITY_HEADERS), cookies)


def connected_page(company_name: str | None, cookies: tuple[str, ...] = ()) -> HttpResult:
    company = escape(company_name) if company_name else "your Invoiced account"
    return page(
        200,
        "Connected",
        "ok",
        f"<h1>Connected to {company}</h1>"
        "<p>Your Invoiced account is now connected. You can close this window.</p>",
        cookies,
    )


def error_page(status: int, title: str, message: str, reference: str, cookies: tuple[str, ...] = ()) -> HttpResult:
    """A plain error page; ``message`` may hold provider text and is escaped."""
    return page(
        status,
        title,
        "err",
        f"<h1>{escape(title)}</h1><p>{escape(message)}</p>"
        f'<p class="ref">Reference: <code>{escape(reference)}</code></p>',
        cookies,
    )


@dataclass(frozen=True)
class OutcomePage:
    """How a callback ended, as the browser will be shown it."""

    status: int
    title: str
    message: str
    reference: str
    company: str | None = None
    connected: bool = False

    def render(self, cookies: tuple[str, ...] = ()) -> HttpResult:
        if self.connected:
            return connected_page(self.company, cookies)
        return error_page(self.status, self.title, self.message, self.reference, cookies)


def redirect(location: str, status: int = 303, cookies: tuple[str, ...] = ()) -> HttpResult:
    headers = dict(SECURITY_HEADERS)
    headers["Location"] = location
    return HttpResult(status, "", headers, cookies)
