"""One local stack for the integration tests: moto's server, the tables,
keys and secrets from template.yaml, the local Invoiced, and the gateway."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support import CLIENT_SECRET_CANARY, RETURN_BASE

# Short enough that the timeout tests stay quick, long enough for this machine.
os.environ.setdefault("HTTP_TIMEOUT_SECONDS", "2")
# The stack's own functions probe a lost answer this soon (the local Invoiced
# holds no request longer than the timeout faults), so a lost answer queued
# again for its probe does not keep the queues busy for 90 s between tests.
os.environ.setdefault("UNKNOWN_OUTCOME_SETTLE_SECONDS", "4")


@pytest.fixture(scope="session")
def stack() -> Iterator[object]:
    from local.stack import LocalStack

    with LocalStack(return_url_allowlist=(RETURN_BASE,), client_secret=CLIENT_SECRET_CANARY) as running:
        yield running


@pytest.fixture
def invoiced(stack):
    stack.invoiced.faults.reset()
    yield stack.invoiced
    stack.invoiced.faults.reset()

