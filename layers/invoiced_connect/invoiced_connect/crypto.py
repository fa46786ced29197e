"""Token encryption with KMS, bound to the connection it belongs to.

Both tokens are encrypted together with ``kms:Encrypt`` under the stack's
customer-managed key and the encryption context ``{"connection_id": id}``.
A ciphertext copied onto another connection's row therefore fails to
decrypt, and every decrypt is attributable in CloudTrail. (KMS takes up to
4 KB of plaintext directly; Invoiced's token pairs are about 2 KB.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from invoiced_connect import aws

MAX_PLAINTEXT_BYTES = 4096


class TokenDecryptionError(RuntimeError):
    """The stored ciphertext does not decrypt for this connection."""


def encryption_context(connection_id: str) -> dict[str, str]:
    return {"connection_id": connection_id}


class TokenCipher:
    def __init__(self, key_id: str, client_factory: Callable[[], Any] = lambda: aws.client("kms")) -> None:
        self._key_id = key_id
        self._client_factory = client_factory

    def encrypt(self, connection_id: str, access_token: str, refresh_token: str) -> bytes:
        plaintext = json.dumps({"access_token": access_token, "refresh_token": refresh_token}).encode("utf-8")
        if len(plaintext) > MAX_PLAINTEXT_BYTES:
            raise ValueError("the token pair is larger than KMS can encrypt directly (4 KB)")
        response = self._client_factory().encrypt(
            KeyId=self._key_id,
            Plaintext=plaintext,
            EncryptionContext=encryption_context(connection_id),
        )
        return response["CiphertextBlob"]

    def decrypt(self, connection_id: str, ciphertext: bytes) -> tuple[str, str]:
        """Return ``(access_token, refresh_token)``."""
        from botocore.exceptions import ClientError

        try:
            response = self._client_factory().decrypt(
                KeyId=self._key_id,
                CiphertextBlob=ciphertext,
                EncryptionContext=encryption_context(connection_id),
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("InvalidCiphertextException", "IncorrectKeyException"):
                raise TokenDecryptionError(f"tokens of {connection_id} do not decrypt ({code})") from None
            raise
        pair = json.loads(response["Plaintext"])
        return pair["access_token"], pair["refresh_token"]
