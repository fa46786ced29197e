"""The secret cache: read once per TTL, read again when forced, JSON objects
only, and every failure a SecretError that names the secret and never shows
its value."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError, NoRegionError

from invoiced_connect.cloud.secrets import SecretCache, SecretError

ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:invoiced-client-AbCdEf"
VALUE = "s3cr3t-canary-value"


class SecretsManager:
    """A Secrets Manager client with one secret (its string can be changed) that counts its reads."""

    def __init__(self, secret_string: str | None = None, error: Exception | None = None) -> None:
        self.secret_string = json.dumps({"client_secret": VALUE}) if secret_string is None else secret_string
        self.error, self.reads = error, 0

    def get_secret_value(self, SecretId):  # noqa: N803 - boto3's name
        self.reads += 1
        if self.error is not None:
            raise self.error
        assert SecretId == ARN
        return {"ARN": ARN, "SecretString": self.secret_string}


def cache(client: SecretsManager, clock=lambda: 1000.0) -> SecretCache:
    return SecretCache(ttl_seconds=300, client_factory=lambda: client, clock=clock)


def test_a_secret_is_read_once_within_its_ttl():
    client = SecretsManager()
    secrets = cache(client)
    assert secrets.get_field(ARN, "client_secret") == VALUE
    assert secrets.get_json(ARN) == {"client_secret": VALUE}
    assert client.reads == 1


def test_force_reads_the_secret_again_and_keeps_the_new_value():
    client = SecretsManager()
    secrets = cache(client)
    secrets.get_json(ARN)
    client.secret_string = json.dumps({"client_secret": "rotated"})
    assert secrets.get_field(ARN, "client_secret") == VALUE  # still cached
    assert secrets.get_field(ARN, "client_secret", force=True) == "rotated"
    assert secrets.get_field(ARN, "client_secret") == "rotated"
    assert client.reads == 2


def test_after_the_ttl_the_secret_is_read_again():
    now = [1000.0]
    client = SecretsManager()
    secrets = cache(client, clock=lambda: now[0])
    secrets.get_json(ARN)
    client.secret_string = json.dumps({"client_secret": "rotated"})
    now[0] += 299
    assert secrets.get_field(ARN, "client_secret") == VALUE
    now[0] += 1
    assert secrets.get_field(ARN, "client_secret") == "rotated"
    assert client.reads == 2


def test_clear_forgets_every_value():
    client = SecretsManager()
    secrets = cache(client)
    secrets.get_json(ARN)
    secrets.clear()
    secrets.get_json(ARN)
    assert client.reads == 2


def test_nothing_is_made_before_the_first_read():
    made = []
    SecretCache(client_factory=lambda: made.append(1))
    assert made == []


def assert_names_the_secret_not_its_value(error: pytest.ExceptionInfo[SecretError]) -> None:
    assert ARN in str(error.value)
    for text in (str(error.value), repr(error.value.__cause__), str(error.value.__cause__)):
        assert VALUE not in text


def test_a_failed_read_is_a_secret_error_naming_the_secret():
    denied = ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not allowed"}}, "GetSecretValue")
    with pytest.raises(SecretError, match="could not read secret") as error:
        cache(SecretsManager(error=denied)).get_json(ARN)
    assert_names_the_secret_not_its_value(error)
    assert "AccessDeniedException" in str(error.value)


def test_a_client_that_cannot_be_made_is_a_secret_error():
    def no_region():
        raise NoRegionError()

    with pytest.raises(SecretError, match="could not read secret") as error:
        SecretCache(client_factory=no_region).get_json(ARN)
    assert ARN in str(error.value)


@pytest.mark.parametrize("secret_string", [f"not json {VALUE}", json.dumps([VALUE]), json.dumps(VALUE)])
def test_a_secret_that_is_not_a_json_object_is_a_secret_error_without_its_value(secret_string):
    with pytest.raises(SecretError, match="does not hold a JSON object") as error:
        cache(SecretsManager(secret_string)).get_json(ARN)
    assert_names_the_secret_not_its_value(error)


def test_a_secret_that_is_not_a_json_object_is_read_again_once_fixed():
    client = SecretsManager(json.dumps([VALUE]))
    secrets = cache(client)
    with pytest.raises(SecretError):
        secrets.get_json(ARN)
    client.secret_string = json.dumps({"client_secret": VALUE})
    assert secrets.get_field(ARN, "client_secret") == VALUE
    assert client.reads == 2


@pytest.mark.parametrize("value", [{}, {"client_secret": ""}, {"client_secret": 7}])
def test_a_missing_or_empty_field_is_a_secret_error_naming_the_secret_and_field(value):
    with pytest.raises(SecretError, match="has no value for 'client_secret'") as error:
        cache(SecretsManager(json.dumps(value))).get_field(ARN, "client_secret")
    assert ARN in str(error.value)
