"""What drives the functions locally besides the HTTP gateway, as AWS would:
queues and buses provisioned from a template, Lambda's Invoke API (through
boto3), the SQS event source pollers, the schedules, and the event tap.

The drivers run with real threads and real HTTP against the session's moto
server (tests/integration/conftest.py), on a small template and handlers of
their own written to a temporary directory; each test provisions a fresh copy
under its own stack name. The product template's wiring is checked on the
session stack without running its handlers, and ``python -m local.stack``
in a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import types
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from invoiced_connect_tools.cli import read_env_file

from local.aws import boto_client, dependency_order, provision
from local.events import EventTap, event_summary
from local.lambda_api import LambdaApi, function_name_of
from local.lambda_runtime import Activity, local_functions
from local.queues import QueuePollers, failed_message_ids, redrive_of, sqs_event_sources
from local.schedule import ScheduleFirer, parse_schedule, schedule_specs
from local.stack import _EnvironmentPatch, _print_event, _run_parser
from local.template import ACCOUNT_ID, REGION, Resolver, TemplateError, function_environment, load_template

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CANARY = "CANARY-7f3a9c"  # in exception messages and event details: must never reach a log line

TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  Every:
    Type: String
    Default: rate(1 minute)
Globals:
  Function:
    Runtime: python3.13
    CodeUri: handlers/
    Timeout: 10
    Environment:
      Variables:
        BUS_NAME: !Ref Bus
        WORK_QUEUE_URL: !Ref WorkQueue
        POLICY_ARN: !Ref Policy
Resources:
  # Declared before the dead-letter queue it refers to.
  WorkQueue:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: 1
      MessageRetentionPeriod: 600
      SqsManagedSseEnabled: true
      RedrivePolicy:
        deadLetterTargetArn: !GetAtt WorkDeadLetters.Arn
        maxReceiveCount: 2
  WorkDeadLetters:
    Type: AWS::SQS::Queue
    Properties:
      MessageRetentionPeriod: 1209600
  PlainQueue:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: 1
  SlowQueue:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: 5
  OrderedQueue:
    Type: AWS::SQS::Queue
    Properties:
      FifoQueue: true
      ContentBasedDeduplication: true
  Bus:
    Type: AWS::Events::EventBus
    Properties:
      Name: !Sub "${AWS::StackName}-bus"
  Policy:
    Type: AWS::IAM::ManagedPolicy
    Properties:
      PolicyDocument:
        Version: "2012-10-17"
        Statement:
          - Effect: Allow
            Action: sqs:SendMessage
            Resource: !GetAtt WorkQueue.Arn
  WorkerFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.worker
      Events:
        Work:
          Type: SQS
          Properties:
            Queue: !GetAtt WorkQueue.Arn
            BatchSize: 4
            FunctionResponseTypes: [ReportBatchItemFailures]
            ScalingConfig:
              MaximumConcurrency: 3
  PlainFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.plain
      Events:
        Plain:
          Type: SQS
          Properties:
            Queue: !GetAtt PlainQueue.Arn
  SlowFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.slow
      Events:
        Slow:
          Type: SQS
          Properties:
            Queue: !GetAtt SlowQueue.Arn
            BatchSize: 1
            ScalingConfig:
              MaximumConcurrency: 2
  TickFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.tick
      Events:
        Every:
          Type: Schedule
          Properties:
            Schedule: !Ref Every
  NightlyFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.tick
      Events:
        Nightly:
          Type: Schedule
          Properties:
            Schedule: cron(0 3 * * ? *)
            Input: '{"kind": "nightly"}'
  FlakyTickFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.boom
      Events:
        Every:
          Type: Schedule
          Properties:
            Schedule: rate(1 minute)
  EchoFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.echo
  BoomFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.boom
  PublishFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.publish
"""

HANDLERS = f'''
import json
import time

import boto3

import local_drivers_probe  # the test's Probe, registered in sys.modules

CANARY = "{CANARY}"


def _enter(event, context):
    local_drivers_probe.PROBE.enter(context.function_name, event)


def _leave(context):
    local_drivers_probe.PROBE.leave(context.function_name)


def worker(event, context):
    _enter(event, context)
    try:
        failures = []
        for record in event["Records"]:
            body = json.loads(record["body"])
            if body.get("raise_first") and record["attributes"]["ApproximateReceiveCount"] == "1":
                raise RuntimeError("refresh_token=" + CANARY)
            if body.get("fail"):
                failures.append({{"itemIdentifier": record["messageId"]}})
        return {{"batchItemFailures": failures}}
    finally:
        _leave(context)


def plain(event, context):
    _enter(event, context)
    _leave(context)
    # Without ReportBatchItemFailures Lambda ignores this: the whole batch succeeded.
    return {{"batchItemFailures": [{{"itemIdentifier": record["messageId"]}} for record in event["Records"]]}}


def slow(event, context):
    _enter(event, context)
    try:
        time.sleep(0.25)
    finally:
        _leave(context)


def tick(event, context):
    _enter(event, context)
    _leave(context)
    return {{"received": event, "function": context.function_name}}


def echo(event, context):
    _enter(event, context)
    _leave(context)
    return {{"event": event, "function": context.function_name, "request_id": context.aws_request_id}}


def boom(event, context):
    _enter(event, context)
    _leave(context)
    raise ValueError("refresh_token=" + CANARY)


def publish(event, context):
    _enter(event, context)
    _leave(context)
    boto3.client("events").put_events(Entries=[{{
        "EventBusName": event["bus"],
        "Source": "invoiced-connect",
        "DetailType": "connection.refreshed",
        "Detail": json.dumps({{"connection_id": event["connection_id"], "access_token": CANARY}}),
    }}])
    return {{"published": 1}}
'''


