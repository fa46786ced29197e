"""The refresh worker: one SQS batch of due connections, each on its own.

Each message names a connection (``kind`` "refresh") or kept-aside tokens to
recover ("recover"). Every outcome the refresher reports (including
transient failures, whose retry time is stored on the row) completes the
message: the due-index, not the queue, decides when to try again. Only an
unexpected error (AWS unavailable, a bug) fails a message, which SQS then
redelivers and, after five receipts, moves to the dead-letter queue. When
the invocation's remaining time is short, no new provider call is started
and the rest of the batch is handed back for redelivery.

Powertools' ``BatchProcessor`` runs the batch: it calls the record handler
for each message and answers with the ids of those whose handler raised
(Lambda's partial batch response); the handler here keeps the outcome
counts, the time budget and the settle checks in the :class:`BatchReport`.

One exception to "the due-index decides": a refresh whose answer was lost is
queued again, delayed until its probe is due (about 90 s, see
:mod:`invoiced_connect.lifecycle.refresh`), so it is settled then rather than at the
next scheduler run. If that send fails, the next run finds it anyway.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from invoiced_connect.core.metrics import REFRESH_DEFERRED, outcome_metric_name, refresh_aggregates
from invoiced_connect.core.models import InvalidConnectionId, validate_connection_id
from invoiced_connect.lifecycle.refresh import Mode, Refresher, RefreshOutcome
from invoiced_connect.lifecycle.scheduler import SQS_BATCH, message_for
from invoiced_connect.storage.store import DueKey

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

class RecordOutcome(StrEnum):
    """A message's outcome when the refresher gave none (else it is a RefreshOutcome's value)."""

    MALFORMED = "malformed"  # not a refresh message: dropped, never retried
    SKIPPED_CLIENT_AUTH = "skipped_client_auth"  # after a client-auth failure in this batch
    ERROR = "error"  # the refresher raised: redelivered


#: ``(message_id, connection_id) -> context manager`` around one record's handling
#: (log keys, a trace subsegment); the caller puts ``outcome`` in the dict it yields.
RecordScope = Callable[[str, str | None], contextlib.AbstractContextManager[dict[str, str]]]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _no_scope(message_id: str, connection_id: str | None) -> Iterator[dict[str, str]]:
    yield {}


#: SQS delays a message by at most this much.
MAX_DELAY_SECONDS = 900


class Redeliver(Exception):  # noqa: N818 - what the record handler asks for, not an error
    """Raised by the record handler: the batch processor reports the message
    as failed, so SQS delivers it again (deferred, or an unexpected error)."""


@dataclass
class BatchReport:
    outcomes: Counter[str] = field(default_factory=Counter)
    failed_ids: list[str] = field(default_factory=list)
    deferred: int = 0
    #: ``(connection_id, retry_at)`` of lost answers: queue them again for their probe.
    settle_checks: list[tuple[str, int]] = field(default_factory=list)

    def metrics(self) -> dict[str, int]:
        """Counts by CloudWatch metric name (``RefreshRefreshed``, ``RefreshUnknownOutcome``, ...)."""
        counts: dict[str, int] = {}
        for outcome, count in self.outcomes.items():
            name = outcome_metric_name(outcome)  # RefreshOutcome.metric_name for the refresher's outcomes
            counts[name] = counts.get(name, 0) + count
        if self.deferred:
            counts[REFRESH_DEFERRED] = self.deferred
        return counts

    def aggregates(self) -> dict[str, int]:
        """``RefreshFailed`` and ``RefreshPermanentFailure`` (see :func:`invoiced_connect.core.metrics.refresh_aggregates`)."""
        return refresh_aggregates(self.outcomes)

    def response(self) -> dict[str, Any]:
        """Lambda's partial batch response."""
        return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in self.failed_ids]}


def parse_message(body: str) -> tuple[str, str]:
    data = json.loads(body)
    if not isinstance(data, Mapping):
        raise ValueError("message is not a JSON object")
    kind = data.get("kind", "refresh")
    if kind not in ("refresh", "recover"):
        raise ValueError(f"unknown kind {kind!r}")
    return validate_connection_id(data.get("connection_id")), kind


