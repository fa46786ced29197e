"""HTML served by the app host: the consent page, error pages, and the
load-balancer pages the faults imitate. Every reflected value goes through
``html.escape``."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from .models import Company

#: Sent with every page: no caching, no framing, no outside assets.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # No form-action: Chrome applies it to the redirect after submit, which must reach the client.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
}

# Readable from 320 px up: side padding instead of a fixed margin, long URIs and names wrap,
# and the picker and buttons never push the page wider than the screen.
_STYLE = ("*{box-sizing:border-box}"
          "body{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem;"
          "color:#1f2933;line-height:1.5;overflow-wrap:anywhere}"
          "code{overflow-wrap:anywhere;word-break:break-all}"
          "button{padding:.5rem 1.25rem;margin:0 .5rem .5rem 0;font-size:1rem}"
          "select{padding:.25rem;max-width:100%;font-size:1rem}"
          ".error{color:#b42318}")

_SCOPE_LABELS = {
    "read": "Read your data",
    "read_write": "Read and write your data",
    "accounts_receivable": "Manage accounts receivable",
    "openid": "Know who you are",
}


def _document(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)} - Invoiced (local)</title><style>{_STYLE}</style></head>"
            f"<body>{body}</body></html>\n")


def consent_page(*, client_name: str, scopes: Sequence[str], redirect_uri: str,
                 companies: Sequence[Company] | None, pending_id: str) -> str:
    """The "authorize this application" form.

    Like Invoiced's own page it names the application by the name registered
    with the OAuth client ("Approve NAME", "NAME wants access to your Invoiced
    account."), not by its client id. The original query stays server side
    under ``pending_id``; the form only sends that id, the picked company and
    the decision.
    """
    name = escape(client_name)
    scope_items = "".join(f"<li>{escape(_SCOPE_LABELS.get(s, s))} (<code>{escape(s)}</code>)</li>"
                          for s in scopes)
    picker = ""
    if companies is not None:
        options = "".join(f'<option value="{company.id}">{escape(company.name)}</option>'
                          for company in companies)
        picker = (f'<p><label for="company">Company</label> '
                  f'<select id="company" name="company">{options}</select></p>')
    body = (
        f'<h1 id="client-name">{name}</h1>'
        f"<p><strong>{name}</strong> wants access to your Invoiced account.</p>"
        f"<p>This app requests these permissions:</p><ul>{scope_items}</ul>"
        f"<p>You will be sent back to <code>{escape(redirect_uri)}</code>.</p>"
        '<form method="post" action="/oauth/authorize">'
        f'<input type="hidden" name="request_id" value="{escape(pending_id)}">'
        f"{picker}"
        '<button type="submit" name="decision" value="approve">Approve</button>'
        '<button type="submit" name="decision" value="deny">Deny</button>'
        "</form>"
    )
    return _document(f"Approve {client_name}", body)


def error_page(message: str, hint: str = "") -> str:
    """An error shown on Invoiced itself; nothing is sent back to the client."""
    hint_html = f'<p id="error-hint">{escape(hint)}</p>' if hint else ""
    body = (f'<h1 class="error">Something went wrong</h1>'
            f'<p id="error-message" class="error">{escape(message)}</p>{hint_html}')
    return _document("Error", body)


def gateway_page(status: int, reason: str) -> str:
    """What a proxy in front of the app says when the app behind it fails."""
    return (f"<html>\r\n<head><title>{status} {escape(reason)}</title></head>\r\n<body>\r\n"
            f"<center><h1>{status} {escape(reason)}</h1></center>\r\n</body>\r\n</html>\r\n")
