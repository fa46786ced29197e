"""PKCE (RFC 7636) with the S256 method, and the random values of a flow."""

from __future__ import annotations

import hashlib
import secrets

from invoiced_connect.core import b64url


def random_token(num_bytes: int = 32) -> str:
    """A URL-safe random string carrying ``num_bytes`` * 8 bits of entropy."""
    return b64url.encode(secrets.token_bytes(num_bytes))


def new_verifier() -> str:
    """A 43-character code verifier (256 random bits, RFC 7636 s4.1 alphabet)."""
    return random_token(32)


def s256_challenge(verifier: str) -> str:
    return b64url.encode(hashlib.sha256(verifier.encode("ascii")).digest())


def fingerprint(value: str) -> str:
    """A one-way, fixed-length stand-in for a secret value (keys, comparisons)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()
