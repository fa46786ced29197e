"""Token encryption with KMS, bound to the connection and to the kind of token.

Each token is encrypted on its own with ``kms:Encrypt`` under the stack's
customer-managed key and the encryption context
``{"connection_id": id, "token": "access" | "refresh"}``:

* a ciphertext copied onto another connection's row fails to decrypt;
* an IAM policy can allow decrypting access tokens only
  (``kms:EncryptionContext:token = access``): the readers' policy does, so a
  consumer Lambda can never recover a refresh token, which only the roles
  that call Invoiced's token endpoint need;
* every decrypt is attributable in CloudTrail, with what it decrypted.

Rows written before the split hold both tokens in one ciphertext under
``{"connection_id": id}`` (:attr:`SealedTokens.pair`). Only the refresher's
roles can open those; the reader asks for a refresh instead, whose commit
writes the split format, so old rows move over with nothing lost and no
manual step. (KMS encrypts up to 4 KB directly; a token is about 1-2 KB.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from invoiced_connect.cloud import aws

MAX_PLAINTEXT_BYTES = 4096
ACCESS = "access"
REFRESH = "refresh"


class TokenDecryptionError(RuntimeError):
    """The stored ciphertext does not decrypt for this connection."""


class LegacyTokenFormat(TokenDecryptionError):
    """The row holds both tokens in one ciphertext (from before the split);
    only a refresher may open it."""


def encryption_context(connection_id: str, token: str | None = None) -> dict[str, str]:
    """The context a ciphertext is bound to; ``token=None`` is the pre-split pair's."""
    context = {"connection_id": connection_id}
    if token is not None:
        context["token"] = token
    return context


@dataclass(frozen=True)
class SealedTokens:
    """A connection's tokens as stored: an access and a refresh ciphertext,
    or, for rows from before the split, one ciphertext of both (``pair``)."""

    access: bytes | None = field(default=None, repr=False)
    refresh: bytes | None = field(default=None, repr=False)
    pair: bytes | None = field(default=None, repr=False)

    @property
    def split(self) -> bool:
        return self.access is not None and self.refresh is not None

    def __post_init__(self) -> None:
        if not self.split and self.pair is None:
            raise ValueError("sealed tokens need both ciphertexts, or the pre-split pair")


class TokenCipher:
    def __init__(self, key_id: str, client_factory: Callable[[], Any] | None = None) -> None:
        self._key_id = key_id
        self._client_factory = client_factory or aws.lazy_client("kms")

    # ---------------------------------------------------------------- writing
    def encrypt(self, connection_id: str, access_token: str, refresh_token: str) -> SealedTokens:
        """Both tokens, each under its own context (two KMS calls)."""
        return SealedTokens(
            access=self._encrypt(connection_id, ACCESS, access_token),
            refresh=self._encrypt(connection_id, REFRESH, refresh_token),
        )

    def _encrypt(self, connection_id: str, kind: str, token: str) -> bytes:
        plaintext = token.encode("utf-8")
        if len(plaintext) > MAX_PLAINTEXT_BYTES:
            raise ValueError(f"the {kind} token is larger than KMS can encrypt directly (4 KB)")
        response = self._client_factory().encrypt(
            KeyId=self._key_id, Plaintext=plaintext, EncryptionContext=encryption_context(connection_id, kind),
        )
        return response["CiphertextBlob"]

    # ---------------------------------------------------------------- reading
    def decrypt_access(self, connection_id: str, sealed: SealedTokens) -> str:
        """The access token alone: what a reader may decrypt.

        :class:`LegacyTokenFormat` for a pre-split row (opening it would
        reveal the refresh token too).
        """
        if sealed.access is None:
            raise LegacyTokenFormat(f"tokens of {connection_id} are stored in the pre-split format")
        return self._decrypt(connection_id, ACCESS, sealed.access).decode("utf-8")

    def decrypt_access_any_format(self, connection_id: str, sealed: SealedTokens) -> str:
        """The access token in either format (refreshers only: a pre-split pair holds
        the refresh token too); one KMS call either way."""
        if sealed.access is not None:
            return self.decrypt_access(connection_id, sealed)
        return self._open_pair(connection_id, sealed)[0]

    def decrypt_refresh(self, connection_id: str, sealed: SealedTokens) -> str:
        """The refresh token (refreshers only); opens a pre-split row too."""
        if sealed.refresh is not None:
            return self._decrypt(connection_id, REFRESH, sealed.refresh).decode("utf-8")
        return self._open_pair(connection_id, sealed)[1]

    def decrypt(self, connection_id: str, sealed: SealedTokens) -> tuple[str, str]:
        """``(access_token, refresh_token)``, in either format (refreshers only)."""
        if sealed.split:
            return self.decrypt_access(connection_id, sealed), self.decrypt_refresh(connection_id, sealed)
        return self._open_pair(connection_id, sealed)

    def _open_pair(self, connection_id: str, sealed: SealedTokens) -> tuple[str, str]:
        assert sealed.pair is not None
        pair = json.loads(self._decrypt(connection_id, None, sealed.pair))
        return pair["access_token"], pair["refresh_token"]

    def _decrypt(self, connection_id: str, kind: str | None, ciphertext: bytes) -> bytes:
        from botocore.exceptions import ClientError

        try:
            response = self._client_factory().decrypt(
                KeyId=self._key_id,
                CiphertextBlob=ciphertext,
                EncryptionContext=encryption_context(connection_id, kind),
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("InvalidCiphertextException", "IncorrectKeyException"):
                raise TokenDecryptionError(f"tokens of {connection_id} do not decrypt ({code})") from None
            raise
        return response["Plaintext"]

