"""What a deployment costs per month on AWS: a fixed part, and a part per 1,000 connections.

    make bench            # after bench.lifecycle, with the counts it measured
    python -m bench.cost [--connections N] [--active-share F] [--reads-per-hour R] [--read-path invoke|sdk]
                         [--counts FILE] [--help for every assumption]

Nothing here is guessed that the project can say itself:

* **the resources** are counted in template.yaml: KMS keys (and whether
  they rotate), Secrets Manager secrets, CloudWatch alarms (metrics per
  alarm), log groups and their retention, the functions' memory and
  architecture, point-in-time recovery, the schedule's rate and kind, and
  the refresh policy's parameters (window, keep-alive, active use);
* **the AWS calls per operation** are the ones bench/lifecycle.py counted
  (``--counts``, written by ``make bench``): per refresh, per scheduler run
  (idle, and with connections due), per cold read and per recheck of a
  cached token, inside the tokens function; also what the functions log per
  worker invocation, per scheduler run and per token served, the CloudWatch metrics
  they publish, and the size of a connection's row. Without the file the
  counts of the last measurement written below are used (and said so);
* **how often** a connection is refreshed and how often a reader goes to the
  table come from running the package's own ``RefreshPolicy`` and
  ``TokenReader`` against a simulated clock: a week of Poisson-spaced reads
  at ``--reads-per-hour`` on a connection in active use, with the scheduler
  firing at the template's rate.

What is assumed (every item a command-line option): the share of
connections in active use and their reads per hour, whether reads go
through the tokens function (Lambda Invoke, any language) or the Python SDK
in your own Lambda, how many warm instances read a connection, the access
token's lifetime, Invoiced's and AWS's latencies (billed Lambda duration),
the functions' cold starts (Lambda bills the init phase), Lambda's SQS
pollers, the size of Lambda's own log lines, and the key's age. Prices are
AWS's public list prices for us-east-1 written below, before any free tier
(at this scale the free tiers would absorb most of the Lambda, SQS, KMS and
X-Ray request costs), without taxes, data transfer or support plans.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_COUNTS_FILE = ROOT / ".local" / "bench" / "counts.json"
HOURS_PER_MONTH = 730

#: AWS list prices, us-east-1, USD. List prices as of mid-2025, the latest the
#: author knows; AWS changes them (DynamoDB on-demand halved in November
#: 2024, for one): check https://aws.amazon.com/pricing/ before relying on them.
PRICES_AS_OF = "mid-2025"
REGION = "us-east-1"
PRICE = {
    "lambda_request": 0.20 / 1e6,
    "lambda_gb_second_arm64": 0.0000133334,
    "lambda_gb_second_x86_64": 0.0000166667,
    "dynamodb_write_request_unit": 0.625 / 1e6,  # on-demand
    "dynamodb_read_request_unit": 0.125 / 1e6,  # on-demand
    "dynamodb_storage_gb_month": 0.25,
    "dynamodb_pitr_gb_month": 0.20,  # continuous backups, by table size
    "kms_key_month": 1.00,  # customer-managed key
    "kms_rotation_month": 1.00,  # each of a key's first two rotations adds this; later ones are free
    "kms_request": 0.03 / 1e4,  # symmetric Encrypt, Decrypt, GenerateDataKey
    "secret_month": 0.40,
    "secrets_manager_api_call": 0.05 / 1e4,
    "sqs_request": 0.40 / 1e6,  # standard queue, per 64 KB chunk
    "cloudwatch_alarm_metric_month": 0.10,  # standard resolution, per metric in the alarm
    "cloudwatch_custom_metric_month": 0.30,  # first 10,000 metrics; prorated by the hour
    "logs_ingestion_gb": 0.50,  # Standard log class
    "logs_storage_gb_month": 0.03,
    "xray_trace_recorded": 5.00 / 1e6,  # what the sampling rule records; see xray_traces()
    "eventbridge_custom_event": 1.00 / 1e6,  # PutEvents, per 64 KB
    "eventbridge_scheduler_invocation": 1.00 / 1e6,  # EventBridge Scheduler (14 million a month free)
}

#: What bench/lifecycle.py measured last (used when no --counts file exists):
#: 2026-12-02, the README's machine.
LAST_MEASURED: dict[str, Any] = {
    "measured": {"date": "2026-12-02", "machine": "x86_64", "cores": 2, "python": "3.13.0"},
    "refresh": {"per_refresh": {"dynamodb:UpdateItem": 2, "kms:Decrypt": 1, "kms:Encrypt": 2}, "once_per_run": {}},
    "scheduler_idle": {"calls": {"dynamodb:Query": 16}},
    "read": {"cold": {"dynamodb:GetItem": 1, "kms:Decrypt": 1}, "recheck": {"dynamodb:GetItem": 1}, "warm": {},
             "tokens_function_warm": {}},
    "output_bytes": {"per_worker_invocation": 372, "per_scheduler_run": 293, "per_token_invoke": 345},
    "metrics": {
        "pipeline": ["InvoicedConnect/ConnectionsDue", "InvoicedConnect/ConnectionsQueued",
                     "InvoicedConnect/RefreshFailed", "InvoicedConnect/RefreshPermanentFailure",
                     "InvoicedConnect/RefreshRefreshed"],
        "scheduler_idle": ["InvoicedConnect/ConnectionsDue", "InvoicedConnect/ConnectionsQueued"],
        "tokens_function": ["InvoicedConnect/TokenCacheMisses", "InvoicedConnect/TokenReads",
                            "InvoicedConnect/TokenRequests"],
    },
    "item_bytes": {"connection": 2137, "due_index_entry": 41},
}


# ---------------------------------------------------------------- the template
@dataclass
class Deployment:
    """What template.yaml says, for the bill."""

    keys: int
    rotating_keys: int
    secrets: int
    alarm_metrics: int
    alarms: int
    high_resolution_alarms: int
    log_groups: int
    retention_days: int
    memory_mb: dict[str, int]
    architecture: dict[str, str]
    schedule_seconds: int
    schedule_kind: str
    window_seconds: int
    keepalive_seconds: int
    active_use_seconds: int
    concurrency: int
    batch_size: int
    pitr: bool
    table_key_is_cmk: bool
    defaults: dict[str, Any] = field(default_factory=dict)


def _parameter(template: dict[str, Any], value: Any) -> Any:
    """A property's value, with ``!Ref Parameter`` resolved to the parameter's default."""
    if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in template.get("Parameters", {}):
        return template["Parameters"][value["Ref"]].get("Default")
    return value


def schedule_seconds(expression: str) -> int:
    match = re.fullmatch(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)", expression.strip())
    if not match:
        raise SystemExit(f"cannot price the schedule {expression!r}: pass --schedule-minutes")
    unit = {"minute": 60, "hour": 3600, "day": 86400}[match.group(2).rstrip("s")]
    return int(match.group(1)) * unit


def read_template(path: Path) -> Deployment:
    from local.template import load_template, resources_of_type

    template = load_template(path)
    globals_ = (template.get("Globals") or {}).get("Function") or {}
    functions = resources_of_type(template, "AWS::Serverless::Function")
    memory, architecture = {}, {}
    for logical_id, resource in functions.items():
        props = resource.get("Properties") or {}
        memory[logical_id] = int(_parameter(template, props.get("MemorySize", globals_.get("MemorySize", 128))))
        architecture[logical_id] = (props.get("Architectures") or globals_.get("Architectures") or ["x86_64"])[0]

    schedules, sqs_sources = [], []
    for resource in functions.values():
        for event in ((resource.get("Properties") or {}).get("Events") or {}).values():
            if event.get("Type") in ("Schedule", "ScheduleV2"):
                schedules.append((event["Type"], _parameter(template, event["Properties"]["Schedule"]
                                                            if event["Type"] == "Schedule"
                                                            else event["Properties"]["ScheduleExpression"])))
            if event.get("Type") == "SQS":
                sqs_sources.append(event.get("Properties") or {})
    if len(schedules) != 1 or len(sqs_sources) != 1:
        raise SystemExit("expected one scheduled function and one SQS event source in the template")

    alarms = resources_of_type(template, "AWS::CloudWatch::Alarm")
    metrics_per_alarm = []
    high_resolution = 0
    for alarm in alarms.values():
        props = alarm.get("Properties") or {}
        if props.get("Metrics"):
            metrics_per_alarm.append(sum(1 for metric in props["Metrics"] if "MetricStat" in metric))
            periods = [metric["MetricStat"].get("Period", 60) for metric in props["Metrics"] if "MetricStat" in metric]
        else:
            metrics_per_alarm.append(1)
            periods = [props.get("Period", 60)]
        high_resolution += any(int(_parameter(template, period)) < 60 for period in periods)

    keys = resources_of_type(template, "AWS::KMS::Key")
    tables = resources_of_type(template, "AWS::DynamoDB::Table")
    table = next(iter(tables.values()))["Properties"]
    sse = table.get("SSESpecification") or {}
    parameters = {name: spec.get("Default") for name, spec in (template.get("Parameters") or {}).items()}
    scaling = sqs_sources[0].get("ScalingConfig") or {}
    return Deployment(
        keys=len(keys),
        rotating_keys=sum(1 for key in keys.values() if (key.get("Properties") or {}).get("EnableKeyRotation")),
        secrets=len(resources_of_type(template, "AWS::SecretsManager::Secret")),
        alarm_metrics=sum(metrics_per_alarm),
        alarms=len(alarms),
        high_resolution_alarms=high_resolution,
        log_groups=len(resources_of_type(template, "AWS::Logs::LogGroup")),
        retention_days=int(parameters.get("LogRetentionDays") or 0),
        memory_mb=memory,
        architecture=architecture,
        schedule_seconds=schedule_seconds(str(schedules[0][1])),
        schedule_kind="EventBridge rule" if schedules[0][0] == "Schedule" else "EventBridge Scheduler",
        window_seconds=60 * int(parameters["RefreshWindowMinutes"]),
        keepalive_seconds=86400 * int(parameters["KeepAliveDays"]),
        active_use_seconds=3600 * int(parameters["ActiveUseHours"]),
        concurrency=int(_parameter(template, scaling.get("MaximumConcurrency", 5))),
        batch_size=int(_parameter(template, sqs_sources[0].get("BatchSize", 10))),
        pitr=bool((table.get("PointInTimeRecoverySpecification") or {}).get("PointInTimeRecoveryEnabled")),
        table_key_is_cmk=bool(sse.get("SSEEnabled") and sse.get("KMSMasterKeyId")),
        defaults=parameters,
    )


# ---------------------------------------------------------------- the package's own policy, simulated
@dataclass
class ReaderModel:
    """Per connection in active use, per hour: what the scheduler and one reader instance do."""

    scheduled_refreshes: float
    on_demand_refreshes: float
    reads: float
    table_reads: float  # cache misses: one consistent GetItem each
    decrypts: float  # misses that found a new version
    idle_refreshes: float  # per connection not in use


def _policy(deployment: Deployment) -> Any:
    from invoiced_connect.lifecycle.refresh import RefreshPolicy

    return RefreshPolicy(window_seconds=deployment.window_seconds, keepalive_seconds=deployment.keepalive_seconds,
                         active_use_seconds=deployment.active_use_seconds)


def _next_refresh_at(policy: Any, *, expires_at: int, now: int, active_until: int, lifetime: int) -> int:
    accepts_lifetime = "lifetime" in inspect.signature(policy.next_refresh_at).parameters
    extra = {"lifetime": lifetime} if accepts_lifetime else {}
    return policy.next_refresh_at(expires_at=expires_at, now=now, active_until=active_until, **extra)


def simulate(deployment: Deployment, *, lifetime: int, reads_per_hour: float, days: float = 7.0,
             seed: int = 7) -> ReaderModel:
    """One connection in active use, read ``reads_per_hour`` times an hour (Poisson), for ``days``
    after a first day of warm-up; the package's RefreshPolicy and TokenReader decide the rest."""
    from invoiced_connect.sdk.tokens import TokenReader
    from invoiced_connect.storage.store import connection_from_item, sealed_from_item

    policy = _policy(deployment)
    clock = {"now": 0.0}
    row: dict[str, int] = {}
    counts: Counter[str] = Counter()
    warm_up = 86400.0
    end = warm_up + days * 86400

    def counting(name: str) -> None:
        if clock["now"] >= warm_up:
            counts[name] += 1

    def rotate(*, on_demand: bool) -> None:
        now = int(clock["now"])
        active_until = now + deployment.active_use_seconds if on_demand or not row else row["active_until"]
        row.update(version=row.get("version", 0) + 1, expires_at=now + lifetime, refreshed_at=now,
                   active_until=active_until,
                   refresh_at=_next_refresh_at(policy, expires_at=now + lifetime, now=now, active_until=active_until,
                                               lifetime=lifetime))

    def item() -> dict[str, Any]:
        return {
            "pk": {"S": "conn#sim"}, "connection_id": {"S": "sim"}, "tenant_id": {"S": "1"},
            "issuer": {"S": "https://invoiced.com"}, "status": {"S": "active"},
            "expires_at": {"N": str(row["expires_at"])}, "version": {"N": str(row["version"])},
            "created_at": {"N": "0"}, "updated_at": {"N": str(row["refreshed_at"])},
            "refreshed_at": {"N": str(row["refreshed_at"])}, "refresh_at": {"N": str(row["refresh_at"])},
            "active_until": {"N": str(row["active_until"])}, "token_lifetime": {"N": str(lifetime)},
            "due_shard": {"N": "0"}, "access_ciphertext": {"B": b"a"}, "refresh_ciphertext": {"B": b"r"},
        }

    class Store:
        def get_connection(self, connection_id: str, *, consistent: bool = True) -> Any:
            counting("table_reads")
            found = item()
            return connection_from_item(found), sealed_from_item(found)

    class Cipher:
        def decrypt_access(self, connection_id: str, sealed: Any) -> str:
            counting("decrypts")
            return f"access-{row['version']}"

    def invoke(payload: dict[str, Any]) -> dict[str, Any]:  # the tokens function refreshing on demand
        counting("on_demand_refreshes")
        rotate(on_demand=True)
        return {"connection_id": "sim", "access_token": f"access-{row['version']}", "token_type": "Bearer",
                "expires_at": row["expires_at"], "api_url": None, "tenant_id": "1", "version": row["version"]}

    reader = TokenReader(store=Store(), cipher=Cipher(), invoke=invoke, window_seconds=deployment.window_seconds,
                         clock=lambda: clock["now"])
    rotate(on_demand=True)  # connected at t=0: in active use, as the callback sets it
    rng = random.Random(seed)  # noqa: S311 - a reproducible simulation, not a secret
    next_read = rng.expovariate(reads_per_hour / 3600) if reads_per_hour > 0 else math.inf
    next_tick = float(deployment.schedule_seconds)
    while min(next_read, next_tick) < end:
        if next_tick <= next_read:
            clock["now"] = next_tick
            if row["refresh_at"] <= next_tick + deployment.window_seconds:  # the scheduler's due query
                counting("scheduled_refreshes")
                rotate(on_demand=False)
            next_tick += deployment.schedule_seconds
        else:
            clock["now"] = next_read
            counting("reads")
            reader.get_access_token("sim")
            next_read += rng.expovariate(reads_per_hour / 3600)
    hours = days * 24
    idle_interval = _next_refresh_at(policy, expires_at=lifetime, now=0, active_until=0, lifetime=lifetime)
    return ReaderModel(
        scheduled_refreshes=counts["scheduled_refreshes"] / hours,
        on_demand_refreshes=counts["on_demand_refreshes"] / hours,
        reads=counts["reads"] / hours,
        table_reads=counts["table_reads"] / hours,
        decrypts=counts["decrypts"] / hours,
        idle_refreshes=3600 / max(1, idle_interval),
    )


