"""Secrets Manager values, cached in memory with a time-to-live.

A rotated secret is picked up after the TTL, or at once by ``force=True``
(used after Invoiced answers "client authentication failed").
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from invoiced_connect.cloud import aws


class SecretError(RuntimeError):
    """A secret is missing, unreadable or not shaped as expected."""


# Hand-written, not Powertools Parameters (a SecretsProvider's get with
# max_age, transform="json" and force_fetch would do the same): importing
# aws_lambda_powertools.utilities.parameters runs its package __init__, every
# provider (AppConfig, DynamoDB with boto3.dynamodb.conditions, SSM), which
# adds 11 modules and 2.8 ms to the /connect handler's first request even
# after boto3; bench/firstresponse.py put the first responses at 1.44x
# (connect) and 1.55x (callback) the baseline in CPU with it, against 1.39x
# and 1.49x with this cache (2026-12-02, interleaved runs): slower, for
# nothing this cache lacks. tests/unit/test_secret_cache.py pins the behaviour.
class SecretCache:
    def __init__(
        self,
        ttl_seconds: float = 300,
        client_factory: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_seconds
        self._client_factory = client_factory or aws.lazy_client("secretsmanager")
        self._clock = clock
        self._lock = threading.Lock()
        self._values: dict[str, tuple[float, dict[str, Any]]] = {}

    def get_json(self, secret_id: str, *, force: bool = False) -> dict[str, Any]:
        """The secret's JSON object; read again when stale or forced."""
        now = self._clock()
        with self._lock:
            cached = self._values.get(secret_id)
            if cached and not force and now - cached[0] < self._ttl:
                return cached[1]
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            raw = self._client_factory().get_secret_value(SecretId=secret_id)["SecretString"]
        except (BotoCoreError, ClientError) as exc:
            raise SecretError(f"could not read secret {secret_id}: {exc}") from exc
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise SecretError(f"secret {secret_id} does not hold a JSON object") from exc
        if not isinstance(value, dict):
            raise SecretError(f"secret {secret_id} does not hold a JSON object")
        with self._lock:
            self._values[secret_id] = (now, value)
        return value

    def clear(self) -> None:
        """Forget every cached value (after the endpoint or the secrets changed)."""
        with self._lock:
            self._values.clear()

    def get_field(self, secret_id: str, name: str, *, force: bool = False) -> str:
        """A non-empty string field of the secret, or :class:`SecretError`."""
        value = self.get_json(secret_id, force=force).get(name)
        if not isinstance(value, str) or not value:
            raise SecretError(f"secret {secret_id} has no value for {name!r}")
        return value