class Probe:
    """What the fixture handlers saw, across their execution environments."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self.calls: list[tuple[str, Any]] = []
        self.active: Counter[str] = Counter()
        self.max_active: Counter[str] = Counter()

    def enter(self, function: str, event: Any) -> None:
        with self._condition:
            self.calls.append((function, event))
            self.active[function] += 1
            self.max_active[function] = max(self.max_active[function], self.active[function])
            self._condition.notify_all()

    def leave(self, function: str) -> None:
        with self._condition:
            self.active[function] -= 1

    def events(self, function: str) -> list[Any]:
        with self._condition:
            return [event for name, event in self.calls if name == function]

    def wait_for(self, function: str, count: int, timeout: float = 5.0) -> bool:
        with self._condition:
            return self._condition.wait_for(lambda: len([1 for name, _ in self.calls if name == function]) >= count,
                                            timeout)


class Drivers:
    """The fixture template provisioned into the session's moto under a stack name of its own."""

    def __init__(self, moto_url: str, template_path: Path, probe: Probe) -> None:
        self.moto_url = moto_url
        self.probe = probe
        self.template = load_template(template_path)
        self.stack_name = f"drv{uuid.uuid4().hex[:10]}"
        self.resolver = Resolver(self.template, stack_name=self.stack_name)
        self.resources = provision(self.resolver, moto_url)
        self.functions = local_functions(self.template, template_path.parent, self.resolver)
        self.activity = Activity()
        self.sqs = boto_client("sqs", moto_url, REGION)
        self.events = boto_client("events", moto_url, REGION)
        self._stops: list[Any] = []

    def name(self, logical_id: str) -> str:
        return self.functions[logical_id].function_name

    def calls(self, logical_id: str) -> list[Any]:
        return self.probe.events(self.name(logical_id))

    def pollers(self, *functions: str, start: bool = True) -> QueuePollers:
        sources = [source for source in sqs_event_sources(self.template, self.resolver) if source.function in functions]
        pollers = QueuePollers(sources, self.functions, self.moto_url, activity=self.activity)
        self._stops.append(pollers.stop)
        return pollers.start() if start else pollers

    def lambda_api(self) -> LambdaApi:
        api = LambdaApi(self.functions, activity=self.activity).start()
        self._stops.append(api.stop)
        return api

    def scheduler(self, *functions: str, every: float | None = None) -> ScheduleFirer:
        specs = [spec for spec in schedule_specs(self.template, self.resolver) if spec.function in functions]
        scheduler = ScheduleFirer(specs, self.functions, events_client=self.events, every=every, activity=self.activity)
        self._stops.append(scheduler.stop)
        return scheduler

    def tap(self) -> EventTap:
        tap = EventTap(self.moto_url, REGION, [self.resources.ref("Bus")], name=f"{self.stack_name}-tap").create()
        self._stops.append(lambda: tap.stop(remove=True))
        return tap

    def send(self, queue_logical_id: str, *bodies: dict[str, Any], **message_args: Any) -> list[str]:
        return [
            self.sqs.send_message(QueueUrl=self.resources.ref(queue_logical_id), MessageBody=json.dumps(body),
                                  **message_args)["MessageId"]
            for body in bodies
        ]

    def dead_letters(self) -> list[dict[str, Any]]:
        return self.sqs.receive_message(QueueUrl=self.resources.ref("WorkDeadLetters"), MaxNumberOfMessages=10,
                                        MessageSystemAttributeNames=["All"]).get("Messages") or []

    def close(self) -> None:
        for stop in reversed(self._stops):
            stop()


@pytest.fixture(scope="module")
def template_path(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("drivers")
    (base / "handlers").mkdir()
    (base / "handlers" / "app.py").write_text(HANDLERS)
    (base / "template.yaml").write_text(TEMPLATE)
    return base / "template.yaml"


@pytest.fixture
def probe() -> Iterator[Probe]:
    module = types.ModuleType("local_drivers_probe")
    module.PROBE = Probe()  # type: ignore[attr-defined]
    sys.modules["local_drivers_probe"] = module
    yield module.PROBE  # type: ignore[attr-defined]
    sys.modules.pop("local_drivers_probe", None)


@pytest.fixture
def drivers(stack, template_path, probe) -> Iterator[Drivers]:
    running = Drivers(stack.moto_url, template_path, probe)
    yield running
    running.close()


# ---------------------------------------------------------------- provisioning
def queue_attributes(sqs: Any, url: str) -> dict[str, str]:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]


