"""boto3 sessions and clients, made with this project's timeouts and retries.

Nothing is made at import: :class:`invoiced_connect.runtime.Runtime` keeps
one session and one client per service for the execution environment, and
an adapter built without the runtime's clients makes its own on first use
(:func:`lazy_client`). boto3 honours ``AWS_ENDPOINT_URL`` (and
``AWS_ENDPOINT_URL_<SERVICE>``) by itself, which is how the local stack
sends the very same calls to its loopback AWS.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

# boto3 sessions are not thread-safe while creating clients.
_creating = threading.Lock()

# A synchronous Invoke of the connections function may wait for another
# refresher's lease and then refresh (up to its 60 s timeout): read that long.
_READ_TIMEOUTS = {"lambda": 70}


def new_session() -> Any:
    import boto3

    return boto3.session.Session()


def new_client(service: str, session: Any | None = None) -> Any:
    """A client for ``service`` from ``session`` (a new one if not given); thread-safe once made."""
    from botocore.config import Config

    config = Config(connect_timeout=3, read_timeout=_READ_TIMEOUTS.get(service, 10),
                    retries={"mode": "standard", "max_attempts": 3})
    with _creating:
        return (session or new_session()).client(service, config=config)


def lazy_client(service: str) -> Callable[[], Any]:
    """A factory that makes one client for ``service`` on its first call and returns it after."""
    made: list[Any] = []
    lock = threading.Lock()

    def factory() -> Any:
        if not made:
            with lock:
                if not made:
                    made.append(new_client(service))
        return made[0]

    return factory
