"""The metric contract, without AWS: names, the failure aggregates, the connect
failure reasons, the EMF each emitter prints, the SDK's read counters, and
the loggers held quiet."""

from __future__ import annotations

import ast
import contextlib
import json
import logging
from pathlib import Path

import pytest
from aws_lambda_powertools import Metrics

from invoiced_connect.connect import flow
from invoiced_connect.connect.flow import FlowOutcome, FlowReport, RequestRefused
from invoiced_connect.core.metrics import (
    CONNECT_FAILURE_REASONS,
    REFRESH_FAILED_OUTCOMES,
    REFRESH_PERMANENT_OUTCOMES,
    outcome_metric_name,
    refresh_aggregates,
)
from invoiced_connect.core.models import Connection, ConnectionStatus
from invoiced_connect.entry import connections as operations
from invoiced_connect.entry import observability
from invoiced_connect.entry.logs import QUIET_LOGGERS, quiet_library_loggers
from invoiced_connect.entry.observability import count_flow
from invoiced_connect.lifecycle.refresh import RefreshOutcome
from invoiced_connect.lifecycle.worker import BatchReport
from invoiced_connect.sdk.tokens import ReadCounts, TokenReader
from invoiced_connect.storage.crypto import SealedTokens
from tests.support.runtime import use_parts
from tests.support.tracing import FakeProvider

PACKAGE = Path(flow.__file__).parents[1]


@pytest.fixture
def metrics(monkeypatch):
    """A Powertools Metrics as the stack configures it; its (process-wide) set is emptied afterwards."""
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "InvoicedConnect")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "invoiced-connect")
    made = Metrics()
    made.clear_metrics()
    yield made
    made.clear_metrics()


def emf_documents(text: str) -> list[dict]:
    return [doc for doc in (json.loads(line) for line in text.splitlines() if line.startswith("{")) if "_aws" in doc]


# ------------------------------------------------------------------ refresh outcomes
def test_refresh_outcome_metrics_keep_their_names():
    for outcome in RefreshOutcome:
        assert outcome_metric_name(outcome.value) == outcome.metric_name
    # The alarms in template.yaml watch these three.
    assert [outcome_metric_name(o) for o in ("kept_aside", "unknown_outcome", "client_auth_failed")] == [
        "RefreshKeptAside", "RefreshUnknownOutcome", "RefreshClientAuthFailed"]
    assert outcome_metric_name("needs_reauth") == "RefreshNeedsReauth"
    assert outcome_metric_name("race_recovered") == "RefreshRaceRecovered"


def test_the_failure_aggregates_count_what_left_a_connection_without_a_new_token():
    values = {outcome.value for outcome in RefreshOutcome}
    assert REFRESH_PERMANENT_OUTCOMES <= REFRESH_FAILED_OUTCOMES <= values
    assert {"transient", "unknown_outcome", "needs_reauth", "client_auth_failed",
            "kept_aside"} == REFRESH_FAILED_OUTCOMES
    assert {"needs_reauth", "client_auth_failed"} == REFRESH_PERMANENT_OUTCOMES
    everything = dict.fromkeys(values, 1) | {"malformed": 1, "error": 1, "skipped_client_auth": 1}
    assert refresh_aggregates(everything) == {"RefreshFailed": 5, "RefreshPermanentFailure": 2}
    assert refresh_aggregates({"refreshed": 3, "race_recovered": 1, "rescue_discarded": 1}) == {
        "RefreshFailed": 0, "RefreshPermanentFailure": 0}
    assert refresh_aggregates({"transient": 2, "needs_reauth": 1}) == {"RefreshFailed": 3,
                                                                      "RefreshPermanentFailure": 1}


def test_the_worker_report_adds_the_aggregates_to_its_per_outcome_counts():
    report = BatchReport()
    report.outcomes.update({"refreshed": 3, "transient": 2, "client_auth_failed": 1, "malformed": 1})
    assert report.metrics() == {"RefreshRefreshed": 3, "RefreshTransient": 2, "RefreshClientAuthFailed": 1,
                                "RefreshMalformed": 1}
    assert report.aggregates() == {"RefreshFailed": 3, "RefreshPermanentFailure": 1}


