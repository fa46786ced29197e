"""Clicking through the consent page over real HTTP, as a person would."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin

import requests

_TIMEOUT = 10.0


class ConsentError(RuntimeError):
    """The authorize page was an error page, or the form did not redirect back."""


@dataclass
class _Form:
    action: str = ""
    method: str = "get"
    fields: dict[str, str] = field(default_factory=dict)
    selects: dict[str, list[str]] = field(default_factory=dict)
    buttons: dict[str, list[str]] = field(default_factory=dict)


class _PageReader(HTMLParser):
    """Collects the first form's controls and any error message."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.form: _Form | None = None
        self.error_message = ""
        self._in_form = False
        self._select: str | None = None
        self._capture_error = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {name: value or "" for name, value in attrs}
        if tag == "form" and self.form is None:
            self.form = _Form(action=a.get("action", ""), method=a.get("method", "get").lower())
            self._in_form = True
        elif self._in_form and self.form is not None:
            if tag == "input" and a.get("type", "text") == "hidden" and "name" in a:
                self.form.fields[a["name"]] = a.get("value", "")
            elif tag == "select" and "name" in a:
                self._select = a["name"]
                self.form.selects[self._select] = []
            elif tag == "option" and self._select is not None:
                self.form.selects[self._select].append(a.get("value", ""))
            elif tag == "button" and "name" in a:
                self.form.buttons.setdefault(a["name"], []).append(a.get("value", ""))
        if a.get("id") == "error-message":
            self._capture_error = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False
        elif tag == "select":
            self._select = None
        elif tag == "p":
            self._capture_error = False

    def handle_data(self, data: str) -> None:
        if self._capture_error:
            self.error_message += data


def _read(html: str) -> _PageReader:
    reader = _PageReader()
    reader.feed(html)
    reader.close()
    return reader


def submit_consent(authorize_url: str, *, approve: bool, company_id: int | None,
                   session: requests.Session | None) -> str:
    """GET the consent page, submit Approve or Deny, return the redirect's Location."""
    http = session if session is not None else requests.Session()
    try:
        page = http.get(authorize_url, allow_redirects=False, timeout=_TIMEOUT)
        reader = _read(page.text)
        if page.status_code != 200 or reader.form is None:
            detail = reader.error_message.strip() or page.text[:200]
            raise ConsentError(f"authorize page answered {page.status_code}: {detail}")
        form = reader.form
        decision = "approve" if approve else "deny"
        if decision not in form.buttons.get("decision", []):
            raise ConsentError(f"the consent form has no {decision!r} button")
        data = dict(form.fields)
        companies = form.selects.get("company")
        if companies is not None:
            data["company"] = str(company_id) if company_id is not None else companies[0]
        elif company_id is not None:
            raise ConsentError("the consent form has no company picker (no company scope requested)")
        data["decision"] = decision
        answer = http.post(urljoin(page.url, form.action), data=data, allow_redirects=False,
                           timeout=_TIMEOUT)
        location = answer.headers.get("Location")
        if answer.status_code not in (301, 302, 303) or not location:
            detail = _read(answer.text).error_message.strip() or answer.text[:200]
            raise ConsentError(f"consent submit answered {answer.status_code}: {detail}")
        return location
    finally:
        if session is None:
            http.close()
