"""Tracing: the background handlers trace with Powertools' Tracer and never
put a response (which could hold a token, or a customer's invoices) into a
trace; the API handlers build no Tracer at all (the X-Ray SDK's import cost
would dominate their cold start; Lambda's active tracing traces them).

The handlers are imported fresh with POWERTOOLS_TRACER_CAPTURE_RESPONSE
unset, so only the code's own ``capture_response=False`` keeps responses out,
and their tracer is given a recording provider in place of the X-Ray
recorder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from aws_lambda_powertools import Tracer

from tests.support.runtime import use_parts
from tests.support.tracing import FakeProvider

ROOT = Path(__file__).resolve().parents[2]
CANARY = "CANARY-response-token-" + "t" * 24


class RecordingTracer(Tracer):
    """Powertools' Tracer, remembering how each was made."""

    made: list[dict] = []

    def __init__(self, *args, **kwargs) -> None:
        RecordingTracer.made.append(kwargs)
        super().__init__(*args, **kwargs)


@pytest.fixture
def load_function(monkeypatch):
    """Import a function's app.py afresh; its Tracer records how it was made and what it traces."""
    import aws_lambda_powertools

    from local.lambda_runtime import import_handler

    monkeypatch.delenv("POWERTOOLS_TRACER_CAPTURE_RESPONSE", raising=False)
    monkeypatch.delenv("POWERTOOLS_TRACER_CAPTURE_ERROR", raising=False)
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "InvoicedConnect")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "invoiced-connect")
    monkeypatch.setattr(aws_lambda_powertools, "Tracer", RecordingTracer)
    RecordingTracer.made.clear()

    def load_function(name: str):
        module, handler = import_handler(ROOT / "functions" / name / "app.py", "handler", name)
        return module, handler

    yield load_function
    from aws_lambda_powertools import Metrics

    Metrics().clear_metrics()


def context():
    from local.lambda_runtime import LambdaContext

    return LambdaContext(function_name="fn", memory_limit_in_mb=128, aws_request_id="req-1", timeout_s=120,
                         invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:fn")


def traced(module) -> FakeProvider:
    """Give the module's tracer a recording provider, and let it annotate as it would in Lambda."""
    provider = FakeProvider()
    provider.annotations = {}
    provider.put_annotation = lambda key, value: provider.annotations.__setitem__(key, value)
    module.tracer.provider = provider
    module.tracer.disabled = False
    return provider


def assert_no_response_captured(provider: FakeProvider, response) -> None:
    (handler_segment,) = [s for s in provider.subsegments if s.name == "## handler"]
    assert not any(key.endswith("response") for s in provider.subsegments for key in s.metadata), \
        [s.metadata for s in provider.subsegments]
    everything = json.dumps([s.metadata for s in provider.subsegments], default=repr)
    assert CANARY not in everything
    assert CANARY in json.dumps(response)  # it was there to be captured
    assert handler_segment.annotations.get("ColdStart") is not None  # the decorator did trace the handler


def test_the_scheduler_never_captures_its_response(load_function, monkeypatch):
    from invoiced_connect.lifecycle.scheduler import ScheduleReport

    module, handler = load_function("scheduler")
    assert RecordingTracer.made == [{"patch_modules": ("botocore",)}]

    class Scheduler:
        def run(self, remaining):
            return ScheduleReport(due=1, queued=1, kinds={CANARY: 1})

    use_parts(monkeypatch, scheduler=Scheduler())
    provider = traced(module)
    response = handler({"id": "event-1", "detail-type": "Scheduled Event"}, context())
    assert_no_response_captured(provider, response)
    assert provider.annotations == {"queued": 1}


def test_the_worker_never_captures_its_response_and_traces_each_record(load_function, monkeypatch):
    from invoiced_connect.lifecycle.refresh import RefreshOutcome, RefreshResult

    module, handler = load_function("refresh_worker")
    assert RecordingTracer.made == [{"patch_modules": ("botocore", "requests")}]

    class Refresher:
        policy = types.SimpleNamespace(lease_seconds=60)

        def refresh(self, connection_id, mode):
            if connection_id == "acme-2":
                raise RuntimeError("DynamoDB unavailable")  # the message fails: its id is in the response
            return RefreshResult(connection_id, RefreshOutcome.TRANSIENT, "active", 3)

    use_parts(monkeypatch, refresher=Refresher())
    provider = traced(module)
    records = [{"messageId": "m-1", "body": json.dumps({"connection_id": "acme-1", "kind": "refresh"})},
               {"messageId": CANARY, "body": json.dumps({"connection_id": "acme-2", "kind": "refresh"})},
               {"messageId": "m-3", "body": "{not json"}]
    response = handler({"Records": records}, context())
    assert response == {"batchItemFailures": [{"itemIdentifier": CANARY}]}
    assert_no_response_captured(provider, response)
    per_record = [s for s in provider.subsegments if s.name == "## refresh message"]
    assert [s.annotations for s in per_record] == [{"connection_id": "acme-1", "outcome": "transient"},
                                                   {"connection_id": "acme-2", "outcome": "error"},
                                                   {"outcome": "malformed"}]


def test_the_connections_function_never_captures_its_response(load_function, monkeypatch):
    from invoiced_connect.entry import connections as operations

    module, handler = load_function("connections")
    assert RecordingTracer.made == [{"patch_modules": ("botocore", "requests")}]
    monkeypatch.setattr(operations, "handle", lambda event, remaining: {
        "connection_id": "acme-1", "outcome": "refreshed", "status": "active", "version": 2, "note": CANARY})
    provider = traced(module)
    response = handler({"action": "refresh", "connection_id": "acme-1"}, context())
    assert_no_response_captured(provider, response)
    assert provider.annotations == {"connection_id": "acme-1", "outcome": "refreshed"}


def test_the_example_consumer_never_captures_its_response(load_function, monkeypatch):
    module, handler = load_function("list_invoices")
    assert RecordingTracer.made == [{"patch_modules": ("botocore", "requests")}]
    monkeypatch.setattr(module, "handle_list_invoices",
                        lambda event: {"connection_id": "acme-1", "count": 1, "invoices": [{"number": CANARY}]})
    provider = traced(module)
    response = handler({"connection_id": "acme-1"}, context())
    assert_no_response_captured(provider, response)
    assert provider.annotations == {"connection_id": "acme-1", "outcome": "ok"}


@pytest.mark.parametrize("name", ["connect", "callback"])
def test_the_api_handlers_build_no_tracer(load_function, name):
    module, _ = load_function(name)
    assert RecordingTracer.made == []
    assert not any(isinstance(value, Tracer) for value in vars(module).values())


def test_importing_the_api_handlers_loads_neither_the_xray_sdk_nor_requests():
    """What /connect and /callback pay at cold start: no X-Ray SDK; /connect no requests either."""
    script = (
        "import importlib.util, json, sys\n"
        "loaded = {}\n"
        "for name in ('connect', 'callback'):\n"
        "    spec = importlib.util.spec_from_file_location(name + '_app', f'functions/{name}/app.py')\n"
        "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "    loaded[name] = sorted(m for m in ('aws_xray_sdk', 'requests') if m in sys.modules)\n"
        "print(json.dumps(loaded))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={"PATH": "", "PYTHONPATH": str(ROOT / "layers" / "invoiced_connect")}, check=True)
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"connect": [], "callback": []}
