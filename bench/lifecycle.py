"""The token lifecycle, measured in one run against the local stack.

    make bench            # or: python -m bench.lifecycle [--connections N] [--latency-ms MS]

Prints a Markdown table (paste it into the README):

* refreshes per second for N due connections, through the real pipeline
  (schedule -> SQS -> worker at the template's MaximumConcurrency), with an
  injected Invoiced latency, against the ideal N x latency / concurrency;
* items the scheduler's queries read, against the number due, in a table
  that also holds many connections that are not due;
* AWS calls per refresh, and per cold, warm and expired get_access_token;
* warm get_access_token latency;
* the app API: a warm token through the Lambda Invoke API against the
  in-process SDK, and the AWS calls of a warm token and a warm link.

Timings on a shared machine are noisy: read the ratios, not the absolutes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SERVICES = ("dynamodb", "kms", "secretsmanager", "sqs", "events", "lambda")


class CallCounter:
    """Counts AWS API calls made through the package's shared boto3 clients."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.only_thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def attach(self) -> None:
        from invoiced_connect import aws

        for service in SERVICES:
            aws.client(service).meta.events.register("before-call", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        if self.only_thread is not None and threading.current_thread() is not self.only_thread:
            return
        with self._lock:
            self.calls[f"{model.service_model.service_name}:{model.name}"] += 1

    @contextmanager
    def measure(self, *, this_thread_only: bool = False) -> Iterator[Counter[str]]:
        with self._lock:
            self.calls.clear()
        self.only_thread = threading.current_thread() if this_thread_only else None
        result: Counter[str] = Counter()
        try:
            yield result
        finally:
            with self._lock:
                result.update(self.calls)
            self.only_thread = None


def _plant_not_due(table: str, count: int) -> None:
    """Connections that are not due (fake tokens: the scheduler never reads them)."""
    from invoiced_connect.crypto import SealedTokens
    from invoiced_connect.models import TokenSet
    from invoiced_connect.store import TokenStore

    store, now = TokenStore(table), int(time.time())
    for number in range(count):
        store.save_connection(
            connection_id=f"idle-{number}", tokens=TokenSet("a", "r", now + 3600, "1"), ciphertext=SealedTokens(access=b"x", refresh=b"x"),
            company_name=None, issuer="https://invoiced.test", now=now, refresh_at=now + 86400 * (1 + number % 30),
        )


def _fmt(calls: Counter[str], per: int = 1) -> str:
    if not calls:
        return "0"
    total = sum(calls.values()) / per
    parts = ", ".join(f"{name.split(':')[1]} {count / per:g}" for name, count in sorted(calls.items()))
    return f"{total:g} ({parts})"


def run(connections: int, latency_ms: float, not_due_factor: int) -> list[tuple[str, str]]:
    from local.seed import connect, expire, make_due, row
    from local.stack import LocalStack

    rows: list[tuple[str, str]] = []
    with LocalStack(auto_schedule=False) as stack:
        from local.template import load_template

        concurrency = int(load_template(stack.template_path)["Parameters"]["RefreshConcurrency"]["Default"])
        counter = CallCounter()
        counter.attach()
        def pipeline(prefix: str, latency: float) -> tuple[float, int, int, bool, dict[str, Any], Counter[str]]:
            ids = [f"{prefix}-{number}" for number in range(connections)]
            for connection_id in ids:
                connect(stack, connection_id)
            for connection_id in ids:
                make_due(stack, connection_id)
            stack.invoiced.faults.latency_ms = latency
            before = stack.invoiced.token_request_count("refresh_token")
            with counter.measure() as calls:
                started = time.perf_counter()
                report = stack.fire_schedule("SchedulerFunction")["SchedulerFunction"]
                drained = stack.wait_for_queues(timeout=600)
                elapsed = time.perf_counter() - started
            stack.invoiced.faults.latency_ms = 0
            refreshed = sum(1 for connection_id in ids if row(stack, connection_id).version == 2)
            token_calls = stack.invoiced.token_request_count("refresh_token") - before
            return elapsed, refreshed, token_calls, drained, report, calls

        # 1. The pipeline with no latency (this machine's own cost), then under Invoiced latency.
        _plant_not_due(stack.table_name, connections * not_due_factor)
        overhead, *_ = pipeline("bench-fast", 0)
        elapsed, refreshed, token_calls, drained, report, pipeline_calls = pipeline("bench", latency_ms)
        ids = [f"bench-{number}" for number in range(connections)]
        ideal = connections * latency_ms / 1000 / concurrency
        rows += [
            ("Due connections refreshed (token requests)", f"{refreshed} of {connections} ({token_calls})"
             + ("" if drained else " - queue not drained!")),
            ("Pipeline with no Invoiced latency (this machine's cost: moto, KMS, local Invoiced, one process)",
             f"{connections / overhead:.1f}/s in {overhead:.2f} s"),
            (f"Refresh throughput, Invoiced latency {latency_ms:g} ms, concurrency {concurrency}",
             f"{connections / elapsed:.1f}/s in {elapsed:.2f} s; ideal N x latency / concurrency = {ideal:.2f} s: "
             f"**{elapsed / ideal:.2f}x** the ideal (**{elapsed / max(ideal, overhead):.2f}x** the larger of the "
             "ideal and this machine's own cost)"),
            ("Scheduler: items read / due (table holds " f"{connections * (not_due_factor + 2)} connections)",
             f"{report['items_read']} / {report['due']} (**{report['items_read'] / max(1, report['due']):.2f}**)"),
        ]
        scheduler_share = Counter({k: v for k, v in pipeline_calls.items() if k in ("dynamodb:Query", "sqs:SendMessageBatch")})
        worker_calls = pipeline_calls - scheduler_share
        rows.append(("AWS calls per refresh (worker)", _fmt(worker_calls, connections)))
        rows.append(("AWS calls per scheduler run", _fmt(scheduler_share)))

        # 2. The reader SDK, as a consumer Lambda uses it (refresh via the Invoke API).
        from invoiced_connect import tokens

        tokens.default_reader.cache_clear()
        reader = tokens.default_reader()
        target = ids[0]
        with counter.measure(this_thread_only=True) as cold:
            reader.get_access_token(target)
        with counter.measure(this_thread_only=True) as warm:
            reader.get_access_token(target)
        expire(stack, target)
        reader.forget(target)
        with counter.measure(this_thread_only=True) as expired:
            reader.get_access_token(target)
        rows += [
            ("AWS calls, cold get_access_token", _fmt(cold)),
            ("AWS calls, warm get_access_token", _fmt(warm)),
            ("AWS calls, get_access_token of an expiring token (reader side)", _fmt(expired)),
        ]
        samples = []
        for _ in range(20):
            started = time.perf_counter()
            for _ in range(5000):
                reader.get_access_token(target)
            samples.append((time.perf_counter() - started) / 5000)
        rows.append(("Warm get_access_token latency (median of 20 x 5000 calls)",
                     f"{statistics.median(samples) * 1e6:.2f} µs"))
        rows += _app_api(stack, counter, target, statistics.median(samples))
    return rows


def _app_api(stack: Any, counter: CallCounter, target: str, in_process_seconds: float) -> list[tuple[str, str]]:
    """The app API over the (local) Lambda Invoke API: what a caller in any language pays."""
    import json

    lam = stack.client("lambda")

    def invoke(function: str, payload: dict[str, Any]) -> dict[str, Any]:
        answer = lam.invoke(FunctionName=f"{stack.stack_name}-{function}", Payload=json.dumps(payload).encode())
        return json.loads(answer["Payload"].read())

    from invoiced_connect import app_api

    app_api.shared_vendor.cache_clear()  # a cold tokens function: what the counter sees inside it
    with counter.measure() as cold_token:
        invoke("tokens", {"connection_id": target})
    with counter.measure() as warm_token:
        invoke("tokens", {"connection_id": target})
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(40):
            invoke("tokens", {"connection_id": target})
        samples.append((time.perf_counter() - started) / 40)
    invoke_seconds = statistics.median(samples)
    invoke("links", {"connection_id": target})  # the first reads the signing key
    with counter.measure() as warm_link:
        invoke("links", {"connection_id": target})
    # The counter sees the functions' own clients (the caller's Invoke goes through another one).
    return [
        ("Warm token through the Lambda Invoke API (tokens function) vs the in-process SDK, median latency",
         f"{invoke_seconds * 1e3:.2f} ms vs {in_process_seconds * 1e6:.2f} µs (the local Invoke round trip on "
         "loopback, 5 x 40 calls)"),
        ("AWS calls per token through the Invoke API, inside the function (besides the caller's one Invoke): "
         "cold; warm", f"{_fmt(cold_token)}; **{_fmt(warm_token)}**"),
        ("AWS calls per warm link (links function), inside the function (besides the caller's one Invoke)",
         _fmt(warm_link)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lifecycle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--latency-ms", type=float, default=1000.0)
    parser.add_argument("--not-due-factor", type=int, default=9, help="not-due connections per due one")
    args = parser.parse_args(argv)
    os.environ.setdefault("HTTP_TIMEOUT_SECONDS", "10")
    import logging

    logging.disable(logging.WARNING)  # the table, not the logs
    with contextlib.redirect_stdout(io.StringIO()):  # the functions' JSON logs and metrics
        rows = run(args.connections, args.latency_ms, args.not_due_factor)
    print(f"\nToken lifecycle, local stack, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}\n")
    print("| measure | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