# ---------------------------------------------------------------- the bill
@dataclass
class Line:
    part: str  # "fixed" or "connections"
    service: str
    what: str
    quantity: float
    unit: str
    dollars: float


def _calls(counts: dict[str, Any], service: str) -> int:
    return sum(count for name, count in counts.items() if name.startswith(service + ":"))


def _gb_seconds_price(architecture: str) -> float:
    return PRICE["lambda_gb_second_arm64"] if architecture == "arm64" else PRICE["lambda_gb_second_x86_64"]


def xray_traces(invocations: float, *, reservoir_per_second: float = 1.0, rate: float = 0.05) -> float:
    """Traces a month that X-Ray's default sampling rule records out of ``invocations`` a month
    (arriving at random): the first request each second, then 5% of the others."""
    seconds = HOURS_PER_MONTH * 3600
    per_second = invocations / seconds
    first = reservoir_per_second * (1 - math.exp(-per_second / reservoir_per_second))
    return seconds * (first + rate * (per_second - first))


def expected_sends(due: float, shards: int = 16, batch: int = 10) -> float:
    """Expected SendMessageBatch calls when ``due`` messages are spread at random over the shards."""
    if due <= 0:
        return 0.0
    n, p = round(due), 1 / shards
    total, pmf = 0.0, (1 - p) ** n
    for k in range(n + 1):
        total += pmf * math.ceil(k / batch)
        pmf = pmf * (n - k) / (k + 1) * p / (1 - p) if k < n else 0
    return shards * total


