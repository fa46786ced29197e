"""The HTML the browser sees, and the headers every response carries.

Pages are self-contained (one inline style, allowed by its hash in the CSP;
no scripts, images, fonts or third-party assets) and every value placed in
them is HTML-escaped. Each has a banner naming the integrating app, one
heading, and on error pages the app's support contact and a reference; a
"Back to <app>" link when a return URL is known. Their texts live in
:mod:`invoiced_connect.connect.messages`.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field, replace
from html import escape

from invoiced_connect.connect import messages

_STYLE = (
    ":root{color-scheme:light dark}*{box-sizing:border-box}"
    "body{margin:0;padding:1rem;min-height:100vh;display:flex;align-items:center;justify-content:center;"
    "font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;line-height:1.5;background:#f5f6f8;"
    "color:#1d2330;overflow-wrap:anywhere}"
    ".card{width:100%;max-width:34rem;background:#fff;border:1px solid #d0d5dd;border-radius:12px;"
    "box-shadow:0 2px 12px rgba(0,0,0,.08);padding:2rem}"
    "header{margin:0 0 1.25rem;padding-bottom:.75rem;border-bottom:1px solid #e4e7ec}"
    ".brand{margin:0;font-weight:600;color:#475467}"
    "h1{font-size:1.5rem;line-height:1.3;margin:0 0 .75rem}p{margin:.5rem 0}"
    ".ok h1{color:#17794a}.err h1{color:#b42318}"
    "a{color:#1d4ed8;text-underline-offset:.15em}a:hover{text-decoration-thickness:2px}"
    "a:focus-visible{outline:3px solid #1d4ed8;outline-offset:3px;border-radius:2px}"
    ".back{margin-top:1.5rem}.back a{display:inline-block;padding:.6rem 1.1rem;border-radius:8px;"
    "background:#1d4ed8;color:#fff;font-weight:600;text-decoration:none}"
    ".help,.ref{color:#475467;font-size:.9rem}.ref{margin-top:1.25rem}"
    "code{font-family:ui-monospace,Menlo,Consolas,monospace}"
    "@media (max-width:26rem){body{padding:.75rem}.card{padding:1.25rem}h1{font-size:1.3rem}}"
    "@media (prefers-color-scheme:dark){body{background:#0f1217;color:#e6e9ef}"
    ".card{background:#1a1f27;border-color:#3a4350;box-shadow:none}header{border-color:#3a4350}"
    ".brand,.help,.ref{color:#b9c1cc}.ok h1{color:#5fd68f}.err h1{color:#ff9a90}"
    "a{color:#9cbfff}a:focus-visible{outline-color:#9cbfff}.back a{background:#9cbfff;color:#0f1217}}"
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


@dataclass(frozen=True)
class Branding:
    """Who the pages speak for (the integrating app's name and support
    contact, both from settings) and where "Back to <app>" leads, if anywhere."""

    app_name: str | None = None
    #: An https URL or an e-mail address (settings validated which).
    support: str | None = None
    #: An allowlisted return URL: a link's own, else the configured default.
    return_url: str | None = None

    def returning_to(self, url: str | None) -> Branding:
        """The same, with "Back to" leading to ``url`` instead (when there is one)."""
        return replace(self, return_url=url) if url else self


def _support_html(branding: Branding) -> str:
    support = branding.support
    if not support:
        return ""
    if "@" in support and "://" not in support:
        link = f'<a href="mailto:{escape(support)}">{escape(support)}</a>'
    else:
        link = f'<a href="{escape(support)}">{escape(messages.support_link_text(branding.app_name))}</a>'
    return f'<p class="help">{messages.HELP_PREFIX} {link}.</p>'


def _back_html(branding: Branding) -> str:
    if not branding.return_url:
        return ""
    return (f'<p class="back"><a href="{escape(branding.return_url)}">'
            f"{escape(messages.back_link(branding.app_name))}</a></p>")


def _document(title: str, css_class: str, inner_html: str, branding: Branding) -> str:
    banner = escape(messages.banner(branding.app_name))
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} - {banner}</title><style>{_STYLE}</style></head>"
        f'<body><div class="card"><header><p class="brand">{banner}</p></header>'
        f'<main class="{css_class}">{inner_html}</main></div></body></html>\n'
    )


def page(status: int, title: str, css_class: str, inner_html: str, cookies: tuple[str, ...] = (),
         branding: Branding | None = None) -> HttpResult:
    document = _document(title, css_class, inner_html, branding or Branding())
    return HttpResult(status, document, dict(SECURITY_HEADERS), cookies)


def connected_page(company_name: str | None, cookies: tuple[str, ...] = (),
                   branding: Branding | None = None) -> HttpResult:
    branding = branding or Branding()
    message = messages.connected(company_name)
    return page(
        200,
        "Connected",
        "ok",
        f"<h1>{escape(message.title)}</h1><p>{escape(message.text)}</p>{_back_html(branding)}",
        cookies,
        branding,
    )


def error_page(status: int, title: str, message: str, reference: str, cookies: tuple[str, ...] = (),
               branding: Branding | None = None) -> HttpResult:
    """A plain error page; ``message`` may hold provider text and is escaped."""
    branding = branding or Branding()
    return page(
        status,
        title,
        "err",
        f"<h1>{escape(title)}</h1><p>{escape(message)}</p>{_back_html(branding)}{_support_html(branding)}"
        f'<p class="ref">{messages.REFERENCE_LABEL}: <code>{escape(reference)}</code></p>',
        cookies,
        branding,
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

    def render(self, cookies: tuple[str, ...] = (), branding: Branding | None = None) -> HttpResult:
        if self.connected:
            return connected_page(self.company, cookies, branding)
        return error_page(self.status, self.title, self.message, self.reference, cookies, branding)


def redirect(location: str, status: int = 303, cookies: tuple[str, ...] = ()) -> HttpResult:
    headers = dict(SECURITY_HEADERS)
    headers["Location"] = location
    return HttpResult(status, "", headers, cookies)
