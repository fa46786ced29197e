"""Unpadded base64url (RFC 4648 s5), the encoding of JWTs, PKCE and our links."""

from __future__ import annotations

import base64


def encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode(text: str) -> bytes:
    """Decode with or without padding; ``ValueError`` on malformed input."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