def bill(deployment: Deployment, counts: dict[str, Any], model: ReaderModel, args: argparse.Namespace) -> list[Line]:
    lines: list[Line] = []

    def add(part: str, service: str, what: str, quantity: float, unit: str, price: float) -> None:
        lines.append(Line(part, service, what, quantity, unit, quantity * price))

    month = HOURS_PER_MONTH
    runs = month * 3600 / deployment.schedule_seconds
    item_kb = counts["item_bytes"]["connection"] / 1024
    wru_per_write = math.ceil(counts["item_bytes"]["connection"] / 1024)
    rru_per_read = math.ceil(counts["item_bytes"]["connection"] / 4096)
    platform_bytes = args.platform_log_bytes

    # ---- fixed: what the stack costs with no connection at all
    key_months = deployment.keys + deployment.rotating_keys * min(2, int(args.key_age_years))
    add("fixed", "KMS", f"{deployment.keys} customer-managed key ({deployment.rotating_keys} rotating yearly; in its "
        f"year {int(args.key_age_years) + 1}: +$1 a month after each of the first two rotations)", key_months,
        "key-months", PRICE["kms_key_month"])
    add("fixed", "Secrets Manager", f"{deployment.secrets} secrets", deployment.secrets, "secret-months",
        PRICE["secret_month"])
    add("fixed", "CloudWatch", f"{deployment.alarms} alarms, {deployment.alarm_metrics} metrics in them "
        f"({deployment.high_resolution_alarms} high-resolution)", deployment.alarm_metrics, "alarm metrics",
        PRICE["cloudwatch_alarm_metric_month"])
    always = set(map(_metric_name, counts["metrics"]["scheduler_idle"]))
    in_use = set(map(_metric_name, counts["metrics"]["pipeline"])) - always
    if args.read_path == "invoke":
        in_use |= set(map(_metric_name, counts["metrics"]["tokens_function"]))
    add("fixed", "CloudWatch", "custom metrics (EMF) of every scheduler run: " + ", ".join(
        sorted(name.split("/")[-1] for name in always)), len(always), "metric-months",
        PRICE["cloudwatch_custom_metric_month"])
    add("fixed", "CloudWatch", "custom metrics published every hour once connections are in use (worker"
        + (", tokens function" if args.read_path == "invoke" else "") + "): "
        + ", ".join(sorted(name.split("/")[-1] for name in in_use)), len(in_use), "metric-months",
        PRICE["cloudwatch_custom_metric_month"])
    scheduler = "SchedulerFunction"
    scheduler_gb = deployment.memory_mb[scheduler] / 1024
    idle_calls = counts["scheduler_idle"]["calls"]
    from invoiced_connect.lifecycle.scheduler import SHARD_THREADS

    idle_ms = args.function_overhead_ms + math.ceil(_calls(idle_calls, "dynamodb") / SHARD_THREADS) * args.aws_call_ms
    add("fixed", "Lambda", f"scheduler: {runs:,.0f} runs ({deployment.schedule_kind}, every "
        f"{deployment.schedule_seconds // 60} min)", runs, "requests", PRICE["lambda_request"])
    add("fixed", "Lambda", f"scheduler: {idle_ms:.0f} ms a run at {deployment.memory_mb[scheduler]} MB "
        f"({deployment.architecture[scheduler]}), plus {args.cold_starts_per_day:g} billed inits of {args.init_ms:g} ms a day",
        runs * idle_ms / 1000 * scheduler_gb + 30.4 * args.cold_starts_per_day * args.init_ms / 1000 * scheduler_gb,
        "GB-seconds", _gb_seconds_price(deployment.architecture[scheduler]))
    queries = _calls(idle_calls, "dynamodb") * runs
    add("fixed", "DynamoDB", f"scheduler: {_calls(idle_calls, 'dynamodb')} Query a run (one per shard; "
        "0.5 read unit each, eventually consistent)", queries * 0.5, "read request units",
        PRICE["dynamodb_read_request_unit"])
    scheduler_log_gb = runs * (counts["output_bytes"]["per_scheduler_run"] + platform_bytes) / 1e9
    add("fixed", "CloudWatch Logs", f"scheduler: {counts['output_bytes']['per_scheduler_run']:.0f} B of JSON logs "
        f"and EMF a run + {platform_bytes} B of Lambda's own lines", scheduler_log_gb, "GB ingested",
        PRICE["logs_ingestion_gb"])
    stored = min(1.0, deployment.retention_days / 30.4) if deployment.retention_days else 1.0
    add("fixed", "CloudWatch Logs", f"scheduler: stored {deployment.retention_days} days (uncompressed size: an upper "
        "bound)", scheduler_log_gb * stored, "GB-months", PRICE["logs_storage_gb_month"])
    polls = args.sqs_pollers * month * 3600 / 20
    add("fixed", "SQS", f"Lambda's SQS event source: {args.sqs_pollers} pollers long-polling (20 s) the refresh queue",
        polls, "requests", PRICE["sqs_request"])
    if deployment.table_key_is_cmk:
        roles = args.table_key_roles
        add("fixed", "KMS", f"DynamoDB's own calls for the table key (the stack's key): about one per 5 minutes for "
            f"each of {roles} roles in steady use", roles * month * 12, "requests", PRICE["kms_request"])
    if deployment.schedule_kind == "EventBridge Scheduler":
        add("fixed", "EventBridge Scheduler", "schedule invocations", runs, "invocations",
            PRICE["eventbridge_scheduler_invocation"])
    else:
        add("fixed", "EventBridge", "the schedule: a rule's scheduled events come from AWS (aws.events), not "
            "charged", runs, "events", 0.0)

    # ---- per N connections
    n = args.connections
    active, idle = n * args.active_share, n * (1 - args.active_share)
    refreshes = (active * (model.scheduled_refreshes + model.on_demand_refreshes) + idle * model.idle_refreshes) * month
    per_refresh = counts["refresh"]["per_refresh"]
    refresh_calls = sum(per_refresh.values())
    worker = "RefreshWorkerFunction"
    worker_gb = deployment.memory_mb[worker] / 1024
    refresh_ms = args.function_overhead_ms + args.invoiced_latency_ms + refresh_calls * args.aws_call_ms
    add("connections", "Lambda", f"worker: {refreshes:,.0f} refreshes a month, one invocation each (an upper bound: "
        f"SQS batches hold up to {deployment.batch_size})", refreshes, "requests", PRICE["lambda_request"])
    add("connections", "Lambda", f"worker: {refresh_ms:.0f} ms a refresh (Invoiced {args.invoiced_latency_ms:g} ms + "
        f"{refresh_calls} AWS calls x {args.aws_call_ms:g} ms) at {deployment.memory_mb[worker]} MB, plus "
        f"{args.cold_starts_per_day:g} inits a day", refreshes * refresh_ms / 1000 * worker_gb
        + (30.4 * args.cold_starts_per_day * args.init_ms / 1000 * worker_gb if refreshes else 0),
        "GB-seconds", _gb_seconds_price(deployment.architecture[worker]))
    writes = _calls(per_refresh, "dynamodb")
    add("connections", "DynamoDB", f"refresh: {writes} UpdateItem of a {counts['item_bytes']['connection']} B row "
        f"({wru_per_write} write units each) + the due-index entry moved (2 units)", refreshes * (writes * wru_per_write + 2),
        "write request units", PRICE["dynamodb_write_request_unit"])
    add("connections", "KMS", "refresh: " + ", ".join(f"{name.split(':')[1]} {count}" for name, count in
                                                    per_refresh.items() if name.startswith("kms:")),
        refreshes * _calls(per_refresh, "kms"), "requests", PRICE["kms_request"])
    due_per_run = refreshes / runs
    sends = expected_sends(due_per_run) * runs
    add("connections", "SQS", f"{sends / runs:.1f} SendMessageBatch a run ({due_per_run:.1f} due); per worker "
        "invocation one ReceiveMessage that returns and one DeleteMessageBatch", sends + 2 * refreshes, "requests",
        PRICE["sqs_request"])
    runs_with_work = min(runs, refreshes)
    secret_reads = runs_with_work * min(deployment.concurrency, max(1.0, due_per_run))
    add("connections", "Secrets Manager", "worker: the client secret, re-read after 5 minutes by each warm instance",
        secret_reads, "API calls", PRICE["secrets_manager_api_call"])
    worker_log_gb = refreshes * (counts["output_bytes"]["per_worker_invocation"] + platform_bytes) / 1e9
    add("connections", "CloudWatch Logs", f"worker: {counts['output_bytes']['per_worker_invocation']:.0f} B of JSON "
        f"logs and EMF + {platform_bytes} B of Lambda's own lines an invocation", worker_log_gb, "GB ingested",
        PRICE["logs_ingestion_gb"])
    if any(name.startswith("events:") for name in per_refresh):
        add("connections", "EventBridge", "refresh: lifecycle events", refreshes * _calls(per_refresh, "events"),
            "events", PRICE["eventbridge_custom_event"])

    # Reads: the reader's misses (per warm instance) go to the table; each miss on a new version also to KMS.
    instances = args.reader_instances
    table_reads = active * model.table_reads * instances * month
    decrypts = active * model.decrypts * instances * month
    reads = active * args.reads_per_hour * month
    recheck, cold = counts["read"]["recheck"], counts["read"]["cold"]
    get_items = table_reads * _calls(recheck, "dynamodb")
    kms_reads = decrypts * (_calls(cold, "kms") - _calls(recheck, "kms"))
    add("connections", "DynamoDB", f"reads: {model.table_reads * instances:.1f} consistent GetItem an hour per connection "
        f"in use ({rru_per_read} read unit each)", get_items * rru_per_read, "read request units",
        PRICE["dynamodb_read_request_unit"])
    add("connections", "KMS", f"reads: a Decrypt for each new version a reader instance sees "
        f"({model.decrypts * instances:.2f} an hour per connection in use)", kms_reads, "requests", PRICE["kms_request"])
    if args.read_path == "invoke":
        tokens = "TokensFunction"
        tokens_gb = deployment.memory_mb[tokens] / 1024
        miss_share = model.table_reads / max(model.reads, 1e-9)
        read_ms = args.function_overhead_ms + miss_share * (
            _calls(recheck, "dynamodb") + (model.decrypts / max(model.table_reads, 1e-9))) * args.aws_call_ms
        add("connections", "Lambda", f"tokens function: {args.reads_per_hour:g} reads an hour per connection in use, "
            "one Invoke each", reads, "requests", PRICE["lambda_request"])
        add("connections", "Lambda", f"tokens function: {read_ms:.1f} ms a read ({miss_share:.0%} go to the table), "
            "billed per ms, at least 1", reads * max(1.0, math.ceil(read_ms)) / 1000 * tokens_gb
            + (30.4 * args.cold_starts_per_day * args.init_ms / 1000 * tokens_gb if reads else 0),
            "GB-seconds", _gb_seconds_price(deployment.architecture[tokens]))
        read_log_gb = reads * (counts["output_bytes"]["per_token_invoke"] + platform_bytes) / 1e9
        add("connections", "CloudWatch Logs", f"tokens function: {counts['output_bytes']['per_token_invoke']:.0f} B a "
            f"read + {platform_bytes} B of Lambda's own lines", read_log_gb, "GB ingested", PRICE["logs_ingestion_gb"])
        worker_log_gb += read_log_gb
    add("connections", "CloudWatch Logs", f"stored {deployment.retention_days} days (uncompressed: an upper bound)",
        worker_log_gb * stored, "GB-months", PRICE["logs_storage_gb_month"])

    # Active tracing on every function: X-Ray records what the default sampling rule picks.
    invocations = runs + refreshes + (reads if args.read_path == "invoke" else 0)
    fixed_traces = xray_traces(runs)
    add("fixed", "X-Ray", "scheduler runs traced (active tracing; default sampling: the first request each "
        "second, 5% of the rest)", fixed_traces, "traces", PRICE["xray_trace_recorded"])
    add("connections", "X-Ray", f"worker{' and tokens function' if args.read_path == 'invoke' else ''} invocations "
        f"traced: {xray_traces(invocations) - fixed_traces:,.0f} of {invocations - runs:,.0f}",
        xray_traces(invocations) - fixed_traces, "traces", PRICE["xray_trace_recorded"])

    table_gb = n * (counts["item_bytes"]["connection"] + counts["item_bytes"]["due_index_entry"] + 100) / 1e9
    add("connections", "DynamoDB", f"storage: {item_kb:.1f} kB a row + its due-index entry (+100 B)", table_gb,
        "GB-months", PRICE["dynamodb_storage_gb_month"])
    if deployment.pitr:
        add("connections", "DynamoDB", "point-in-time recovery (continuous backups), by table size", table_gb,
            "GB-months", PRICE["dynamodb_pitr_gb_month"])
    return lines