def test_queues_and_the_bus_are_created_from_the_template(drivers):
    sqs, resources = drivers.sqs, drivers.resources
    work = queue_attributes(sqs, resources.ref("WorkQueue"))  # Ref is the queue URL
    dead_letters_arn = resources.arn("WorkDeadLetters")
    assert work["QueueArn"] == resources.arn("WorkQueue")
    assert (work["VisibilityTimeout"], work["MessageRetentionPeriod"], work["SqsManagedSseEnabled"]) == ("1", "600",
                                                                                                         "true")
    assert json.loads(work["RedrivePolicy"]) == {"deadLetterTargetArn": dead_letters_arn, "maxReceiveCount": 2}
    assert queue_attributes(sqs, resources.ref("WorkDeadLetters"))["MessageRetentionPeriod"] == "1209600"
    assert resources.physical["WorkQueue"].attributes["QueueName"] == work["QueueArn"].rsplit(":", 1)[1]
    assert work["QueueArn"].rsplit(":", 1)[1].startswith(f"{drivers.stack_name}-WorkQueue")

    ordered = queue_attributes(sqs, resources.ref("OrderedQueue"))
    assert ordered["FifoQueue"] == "true" and ordered["ContentBasedDeduplication"] == "true"
    assert resources.ref("OrderedQueue").endswith(".fifo")

    bus = drivers.events.describe_event_bus(Name=resources.ref("Bus"))  # Ref is the bus name
    assert bus["Name"] == f"{drivers.stack_name}-bus" == resources.physical["Bus"].attributes["Name"]
    assert bus["Arn"] == resources.arn("Bus")

    environment = function_environment(drivers.template, "EchoFunction", drivers.resolver)
    assert environment["BUS_NAME"] == bus["Name"]
    assert environment["WORK_QUEUE_URL"] == resources.ref("WorkQueue")
    assert environment["POLICY_ARN"] == f"arn:aws:iam::{ACCOUNT_ID}:policy/{drivers.stack_name}-Policy"


def test_resources_of_a_type_are_created_after_those_they_refer_to():
    resources = {
        "A": {"Properties": {"RedrivePolicy": {"deadLetterTargetArn": {"Fn::GetAtt": ["C", "Arn"]}}}},
        "B": {"Properties": {"Name": {"Fn::Sub": "${A.QueueName}-b"}}},
        "C": {"Properties": {"Other": {"Ref": "Parameter"}}},
    }
    assert list(dependency_order(resources)) == ["C", "A", "B"]
    with pytest.raises(TemplateError, match="circular"):
        dependency_order({"A": {"Properties": {"X": {"Ref": "B"}}}, "B": {"Properties": {"X": {"Ref": "A"}}}})


def test_moto_moves_a_message_to_the_dead_letter_queue_after_max_receive_count(drivers):
    """The RedrivePolicy made from the template works in moto: no poller needed for redrive."""
    sqs, url = drivers.sqs, drivers.resources.ref("WorkQueue")
    [message_id] = drivers.send("WorkQueue", {"n": 1})
    counts = []
    for _ in range(3):  # maxReceiveCount is 2: the third receive finds it gone to the DLQ
        messages = sqs.receive_message(QueueUrl=url, VisibilityTimeout=0, MessageSystemAttributeNames=["All"],
                                       WaitTimeSeconds=0).get("Messages") or []
        counts.append([message["Attributes"]["ApproximateReceiveCount"] for message in messages])
    assert counts == [["1"], ["2"], []]
    assert [message["MessageId"] for message in drivers.dead_letters()] == [message_id]


# ---------------------------------------------------------------- Lambda's Invoke API through boto3
@pytest.fixture
def lambda_client(drivers):
    api = drivers.lambda_api()
    return boto_client("lambda", api.url, REGION)


def test_invoke_runs_the_function_and_answers_its_result(drivers, lambda_client):
    function = drivers.functions["EchoFunction"]
    partial_arn = f"{ACCOUNT_ID}:function:{function.function_name}"
    for name in (function.function_name, function.arn, partial_arn, f"{function.function_name}:$LATEST",
                 f"{function.arn}:$LATEST"):
        response = lambda_client.invoke(FunctionName=name, Payload=json.dumps({"name": name}).encode())
        assert response["StatusCode"] == 200
        assert response["ExecutedVersion"] == "$LATEST"
        assert "FunctionError" not in response
        result = json.loads(response["Payload"].read())
        assert result["event"] == {"name": name}
        assert result["function"] == function.function_name
        assert result["request_id"] == response["ResponseMetadata"]["RequestId"]
    response = lambda_client.invoke(FunctionName=function.function_name, Qualifier="$LATEST")  # no payload: {}
    assert json.loads(response["Payload"].read())["event"] == {}
    assert len(drivers.calls("EchoFunction")) == 6


