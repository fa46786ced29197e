"""The token lifecycle, measured in one run against the local stack.

    make bench            # or: python -m bench.lifecycle [--connections N] [--table-size ROWS]
                          #        [--latency-ms MS] [--scheduler-rows ROWS] [--scheduler-due-share F]
                          #        [--counts-out FILE]

Prints a Markdown table (paste it into the README):

* refreshes per second for N due connections (default 1,000) in a table of
  ``--table-size`` connections (default 10,000), through the real pipeline
  (schedule -> SQS -> worker at the template's MaximumConcurrency), with an
  injected Invoiced latency, against the ideal N x latency / concurrency,
  and the same pipeline with no latency (this machine's own cost). The due
  connections are made through the normal seeding helpers (consent at the
  local Invoiced, code exchange, KMS encryption, as the callback does); the
  ones that are not due are written straight to the table (batch writes:
  fast set-up) as copies of a seeded connection's row, so in the format the
  package itself writes, with stand-in ciphertexts that nothing decrypts
  (the scheduler never reads those rows);
* items the scheduler's queries read against the number due, at that table
  size and again at ``--scheduler-rows`` rows (default 100,000) with
  ``--scheduler-due-share`` of them due (default 1%), all written straight
  to the table, with the wall time of that one scheduler run (the worker's
  pollers are stopped first, so nothing else runs meanwhile);
* AWS calls per refresh, per scheduler run (idle and busy), and per cold,
  warm, rechecked and expiring get_access_token; warm get_access_token
  latency;
* the app API: a warm token through the Lambda Invoke API against the
  in-process SDK, and the AWS calls of a warm token and a warm link;
* what the functions write to stdout (their JSON logs and EMF metrics) per
  worker invocation, per scheduler run and per token served, the CloudWatch metrics
  they publish, and the size of a connection's row: inputs of bench/cost.py.

``--counts-out FILE`` also writes the counts as JSON for bench/cost.py.
Timings on a shared machine are noisy: read the ratios and the counts.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SERVICES = ("dynamodb", "kms", "secretsmanager", "sqs", "events", "lambda")
#: What the scheduler's own calls are (the rest of a pipeline run is the worker's).
SCHEDULER_CALLS = ("dynamodb:Query", "sqs:SendMessageBatch")


class CallCounter:
    """Counts AWS API calls made through the package's shared boto3 clients, and for each operation
    the wall time during which at least one such call was in flight (``busy``)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.busy: Counter[str] = Counter()
        self.only_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._in_flight: Counter[str] = Counter()
        self._busy_since: dict[str, float] = {}

    def attach(self) -> None:
        from invoiced_connect import runtime

        for service in SERVICES:
            events = runtime.current().client(service).meta.events
            events.register("before-call", self._before)
            events.register("after-call", self._after)

    def _counted(self) -> bool:
        return self.only_thread is None or threading.current_thread() is self.only_thread

    def _before(self, model: Any, **_: Any) -> None:
        if not self._counted():
            return
        name = f"{model.service_model.service_name}:{model.name}"
        with self._lock:
            self.calls[name] += 1
            if not self._in_flight[name]:
                self._busy_since[name] = time.perf_counter()
            self._in_flight[name] += 1

    def _after(self, model: Any, **_: Any) -> None:
        if not self._counted():
            return
        name = f"{model.service_model.service_name}:{model.name}"
        with self._lock:
            if not self._in_flight[name]:
                return  # started before this measurement
            self._in_flight[name] -= 1
            if not self._in_flight[name]:
                self.busy[name] += time.perf_counter() - self._busy_since.pop(name)

    @contextmanager
    def measure(self, *, this_thread_only: bool = False) -> Iterator[Counter[str]]:
        with self._lock:
            self.calls.clear()
            self.busy.clear()
        self.only_thread = threading.current_thread() if this_thread_only else None
        result: Counter[str] = Counter()
        try:
            yield result
        finally:
            with self._lock:
                result.update(self.calls)
            self.only_thread = None


