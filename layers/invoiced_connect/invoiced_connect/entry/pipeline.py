"""Glue of the refresh pipeline's two functions: the scheduler (EventBridge
Scheduler, every few minutes) and the refresh worker (SQS), with this
execution environment's parts (:mod:`invoiced_connect.runtime`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from invoiced_connect import runtime
from invoiced_connect.lifecycle.scheduler import ScheduleReport
from invoiced_connect.lifecycle.worker import BatchReport, RecordScope, process_batch, queue_settle_checks


def run_schedule(remaining_seconds: Callable[[], float]) -> ScheduleReport:
    """Queue what is due on the due-index."""
    return runtime.current().scheduler.run(remaining_seconds)


def refresh_batch(records: Sequence[Mapping[str, Any]], remaining_seconds: Callable[[], float],
                  record_scope: RecordScope) -> BatchReport:
    """Refresh each queued connection under its lease; a lost answer goes back
    on the queue, delayed until its probe is due (when the queue is configured)."""
    current = runtime.current()
    refresher = current.refresher
    report = process_batch(records, refresher, remaining_seconds, reserve_seconds=refresher.policy.lease_seconds / 2,
                           record_scope=record_scope)
    if report.settle_checks and current.settings.refresh_queue_url:
        queue_settle_checks(current.client("sqs"), current.settings.refresh_queue_url, report.settle_checks)
    return report
