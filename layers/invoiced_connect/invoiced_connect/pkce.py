"""PKCE (RFC 7636) with the S256 method, and the random values of a flow."""

from __future__ import annotations

import base64
import hashlib
import secrets


def random_token(num_bytes: int = 32) -> str:
    """A URL-safe random string carrying ``num_bytes`` * 8 bits of entropy."""
    return base64.urlsafe_b64encode(secrets.token_bytes(num_bytes)).rstrip(b"=").decode("ascii")


def new_verifier() -> str:
    """A 43-character code verifier (256 random bits, RFC 7636 s4.1 alphabet)."""
    return random_token(32)


def s256_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def fingerprint(value: str) -> str:
    """A one-way, fixed-length stand-in for a secret value (keys, comparisons)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()
