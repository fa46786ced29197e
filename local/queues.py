"""Lambda's SQS event source mappings, played on loopback against moto's SQS.

For every function event of ``Type: SQS`` in the template, a poller
long-polls the queue and invokes the function with Lambda's SQS event, the
way Lambda's pollers do:

* at most ``BatchSize`` messages per invocation (default 10; one
  ``ReceiveMessage`` per batch, so at most 10 even if BatchSize is larger:
  the batching window is not played);
* at most ``ScalingConfig.MaximumConcurrency`` batches in flight at once
  (default 5, what Lambda starts with);
* after the invocation, messages are deleted as Lambda deletes them: none if
  the function raised; with ``FunctionResponseTypes: [ReportBatchItemFailures]``
  all but those in the response's ``batchItemFailures`` (a response Lambda
  cannot read fails the whole batch); otherwise all. What is not deleted
  comes back after the queue's visibility timeout, and the queue's
  RedrivePolicy (applied by moto's SQS) moves it to the dead-letter queue
  after ``maxReceiveCount`` receives.

``Enabled: false`` sources are not polled; ``FilterCriteria`` and
``MaximumBatchingWindowInSeconds`` are not applied locally (a warning says so).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from local.aws import boto_client
from local.lambda_api import log_failure
from local.lambda_runtime import Activity, LocalFunction
from local.template import Resolver, TemplateError, resources_of_type

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 10
DEFAULT_MAXIMUM_CONCURRENCY = 5  # Lambda's initial number of SQS pollers
MAX_MESSAGES_PER_RECEIVE = 10  # SQS's limit
WAIT_TIME_SECONDS = 1  # short long-polls, so stopping is quick
_COUNT_ATTRIBUTES = ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                     "ApproximateNumberOfMessagesDelayed")


# ---------------------------------------------------------------- from the template
@dataclass(frozen=True)
class SqsEventSource:
    """One ``Type: SQS`` event of a function, resolved."""

    function: str  # logical id
    event: str  # the event's name under Events
    queue_arn: str
    batch_size: int = DEFAULT_BATCH_SIZE
    maximum_concurrency: int = DEFAULT_MAXIMUM_CONCURRENCY
    report_batch_item_failures: bool = False
    enabled: bool = True

    @property
    def name(self) -> str:
        return f"{self.function}.{self.event}"

    @property
    def queue_name(self) -> str:
        return self.queue_arn.rsplit(":", 1)[-1]

    @property
    def region(self) -> str:
        return self.queue_arn.split(":")[3]

    @property
    def messages_per_receive(self) -> int:
        return min(self.batch_size, MAX_MESSAGES_PER_RECEIVE)


def sqs_event_sources(template: Mapping[str, Any], resolver: Resolver) -> list[SqsEventSource]:
    """Every ``Type: SQS`` event of the template's functions, in template order."""
    sources = []
    for logical_id, resource in resources_of_type(template, "AWS::Serverless::Function").items():
        for event_name, event in ((resource.get("Properties") or {}).get("Events") or {}).items():
            if event.get("Type") != "SQS":
                continue
            props = resolver.resolve(event.get("Properties") or {})
            queue_arn = props.get("Queue")
            if not isinstance(queue_arn, str) or not queue_arn.startswith("arn:") or ":sqs:" not in queue_arn:
                raise TemplateError(f"{logical_id}.{event_name}: Queue must be a queue ARN, got {queue_arn!r}")
            for unsupported in ("FilterCriteria", "MaximumBatchingWindowInSeconds"):
                if props.get(unsupported):
                    logger.warning("%s.%s: %s is not applied locally", logical_id, event_name, unsupported)
            scaling = props.get("ScalingConfig") or {}
            sources.append(SqsEventSource(
                function=logical_id,
                event=event_name,
                queue_arn=queue_arn,
                batch_size=_positive(props.get("BatchSize", DEFAULT_BATCH_SIZE), "BatchSize", logical_id),
                maximum_concurrency=_positive(scaling.get("MaximumConcurrency", DEFAULT_MAXIMUM_CONCURRENCY),
                                              "MaximumConcurrency", logical_id),
                report_batch_item_failures="ReportBatchItemFailures" in (props.get("FunctionResponseTypes") or []),
                enabled=str(props.get("Enabled", True)).lower() != "false",
            ))
    return sources