class Output:
    """What the functions write to stdout (JSON logs, EMF metrics), phase by phase."""

    def __init__(self) -> None:
        self.phases: dict[str, str] = {}

    @contextmanager
    def capture(self, phase: str) -> Iterator[None]:
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            yield
        self.phases[phase] = self.phases.get(phase, "") + buffer.getvalue()

    def bytes(self, phase: str) -> int:
        return len(self.phases.get(phase, "").encode("utf-8"))

    def metrics(self, phase: str) -> list[str]:
        """The distinct CloudWatch metrics in the phase's EMF documents: namespace, name, dimensions."""
        found = set()
        for line in self.phases.get(phase, "").splitlines():
            if not line.startswith("{") or '"_aws"' not in line:
                continue
            try:
                document = json.loads(line)
            except ValueError:
                continue
            for directive in document.get("_aws", {}).get("CloudWatchMetrics", []):
                for dimension_set in directive.get("Dimensions", []) or [[]]:
                    dimensions = ",".join(f"{name}={document.get(name)}" for name in dimension_set)
                    for metric in directive.get("Metrics", []):
                        found.add(f"{directive.get('Namespace')}/{metric.get('Name')} [{dimensions}]")
        return sorted(found)


# ---------------------------------------------------------------- rows written straight to the table
_STAND_IN = {"B": b"stand-in ciphertext: never decrypted"}


def like(template: dict[str, Any], connection_id: str, *, refresh_at: int) -> dict[str, Any]:
    """A copy of a real connection row (as the package's own writer stored it) for another
    connection id, due at ``refresh_at``, with stand-in ciphertexts.

    For rows the scheduler must see but nothing decrypts: the not-due ones
    (the due-index has them, its key condition skips them) and, for the
    large scheduler run, due ones whose messages no worker receives.
    """
    from invoiced_connect.storage.store import CONNECTION_PREFIX, due_shard

    item = {name: value for name, value in template.items() if name not in ("lease_owner", "lease_until")}
    item.update({
        "pk": {"S": CONNECTION_PREFIX + connection_id},
        "connection_id": {"S": connection_id},
        "due_shard": {"N": str(due_shard(connection_id))},
        "refresh_at": {"N": str(refresh_at)},
    })
    for name in ("access_ciphertext", "refresh_ciphertext", "token_ciphertext"):
        if name in item:
            item[name] = _STAND_IN
    return item


def write_rows(stack: Any, items: Iterator[dict[str, Any]]) -> int:
    """BatchWriteItem, 25 at a time (unprocessed items retried); how many were written."""
    db = stack.client("dynamodb")
    written, batch = 0, []

    def flush() -> None:
        pending = {stack.table_name: [{"PutRequest": {"Item": item}} for item in batch]}
        while pending:
            pending = db.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}

    for item in items:
        batch.append(item)
        if len(batch) == 25:
            flush()
            written += len(batch)
            batch = []
    if batch:
        flush()
        written += len(batch)
    return written


def plant(stack: Any, template: dict[str, Any], prefix: str, count: int, *, due: bool) -> int:
    """``count`` rows like ``template`` straight to the table, due now or in 1-30 days."""
    now = int(time.time())
    return write_rows(stack, (
        like(template, f"{prefix}-{number}", refresh_at=now - 60 if due else now + 86400 * (1 + number % 30))
        for number in range(count)
    ))


def raw_row(stack: Any, connection_id: str) -> dict[str, Any]:
    from invoiced_connect.storage.store import CONNECTION_PREFIX

    return stack.client("dynamodb").get_item(TableName=stack.table_name, ConsistentRead=True,
                                             Key={"pk": {"S": CONNECTION_PREFIX + connection_id}})["Item"]


