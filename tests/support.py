"""Small builders shared by the tests."""

from __future__ import annotations

import base64
import json

import requests


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