@pytest.mark.parametrize(("answer", "action", "expected"), [
    ({"outcome": "refreshed"}, "refresh", {"RefreshRefreshed": 1, "RefreshFailed": 0, "RefreshPermanentFailure": 0}),
    ({"outcome": "needs_reauth"}, "refresh",
     {"RefreshNeedsReauth": 1, "RefreshFailed": 1, "RefreshPermanentFailure": 1}),
    ({"outcome": "busy"}, "refresh", {"RefreshBusy": 1, "RefreshFailed": 0, "RefreshPermanentFailure": 0}),
    ({"outcome": "not_found"}, "refresh", {"RefreshNotFound": 1, "RefreshFailed": 0, "RefreshPermanentFailure": 0}),
    ({"outcome": "busy"}, "disconnect", {"DisconnectBusy": 1}),
    ({"outcome": "disconnected"}, "disconnect", {"DisconnectDisconnected": 1}),
    ({"error": "bad_request", "message": "..."}, None, {"BadRequests": 1}),
])
def test_the_connections_function_counts_by_the_requests_action(answer, action, expected):
    assert operations.metric_counts(answer, action) == expected


def test_only_known_actions_are_taken_from_a_request():
    assert operations.requested_action({"action": "refresh"}) == "refresh"
    assert operations.requested_action({"action": "drop table"}) is None
    assert operations.requested_action(["refresh"]) is None


# ------------------------------------------------------------------ the connect flow
def _bad_request_reasons() -> set[str]:
    """Every reason a RequestRefused is raised with in flow.py (its last positional
    argument, whether made directly or from a message with ``RequestRefused.of``)."""
    tree = ast.parse((PACKAGE / "connect" / "flow.py").read_text())
    reasons = set()
    for node in ast.walk(tree):
        func = node.func if isinstance(node, ast.Call) else None
        if getattr(func, "id", None) == "RequestRefused" or (
                isinstance(func, ast.Attribute) and func.attr == "of" and getattr(func.value, "id", None) == "RequestRefused"):
            last = node.args[-1]
            assert isinstance(last, ast.Constant), ast.unparse(node)
            reasons.add(last.value)
    return reasons