def item_bytes(item: dict[str, Any]) -> int:
    """DynamoDB's size of an item: attribute names plus values (numbers about 1 byte per 2 digits)."""

    def value_size(value: dict[str, Any]) -> int:
        (kind, inner), = value.items()
        if kind == "S":
            return len(inner.encode("utf-8"))
        if kind == "N":
            return math.ceil(len(inner.lstrip("-").replace(".", "")) / 2) + 1
        if kind == "B":
            return len(inner)
        if kind in ("BOOL", "NULL"):
            return 1
        if kind == "L":
            return 3 + sum(1 + value_size(element) for element in inner)
        if kind == "M":
            return 3 + sum(1 + len(name.encode("utf-8")) + value_size(element) for name, element in inner.items())
        return sum(len(element) for element in inner)  # sets

    return sum(len(name.encode("utf-8")) + value_size(value) for name, value in item.items())


# ---------------------------------------------------------------- formatting
def per_operation(calls: Counter[str], operations: int) -> tuple[Counter[str], Counter[str]]:
    """Calls that every operation made (whole multiples), and what was left over for the run."""
    each: Counter[str] = Counter()
    left: Counter[str] = Counter()
    for name, count in calls.items():
        if count // operations:
            each[name] = count // operations
        if count % operations:
            left[name] = count % operations
    return each, left


def _fmt(calls: Counter[str], per: int = 1) -> str:
    if not calls:
        return "0"
    total = sum(calls.values()) / per
    parts = ", ".join(f"{name.split(':')[1]} {count / per:g}" for name, count in sorted(calls.items()))
    return f"{total:g} ({parts})"


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


