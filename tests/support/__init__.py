"""Small builders shared by the tests."""

from __future__ import annotations

import base64
import json

import requests

#: The one return URL base the integration tests' local stack allows (tests/integration/conftest.py).
RETURN_BASE = "https://app.example.test/integrations"
#: The client secret that stack's Secrets Manager holds: a canary no response or log may show.
CLIENT_SECRET_CANARY = "CANARYsecret" + "x" * 20


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def fake_jwt(sub: str = "tenant:167", scopes: list[str] | None = None, **claims) -> str:
    """A JWT-shaped token (signature not checked by the client)."""
    header = b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    body = {"aud": "a" * 24, "sub": sub, "scopes": scopes or ["read_write"], "exp": 2_000_000_000, **claims}
    return f"{header}.{b64url(json.dumps(body).encode())}.{b64url(b'sig')}"


def http_response(status: int, body: object | str | bytes, content_type: str = "application/json") -> requests.Response:
    response = requests.Response()
    response.status_code = status
    if isinstance(body, bytes):
        response._content = body
    elif isinstance(body, str):
        response._content = body.encode()
    else:
        response._content = json.dumps(body).encode()
    response.headers["Content-Type"] = content_type
    return response


def token_body(**overrides) -> dict:
    body = {
        "token_type": "Bearer",
        "expires_in": 3600,
        "access_token": fake_jwt(),
        "refresh_token": "def50200" + "ab" * 40,
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


#: What every page and redirect of ``/connect`` and ``/callback`` promises to
#: carry (``pages.SECURITY_HEADERS``; README, "Connect links and the flow").
#: Spelled out here, not read from the code, so dropping one there fails.
PROMISED_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}
#: Directives the pages' CSP must hold exactly ('none': no scripts, frames, forms or bases).
PROMISED_CSP = {"default-src": "'none'", "base-uri": "'none'", "form-action": "'none'", "frame-ancestors": "'none'"}
HSTS_MIN_MAX_AGE = 365 * 86400


def security_header_problems(headers: object) -> list[str]:
    """What a response's headers (any mapping, any case) lack of the promised security headers."""
    found = {str(name).lower(): str(value) for name, value in dict(headers).items()}
    problems = [
        f"{name}: {found.get(name.lower())!r}, not {value!r}"
        for name, value in PROMISED_PAGE_HEADERS.items()
        if found.get(name.lower()) != value
    ]
    hsts = [part.strip().lower() for part in found.get("strict-transport-security", "").split(";")]
    max_age = next((part.split("=", 1)[1] for part in hsts if part.startswith("max-age=")), "")
    if not max_age.isdigit() or int(max_age) < HSTS_MIN_MAX_AGE or "includesubdomains" not in hsts:
        problems.append(f"Strict-Transport-Security: {found.get('strict-transport-security')!r}")
    csp = found.get("content-security-policy", "")
    directives = dict((part.strip().split(" ", 1) + [""])[:2] for part in csp.split(";") if part.strip())
    for directive, value in PROMISED_CSP.items():
        if directives.get(directive) != value:
            problems.append(f"Content-Security-Policy {directive}: {directives.get(directive)!r} in {csp!r}")
    style = directives.get("style-src", "")
    if "unsafe" in csp or "script-src" in directives or not all(s.startswith("'sha256-") for s in style.split()):
        problems.append(f"Content-Security-Policy allows more than hashed styles: {csp!r}")
    return problems
