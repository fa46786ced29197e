"""Token encryption: what is sent to KMS (key, plaintext, encryption context),
which ciphertext each read opens, and what a ciphertext that does not belong
to the connection, or to the kind of token, comes to. Against a fake KMS that
records calls and binds each ciphertext to its key and context, and against
moto's KMS in process (the default client).
(Through the local stack's KMS: tests/integration/test_token_reader.py and others.)"""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from invoiced_connect.storage.crypto import (
    LegacyTokenFormat,
    SealedTokens,
    TokenCipher,
    TokenDecryptionError,
    encryption_context,
)

KEY = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
OTHER_KEY = "arn:aws:kms:us-east-1:123456789012:key/99999999-2222-3333-4444-555555555555"


def kms_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "no"}}, "Decrypt")


class FakeKms:
    """A ciphertext is its key, context and plaintext in the clear; decrypt
    answers as KMS does when the context (InvalidCiphertextException) or the
    key (IncorrectKeyException) differs. Every call is recorded."""

    def __init__(self, decrypt_error: Exception | None = None) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.decrypt_error = decrypt_error

    def encrypt(self, **kwargs):
        self.calls.append(("encrypt", kwargs))
        return {"CiphertextBlob": seal(kwargs["KeyId"], kwargs["EncryptionContext"], kwargs["Plaintext"]),
                "KeyId": kwargs["KeyId"]}

    def decrypt(self, **kwargs):
        self.calls.append(("decrypt", kwargs))
        if self.decrypt_error is not None:
            raise self.decrypt_error
        sealed = json.loads(kwargs["CiphertextBlob"].removeprefix(b"fake-kms:"))
        if sealed["context"] != kwargs.get("EncryptionContext"):
            raise kms_error("InvalidCiphertextException")
        if sealed["key"] != kwargs.get("KeyId"):
            raise kms_error("IncorrectKeyException")
        return {"Plaintext": sealed["plaintext"].encode("utf-8"), "KeyId": sealed["key"]}


def seal(key: str, context: dict, plaintext: bytes) -> bytes:
    return b"fake-kms:" + json.dumps({"key": key, "context": context, "plaintext": plaintext.decode("utf-8")}).encode()


def cipher(kms: FakeKms, key: str = KEY) -> TokenCipher:
    return TokenCipher(key, client_factory=lambda: kms)


def pre_split(connection_id: str, access: str, refresh: str) -> SealedTokens:
    """A row from before the split: both tokens in one ciphertext under the connection alone."""
    pair = json.dumps({"access_token": access, "refresh_token": refresh}).encode()
    return SealedTokens(pair=seal(KEY, {"connection_id": connection_id}, pair))


def decrypt_call(connection_id: str, kind: str | None, ciphertext: bytes) -> tuple[str, dict]:
    context = {"connection_id": connection_id} | ({"token": kind} if kind else {})
    return ("decrypt", {"KeyId": KEY, "CiphertextBlob": ciphertext, "EncryptionContext": context})


