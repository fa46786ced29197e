"""The running local stack set up otherwise for the duration of a ``with``:
a setting the handlers must refuse, another client secret, a refresh queue
of the scheduler's own. Each puts things back (and empties the caches that
held the old value) when the block ends."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator

import boto3


@contextlib.contextmanager
def bad_setting(monkeypatch) -> Iterator[None]:
    from invoiced_connect import runtime

    try:
        with monkeypatch.context() as patch:
            patch.setenv("RETURN_URL_ALLOWLIST", "app.example.com/settings")  # no scheme
            runtime.reset()
            yield
    finally:
        runtime.reset()


@contextlib.contextmanager
def client_secret(stack, value: str) -> Iterator[None]:
    """Secrets Manager holds ``value`` as the client secret meanwhile."""
    from invoiced_connect import runtime

    manager = boto3.client("secretsmanager")
    arn = stack.env["CLIENT_SECRET_ARN"]
    manager.put_secret_value(SecretId=arn, SecretString=json.dumps({"client_secret": value}))
    runtime.current().secrets.clear()
    try:
        yield
    finally:
        manager.put_secret_value(SecretId=arn, SecretString=json.dumps({"client_secret": stack.client_secret}))
        runtime.current().secrets.clear()


@contextlib.contextmanager
def private_refresh_queue(monkeypatch) -> Iterator[str]:
    """The scheduler sends to a queue of its own, which no poller drains into the worker meanwhile."""
    from invoiced_connect import runtime

    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName=f"hygiene-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    try:
        with monkeypatch.context() as patch:
            patch.setenv("REFRESH_QUEUE_URL", url)
            runtime.reset()
            yield url
    finally:
        runtime.reset()
        sqs.delete_queue(QueueUrl=url)
