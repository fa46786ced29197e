"""The scheduler: find what is due on the sharded due-index and queue it.

Each run queries every shard of the sparse ``due-index`` for
``refresh_at <= now + window`` (keys only). Only due connections (and
kept-aside tokens waiting for recovery) are in that range, so the items read
grow with the number due, not with the table. Each becomes one SQS message
``{"connection_id": .., "kind": "refresh" | "recover"}`` for the worker.
Messages are only nudges: the worker re-checks the row, so a duplicate or a
lost message costs nothing (the next run finds the connection again).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from invoiced_connect.cloud import aws
from invoiced_connect.core.metrics import CONNECTIONS_DUE, CONNECTIONS_QUEUED
from invoiced_connect.storage.store import DUE_SHARDS, DueKey, TokenStore

logger = logging.getLogger(__name__)

SQS_BATCH = 10
SHARD_THREADS = 4


@dataclass
class ScheduleReport:
    due: int = 0
    items_read: int = 0
    queued: int = 0
    failed: int = 0
    shards: int = 0
    stopped_early: bool = False
    kinds: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"due": self.due, "items_read": self.items_read, "queued": self.queued, "failed": self.failed,
                "shards": self.shards, "stopped_early": self.stopped_early, "kinds": dict(self.kinds)}

    def metrics(self) -> dict[str, int]:
        """``ConnectionsDue`` and ``ConnectionsQueued`` for this run."""
        return {CONNECTIONS_DUE: self.due, CONNECTIONS_QUEUED: self.queued}


def message_for(key: DueKey) -> str:
    return json.dumps({"connection_id": key.connection_id, "kind": "recover" if key.rescue else "refresh"})


class Scheduler:
    def __init__(
        self,
        *,
        store: TokenStore,
        queue_url: str,
        window_seconds: int,
        sqs_factory: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.time,
        shards: int = DUE_SHARDS,
    ) -> None:
        self.store = store
        self.queue_url = queue_url
        self.window_seconds = window_seconds
        self._sqs_factory = sqs_factory or aws.lazy_client("sqs")
        self.clock = clock
        self.shards = shards

    def run(self, remaining_seconds: Callable[[], float] = lambda: 900.0) -> ScheduleReport:
        """Queue everything due now; stops early (next run continues) when time runs short."""
        until = int(self.clock()) + self.window_seconds
        reports = []
        with ThreadPoolExecutor(max_workers=SHARD_THREADS) as pool:
            for report in pool.map(lambda shard: self._shard(shard, until, remaining_seconds), range(self.shards)):
                reports.append(report)
        total = ScheduleReport()
        for report in reports:
            total.due += report.due
            total.items_read += report.items_read
            total.queued += report.queued
            total.failed += report.failed
            total.shards += 1
            total.stopped_early |= report.stopped_early
            for kind, count in report.kinds.items():
                total.kinds[kind] = total.kinds.get(kind, 0) + count
        logger.info("schedule run", extra=total.as_dict())
        return total

    def _shard(self, shard: int, until: int, remaining_seconds: Callable[[], float]) -> ScheduleReport:
        report = ScheduleReport()
        for keys, read in self.store.due(shard, until):
            report.items_read += read
            report.due += len(keys)
            for key in keys:
                kind = "recover" if key.rescue else "refresh"
                report.kinds[kind] = report.kinds.get(kind, 0) + 1
            self._send(keys, report)
            if remaining_seconds() < 10:
                report.stopped_early = True
                break
        return report

    def _send(self, keys: Iterable[DueKey], report: ScheduleReport) -> None:
        keys = list(keys)
        sqs = self._sqs_factory()
        for start in range(0, len(keys), SQS_BATCH):
            batch = keys[start:start + SQS_BATCH]
            response = sqs.send_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(number), "MessageBody": message_for(key)} for number, key in enumerate(batch)],
            )
            report.queued += len(response.get("Successful", []))
            failed = response.get("Failed", [])
            if failed:
                report.failed += len(failed)
                logger.warning("some due connections were not queued (the next run retries)",
                               extra={"count": len(failed)})