@pytest.fixture(autouse=True)
def _no_real_aws(monkeypatch):
    """Any client other than the fake one fails at once, and never reaches AWS."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


# ---------------------------------------------------------------- the context
def test_the_context_is_the_connection_and_for_split_tokens_the_kind():
    assert encryption_context("acme-1") == {"connection_id": "acme-1"}
    assert encryption_context("acme-1", "access") == {"connection_id": "acme-1", "token": "access"}
    assert encryption_context("acme-1", "refresh") == {"connection_id": "acme-1", "token": "refresh"}


def test_sealed_tokens_are_both_ciphertexts_or_the_pre_split_pair():
    assert SealedTokens(access=b"a", refresh=b"r").split
    assert not SealedTokens(pair=b"p").split
    assert not SealedTokens(access=b"a", pair=b"p").split
    for incomplete in ({}, {"access": b"a"}, {"refresh": b"r"}):
        with pytest.raises(ValueError, match=r"^sealed tokens need both ciphertexts, or the pre-split pair$"):
            SealedTokens(**incomplete)


# ---------------------------------------------------------------- writing
def test_each_token_is_encrypted_on_its_own_under_the_key_bound_to_connection_and_kind():
    kms = FakeKms()
    sealed = cipher(kms).encrypt("acme-1", "at-1", "rt-1")
    assert kms.calls == [
        ("encrypt", {"KeyId": KEY, "Plaintext": b"at-1",
                     "EncryptionContext": {"connection_id": "acme-1", "token": "access"}}),
        ("encrypt", {"KeyId": KEY, "Plaintext": b"rt-1",
                     "EncryptionContext": {"connection_id": "acme-1", "token": "refresh"}}),
    ]
    assert sealed == SealedTokens(access=seal(KEY, {"connection_id": "acme-1", "token": "access"}, b"at-1"),
                                  refresh=seal(KEY, {"connection_id": "acme-1", "token": "refresh"}, b"rt-1"))
    assert sealed.access != sealed.refresh and sealed.pair is None


def test_a_token_up_to_4_kb_of_utf_8_is_encrypted_and_a_larger_one_refused_without_a_call():
    kms = FakeKms()
    largest = "é" * 2048  # 4096 bytes in UTF-8, 2048 characters
    sealed = cipher(kms).encrypt("acme-1", largest, "rt-1")
    assert kms.calls[0][1]["Plaintext"] == largest.encode("utf-8")
    assert cipher(kms).decrypt_access("acme-1", sealed) == largest
    kms.calls.clear()
    with pytest.raises(ValueError, match=r"^the access token is larger than KMS can encrypt directly \(4 KB\)$"):
        cipher(kms).encrypt("acme-1", largest + "x", "rt-1")
    assert kms.calls == []
    with pytest.raises(ValueError, match=r"^the refresh token is larger than KMS can encrypt directly \(4 KB\)$"):
        cipher(kms).encrypt("acme-1", "at-1", "x" * 4097)
    assert [call[1]["Plaintext"] for call in kms.calls] == [b"at-1"]  # the refresh token never sent


# ---------------------------------------------------------------- reading split rows
def test_a_reader_decrypts_the_access_token_alone_under_its_context():
    kms = FakeKms()
    sealed = cipher(kms).encrypt("acme-1", "at-ü", "rt-1")
    kms.calls.clear()
    assert cipher(kms).decrypt_access("acme-1", sealed) == "at-ü"
    assert cipher(kms).decrypt_access_any_format("acme-1", sealed) == "at-ü"
    assert kms.calls == [decrypt_call("acme-1", "access", sealed.access)] * 2


def test_a_refresher_decrypts_the_refresh_token_or_both_each_under_its_context():
    kms = FakeKms()
    sealed = cipher(kms).encrypt("acme-1", "at-1", "rt-ü")
    kms.calls.clear()
    assert cipher(kms).decrypt_refresh("acme-1", sealed) == "rt-ü"
    assert kms.calls == [decrypt_call("acme-1", "refresh", sealed.refresh)]
    kms.calls.clear()
    assert cipher(kms).decrypt("acme-1", sealed) == ("at-1", "rt-ü")
    assert kms.calls == [decrypt_call("acme-1", "access", sealed.access),
                         decrypt_call("acme-1", "refresh", sealed.refresh)]


# ---------------------------------------------------------------- reading pre-split rows
def test_a_reader_is_refused_a_pre_split_row_without_a_kms_call():
    kms = FakeKms()
    with pytest.raises(LegacyTokenFormat, match=r"^tokens of acme-1 are stored in the pre-split format$") as raised:
        cipher(kms).decrypt_access("acme-1", pre_split("acme-1", "at-1", "rt-1"))
    assert isinstance(raised.value, TokenDecryptionError)
    assert kms.calls == []


def test_a_refresher_opens_a_pre_split_row_with_one_call_under_the_connection_alone():
    kms = FakeKms()
    sealed = pre_split("acme-1", "at-ü", "rt-ü")
    assert cipher(kms).decrypt_access_any_format("acme-1", sealed) == "at-ü"
    assert cipher(kms).decrypt_refresh("acme-1", sealed) == "rt-ü"
    assert cipher(kms).decrypt("acme-1", sealed) == ("at-ü", "rt-ü")
    assert kms.calls == [decrypt_call("acme-1", None, sealed.pair)] * 3


# ---------------------------------------------------------------- what does not decrypt
def test_a_ciphertext_copied_to_another_connection_or_kind_does_not_decrypt():
    kms = FakeKms()
    sealed = cipher(kms).encrypt("acme-1", "at-1", "rt-1")
    with pytest.raises(TokenDecryptionError, match=r"^tokens of acme-2 do not decrypt \(InvalidCiphertextException\)$"):
        cipher(kms).decrypt_access("acme-2", sealed)
    swapped = SealedTokens(access=sealed.refresh, refresh=sealed.access)
    with pytest.raises(TokenDecryptionError, match=r"^tokens of acme-1 do not decrypt \(InvalidCiphertextException\)$"):
        cipher(kms).decrypt_access("acme-1", swapped)
    with pytest.raises(TokenDecryptionError, match=r"^tokens of acme-1 do not decrypt \(InvalidCiphertextException\)$"):
        cipher(kms).decrypt_refresh("acme-1", swapped)
    with pytest.raises(TokenDecryptionError, match=r"^tokens of acme-2 do not decrypt \(InvalidCiphertextException\)$"):
        cipher(kms).decrypt("acme-2", pre_split("acme-1", "at-1", "rt-1"))


def test_a_ciphertext_of_another_key_does_not_decrypt():
    kms = FakeKms()
    sealed = cipher(kms).encrypt("acme-1", "at-1", "rt-1")
    with pytest.raises(TokenDecryptionError, match=r"^tokens of acme-1 do not decrypt \(IncorrectKeyException\)$"):
        cipher(kms, OTHER_KEY).decrypt_access("acme-1", sealed)


@pytest.mark.parametrize("error", [kms_error("AccessDeniedException"), kms_error("KMSInvalidStateException"),
                                   ClientError({}, "Decrypt")])
def test_any_other_kms_error_is_raised_as_it_is(error):
    kms = FakeKms(decrypt_error=error)
    sealed = SealedTokens(access=b"a", refresh=b"r")
    with pytest.raises(ClientError) as raised:
        cipher(kms).decrypt_access("acme-1", sealed)
    assert raised.value is error


# ---------------------------------------------------------------- the default client (moto's KMS)
def test_without_a_client_factory_it_uses_kms_and_the_context_binds_there_too(monkeypatch):
    import boto3
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        key_id = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["Arn"]
        tokens = TokenCipher(key_id)
        sealed = tokens.encrypt("acme-1", "at-1", "rt-1")
        assert tokens.decrypt("acme-1", sealed) == ("at-1", "rt-1")
        assert tokens.decrypt_access("acme-1", sealed) == "at-1"
        with pytest.raises(TokenDecryptionError, match=r"^tokens of acme-2 do not decrypt \(InvalidCiphertextException\)$"):
            tokens.decrypt_refresh("acme-2", sealed)
        with pytest.raises(TokenDecryptionError):
            tokens.decrypt_access("acme-1", SealedTokens(access=sealed.refresh, refresh=sealed.access))