def test_a_handler_exception_is_a_function_error_and_only_its_type_is_logged(drivers, lambda_client, caplog):
    caplog.set_level("DEBUG")
    response = lambda_client.invoke(FunctionName=drivers.name("BoomFunction"), Payload=b"{}")
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    error = json.loads(response["Payload"].read())
    assert error["errorType"] == "ValueError"
    assert error["errorMessage"] == f"refresh_token={CANARY}"  # the caller gets it, as from Lambda
    assert error["requestId"] == response["ResponseMetadata"]["RequestId"]
    assert error["stackTrace"] and all(isinstance(line, str) for line in error["stackTrace"])
    assert "in boom" in error["stackTrace"][-1]
    assert not any("lambda_api.py" in line or "lambda_runtime.py" in line for line in error["stackTrace"])
    assert "BoomFunction failed: ValueError" in caplog.text
    assert CANARY not in caplog.text


def test_event_invocations_answer_202_and_run_in_the_background(drivers, lambda_client):
    response = lambda_client.invoke(FunctionName=drivers.name("EchoFunction"), InvocationType="Event",
                                    Payload=json.dumps({"async": True}).encode())
    assert response["StatusCode"] == 202
    assert response["Payload"].read() == b""
    assert drivers.probe.wait_for(drivers.name("EchoFunction"), 1)
    assert drivers.calls("EchoFunction") == [{"async": True}]
    assert drivers.activity.wait_idle(5)


def test_waiting_for_quiet_includes_asynchronous_invocations(drivers, lambda_client):
    pollers = drivers.pollers("WorkerFunction")  # shares the Lambda API's activity, as in the stack
    assert pollers.wait_drained(5)
    response = lambda_client.invoke(FunctionName=drivers.name("SlowFunction"), InvocationType="Event", Payload=b"{}")
    assert response["StatusCode"] == 202
    assert not pollers.wait_drained(0.05)  # the queue is empty, but the function still runs (0.25 s)
    assert pollers.wait_drained(5)
    assert len(drivers.calls("SlowFunction")) == 1
    assert drivers.probe.active[drivers.name("SlowFunction")] == 0  # finished, not merely started


def test_dry_run_answers_204_and_runs_nothing(drivers, lambda_client):
    response = lambda_client.invoke(FunctionName=drivers.name("EchoFunction"), InvocationType="DryRun")
    assert response["StatusCode"] == 204
    assert drivers.calls("EchoFunction") == []


def test_unknown_functions_and_bad_payloads_are_lambda_errors(drivers, lambda_client):
    with pytest.raises(lambda_client.exceptions.ResourceNotFoundException) as raised:
        lambda_client.invoke(FunctionName="no-such-function", Payload=b"{}")
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert raised.value.response["Error"]["Message"] == (
        f"Function not found: arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:no-such-function"
    )
    other_account = drivers.functions["EchoFunction"].arn.replace(ACCOUNT_ID, "999999999999")
    with pytest.raises(lambda_client.exceptions.ResourceNotFoundException):
        lambda_client.invoke(FunctionName=other_account)
    with pytest.raises(lambda_client.exceptions.InvalidRequestContentException):
        lambda_client.invoke(FunctionName=drivers.name("EchoFunction"), Payload=b"{not json")
    assert drivers.calls("EchoFunction") == []


@pytest.mark.parametrize(("identifier", "expected"), [
    ("fn", ("fn", None, None)),
    ("fn:live", ("fn", None, None)),
    ("123456789012:function:fn", ("fn", None, "123456789012")),
    ("123456789012:function:fn:7", ("fn", None, "123456789012")),
    ("arn:aws:lambda:eu-west-1:123456789012:function:fn:$LATEST", ("fn", "eu-west-1", "123456789012")),
])
def test_function_names_arns_and_partial_arns(identifier, expected):
    assert function_name_of(identifier) == expected


# ---------------------------------------------------------------- SQS event sources
def test_sources_are_read_from_the_template_with_lambda_defaults(drivers):
    sources = {source.function: source for source in sqs_event_sources(drivers.template, drivers.resolver)}
    assert set(sources) == {"WorkerFunction", "PlainFunction", "SlowFunction"}
    worker, plain = sources["WorkerFunction"], sources["PlainFunction"]
    assert (worker.queue_arn, worker.batch_size, worker.maximum_concurrency, worker.report_batch_item_failures) == (
        drivers.resources.arn("WorkQueue"), 4, 3, True)
    assert (plain.batch_size, plain.maximum_concurrency, plain.report_batch_item_failures) == (10, 5, False)


