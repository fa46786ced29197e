"""RS256 JSON Web Tokens, the format of Invoiced's access tokens."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _uint_b64url(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class RS256Signer:
    """Signs and verifies compact RS256 JWTs with one RSA key."""

    # league/oauth2-server (via lcobucci/jwt) sends exactly this header: no kid.
    _HEADER = _b64url(json.dumps({"typ": "JWT", "alg": "RS256"}, separators=(",", ":")).encode())

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        self._private_key = private_key
        self._public_key = private_key.public_key()

    @classmethod
    def generate(cls) -> RS256Signer:
        """A signer with a fresh 2048-bit key, so tokens never outlive the process."""
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @property
    def public_key_pem(self) -> str:
        """The verification key as PEM (SubjectPublicKeyInfo)."""
        return self._public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    def jwk(self) -> dict[str, str]:
        """The verification key as a JSON Web Key."""
        numbers = self._public_key.public_numbers()
        return {"kty": "RSA", "use": "sig", "alg": "RS256",
                "n": _uint_b64url(numbers.n), "e": _uint_b64url(numbers.e)}

    def sign(self, claims: Mapping[str, Any]) -> str:
        """Encode and sign ``claims``."""
        payload = _b64url(json.dumps(dict(claims), separators=(",", ":")).encode())
        signing_input = f"{self._HEADER}.{payload}".encode("ascii")
        signature = self._private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return f"{self._HEADER}.{payload}.{_b64url(signature)}"

    def verify(self, token: str) -> dict[str, Any] | None:
        """The claims of ``token`` if it is a well-formed RS256 JWT signed by this key, else None.

        Only the signature is checked here; expiry and revocation are the
        caller's business because they depend on server state and its clock.
        """
        parts = token.split(".")
        if len(parts) != 3:
            return None
        try:
            header = json.loads(_b64url_decode(parts[0]))
            if not isinstance(header, dict) or header.get("alg") != "RS256":
                return None
            self._public_key.verify(_b64url_decode(parts[2]), f"{parts[0]}.{parts[1]}".encode("ascii"),
                                    padding.PKCS1v15(), hashes.SHA256())
            claims = json.loads(_b64url_decode(parts[1]))
        except (ValueError, InvalidSignature, UnicodeError):
            return None
        return claims if isinstance(claims, dict) else None