# ---------------------------------------------------------------- the run
def run(connections: int, table_size: int, latency_ms: float, scheduler_rows: int,
        scheduler_due_share: float) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    from local.seed import connect, expire, make_due, row
    from local.stack import LocalStack

    rows: list[tuple[str, str]] = []
    counts: dict[str, Any] = {}
    timings: list[tuple[str, float]] = []
    output = Output()
    clock = time.perf_counter()

    def lap(what: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings.append((what, now - clock))
        clock = now

    with LocalStack(auto_schedule=False) as stack:
        from local.template import load_template

        template = load_template(stack.template_path)
        concurrency = int(template["Parameters"]["RefreshConcurrency"]["Default"])
        counter = CallCounter()
        counter.attach()
        lap("stack start")

        # 1. N due connections, made as the callback makes them, in a table of table_size.
        ids = [f"bench-{number}" for number in range(connections)]
        with output.capture("setup"):
            for connection_id in ids:
                connect(stack, connection_id)
            lap(f"seeding {connections} due connections (consent, code exchange, KMS, as the callback does)")
            template = raw_row(stack, ids[0])
            planted = plant(stack, template, "idle", max(0, table_size - connections), due=False)
            lap(f"writing {planted} not-due rows (batch writes)")

        def pipeline(latency: float, phase: str) -> dict[str, Any]:
            versions = {connection_id: row(stack, connection_id).version for connection_id in ids}
            for connection_id in ids:
                make_due(stack, connection_id)
            stack.invoiced.faults.latency_ms = latency
            before_tokens = stack.invoiced.token_request_count("refresh_token")
            before_stats = next(iter(stack.queue_stats().values()))
            with output.capture(phase), counter.measure() as calls:
                started = time.perf_counter()
                report = stack.fire_schedule("SchedulerFunction")["SchedulerFunction"]
                scheduled = time.perf_counter() - started
                drained = stack.wait_for_queues(timeout=1800)
                elapsed = time.perf_counter() - started
            stack.invoiced.faults.latency_ms = 0
            after_stats = next(iter(stack.queue_stats().values()))
            return {
                "elapsed": elapsed, "scheduled": scheduled, "drained": drained, "report": report, "calls": calls,
                "refreshed": sum(1 for connection_id in ids if row(stack, connection_id).version == versions[connection_id] + 1),
                "token_requests": stack.invoiced.token_request_count("refresh_token") - before_tokens,
                "invocations": after_stats.invocations - before_stats.invocations,
                "max_in_flight": after_stats.max_in_flight,
            }

        # 2. The pipeline with no latency (this machine's own cost), then under Invoiced latency.
        fast = pipeline(0, "pipeline, no latency")
        lap(f"pipeline without latency ({connections} refreshes)")
        slow = pipeline(latency_ms, "pipeline")
        lap(f"pipeline with {latency_ms:g} ms Invoiced latency ({connections} refreshes)")
        ideal = max(connections * latency_ms / 1000 / concurrency, 1e-9)
        table_rows = connections + planted
        report = slow["report"]
        rows += [
            ("Due connections refreshed (token requests)", f"{slow['refreshed']} of {connections} "
             f"({slow['token_requests']}); worker invocations {slow['invocations']} (SQS batches of up to 10), "
             f"at most {slow['max_in_flight']} at once" + ("" if slow["drained"] else " - queue not drained!")),
            ("Pipeline with no Invoiced latency (this machine's cost: moto, KMS, local Invoiced, one process)",
             f"{connections / fast['elapsed']:.1f}/s in {fast['elapsed']:.1f} s"),
            (f"Refresh throughput: {connections:,} due in a table of {table_rows:,} connections, Invoiced latency "
             f"{latency_ms:g} ms, concurrency {concurrency}",
             f"{connections / slow['elapsed']:.2f}/s in {slow['elapsed']:.1f} s; ideal N x latency / concurrency = "
             f"{ideal:.1f} s: **{slow['elapsed'] / ideal:.2f}x** the ideal (**{slow['elapsed'] / max(ideal, fast['elapsed']):.2f}x** "
             "the larger of the ideal and this machine's own cost)"),
            (f"Scheduler at {table_rows:,} rows: items read / due",
             f"{report['items_read']} / {report['due']} (**{report['items_read'] / max(1, report['due']):.2f}** per due "
             f"connection; the {planted:,} not-due rows are never read)"),
        ]
        scheduler_calls = Counter({k: v for k, v in slow["calls"].items() if k in SCHEDULER_CALLS})
        worker_calls = slow["calls"] - scheduler_calls
        each, left = per_operation(worker_calls, connections)
        rows.append(("AWS calls per refresh (worker)", f"**{_fmt(each)}**" + (
            f"; besides, once in the run of {connections:,}: {_fmt(left)}" if left else "")))
        rows.append((f"AWS calls per scheduler run, {report['due']} due", _fmt(scheduler_calls)))
        with output.capture("scheduler, idle"), counter.measure() as idle_calls:
            started = time.perf_counter()
            idle = stack.fire_schedule("SchedulerFunction")["SchedulerFunction"]
            idle_seconds = time.perf_counter() - started
        rows.append(("AWS calls per scheduler run, nothing due", f"{_fmt(idle_calls)} ({idle['due']} due)"))
        rows.append((f"Scheduler at {table_rows:,} rows: wall time of one run, nothing due; {report['due']:,} due "
                     "(while the worker starts on the first messages)",
                     f"{idle_seconds:.2f} s; {slow['scheduled']:.2f} s"))
        raw = raw_row(stack, ids[0])
        index_entry = {name: raw[name] for name in ("pk", "due_shard", "refresh_at")}
        counts.update({
            "refresh": {"connections": connections, "per_refresh": dict(each), "once_per_run": dict(left),
                        "worker_invocations": slow["invocations"], "latency_ms": latency_ms,
                        "concurrency": concurrency, "seconds": slow["elapsed"], "ideal_seconds": ideal},
            "scheduler_busy": {"rows": table_rows, "due": report["due"], "items_read": report["items_read"],
                               "calls": dict(scheduler_calls)},
            "scheduler_idle": {"rows": table_rows, "due": idle["due"], "calls": dict(idle_calls),
                               "seconds": idle_seconds},
            "item_bytes": {"connection": item_bytes(raw), "due_index_entry": item_bytes(index_entry)},
        })

        # 3. The reader SDK, as a consumer Lambda uses it (refresh via the Invoke API).
        from invoiced_connect import runtime

        runtime.current().override(reader=None)  # a new reader: a consumer Lambda's first call
        reader = runtime.current().reader
        target = ids[0]
        with output.capture("reader"):
            with counter.measure(this_thread_only=True) as cold:
                reader.get_access_token(target)
            with counter.measure(this_thread_only=True) as warm:
                reader.get_access_token(target)
            reader.recheck_seconds, recheck_after = 0, reader.recheck_seconds
            with counter.measure(this_thread_only=True) as recheck:
                reader.get_access_token(target)
            reader.recheck_seconds = recheck_after
            expire(stack, target)
            reader.forget(target)
            with counter.measure(this_thread_only=True) as expired:
                reader.get_access_token(target)
        rows += [
            ("AWS calls, cold get_access_token", _fmt(cold)),
            ("AWS calls, warm get_access_token", _fmt(warm)),
            (f"AWS calls, get_access_token rechecking the row (at least every {recheck_after:g} s; same version)",
             _fmt(recheck)),
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
        app_rows, app_counts = _app_api(stack, counter, output, target, statistics.median(samples))
        rows += app_rows
        counts["read"] = {"cold": dict(cold), "warm": dict(warm), "recheck": dict(recheck),
                          "expiring": dict(expired), "recheck_seconds": recheck_after, **app_counts}
        lap("reader SDK and app API")

        # 4. The scheduler over scheduler_rows rows, scheduler_due_share due, written straight to the table.
        stack.pollers.stop()  # its messages stay queued: nothing else runs during the measured run
        due_wanted = round(scheduler_rows * scheduler_due_share)
        with output.capture("setup"):
            added_due = plant(stack, template, "sched-due", due_wanted, due=True)
            added = plant(stack, template, "sched-idle", max(0, scheduler_rows - table_rows - added_due), due=False)
        lap(f"writing {added_due + added:,} more rows for the large scheduler run (batch writes)")
        with output.capture("scheduler, busy"), counter.measure() as large_calls:
            started = time.perf_counter()
            large = stack.fire_schedule("SchedulerFunction")["SchedulerFunction"]
            large_seconds = time.perf_counter() - started
        query_busy = counter.busy["dynamodb:Query"]
        lap("one scheduler run over the large table")
        large_rows = table_rows + added_due + added
        rows += [
            (f"Scheduler over {large_rows:,} rows, {large['due']:,} due ({scheduler_due_share:.0%}): items read per "
             "due connection", f"**{large['items_read'] / max(1, large['due']):.2f}** ({large['items_read']:,} read, "
             f"{large['queued']:,} queued)"),
            (f"Scheduler over {large_rows:,} rows: wall time of one run", f"**{large_seconds:.1f} s**: "
             f"{query_busy:.1f} s with a Query in flight (its 4 shard threads query in parallel; moto evaluates "
             "a GSI query by going through the whole table, DynamoDB reads only the due range), "
             f"{large_seconds - query_busy:.1f} s the function itself and its "
             f"{large_calls['sqs:SendMessageBatch']} SendMessageBatch calls"),
            (f"AWS calls, that scheduler run ({large['due']:,} due)", _fmt(large_calls)),
        ]
        counts["scheduler_large"] = {"rows": large_rows, "due": large["due"], "items_read": large["items_read"],
                                     "seconds": large_seconds, "query_busy_seconds": query_busy,
                                     "calls": dict(large_calls)}

        # 5. What the functions write (logs, EMF), and the metrics they publish.
        scheduler_bytes = output.bytes("scheduler, idle")
        per_invocation = (output.bytes("pipeline") - scheduler_bytes) / max(1, slow["invocations"])
        counts["output_bytes"] = {"per_worker_invocation": per_invocation, "per_scheduler_run": scheduler_bytes,
                                  "per_token_invoke": app_counts["token_invoke_bytes"]}
        counts["metrics"] = {"pipeline": output.metrics("pipeline"), "scheduler_idle": output.metrics("scheduler, idle"),
                             "tokens_function": output.metrics("tokens function, warm")}
        rows += [
            ("Function output to CloudWatch Logs (JSON logs + EMF): per worker invocation (one SQS batch); "
             "per idle scheduler run; per warm token served by the tokens function",
             f"{per_invocation:.0f} B; {scheduler_bytes} B; {app_counts['token_invoke_bytes']:.0f} B"),
            ("CloudWatch metrics published: by a refresh run (scheduler + worker); by an idle scheduler run; by "
             "the tokens function", f"{len(counts['metrics']['pipeline'])}; {len(counts['metrics']['scheduler_idle'])}; "
             f"{len(counts['metrics']['tokens_function'])}"),
            ("Size of a connection's row; of its due-index entry (DynamoDB's item size)",
             f"{counts['item_bytes']['connection']} B; {counts['item_bytes']['due_index_entry']} B"),
        ]
    lap("stack stop")
    total = sum(seconds for _, seconds in timings)
    rows.append(("Run time of this bench, by part", "; ".join(f"{what} {_seconds(seconds)}" for what, seconds in timings)
                 + f"; total {_seconds(total)}"))
    counts["timings"] = dict(timings)
    return rows, counts


def _app_api(stack: Any, counter: CallCounter, output: Output, target: str,
             in_process_seconds: float) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """The app API over the (local) Lambda Invoke API: what a caller in any language pays."""
    lam = stack.client("lambda")

    def invoke(function: str, payload: dict[str, Any]) -> dict[str, Any]:
        answer = lam.invoke(FunctionName=f"{stack.stack_name}-{function}", Payload=json.dumps(payload).encode())
        return json.loads(answer["Payload"].read())

    from invoiced_connect import runtime

    runtime.current().override(vendor=None)  # a cold tokens function: what the counter sees inside it
    with output.capture("tokens function, cold"), counter.measure() as cold_token:
        invoke("tokens", {"connection_id": target})
    with output.capture("tokens function, warm"), counter.measure() as warm_token:
        invoke("tokens", {"connection_id": target})
    samples = []
    with output.capture("tokens function, warm"):
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(40):
                invoke("tokens", {"connection_id": target})
            samples.append((time.perf_counter() - started) / 40)
    invoke_seconds = statistics.median(samples)
    token_invoke_bytes = output.bytes("tokens function, warm") / 201
    with output.capture("links"):
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
    ], {"tokens_function_cold": dict(cold_token), "tokens_function_warm": dict(warm_token),
        "link_warm": dict(warm_link), "token_invoke_bytes": token_invoke_bytes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lifecycle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000, help="due connections refreshed (default 1000)")
    parser.add_argument("--table-size", type=int, default=10_000,
                        help="connections in the table during the refresh runs (default 10000)")
    parser.add_argument("--latency-ms", type=float, default=1000.0, help="injected Invoiced latency (default 1000)")
    parser.add_argument("--scheduler-rows", type=int, default=100_000,
                        help="rows in the table for the large scheduler run (default 100000)")
    parser.add_argument("--scheduler-due-share", type=float, default=0.01,
                        help="share of those rows that are due (default 0.01)")
    parser.add_argument("--counts-out", type=Path, help="also write the counts as JSON here (for bench/cost.py)")
    args = parser.parse_args(argv)
    if args.connections < 1 or args.table_size < args.connections:
        parser.error("need at least one connection, and a table at least that large")
    os.environ.setdefault("HTTP_TIMEOUT_SECONDS", "10")
    import logging

    logging.disable(logging.WARNING)  # the table, not the logs
    with contextlib.redirect_stdout(io.StringIO()):  # anything the functions print outside a captured phase
        rows, counts = run(args.connections, args.table_size, args.latency_ms, args.scheduler_rows,
                           args.scheduler_due_share)
    header = (f"Token lifecycle, local stack, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
              f"{os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"\n{header}\n")
    print("| measure | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    if args.counts_out:
        counts["measured"] = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
                              "cores": os.cpu_count(), "python": platform.python_version()}
        args.counts_out.parent.mkdir(parents=True, exist_ok=True)
        args.counts_out.write_text(json.dumps(counts, indent=2, sort_keys=True) + "\n")
        print(f"\n(counts written to {args.counts_out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