def _metric_name(entry: str) -> str:
    return entry.split(" [", 1)[0]


def _dollars(value: float) -> str:
    if value == 0:
        return "$0"
    return f"${value:,.2f}" if value >= 0.1 else f"${value:.4f}"


def _quantity(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.3g}"


def render(deployment: Deployment, counts: dict[str, Any], source: str, model: ReaderModel, lines: list[Line],
           args: argparse.Namespace) -> str:
    fixed = [line for line in lines if line.part == "fixed"]
    variable = [line for line in lines if line.part == "connections"]
    fixed_total = sum(line.dollars for line in fixed)
    variable_total = sum(line.dollars for line in variable)
    n = args.connections
    out = [
        f"Monthly AWS cost of a deployment, {REGION}, list prices as of {PRICES_AS_OF} (written in bench/cost.py), "
        "before free tiers, taxes and data transfer.",
        "",
        f"- from template.yaml: {deployment.keys} KMS key, {deployment.secrets} secrets, {deployment.alarms} alarms, "
        f"{deployment.log_groups} log groups kept {deployment.retention_days} days, functions at "
        f"{sorted(set(deployment.memory_mb.values()))} MB on {sorted(set(deployment.architecture.values()))}, "
        f"the schedule every {deployment.schedule_seconds // 60} min ({deployment.schedule_kind}), refresh window "
        f"{deployment.window_seconds // 60} min, keep-alive {deployment.keepalive_seconds // 86400} days, active use "
        f"{deployment.active_use_seconds // 3600} h, worker concurrency {deployment.concurrency}, PITR "
        f"{'on' if deployment.pitr else 'off'}",
        f"- AWS calls per operation: {source}: per refresh "
        + ", ".join(f"{name} {count}" for name, count in counts["refresh"]["per_refresh"].items())
        + "; per idle scheduler run " + ", ".join(f"{k} {v}" for k, v in counts["scheduler_idle"]["calls"].items())
        + "; per cold read " + ", ".join(f"{k} {v}" for k, v in counts["read"]["cold"].items())
        + "; per recheck " + ", ".join(f"{k} {v}" for k, v in counts["read"]["recheck"].items())
        + "; per warm read " + (", ".join(f"{k} {v}" for k, v in counts["read"]["warm"].items()) or "0"),
        f"- the package's RefreshPolicy and TokenReader, simulated for a week: a connection in active use, read "
        f"{args.reads_per_hour:g} times an hour by each of {args.reader_instances} instance(s), with "
        f"{args.token_lifetime_minutes:g}-minute access tokens, is refreshed {model.scheduled_refreshes:.2f} times an "
        f"hour by the scheduler and {model.on_demand_refreshes:.3f} on demand (its active use lapses after "
        f"{deployment.active_use_seconds // 3600} h unless a read refreshes it); {model.table_reads:.1f} of its "
        f"{model.reads:.1f} reads an hour go to the table, {model.decrypts:.2f} to KMS; a connection not in use is "
        f"refreshed every {1 / max(model.idle_refreshes, 1e-9) / 24:.0f} days",
        f"- assumed: {n:,} connections, {args.active_share:.0%} in active use, reads through "
        f"{'the tokens function (Lambda Invoke)' if args.read_path == 'invoke' else 'the Python SDK in your own Lambda'}, "
        f"Invoiced answering a refresh in {args.invoiced_latency_ms:g} ms, {args.aws_call_ms:g} ms an AWS call, "
        f"{args.function_overhead_ms:g} ms of a function's own work an invocation, {args.cold_starts_per_day:g} cold "
        f"starts a day of {args.init_ms:g} ms per background function, {args.sqs_pollers} SQS pollers, "
        f"{args.platform_log_bytes} B of Lambda's own log lines an invocation",
        "",
        "| part | service | what | quantity a month | cost a month |",
        "|---|---|---|---|---|",
    ]
    for line in fixed + variable:
        part = "fixed" if line.part == "fixed" else f"{n:,} connections"
        out.append(f"| {part} | {line.service} | {line.what} | {_quantity(line.quantity)} {line.unit} "
                   f"| {_dollars(line.dollars)} |")
    per_thousand = variable_total / n * 1000 if n else 0.0
    out += [
        f"| **fixed** | | | | **{_dollars(fixed_total)}** |",
        f"| **{n:,} connections** | | | | **{_dollars(variable_total)}** ({_dollars(per_thousand)} per 1,000) |",
        f"| **total** | | | | **{_dollars(fixed_total + variable_total)}** |",
        "",
        "By service: " + ", ".join(f"{service} {_dollars(dollars)}" for service, dollars in sorted(
            _by_service(lines).items(), key=lambda item: -item[1])),
    ]
    return "\n".join(out)