def _reported_reasons() -> set[str]:
    """Every literal reason given to ``.fail(...)`` in flow.py and web.py."""
    reasons = set()
    for name in ("connect/flow.py", "entry/web.py"):
        for node in ast.walk(ast.parse((PACKAGE / name).read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "fail":
                reasons |= {sub.value for sub in ast.walk(node.args[0]) if isinstance(sub, ast.Constant)
                            and isinstance(sub.value, str)}
    return reasons


def test_every_connect_failure_reason_is_one_of_the_fixed_set():
    raised = _bad_request_reasons()
    assert raised == set(flow._FAILURE_REASON), "each RequestRefused reason maps to a metric reason explicitly"
    assert set(flow._FAILURE_REASON.values()) <= CONNECT_FAILURE_REASONS
    reported = _reported_reasons()
    assert reported <= CONNECT_FAILURE_REASONS
    assert set(flow._FAILURE_REASON.values()) | reported | {"unexpected"} == CONNECT_FAILURE_REASONS  # none unused


def test_a_flow_report_keeps_the_first_word():
    seen = []
    report = FlowReport(on_connection_id=seen.append)
    report.identify("acme-1")
    assert report.connection_id == "acme-1" and seen == ["acme-1"]
    report.fail("store_failed")
    report.fail("unexpected")  # the handler's catch-all after the flow said what failed
    assert (report.outcome, report.reason) == ("failed", "store_failed")

    connected = FlowReport()
    connected.succeed(FlowOutcome.CONNECTED)
    connected.fail("unexpected")  # e.g. the company label failed after the tokens were stored
    assert (connected.outcome, connected.reason) == ("connected", None)

    refused = FlowReport()
    refused.refused(RequestRefused(400, "t", "m", "no_cookie"))
    assert refused.reason == "state_rejected"
    refused = FlowReport()
    refused.refused(RequestRefused(400, "t", "m", "something new"))
    assert refused.reason == "bad_request"


def test_a_connect_failure_is_its_own_emf_document_with_the_reason(metrics, capsys):
    report = FlowReport()
    report.fail("denied")
    count_flow(metrics, report)
    (document,) = emf_documents(capsys.readouterr().out)
    (directive,) = document["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "InvoicedConnect"
    assert [sorted(dims) for dims in directive["Dimensions"]] == [["reason", "service"]]
    assert directive["Metrics"] == [{"Name": "ConnectFailed", "Unit": "Count"}]
    assert (document["ConnectFailed"], document["reason"], document["service"]) == ([1.0], "denied",
                                                                                    "invoiced-connect")
    assert not metrics.metric_set and "reason" not in metrics.dimension_set  # nothing left for the next flush

    odd = FlowReport()
    odd.fail("something new")
    count_flow(metrics, odd)
    (document,) = emf_documents(capsys.readouterr().out)
    assert document["reason"] == "unexpected"


@pytest.mark.parametrize(("outcome", "name"), [("started", "ConnectStarted"), ("connected", "Connected"),
                                               ("reconnected", "Reconnected")])
def test_a_connect_success_joins_the_invocations_metrics(metrics, capsys, outcome, name):
    report = FlowReport()
    report.succeed(FlowOutcome(outcome))
    count_flow(metrics, report)
    assert emf_documents(capsys.readouterr().out) == []  # not yet: flushed once, at the end of the invocation
    metrics.flush_metrics()
    (document,) = emf_documents(capsys.readouterr().out)
    assert document["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]]
    assert document[name] == [1.0]


def test_a_request_that_did_nothing_counts_nothing(metrics, capsys):
    count_flow(metrics, FlowReport())
    assert not metrics.metric_set and emf_documents(capsys.readouterr().out) == []


# ------------------------------------------------------------------ the token SDK
class FakeStore:
    def __init__(self, expires_in: int = 3600, status: ConnectionStatus = ConnectionStatus.ACTIVE) -> None:
        self.row = Connection(connection_id="acme-1", tenant_id="1", company_name=None, scopes=(), issuer="i",
                              status=status, expires_at=int(1_000_000 + expires_in), version=1,
                              created_at=0, updated_at=0, refresh_at=None)
        self.reads = 0

    def get_connection(self, connection_id: str, consistent: bool = False):
        self.reads += 1
        version = f"v{self.row.version}".encode()
        return (self.row, SealedTokens(access=version, refresh=version)) if connection_id == "acme-1" else None


class FakeCipher:
    def decrypt_access(self, connection_id: str, sealed: SealedTokens) -> str:
        return f"access-{sealed.access.decode()}"


def reader(counts: ReadCounts, store: FakeStore | None = None, invoke=None) -> TokenReader:
    return TokenReader(store=store or FakeStore(), cipher=FakeCipher(), invoke=invoke or (lambda payload: {}),
                       clock=lambda: 1_000_000.0, counts=counts)


def test_readers_count_reads_and_cache_misses_without_io():
    counts = ReadCounts()
    store = FakeStore()
    tokens = reader(counts, store)
    for _ in range(3):
        assert tokens.get_access_token("acme-1") == "access-v1"
    assert store.reads == 1
    assert counts.take() == (3, 1)
    assert counts.take() == (0, 0)  # taking starts again from zero

    from invoiced_connect.sdk.tokens import ConnectionNotFound

    with pytest.raises(ConnectionNotFound):
        tokens.get_access_token("acme-2")
    assert counts.take() == (1, 1)  # a failed read is a read, and a miss

    store.row = Connection(**{**store.row.__dict__, "version": 2})  # refreshed meanwhile
    assert tokens.token_rejected("acme-1", "access-v1").access_token == "access-v2"  # after a 401: always read again
    assert counts.take() == (1, 1)


def test_the_runtime_readers_count_into_the_process_counters_and_others_into_their_own(monkeypatch):
    from invoiced_connect import runtime

    counts = use_parts(monkeypatch).read_counts
    shared = TokenReader(store=FakeStore(), cipher=FakeCipher(), invoke=lambda p: {}, clock=lambda: 1_000_000.0,
                         counts=counts)
    shared.get_access_token("acme-1")
    TokenReader(store=FakeStore(), cipher=FakeCipher(), invoke=lambda p: {}, clock=lambda: 1_000_000.0,
                ).get_access_token("acme-1")  # counts into its own
    assert runtime.current().read_counts is counts
    assert counts.take() == (1, 1)


def test_add_token_metrics_emits_what_the_readers_counted(metrics, capsys, monkeypatch):
    counts = use_parts(monkeypatch).read_counts
    tokens = TokenReader(store=FakeStore(), cipher=FakeCipher(), invoke=lambda p: {}, clock=lambda: 1_000_000.0,
                         counts=counts)
    tokens.get_access_token("acme-1")
    tokens.get_access_token("acme-1")
    assert observability.add_token_metrics(metrics) == {"TokenReads": 2, "TokenCacheMisses": 1}
    metrics.flush_metrics()
    (document,) = emf_documents(capsys.readouterr().out)
    assert (document["TokenReads"], document["TokenCacheMisses"]) == ([2.0], [1.0])
    assert document["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]]
    assert observability.add_token_metrics(metrics) == {"TokenReads": 0, "TokenCacheMisses": 0}


# ------------------------------------------------------------------ logs and traces
@contextlib.contextmanager
def saved_levels(names):
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def test_libraries_that_log_request_data_are_held_at_warning():
    names = [*QUIET_LOGGERS, "botocore.endpoint", "urllib3.connectionpool", "botocore.credentials"]
    with saved_levels(names):
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)
        logging.getLogger("botocore.endpoint").setLevel(logging.DEBUG)  # a child set low on its own
        logging.getLogger("botocore.credentials").setLevel(logging.ERROR)  # quieter already: left alone
        logging.getLogger("urllib3.connectionpool").setLevel(logging.NOTSET)
        quiet_library_loggers()
        for name in [*QUIET_LOGGERS, "botocore.endpoint", "urllib3.connectionpool"]:
            assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING, name
            assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
        assert logging.getLogger("botocore.credentials").level == logging.ERROR


def test_valid_connection_ids_only_are_logged():
    assert observability.loggable_connection_id("acme-1") == "acme-1"
    for value in (None, "", "bad id", "../x", 42, "x" * 200):
        assert observability.loggable_connection_id(value) is None


class FakeLogger:
    def __init__(self) -> None:
        self.keys: dict[str, str] = {}
        self.correlation_id: str | None = None

    def append_keys(self, **keys):
        self.keys.update(keys)

    def remove_keys(self, names):
        for name in names:
            self.keys.pop(name, None)

    def get_correlation_id(self):
        return self.correlation_id

    def set_correlation_id(self, value):
        self.correlation_id = value


def test_a_record_scope_keys_the_log_lines_and_annotates_a_subsegment():
    logger = FakeLogger()
    tracer = type("T", (), {"provider": FakeProvider()})()
    scope = observability.record_scope(logger, tracer)
    with scope("m-1", "acme-1") as facts:
        assert logger.keys == {"message_id": "m-1", "connection_id": "acme-1"}
        facts["outcome"] = "refreshed"
    assert logger.keys == {}
    (subsegment,) = tracer.provider.subsegments
    assert subsegment.annotations == {"connection_id": "acme-1", "outcome": "refreshed"}
    assert subsegment.metadata == {}

    with pytest.raises(RuntimeError), scope("m-2", None):
        assert logger.keys == {"message_id": "m-2"}
        raise RuntimeError("boom")
    assert logger.keys == {}


def test_correlate_keeps_an_id_already_set_and_else_uses_the_request_id():
    logger = FakeLogger()
    context = type("C", (), {"aws_request_id": "req-1"})()
    observability.correlate(logger, context)
    assert logger.correlation_id == "req-1"
    logger.correlation_id = "event-1"
    observability.correlate(logger, context)
    assert logger.correlation_id == "event-1"