def test_a_batch_arrives_as_lambda_s_sqs_event(drivers):
    sent = drivers.send("WorkQueue", {"n": 1}, {"n": 2}, {"n": 3},
                        MessageAttributes={"kind": {"DataType": "String", "StringValue": "refresh"}})
    before = int(time.time() * 1000)
    pollers = drivers.pollers("WorkerFunction")  # started after the sends: one batch of three
    assert pollers.wait_drained(10)
    [event] = drivers.calls("WorkerFunction")
    records = event["Records"]
    assert [record["messageId"] for record in records] == sent
    for number, record in enumerate(records, start=1):
        body = json.dumps({"n": number})
        assert record["body"] == body
        assert record["md5OfBody"] == hashlib.md5(body.encode()).hexdigest()  # noqa: S324 - SQS's checksum
        assert record["receiptHandle"]
        assert record["eventSource"] == "aws:sqs"
        assert record["eventSourceARN"] == drivers.resources.arn("WorkQueue")
        assert record["awsRegion"] == REGION
        attributes = record["attributes"]
        assert set(attributes) == {"ApproximateReceiveCount", "SentTimestamp", "SenderId",
                                   "ApproximateFirstReceiveTimestamp"}
        assert attributes["ApproximateReceiveCount"] == "1"
        assert int(attributes["SentTimestamp"]) <= int(attributes["ApproximateFirstReceiveTimestamp"])
        assert abs(int(attributes["SentTimestamp"]) - before) < 10_000
        assert record["messageAttributes"] == {
            "kind": {"stringValue": "refresh", "stringListValues": [], "binaryListValues": [], "dataType": "String"}
        }
        assert re.fullmatch(r"[0-9a-f]{32}", record["md5OfMessageAttributes"])
    stats = pollers.stats["WorkerFunction.Work"]
    assert (stats.invocations, stats.messages, stats.deleted, stats.failed, stats.errors) == (1, 3, 3, 0, 0)


def test_partial_batch_failure_redelivers_only_the_failed_message_until_the_dead_letter_queue(drivers):
    ok_first, failing, ok_last = drivers.send("WorkQueue", {"ok": 1}, {"fail": True}, {"ok": 2})
    pollers = drivers.pollers("WorkerFunction")
    assert pollers.wait_drained(15)  # once the failing message is in the DLQ (maxReceiveCount 2)
    seen = Counter(record["messageId"] for event in drivers.calls("WorkerFunction") for record in event["Records"])
    assert seen == {ok_first: 1, ok_last: 1, failing: 2}
    receive_counts = [record["attributes"]["ApproximateReceiveCount"]
                      for event in drivers.calls("WorkerFunction") for record in event["Records"]
                      if record["messageId"] == failing]
    assert receive_counts == ["1", "2"]
    assert [message["MessageId"] for message in drivers.dead_letters()] == [failing]
    stats = pollers.stats["WorkerFunction.Work"]
    assert (stats.deleted, stats.failed, stats.errors) == (2, 2, 0)


def test_a_raising_invocation_leaves_its_whole_batch_for_redelivery(drivers, caplog):
    caplog.set_level("INFO")
    drivers.send("WorkQueue", {"raise_first": True}, {"ok": 1}, {"ok": 2})
    pollers = drivers.pollers("WorkerFunction")
    assert pollers.wait_drained(15)
    events = drivers.calls("WorkerFunction")
    raising = [event for event in events
               if any(json.loads(record["body"]).get("raise_first") and record["attributes"]["ApproximateReceiveCount"]
                      == "1" for record in event["Records"])]
    assert len(raising) == 1
    later = {record["messageId"]: record["attributes"]["ApproximateReceiveCount"]
             for event in events[events.index(raising[0]) + 1:] for record in event["Records"]}
    for record in raising[0]["Records"]:  # every message of the failed batch came back
        assert later.get(record["messageId"]) == "2"
    assert drivers.dead_letters() == []  # and then succeeded: deleted, not dead-lettered
    assert pollers.stats["WorkerFunction.Work"].errors == 1
    assert "WorkerFunction failed: RuntimeError" in caplog.text
    assert CANARY not in caplog.text


def test_without_report_batch_item_failures_a_successful_invocation_deletes_everything(drivers):
    [message_id] = drivers.send("PlainQueue", {"fail": True})
    pollers = drivers.pollers("PlainFunction")
    assert pollers.wait_drained(10)
    time.sleep(1.3)  # past the visibility timeout: nothing comes back
    assert pollers.wait_drained(5)
    assert [record["messageId"] for event in drivers.calls("PlainFunction") for record in event["Records"]] == [
        message_id]
    assert pollers.stats["PlainFunction.Plain"].deleted == 1