def _positive(value: Any, what: str, logical_id: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise TemplateError(f"{logical_id}: {what} must be a whole number, got {value!r}") from None
    if number < 1:
        raise TemplateError(f"{logical_id}: {what} must be at least 1, got {number}")
    return number


# ---------------------------------------------------------------- events and responses
def sqs_record(message: Mapping[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """One record of Lambda's SQS event from a ``ReceiveMessage`` message."""
    attributes = message.get("Attributes") or {}
    record: dict[str, Any] = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": {
            name: attributes[name]
            for name in ("ApproximateReceiveCount", "SentTimestamp", "SenderId", "ApproximateFirstReceiveTimestamp",
                         "SequenceNumber", "MessageGroupId", "MessageDeduplicationId", "AWSTraceHeader")
            if name in attributes
        },
        "messageAttributes": {
            name: _message_attribute(value) for name, value in (message.get("MessageAttributes") or {}).items()
        },
        "md5OfBody": message.get("MD5OfBody", ""),
    }
    if message.get("MD5OfMessageAttributes"):
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    record.update(eventSource="aws:sqs", eventSourceARN=queue_arn, awsRegion=region)
    return record


def _message_attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    # Lambda's spelling: camelCase, binary values base64, the list fields always present.
    converted: dict[str, Any] = {}
    if "StringValue" in value:
        converted["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        binary = value["BinaryValue"]
        converted["binaryValue"] = base64.b64encode(binary).decode("ascii") if isinstance(binary, bytes) else binary
    converted["stringListValues"] = list(value.get("StringListValues") or [])
    converted["binaryListValues"] = [
        base64.b64encode(item).decode("ascii") if isinstance(item, bytes) else item
        for item in value.get("BinaryListValues") or []
    ]
    converted["dataType"] = value.get("DataType", "String")
    return converted


def sqs_event(messages: Sequence[Mapping[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    """Lambda's SQS event for a batch of received messages."""
    return {"Records": [sqs_record(message, queue_arn, region) for message in messages]}


def failed_message_ids(response: Any, message_ids: Sequence[str]) -> set[str]:
    """The messages a ``ReportBatchItemFailures`` response says failed, as Lambda reads it.

    Success (none failed): ``None``, ``{}``, no or an empty or ``null``
    ``batchItemFailures``. The whole batch failed: a response that is not an
    object, ``batchItemFailures`` that is not a list, an entry without a
    non-empty ``itemIdentifier`` or naming a message not in the batch.
    """
    everything = set(message_ids)
    if response is None:
        return set()
    if not isinstance(response, dict):
        return everything
    failures = response.get("batchItemFailures")
    if failures is None:
        return set()
    if not isinstance(failures, list):
        return everything
    failed = set()
    for entry in failures:
        identifier = entry.get("itemIdentifier") if isinstance(entry, dict) else None
        if not isinstance(identifier, str) or identifier not in everything:
            return everything
        failed.add(identifier)
    return failed


# ---------------------------------------------------------------- the pollers
@dataclass
class PollerStats:
    """What one event source has done so far."""

    invocations: int = 0  # batches handed to the function
    messages: int = 0  # messages received (a redelivered message counts again)
    deleted: int = 0  # messages deleted after their invocation
    failed: int = 0  # messages left for redelivery (function error or reported failure)
    errors: int = 0  # invocations that raised
    max_in_flight: int = 0  # the most batches that were in flight at once
    in_flight: int = 0


@dataclass
class _Batch:
    messages: list[dict[str, Any]]
    started: float = field(default_factory=time.monotonic)


class QueuePoller:
    """Polls one queue for one function (see the module's docstring)."""

    def __init__(self, source: SqsEventSource, function: LocalFunction, sqs: Any, *,
                 activity: Activity | None = None) -> None:
        self.source = source
        self.function = function
        self.sqs = sqs
        self.activity = activity or Activity()
        self.stats = PollerStats()
        self.queue_url = ""
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(source.maximum_concurrency)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._workers: set[threading.Thread] = set()

    def start(self) -> QueuePoller:
        if self._thread is None:
            self.queue_url = self.sqs.get_queue_url(QueueName=self.source.queue_name)["QueueUrl"]
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll, name=f"sqs-poller-{self.source.name}", daemon=True)
            self._thread.start()
        return self

    def request_stop(self) -> None:
        """From now on no batch starts (see :meth:`stop`)."""
        with self._lock:
            self._stop.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop: no batch starts after this; wait up to ``timeout`` for the batches in flight.

        The receiving thread may still be in its (one second) long poll; it
        does not wait for it: what that poll returns is made visible again,
        never invoked.
        """
        self.request_stop()
        deadline = time.monotonic() + timeout
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
        if any(worker.is_alive() for worker in workers):
            logger.warning("%s: stopped with batches still in flight", self.source.name)
        self._thread = None

    def is_empty(self) -> bool:
        """No message in the queue: visible, in flight (not visible) or delayed."""
        attributes = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=list(_COUNT_ATTRIBUTES))
        return all(int(attributes["Attributes"].get(name, "0")) == 0 for name in _COUNT_ATTRIBUTES)

    # -- the receiving thread --------------------------------------------------
    def _poll(self) -> None:
        while not self._stop.is_set():
            if not self._slots.acquire(timeout=0.2):  # all MaximumConcurrency batches in flight
                continue
            try:
                messages = self._receive()
            except Exception as exc:  # noqa: BLE001 - moto gone or restarting: back off, try again
                self._slots.release()
                if not self._stop.is_set():
                    logger.warning("%s: ReceiveMessage failed: %s", self.source.name, type(exc).__name__)
                    self._stop.wait(1.0)
                continue
            if not messages:
                self._slots.release()
                continue
            with self._lock:  # decided together with request_stop: no batch starts once stopped
                stopping = self._stop.is_set()
                if not stopping:
                    self._dispatch(_Batch(messages))
            if stopping:  # received while stopping: give them back rather than hide them
                self._slots.release()
                self._give_back(messages)
                break

    def _give_back(self, messages: Sequence[Mapping[str, Any]]) -> None:
        try:
            self.sqs.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"], "VisibilityTimeout": 0}
                for index, message in enumerate(messages)
            ])
        except Exception as exc:  # noqa: BLE001 - they come back after the visibility timeout anyway
            logger.debug("%s: could not give messages back: %s", self.source.name, type(exc).__name__)

    def _receive(self) -> list[dict[str, Any]]:
        response = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.source.messages_per_receive,
            WaitTimeSeconds=WAIT_TIME_SECONDS,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        return list(response.get("Messages") or [])

    def _dispatch(self, batch: _Batch) -> None:
        """Start a worker for ``batch`` (called holding ``self._lock``)."""
        self.activity.begin()
        self.stats.in_flight += 1
        self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
        worker = threading.Thread(target=self._process, args=(batch,), name=f"sqs-batch-{self.source.name}",
                                  daemon=True)
        self._workers.add(worker)
        worker.start()

    # -- one batch -------------------------------------------------------------
    def _process(self, batch: _Batch) -> None:
        try:
            ids = [message["MessageId"] for message in batch.messages]
            event = sqs_event(batch.messages, self.source.queue_arn, self.source.region)
            raised = False
            request_id = str(uuid.uuid4())
            try:
                response = self.function.invoke(event, request_id=request_id)
            except Exception as exc:  # noqa: BLE001 - a function error: the whole batch comes back
                log_failure(self.function, exc, request_id)
                raised, response = True, None
            if raised:
                failed = set(ids)
            elif self.source.report_batch_item_failures:
                failed = failed_message_ids(response, ids)
            else:
                failed = set()
            # Counted before the deletes: once the queue looks empty, the stats are final.
            with self._lock:
                self.stats.invocations += 1
                self.stats.messages += len(ids)
                self.stats.errors += int(raised)
                self.stats.failed += len(failed)
                self.stats.deleted += len(ids) - len(failed)
            self._delete([message for message in batch.messages if message["MessageId"] not in failed])
            level = logging.INFO if not failed else logging.WARNING
            logger.log(level, "%s: batch of %d from %s -> %d deleted, %d left for redelivery (%d ms)",
                       self.source.function, len(ids), self.source.queue_name, len(ids) - len(failed), len(failed),
                       (time.monotonic() - batch.started) * 1000)
        except Exception as exc:  # noqa: BLE001 - never let a batch thread die silently
            logger.warning("%s: batch handling failed: %s", self.source.name, type(exc).__name__)
        finally:
            with self._lock:
                self.stats.in_flight -= 1
                self._workers.discard(threading.current_thread())
            self._slots.release()
            self.activity.end()

    def _delete(self, messages: Sequence[Mapping[str, Any]]) -> None:
        for start in range(0, len(messages), 10):
            chunk = messages[start:start + 10]
            response = self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
                         for index, message in enumerate(chunk)],
            )
            for failure in response.get("Failed") or []:
                logger.warning("%s: could not delete a message: %s", self.source.name, failure.get("Code"))


class QueuePollers:
    """One :class:`QueuePoller` per enabled source, and a way to wait for them to be done.

    ``functions`` by logical id; ``activity`` counts every invocation in
    flight (share it with the Lambda API and the schedules so
    :meth:`wait_drained` also waits for those).
    """

    def __init__(
        self,
        sources: Sequence[SqsEventSource],
        functions: Mapping[str, LocalFunction],
        endpoint_url: str,
        *,
        activity: Activity | None = None,
        client_factory: Callable[[str, int], Any] | None = None,
    ) -> None:
        self.activity = activity or Activity()
        self.sources = list(sources)
        missing = {source.function for source in self.sources} - set(functions)
        if missing:
            raise ValueError(f"event sources name functions that were not given: {', '.join(sorted(missing))}")

        def default_factory(region: str, connections: int) -> Any:
            return boto_client("sqs", endpoint_url, region, max_pool_connections=connections)

        factory = client_factory or default_factory
        self.pollers: dict[str, QueuePoller] = {
            source.name: QueuePoller(source, functions[source.function],
                                     factory(source.region, source.maximum_concurrency + 5), activity=self.activity)
            for source in self.sources
            if source.enabled
        }

    def start(self) -> QueuePollers:
        for poller in self.pollers.values():
            poller.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        for poller in self.pollers.values():
            poller.request_stop()  # all at once, then wait for each one's batches
        for poller in self.pollers.values():
            poller.stop(timeout)

    @property
    def stats(self) -> dict[str, PollerStats]:
        """A copy of each source's :class:`PollerStats`, by ``Function.Event``."""
        return {name: PollerStats(**vars(poller.stats)) for name, poller in self.pollers.items()}

    def is_quiet(self) -> bool:
        """Every polled queue empty and nothing in flight, with nothing started in between."""
        in_flight, started = self.activity.snapshot()
        if in_flight:
            return False
        if not all(poller.is_empty() for poller in self.pollers.values()):
            return False
        return self.activity.snapshot() == (0, started)

    def wait_drained(self, timeout: float = 30.0, interval: float = 0.05) -> bool:
        """Wait until :meth:`is_quiet`; ``False`` if ``timeout`` seconds passed first.

        A message whose batch failed is in flight until its visibility
        timeout ends, then redelivered: the queue is drained when it was
        processed or moved to the dead-letter queue.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.is_quiet():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)

    def describe(self) -> list[str]:
        """One line per source, for the banner (dead-letter queues once started)."""
        lines = []
        for source in self.sources:
            failures = ", partial batch failures" if source.report_batch_item_failures else ""
            line = (f"{source.queue_name} -> {source.function} (batch {source.batch_size}, "
                    f"at most {source.maximum_concurrency} at once{failures})")
            poller = self.pollers.get(source.name)
            if poller is None:
                line += "  Enabled: false, not polled"
            elif poller.queue_url:
                redrive = redrive_of(poller.sqs, poller.queue_url)
                if redrive:
                    line += (f"; after {redrive['maxReceiveCount']} receives to "
                             f"{str(redrive['deadLetterTargetArn']).rsplit(':', 1)[-1]}")
            lines.append(line)
        return lines


def redrive_of(sqs: Any, queue_url: str) -> dict[str, Any] | None:
    """A queue's RedrivePolicy (``deadLetterTargetArn``, ``maxReceiveCount``), if it has one."""
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])["Attributes"]
    return json.loads(attributes["RedrivePolicy"]) if attributes.get("RedrivePolicy") else None
