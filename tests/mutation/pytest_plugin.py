"""Loaded into every pytest run of ``make mutate`` (``[tool.mutmut]
pytest_add_cli_args``), never into ``make test``.

Property tests draw the same examples for every mutant (so a mutant is
killed, or not, the same way each run) and keep no example database (which
would carry one mutant's failures into the next mutant's run).

The fork server (``process_isolation = "forkserver"``) warms up with a
``--collect-only`` run and then forks one process per mutant. At the end of
that run this does, once, what every forked process would otherwise repeat:

- imports the moto backends the unit tests start (DynamoDB, KMS), which moto
  imports only on a backend's first request;
- reads template.yaml's table definition for ``tests/support/dynamodb.py``
  (pure-Python YAML, tenths of a second a process; a cached value of data);
- collects the garbage and freezes what is left (``gc.freeze``): the
  collected tests and every imported module. pytest ends each run with
  ``gc.collect()`` calls, and a collection walks every tracked object; with
  the server's objects frozen, a forked process walks only its own.

None of it is state a test sets or reads: no client, session, credential or
setting is made here.
"""

from __future__ import annotations

import gc
import importlib
import sys

import pytest
from hypothesis import settings

settings.register_profile("mutation", derandomize=True, database=None)
settings.load_profile("mutation")

_MOTO_BACKENDS = ("moto.dynamodb.models", "moto.dynamodb.responses", "moto.kms.models", "moto.kms.responses")


def pytest_unconfigure(config: pytest.Config) -> None:
    if not config.option.collectonly:
        return
    for module in _MOTO_BACKENDS:
        importlib.import_module(module)
    dynamodb = sys.modules.get("tests.support.dynamodb")
    if dynamodb is not None:
        dynamodb.tokens_table_properties()
    gc.collect()
    gc.freeze()
