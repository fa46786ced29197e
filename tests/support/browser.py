"""The connect flow over HTTP as a browser takes it, against a running local
stack: open a connect link, and come back to the callback with the binding
cookie (or without it)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import requests


@dataclass
class StartedFlow:
    authorize_url: str
    cookie: str  # the value of the __Host- cookie
    set_cookie: str

    @property
    def state(self) -> str:
        return parse_qs(urlsplit(self.authorize_url).query)["state"][0]


COOKIE_RE = re.compile(r"__Host-invoiced-connect=([^;]*)")
RESULT_COOKIE_RE = re.compile(r"__Host-invoiced-connect-result=([^;]*)")


def start_flow(stack, connection_id: str = "acme-42", return_to: str | None = None, *,
               allow_company_change: bool = False) -> StartedFlow:
    """Open a fresh connect link as a browser would; stop at Invoiced."""
    link = stack.make_link(connection_id, return_to=return_to, allow_company_change=allow_company_change)
    response = requests.get(link, allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text
    set_cookie = response.headers["Set-Cookie"]
    return StartedFlow(response.headers["Location"], COOKIE_RE.search(set_cookie).group(1), set_cookie)


def callback(url: str, cookie: str | None) -> requests.Response:
    """GET the callback as the browser that holds ``cookie``, following the
    one redirect to the clean ``/callback`` page that shows the outcome."""
    headers = {"Cookie": f"__Host-invoiced-connect={cookie}"} if cookie else {}
    first = requests.get(url, headers=headers, allow_redirects=False, timeout=30)
    location = urlsplit(first.headers.get("Location", ""))
    if first.status_code != 303 or location.path != "/callback":
        return first  # e.g. the 303 to the app's return URL
    assert not location.query, "the outcome page must not carry code or state"
    assert "__Host-invoiced-connect=; Max-Age=0" in first.headers["Set-Cookie"]
    result = RESULT_COOKIE_RE.search(first.headers["Set-Cookie"]).group(1)
    return requests.get(
        first.headers["Location"],
        headers={"Cookie": f"__Host-invoiced-connect-result={result}"},
        allow_redirects=False,
        timeout=30,
    )