def _by_service(lines: list[Line]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for line in lines:
        totals[line.service] = totals.get(line.service, 0.0) + line.dollars
    return totals


def load_counts(path: Path | None) -> tuple[dict[str, Any], str]:
    target = path or DEFAULT_COUNTS_FILE
    if target.is_file():
        counts = json.loads(target.read_text())
        measured = counts.get("measured", {})
        missing = [f"{key}.{inner}" for key, value in LAST_MEASURED.items() if isinstance(value, dict)
                   for inner in value if inner not in counts.get(key, {})]
        for key, value in LAST_MEASURED.items():  # a file from an older bench: fill in what it lacks
            counts[key] = {**value, **counts.get(key, {})} if isinstance(value, dict) else counts.get(key, value)
        note = f"; not in the file, so as last measured: {', '.join(missing)}" if missing else ""
        return counts, f"measured by bench/lifecycle.py on {measured.get('date', '?')} ({target}{note})"
    if path is not None:
        raise SystemExit(f"{path} does not exist: run make bench (or python -m bench.lifecycle --counts-out {path})")
    return LAST_MEASURED, (f"as bench/lifecycle.py last measured them ({LAST_MEASURED['measured']['date']}; no "
                           f"{DEFAULT_COUNTS_FILE.relative_to(ROOT)} here: make bench writes it)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.cost", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--connections", type=int, default=1000, help="connections in the table")
    p.add_argument("--active-share", type=float, default=0.2,
                   help="share of connections in active use (read by your app); the rest are only kept alive")
    p.add_argument("--reads-per-hour", type=float, default=60.0, help="token reads an hour per connection in use")
    p.add_argument("--read-path", choices=("invoke", "sdk"), default="invoke",
                   help="reads through the tokens function (Lambda Invoke) or the Python SDK in your own Lambda")
    p.add_argument("--reader-instances", type=int, default=1,
                   help="warm instances (each with its own cache) that read one connection")
    p.add_argument("--token-lifetime-minutes", type=float, default=60.0,
                   help="the access token's lifetime (Invoiced grants one hour)")
    p.add_argument("--invoiced-latency-ms", type=float, default=300.0, help="Invoiced's token endpoint, per refresh")
    p.add_argument("--aws-call-ms", type=float, default=10.0, help="one AWS API call from Lambda, same region")
    p.add_argument("--function-overhead-ms", type=float, default=5.0, help="a function's own work an invocation")
    p.add_argument("--cold-starts-per-day", type=float, default=12.0,
                   help="billed init phases a day of each background function in use (scheduler, worker, tokens)")
    p.add_argument("--init-ms", type=float, default=1000.0, help="a background function's init phase")
    p.add_argument("--sqs-pollers", type=int, default=5, help="Lambda's long-polling SQS pollers on the refresh queue")
    p.add_argument("--table-key-roles", type=int, default=3,
                   help="roles using the table steadily (DynamoDB calls KMS for the table key for each)")
    p.add_argument("--platform-log-bytes", type=int, default=400,
                   help="Lambda's own START, END and REPORT lines (with the X-Ray trace id) an invocation")
    p.add_argument("--key-age-years", type=float, default=0.0,
                   help="age of the KMS key (each of its first two yearly rotations adds a key-month)")
    p.add_argument("--schedule-minutes", type=float, help="the schedule's rate, if the template's cannot be read")
    p.add_argument("--template", type=Path, default=ROOT / "template.yaml")
    p.add_argument("--counts", type=Path, help=f"bench/lifecycle.py's counts (default {DEFAULT_COUNTS_FILE})")
    p.add_argument("--json", action="store_true", help="print the lines as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not 0 <= args.active_share <= 1 or args.connections < 0 or args.reader_instances < 1:
        raise SystemExit("--active-share is a share (0 to 1); --connections >= 0; --reader-instances >= 1")
    deployment = read_template(args.template)
    if args.schedule_minutes:
        deployment.schedule_seconds = int(args.schedule_minutes * 60)
    counts, source = load_counts(args.counts)
    model = simulate(deployment, lifetime=int(args.token_lifetime_minutes * 60),
                     reads_per_hour=args.reads_per_hour / args.reader_instances,
                     days=7.0 if args.reads_per_hour <= 600 else 2.0)
    lines = bill(deployment, counts, model, args)
    if args.json:
        print(json.dumps([vars(line) for line in lines], indent=2))
    else:
        print(render(deployment, counts, source, model, lines, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
