"""Lazily created, process-wide boto3 clients.

Clients are built on first use, not at import, so importing a handler costs
nothing and tests can point them elsewhere. boto3 honours ``AWS_ENDPOINT_URL``
(and ``AWS_ENDPOINT_URL_<SERVICE>``) by itself, which is how the local stack
sends the very same calls to its loopback AWS.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

_lock = threading.Lock()


@functools.cache
def _session() -> Any:
    import boto3

    return boto3.session.Session()


# A synchronous Invoke of the connections function may wait for another
# refresher's lease and then refresh (up to its 60 s timeout): read that long.
_READ_TIMEOUTS = {"lambda": 70}


@functools.cache
def client(service: str) -> Any:
    """The shared client for ``service`` (thread-safe once created)."""
    from botocore.config import Config

    # boto3 sessions are not thread-safe while creating clients.
    with _lock:
        return _session().client(
            service,
            config=Config(connect_timeout=3, read_timeout=_READ_TIMEOUTS.get(service, 10),
                          retries={"mode": "standard", "max_attempts": 3}),
        )


def reset_clients() -> None:
    """Forget every client (tests that change endpoints or credentials)."""
    client.cache_clear()
    _session.cache_clear()