def test_never_more_batches_in_flight_than_maximum_concurrency(drivers):
    drivers.send("SlowQueue", *({"n": number} for number in range(8)))
    pollers = drivers.pollers("SlowFunction")
    assert not pollers.wait_drained(0.1)  # 8 x 0.25 s of work, two at a time
    assert pollers.wait_drained(15)
    assert len(drivers.calls("SlowFunction")) == 8  # BatchSize 1
    assert drivers.probe.max_active[drivers.name("SlowFunction")] == 2  # measured inside the handler
    stats = pollers.stats["SlowFunction.Slow"]
    assert (stats.invocations, stats.max_in_flight, stats.in_flight) == (8, 2, 0)


@pytest.mark.parametrize(("response", "failed"), [
    (None, set()),
    ({}, set()),
    ({"batchItemFailures": []}, set()),
    ({"batchItemFailures": None}, set()),
    ({"batchItemFailures": [{"itemIdentifier": "b"}]}, {"b"}),
    ({"batchItemFailures": [{"itemIdentifier": "b"}, {"itemIdentifier": "c"}]}, {"b", "c"}),
    ("not an object", {"a", "b", "c"}),
    ({"batchItemFailures": "b"}, {"a", "b", "c"}),
    ({"batchItemFailures": [{"itemIdentifier": ""}]}, {"a", "b", "c"}),
    ({"batchItemFailures": [{"itemIdentifier": None}]}, {"a", "b", "c"}),
    ({"batchItemFailures": [{"id": "b"}]}, {"a", "b", "c"}),
    ({"batchItemFailures": [{"itemIdentifier": "not-in-batch"}]}, {"a", "b", "c"}),
])
def test_batch_item_failures_are_read_as_lambda_reads_them(response, failed):
    assert failed_message_ids(response, ["a", "b", "c"]) == failed


# ---------------------------------------------------------------- schedules
@pytest.mark.parametrize(("expression", "seconds"), [
    ("rate(1 minute)", 60),
    ("rate(5 minutes)", 300),
    ("rate(1 hour)", 3600),
    ("rate(2 hours)", 7200),
    ("rate(1 day)", 86400),
    ("rate(3 days)", 259200),
    ("cron(0 12 * * ? *)", None),
])
def test_schedule_expressions(expression, seconds):
    assert parse_schedule(expression) == seconds


@pytest.mark.parametrize("expression", [
    "rate(1 minutes)", "rate(5 minute)", "rate(0 minutes)", "rate(5 seconds)", "rate(-1 minutes)", "every 5 minutes",
])
def test_schedule_expressions_eventbridge_refuses(expression):
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies with the mistake
        parse_schedule(expression)


