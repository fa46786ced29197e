"""A tap on the template's EventBridge buses: every event published there, for tests and the console.

moto delivers the events put on a custom bus to the rules' SQS targets (it
never invokes Lambda targets). The tap is one SQS queue and, on each bus, a
rule that matches every event (``{"source": [{"prefix": ""}]}``) with the
queue as its target. :meth:`EventTap.drain` reads what arrived; the events
accumulate in :attr:`EventTap.events` in arrival order.

moto leaves ``account`` out of delivered events; the tap fills it in as
EventBridge has it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from local.aws import boto_client
from local.template import ACCOUNT_ID

logger = logging.getLogger(__name__)

MATCH_EVERYTHING = {"source": [{"prefix": ""}]}


class EventTap:
    """``bus_names``: the buses to listen on; ``name``: for the queue and the rules (unique per moto)."""

    def __init__(self, endpoint_url: str, region: str, bus_names: Sequence[str], *, name: str,
                 account_id: str = ACCOUNT_ID) -> None:
        self.bus_names = list(bus_names)
        self.name = name[-64:]
        self.account_id = account_id
        self.sqs = boto_client("sqs", endpoint_url, region)
        self.eventbridge = boto_client("events", endpoint_url, region)
        self.queue_url = ""
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def create(self) -> EventTap:
        """The queue, and on each bus a rule matching everything that targets it."""
        if not self.bus_names or self.queue_url:
            return self
        self.queue_url = self.sqs.create_queue(QueueName=self.name)["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(QueueUrl=self.queue_url,
                                                  AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        for bus in self.bus_names:
            self.eventbridge.put_rule(Name=self.name, EventBusName=bus, EventPattern=json.dumps(MATCH_EVERYTHING),
                                      State="ENABLED", Description="local stack: every event, for the console")
            self.eventbridge.put_targets(Rule=self.name, EventBusName=bus,
                                         Targets=[{"Id": "local-tap", "Arn": queue_arn}])
        return self

    def drain(self) -> list[dict[str, Any]]:
        """Read every event that arrived since the last drain; they are also added to :attr:`events`."""
        if not self.queue_url:
            return []
        with self._lock:  # one drain at a time, so events keep their order
            new: list[dict[str, Any]] = []
            while True:
                messages = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10,
                                                    WaitTimeSeconds=0).get("Messages") or []
                if not messages:
                    break
                for message in messages:
                    try:
                        event = json.loads(message["Body"])
                    except ValueError:
                        logger.warning("the event tap got a message that is not JSON")
                        continue
                    if isinstance(event, dict):
                        event.setdefault("account", self.account_id)
                        new.append(event)
                self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                    {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
                    for index, message in enumerate(messages)
                ])
            self.events.extend(new)
            return new

    def all_events(self) -> list[dict[str, Any]]:
        """Every event seen so far (drains first)."""
        self.drain()
        with self._lock:
            return list(self.events)

    def watch(self, callback: Callable[[dict[str, Any]], None], interval: float = 0.5) -> EventTap:
        """Call ``callback`` for each new event, from a thread that drains every ``interval`` seconds."""
        if self._watcher is not None or not self.queue_url:
            return self

        def run() -> None:
            while not self._stop.wait(interval):
                try:
                    for event in self.drain():
                        callback(event)
                except Exception as exc:  # noqa: BLE001 - keep watching; moto may be stopping
                    logger.debug("event tap: %s", type(exc).__name__)

        self._stop.clear()
        self._watcher = threading.Thread(target=run, name="event-tap", daemon=True)
        self._watcher.start()
        return self

    def stop(self, *, remove: bool = False) -> None:
        """Stop watching; with ``remove``, delete the rules and the queue too."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None
        if remove and self.queue_url:
            from botocore.exceptions import ClientError

            for bus in self.bus_names:
                try:
                    self.eventbridge.remove_targets(Rule=self.name, EventBusName=bus, Ids=["local-tap"])
                    self.eventbridge.delete_rule(Name=self.name, EventBusName=bus)
                except ClientError as exc:
                    logger.debug("event tap rule on %s: %s", bus, exc)
            self.sqs.delete_queue(QueueUrl=self.queue_url)
            self.queue_url = ""


def event_summary(event: dict[str, Any]) -> str:
    """One console line for an event: its detail-type and ``detail.connection_id``, nothing else of the detail."""
    detail = event.get("detail") if isinstance(event.get("detail"), dict) else {}
    connection_id = detail.get("connection_id")
    if isinstance(connection_id, str):
        suffix = f" connection_id={connection_id if connection_id.isprintable() else repr(connection_id)}"
    else:
        suffix = ""
    return f"event {event.get('detail-type', '?')}{suffix}"