def process_batch(
    records: Sequence[Mapping[str, Any]],
    refresher: Refresher,
    remaining_seconds: Callable[[], float],
    *,
    reserve_seconds: float,
    record_scope: RecordScope = _no_scope,
) -> BatchReport:
    """Refresh each record's connection; see the module doc for what fails a message.

    ``record_scope(message_id, connection_id)`` wraps the handling of each
    started record (log keys, a trace subsegment); it is given the outcome
    as ``"outcome"`` in the dict it yields.
    """
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType

    report = BatchReport()
    stop_client_calls = False

    def handle(record: SQSRecord) -> str:
        nonlocal stop_client_calls
        message_id = record.message_id
        if remaining_seconds() < reserve_seconds:
            report.deferred += 1
            raise Redeliver("deferred")  # not started: redelivered later
        try:
            connection_id, kind = parse_message(record.body)
        except (ValueError, InvalidConnectionId):
            connection_id, kind = None, None
        with record_scope(message_id, connection_id) as facts:
            if connection_id is None or kind is None:
                # Not ours to retry: a malformed message would only reach the DLQ later.
                logger.error("malformed refresh message dropped", extra={"message_id": message_id})
                outcome = RecordOutcome.MALFORMED
            elif stop_client_calls and kind == "refresh":
                outcome = RecordOutcome.SKIPPED_CLIENT_AUTH  # the next schedule run finds it again
            else:
                outcome, retry_at = _handle(refresher, connection_id, kind)
                if outcome == RefreshOutcome.UNKNOWN_OUTCOME and retry_at is not None:
                    report.settle_checks.append((connection_id, retry_at))
                if outcome == RefreshOutcome.CLIENT_AUTH_FAILED:
                    # Every refresh would fail the same way: do not send more bad credentials.
                    stop_client_calls = True
            facts["outcome"] = outcome
            report.outcomes[outcome] += 1
        if outcome == RecordOutcome.ERROR:
            raise Redeliver(outcome)  # outside the scope: the trace records the outcome, not an exception
        return outcome

    # Not raise_on_entire_batch_failure: a batch all of whose messages failed
    # or were deferred is answered with their ids, as any other, rather than
    # failing the invocation (which the worker's Errors alarm counts).
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    with processor(records=list(records), handler=handle):
        processor.process()
    report.failed_ids = [failure["itemIdentifier"] for failure in processor.response()["batchItemFailures"]]
    logger.info("refresh batch", extra={"outcomes": dict(report.outcomes), "deferred": report.deferred})
    return report


def _handle(refresher: Refresher, connection_id: str, kind: str) -> tuple[str, int | None]:
    """One message's outcome (the refresher's, or ``error``: the message is then
    redelivered) and when to try again, if the refresher said."""
    try:
        if kind == "recover":
            result = refresher.recover(connection_id)
        else:
            result = refresher.refresh(connection_id, mode=Mode.SCHEDULED)
    except Exception as exc:  # noqa: BLE001 - one failure never blocks the others
        logger.error("refresh failed unexpectedly",
                     extra={"connection_id": connection_id, "error_type": type(exc).__name__})
        return RecordOutcome.ERROR, None
    return result.outcome.value, result.retry_at


def queue_settle_checks(sqs: Any, queue_url: str, checks: Sequence[tuple[str, int]], *,
                        now: float | None = None) -> int:
    """Queue each ``(connection_id, retry_at)`` again, delayed until ``retry_at``
    (at most SQS's 15 minutes); best effort. Returns how many were queued."""
    moment = time.time() if now is None else now
    queued = 0
    for start in range(0, len(checks), SQS_BATCH):
        batch = checks[start:start + SQS_BATCH]
        entries = [{"Id": str(number),
                    "MessageBody": message_for(DueKey(connection_id, rescue=False, refresh_at=retry_at)),
                    "DelaySeconds": max(0, min(MAX_DELAY_SECONDS, int(retry_at - moment) + 1))}
                   for number, (connection_id, retry_at) in enumerate(batch)]
        try:
            response = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        except Exception as exc:  # noqa: BLE001 - the next scheduler run finds them anyway
            logger.warning("lost answers not queued for their probe (the next run finds them)",
                           extra={"count": len(entries), "error_type": type(exc).__name__})
            continue
        queued += len(response.get("Successful", []))
        if response.get("Failed"):
            logger.warning("some lost answers were not queued for their probe (the next run finds them)",
                           extra={"count": len(response["Failed"])})
    return queued