def test_fire_invokes_with_eventbridge_s_scheduled_event(drivers):
    scheduler = drivers.scheduler("TickFunction", "NightlyFunction", every=0.05).start(auto=False)
    time.sleep(0.3)
    assert drivers.calls("TickFunction") == []  # not auto-firing, however short the interval

    results = scheduler.fire()
    assert set(results) == {"TickFunction", "NightlyFunction"}
    event = results["TickFunction"]["received"]
    assert results["TickFunction"]["function"] == drivers.name("TickFunction")
    rule = drivers.events.describe_rule(Name=f"{drivers.stack_name}-TickFunctionEvery")
    assert rule["ScheduleExpression"] == "rate(1 minute)"
    assert set(event) == {"version", "id", "detail-type", "source", "account", "time", "region", "resources",
                          "detail"}
    assert (event["version"], event["detail-type"], event["source"], event["detail"]) == (
        "0", "Scheduled Event", "aws.events", {})
    assert (event["account"], event["region"], event["resources"]) == (ACCOUNT_ID, REGION, [rule["Arn"]])
    assert uuid.UUID(event["id"])
    fired_at = datetime.strptime(event["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - fired_at).total_seconds()) < 5
    assert results["NightlyFunction"]["received"] == {"kind": "nightly"}  # Input replaces the Scheduled Event

    again = scheduler.fire("TickFunction")
    assert list(again) == ["TickFunction"]
    assert again["TickFunction"]["received"]["id"] != event["id"]
    assert len(drivers.calls("TickFunction")) == 2
    with pytest.raises(KeyError):
        scheduler.fire("EchoFunction")


def test_rate_schedules_fire_on_their_own_at_the_override_interval(drivers):
    scheduler = drivers.scheduler("TickFunction", "NightlyFunction", every=0.1).start()
    assert drivers.probe.wait_for(drivers.name("TickFunction"), 3, timeout=5)
    scheduler.stop()
    fired = len(drivers.calls("TickFunction"))
    time.sleep(0.3)
    assert len(drivers.calls("TickFunction")) == fired  # stopped means stopped
    assert len({event["id"] for event in drivers.calls("TickFunction")}) == fired
    assert drivers.calls("NightlyFunction") == []  # cron: on demand only
    assert scheduler.describe() == [
        "TickFunction: rate(1 minute), every 0.1 s (--schedule-every; the template says rate(1 minute))",
        "NightlyFunction: cron(0 3 * * ? *), on demand only (cron is not played)",
    ]


def test_a_failing_scheduled_function_is_logged_by_type_and_keeps_its_schedule(drivers, caplog):
    caplog.set_level("INFO")
    scheduler = drivers.scheduler("FlakyTickFunction", every=0.05).start()
    assert drivers.probe.wait_for(drivers.name("FlakyTickFunction"), 2, timeout=5)
    scheduler.stop()
    assert scheduler.failures["FlakyTickFunction"] >= 2
    assert "FlakyTickFunction failed: ValueError" in caplog.text
    assert CANARY not in caplog.text
    with pytest.raises(ValueError, match="refresh_token"):  # on demand, the error reaches the caller
        scheduler.fire("FlakyTickFunction")


# ---------------------------------------------------------------- the event tap
def test_the_tap_returns_every_event_put_on_the_bus(drivers):
    tap = drivers.tap()
    bus = drivers.resources.ref("Bus")

    def put(bus_name: str, detail_type: str, connection_id: str) -> None:
        drivers.events.put_events(Entries=[{"EventBusName": bus_name, "Source": "invoiced-connect",
                                            "DetailType": detail_type,
                                            "Detail": json.dumps({"connection_id": connection_id})}])

    put(bus, "connection.connected", "acme-1")
    put("default", "elsewhere", "not-ours")
    put(bus, "connection.refreshed", "acme-1")
    seen = tap.all_events()
    assert [(event["detail-type"], event["detail"]) for event in seen] == [
        ("connection.connected", {"connection_id": "acme-1"}),
        ("connection.refreshed", {"connection_id": "acme-1"}),
    ]
    assert all(event["source"] == "invoiced-connect" and event["account"] == ACCOUNT_ID for event in seen)
    put(bus, "connection.revoked", "acme-1")
    assert [event["detail-type"] for event in tap.all_events()] == [  # accumulated, in order
        "connection.connected", "connection.refreshed", "connection.revoked"]


def test_events_a_function_publishes_with_boto3_reach_the_tap_and_the_console_line(drivers, lambda_client,
                                                                                    capsys):
    tap = drivers.tap()
    printed: queue.Queue[dict[str, Any]] = queue.Queue()
    tap.watch(printed.put, interval=0.05)
    payload = {"bus": drivers.resources.ref("Bus"), "connection_id": "acme-42"}
    response = lambda_client.invoke(FunctionName=drivers.name("PublishFunction"), Payload=json.dumps(payload).encode())
    assert "FunctionError" not in response, response["Payload"].read()
    event = printed.get(timeout=5)
    assert (event["detail-type"], event["detail"]["connection_id"]) == ("connection.refreshed", "acme-42")
    assert tap.all_events() == [event]
    assert event_summary(event) == "event connection.refreshed connection_id=acme-42"
    _print_event(event)
    line = capsys.readouterr().out
    assert "event connection.refreshed connection_id=acme-42" in line
    assert CANARY not in line and "access_token" not in line  # never the whole detail


# ---------------------------------------------------------------- the product's stack (no handler runs)
def test_the_stack_sets_the_lambda_endpoint_boto3_uses(stack):
    assert stack.env["AWS_ENDPOINT_URL_LAMBDA"] == stack.lambda_url == os.environ["AWS_ENDPOINT_URL_LAMBDA"]
    client = boto3.client("lambda")  # no endpoint given: boto3 reads AWS_ENDPOINT_URL_LAMBDA
    for function in stack.functions.values():
        assert client.invoke(FunctionName=function.function_name, InvocationType="DryRun")["StatusCode"] == 204
    own = stack.client("lambda")
    with pytest.raises(own.exceptions.ResourceNotFoundException):
        own.invoke(FunctionName="no-such-function", InvocationType="DryRun")


def test_the_lambda_endpoint_is_set_while_other_service_endpoints_stay_hidden(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", "https://lambda.example")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", "https://sqs.example")
    before = dict(os.environ)
    patch = _EnvironmentPatch()
    patch.apply({"AWS_ENDPOINT_URL_LAMBDA": "http://127.0.0.1:9"})
    assert os.environ["AWS_ENDPOINT_URL_LAMBDA"] == "http://127.0.0.1:9"
    assert "AWS_ENDPOINT_URL_SQS" not in os.environ
    patch.restore()
    assert dict(os.environ) == before


def test_the_stack_provisions_the_template_queues_and_polls_its_sources(stack):
    template = load_template(stack.template_path)
    sqs = stack.client("sqs")
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] != "AWS::SQS::Queue":
            continue
        props = resource.get("Properties") or {}
        attributes = queue_attributes(sqs, stack.resources.ref(logical_id))
        for name in ("VisibilityTimeout", "MessageRetentionPeriod"):
            if name in props:
                assert attributes[name] == str(props[name]), (logical_id, name)
        if "RedrivePolicy" in props:
            target = props["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
            assert redrive_of(sqs, stack.resources.ref(logical_id)) == {
                "deadLetterTargetArn": stack.resources.arn(target),
                "maxReceiveCount": int(props["RedrivePolicy"]["maxReceiveCount"]),
            }
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] == "AWS::Events::EventBus":
            bus = stack.resources.ref(logical_id)
            assert stack.client("events").describe_event_bus(Name=bus)["Arn"] == stack.resources.arn(logical_id)
            assert bus in stack.event_tap.bus_names

    with_sqs = {(logical_id, name) for logical_id, resource in template["Resources"].items()
                if resource["Type"] == "AWS::Serverless::Function"
                for name, event in ((resource.get("Properties") or {}).get("Events") or {}).items()
                if event["Type"] == "SQS"}
    assert set(stack.queue_stats()) == {f"{function}.{event}" for function, event in with_sqs}
    with_schedule = {logical_id for logical_id, resource in template["Resources"].items()
                     if resource["Type"] == "AWS::Serverless::Function"
                     and any(event["Type"] == "Schedule"
                             for event in ((resource.get("Properties") or {}).get("Events") or {}).values())}
    assert {spec.function for spec in stack.scheduler.specs} == with_schedule
    assert stack.scheduler.auto is False  # tests fire schedules themselves
    assert stack.wait_for_queues(10)


def test_the_stack_returns_events_published_on_its_bus(stack):
    marker = f"tap-{uuid.uuid4().hex[:8]}"
    stack.client("events").put_events(Entries=[{"EventBusName": stack.env["EVENT_BUS_NAME"], "Source": "test",
                                                "DetailType": "connection.connected",
                                                "Detail": json.dumps({"connection_id": marker})}])
    mine = [event for event in stack.published_events() if event["detail"].get("connection_id") == marker]
    assert [event["detail-type"] for event in mine] == ["connection.connected"]
    assert [event for event in stack.published_events() if event["detail"].get("connection_id") == marker] == mine


def test_schedule_every_must_be_a_positive_number_of_seconds(capsys):
    assert _run_parser().parse_args(["--schedule-every", "2.5"]).schedule_every == 2.5
    assert _run_parser().parse_args([]).schedule_every is None
    for bad in ("0", "-1", "soon"):
        with pytest.raises(SystemExit):
            _run_parser().parse_args(["--schedule-every", bad])
    capsys.readouterr()


def test_python_m_local_stack_serves_the_drivers_and_stops_cleanly_on_sigterm(tmp_path):
    env_file = tmp_path / "stack.env"
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith(("INVOICED_", "LOCAL_", "AWS_"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "local.stack", "--env-file", str(env_file), "--gateway-port", "0", "--moto-port", "0",
         "--lambda-port", "0", "--invoiced-app-port", "0", "--invoiced-api-port", "0"],
        cwd=PROJECT_ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    output: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not any(line.strip().startswith("Return page") for line in output):
            assert process.poll() is None, "".join(output)
            output.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
        banner = "".join(output)
        lambda_url = re.search(r"Lambda API\s+(http://127\.0\.0\.1:\d+)", banner).group(1)
        # The template's schedule on its own rate, its queue with its dead-letter queue.
        assert re.search(r"Schedule\s+\w+: rate\(\d+ \w+\), every \d+ s\n", banner), banner
        assert re.search(r"Queue\s+\S+ -> \w+ \(batch \d+, at most \d+ at once[^)]*\); after \d+ receives to \S+",
                         banner), banner
        assert "Events           published on" in banner
        settings = read_env_file(str(env_file))  # `export NAME=value` lines, as `source` reads them
        assert settings["AWS_ENDPOINT_URL_LAMBDA"] == lambda_url
        assert settings["AWS_DEFAULT_REGION"] and settings["TOKENS_FUNCTION_NAME"].endswith("-tokens")
        assert settings["LINKS_FUNCTION_NAME"].endswith("-links")
        sourced = subprocess.run(["bash", "-c", f"source {shlex.quote(str(env_file))} && env"], capture_output=True,
                                 text=True, check=True, env={"PATH": os.environ["PATH"]}).stdout
        assert f"AWS_ENDPOINT_URL_LAMBDA={lambda_url}\n" in sourced  # exported for the examples and your code
        assert f"CONNECTION_STATE_FUNCTION_NAME={settings['CONNECTION_STATE_FUNCTION_NAME']}\n" in sourced
        lambda_client = boto_client("lambda", lambda_url, REGION)
        response = lambda_client.invoke(FunctionName=settings["CONNECTIONS_FUNCTION_NAME"], InvocationType="DryRun")
        assert response["StatusCode"] == 204

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not env_file.exists()


def test_the_console_line_for_an_event_names_only_type_and_connection(capsys):
    _print_event({"detail-type": "connection.needs_reauth", "detail": {"connection_id": "acme\n7", "reason": CANARY}})
    _print_event({"detail-type": "connection.revoked", "detail": "not an object"})
    out = capsys.readouterr().out
    assert "event connection.needs_reauth connection_id='acme\\n7'" in out
    assert "event connection.revoked\n" in out
    assert CANARY not in out
