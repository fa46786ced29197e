"""template.yaml and its build, checked the way a security reviewer would.

The structural checks are plain functions that return a list of problems, so
each one is also run against a deliberately broken copy of the template
(``test_each_check_catches_its_regression``): a check that cannot fail is
not a check. The SAM CLI tests (marked ``slow``) run ``sam validate`` and a
real ``sam build`` into a temporary directory, with no Docker and with every
python3.13 removed from PATH.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import local.template as template_module

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"

GUARDED_SERVICES = ("dynamodb", "kms", "secretsmanager")
MAX_LAYER_BYTES = 10 * 1024 * 1024
ELF_MACHINE_AARCH64 = 183

# Other code (the local stack, the settings module, the CLI) relies on these.
LOGICAL_IDS = {
    "TokensTable", "TokenKey", "ClientSecret", "LinkSigningSecret", "InvoicedConnectLayer",
    "ConnectFunction", "CallbackFunction", "HttpApi", "HttpApiStage",
    "ConnectIntegration", "ConnectRoute", "CallbackIntegration", "CallbackRoute",
    "EventBus", "RefreshQueue", "RefreshDeadLetterQueue", "SchedulerFunction", "RefreshWorkerFunction",
    "ConnectionsFunction", "ListInvoicesFunction", "TokenRefresherPolicy", "TokenReaderPolicy",
}
OUTPUTS = {
    "ConnectUrl", "CallbackUrl", "TokensTableName", "TokenKeyArn",
    "ClientSecretArn", "LinkSigningSecretArn", "LayerArn",
    "TokenReaderPolicyArn", "ConnectionsFunctionName", "ListInvoicesFunctionName", "EventBusName",
    "RefreshQueueUrl", "RefreshDeadLetterQueueUrl",
}
SHARED_ENV = {
    "TABLE_NAME", "KMS_KEY_ID", "INVOICED_BASE_URL", "INVOICED_API_URL", "INVOICED_CLIENT_ID",
    "INVOICED_SCOPE", "PUBLIC_BASE_URL", "RETURN_URL_ALLOWLIST",
    "POWERTOOLS_SERVICE_NAME", "POWERTOOLS_LOG_LEVEL", "POWERTOOLS_METRICS_NAMESPACE",
    "EVENT_BUS_NAME", "CONNECTIONS_FUNCTION_NAME", "REFRESH_WINDOW_MINUTES", "KEEPALIVE_DAYS", "ACTIVE_USE_HOURS",
}
#: The functions that call Invoiced's token endpoint: the only readers of the client secret.
TOKEN_ENDPOINT_CALLERS = {"CallbackFunction", "RefreshWorkerFunction", "ConnectionsFunction"}
#: Event sources a function may have (an HTTP API event would create an implicit API).
ALLOWED_EVENTS = {"SchedulerFunction": "Schedule", "RefreshWorkerFunction": "SQS"}
ROUTES = {"GET /connect": "ConnectFunction", "GET /callback": "CallbackFunction"}
# Exactly what each handler does to the table, by key prefix.
TABLE_GRANTS = {
    ("ConnectFunction", "dynamodb:PutItem", "state#*"),
    ("ConnectFunction", "dynamodb:GetItem", "link#*"),
    ("CallbackFunction", "dynamodb:DeleteItem", "state#*"),
    ("CallbackFunction", "dynamodb:PutItem", "link#*"),
    ("CallbackFunction", "dynamodb:DeleteItem", "link#*"),
    ("CallbackFunction", "dynamodb:UpdateItem", "conn#*"),
    *{(fn, action, "conn#*") for fn in ("RefreshWorkerFunction", "ConnectionsFunction", "TokenRefresherPolicy")
      for action in ("dynamodb:GetItem", "dynamodb:UpdateItem")},
    *{(fn, action, "rescue#*") for fn in ("RefreshWorkerFunction", "ConnectionsFunction", "TokenRefresherPolicy")
      for action in ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem")},
    ("ListInvoicesFunction", "dynamodb:GetItem", "conn#*"),
    ("TokenReaderPolicy", "dynamodb:GetItem", "conn#*"),
    # The scheduler's one grant: Query on the due-index (keys only), not the table.
    ("SchedulerFunction", "dynamodb:Query", "index/due-index"),
}
# Access-log variables that could carry a code, a state, a cookie or a token.
SENSITIVE_LOG_VARIABLE = re.compile(r"query|body|header|cookie|authori[sz]|override|apikey|jwt|claims", re.I)


# ------------------------------------------------------------------ loading
def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    # The local stack's loader: the same reading of short forms everywhere.
    return template_module.load_template(path)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


# ------------------------------------------------------------------ helpers
def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def resources(tpl: dict[str, Any], type_name: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in tpl["Resources"].items() if res.get("Type") == type_name}


def functions(tpl: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return resources(tpl, "AWS::Serverless::Function")


def global_function(tpl: dict[str, Any]) -> dict[str, Any]:
    return tpl.get("Globals", {}).get("Function", {})


def refers_to(value: Any, logical_id: str) -> bool:
    """Whether an intrinsic value names ``logical_id`` (Ref, GetAtt or Sub)."""
    if isinstance(value, dict):
        if value.get("Ref") == logical_id:
            return True
        get_att = value.get("Fn::GetAtt")
        if isinstance(get_att, list) and get_att and get_att[0] == logical_id:
            return True
        if re.search(r"\$\{" + re.escape(logical_id) + r"(\.[A-Za-z]+)?\}", text_of(value)):
            return True
    return False


def text_of(value: Any) -> str:
    """A plain string, or the template string of a ``Fn::Sub``; else ''."""
    if isinstance(value, str):
        return value
    sub = value.get("Fn::Sub") if isinstance(value, dict) else None
    text = sub[0] if isinstance(sub, list) else sub
    return text if isinstance(text, str) else ""


def function_env(tpl: dict[str, Any], name: str) -> dict[str, Any]:
    merged = dict(global_function(tpl).get("Environment", {}).get("Variables", {}))
    merged.update(functions(tpl)[name]["Properties"].get("Environment", {}).get("Variables", {}))
    return merged


def iam_statements(tpl: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(owner, statement) for every identity-policy statement in the template."""
    for name, fn in functions(tpl).items():
        for policy in as_list(fn["Properties"].get("Policies")):
            if isinstance(policy, dict) and "Statement" in policy:
                for statement in as_list(policy["Statement"]):
                    yield name, statement
    for name, role in resources(tpl, "AWS::IAM::Role").items():
        for policy in as_list(role["Properties"].get("Policies")):
            for statement in as_list(policy.get("PolicyDocument", {}).get("Statement")):
                yield name, statement
    for name, res in resources(tpl, "AWS::IAM::Policy").items():
        for statement in as_list(res["Properties"].get("PolicyDocument", {}).get("Statement")):
            yield name, statement
    # A managed policy's statements count for every function that attaches
    # it, and for the policy itself (consumers outside the stack attach it).
    for name, res in resources(tpl, "AWS::IAM::ManagedPolicy").items():
        holders = [fn for fn, props in functions(tpl).items()
                   if any(refers_to(p, name) for p in as_list(props["Properties"].get("Policies")))]
        for statement in as_list(res["Properties"].get("PolicyDocument", {}).get("Statement")):
            for owner in [*holders, name]:
                yield owner, statement


def actions(statement: dict[str, Any]) -> list[str]:
    return [a for a in as_list(statement.get("Action")) if isinstance(a, str)]


def service_of(action: str) -> str:
    return action.split(":", 1)[0].lower()


def statements_for(tpl: dict[str, Any], service: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (owner, st)
        for owner, st in iam_statements(tpl)
        if st.get("Effect") == "Allow" and any(service_of(a) == service for a in actions(st))
    ]


# ------------------------------------------------------------------ checks
# Each returns a list of human-readable problems; empty means the property holds.
def check_runtime(tpl: dict[str, Any]) -> list[str]:
    problems = []
    defaults = global_function(tpl)
    for name, fn in functions(tpl).items():
        props = fn["Properties"]
        runtime = props.get("Runtime", defaults.get("Runtime"))
        architectures = props.get("Architectures", defaults.get("Architectures"))
        if runtime != "python3.13":
            problems.append(f"{name}: runtime {runtime!r}")
        if architectures != ["arm64"]:
            problems.append(f"{name}: architectures {architectures!r}")
        if fn.get("Metadata", {}).get("BuildMethod") != "makefile":
            problems.append(f"{name}: not built by its Makefile")
    for name, layer in resources(tpl, "AWS::Serverless::LayerVersion").items():
        props, meta = layer["Properties"], layer.get("Metadata", {})
        if props.get("CompatibleRuntimes") != ["python3.13"] or props.get("CompatibleArchitectures") != ["arm64"]:
            problems.append(f"{name}: not a python3.13/arm64 layer")
        if meta.get("BuildMethod") != "makefile" or meta.get("BuildArchitecture") != "arm64":
            problems.append(f"{name}: not built by its Makefile for arm64")
    return problems


def check_routes(tpl: dict[str, Any]) -> list[str]:
    problems = []
    routes = resources(tpl, "AWS::ApiGatewayV2::Route")
    keys = sorted(route["Properties"]["RouteKey"] for route in routes.values())
    if keys != sorted(ROUTES):
        problems.append(f"routes are {keys}")
    integrations = resources(tpl, "AWS::ApiGatewayV2::Integration")
    for name, route in routes.items():
        key, target = route["Properties"]["RouteKey"], route["Properties"].get("Target")
        match = re.fullmatch(r"integrations/\$\{(\w+)\}", text_of(target))
        integration = integrations.get(match.group(1)) if match else None
        if integration is None:
            problems.append(f"{name}: target {target!r} is not one of the integrations")
            continue
        props = integration["Properties"]
        if props.get("IntegrationType") != "AWS_PROXY" or props.get("PayloadFormatVersion") != "2.0":
            problems.append(f"{name}: integration is not a 2.0 Lambda proxy")
        expected = ROUTES.get(key)
        if expected and not refers_to(props.get("IntegrationUri"), expected):
            problems.append(f"{name}: {key} does not reach {expected}")
    for name, fn in functions(tpl).items():
        for event in (fn["Properties"].get("Events") or {}).values():
            if event.get("Type") != ALLOWED_EVENTS.get(name):
                problems.append(f"{name}: has a {event.get('Type')} event (an implicit API would loop back "
                                "into PUBLIC_BASE_URL; only the scheduler and the worker have event sources)")
    for name, permission in resources(tpl, "AWS::Lambda::Permission").items():
        source = text_of(permission["Properties"].get("SourceArn"))
        if not re.search(r"/GET/\w+$", source):
            problems.append(f"{name}: invoke permission not scoped to one route ({source!r})")
    return problems


def check_no_wildcards(tpl: dict[str, Any]) -> list[str]:
    problems = []
    for owner, statement in iam_statements(tpl):
        if statement.get("Effect") != "Allow":
            continue
        if "NotAction" in statement or "NotResource" in statement:
            problems.append(f"{owner}/{statement.get('Sid')}: NotAction/NotResource")
        acts = actions(statement)
        if "*" in acts:
            problems.append(f"{owner}/{statement.get('Sid')}: Action '*'")
        guarded = [a for a in acts if service_of(a) in GUARDED_SERVICES]
        problems += [f"{owner}/{statement.get('Sid')}: wildcard action {a}" for a in guarded if "*" in a]
        if guarded:
            resources_ = as_list(statement.get("Resource"))
            if not resources_:
                problems.append(f"{owner}/{statement.get('Sid')}: no Resource")
            problems += [
                f"{owner}/{statement.get('Sid')}: wildcard resource {r!r}"
                for r in resources_
                if isinstance(r, str) and "*" in r
            ]
    # SAM policy templates and managed policies for these services grant more
    # than the handlers need; only inline statements are reviewable here.
    for name, fn in functions(tpl).items():
        for policy in as_list(fn["Properties"].get("Policies")):
            labels = [policy] if isinstance(policy, str) else [k for k in policy if k not in ("Version", "Statement")]
            problems += [
                f"{name}: uses policy {label!r}"
                for label in labels
                if isinstance(label, str) and re.search(r"dynamo|kms|secret", label, re.I)
            ]
    return problems


def check_secrets(tpl: dict[str, Any]) -> list[str]:
    problems = []
    readers: dict[str, set[str]] = {"ClientSecret": set(), "LinkSigningSecret": set()}
    for owner, statement in statements_for(tpl, "secretsmanager"):
        for resource in as_list(statement.get("Resource")):
            for secret, who in readers.items():
                if refers_to(resource, secret):
                    who.add(owner)
            if not any(refers_to(resource, secret) for secret in readers):
                problems.append(f"{owner}: secretsmanager on {resource!r}")
    if readers["ClientSecret"] != TOKEN_ENDPOINT_CALLERS | {"TokenRefresherPolicy"}:
        problems.append(f"ClientSecret readable by {sorted(readers['ClientSecret'])}")
    if readers["LinkSigningSecret"] != {"ConnectFunction"}:
        problems.append(f"LinkSigningSecret readable by {sorted(readers['LinkSigningSecret'])}")
    # A secret's ARN goes only where it can be read.
    global_env = global_function(tpl).get("Environment", {}).get("Variables", {})
    for variable, owners in (("CLIENT_SECRET_ARN", TOKEN_ENDPOINT_CALLERS),
                             ("LINK_SIGNING_SECRET_ARN", {"ConnectFunction"})):
        if variable in global_env:
            problems.append(f"{variable} is in Globals")
        holders = {name for name in functions(tpl) if variable in function_env(tpl, name)}
        if holders != owners:
            problems.append(f"{variable} given to {sorted(holders)}")
    return problems


def check_table_access(tpl: dict[str, Any]) -> list[str]:
    problems, grants = [], set()
    for owner, statement in statements_for(tpl, "dynamodb"):
        index_only = [text_of(r) for r in as_list(statement.get("Resource"))] == ["${TokensTable.Arn}/index/due-index"]
        if index_only:
            grants |= {(owner, action, "index/due-index") for action in actions(statement)}
            continue
        if not all(refers_to(r, "TokensTable") for r in as_list(statement.get("Resource"))):
            problems.append(f"{owner}/{statement.get('Sid')}: not on TokensTable")
        prefixes = statement.get("Condition", {}).get("ForAllValues:StringLike", {}).get("dynamodb:LeadingKeys")
        if not prefixes:
            problems.append(f"{owner}/{statement.get('Sid')}: no dynamodb:LeadingKeys condition")
            continue
        grants |= {(owner, action, prefix) for action in actions(statement) for prefix in as_list(prefixes)}
    if grants != TABLE_GRANTS:
        problems.append(f"table grants {sorted(grants)} != {sorted(TABLE_GRANTS)}")
    return problems


def check_key_use(tpl: dict[str, Any]) -> list[str]:
    """Every kms grant is on TokenKey and either only via DynamoDB (table SSE)
    or only with a {connection_id} encryption context (the token envelope)."""
    problems = []
    for owner, statement in statements_for(tpl, "kms"):
        sid = f"{owner}/{statement.get('Sid')}"
        if not all(refers_to(r, "TokenKey") for r in as_list(statement.get("Resource"))):
            problems.append(f"{sid}: not on TokenKey")
        condition = statement.get("Condition", {})
        via = condition.get("StringEquals", {}).get("kms:ViaService")
        context_keys = condition.get("ForAllValues:StringEquals", {}).get("kms:EncryptionContextKeys")
        context_required = condition.get("Null", {}).get("kms:EncryptionContext:connection_id")
        via_dynamodb = text_of(via).startswith("dynamodb.")
        bound_to_connection = as_list(context_keys) == ["connection_id"] and str(context_required).lower() == "false"
        if not (via_dynamodb or bound_to_connection):
            problems.append(f"{sid}: neither via DynamoDB nor bound to a connection_id context")
        if via_dynamodb and set(actions(statement)) - {"kms:Decrypt", "kms:DescribeKey"}:
            problems.append(f"{sid}: more than table decryption via DynamoDB")
    encrypters = {owner for owner, st in statements_for(tpl, "kms") if "kms:Encrypt" in actions(st)}
    if encrypters != TOKEN_ENDPOINT_CALLERS | {"TokenRefresherPolicy"}:
        problems.append(f"kms:Encrypt granted to {sorted(encrypters)}")
    return problems


def check_reader_policy(tpl: dict[str, Any]) -> list[str]:
    """What consumers attach: read connection rows, decrypt under a
    connection_id context, invoke the connections function. Nothing else."""
    problems = []
    granted = set()
    for owner, statement in iam_statements(tpl):
        if owner != "TokenReaderPolicy":
            continue
        for action in actions(statement):
            granted.add(action)
            if action == "lambda:InvokeFunction" and not all(
                    refers_to(r, "ConnectionsFunction") for r in as_list(statement.get("Resource"))):
                problems.append("the reader policy invokes something other than the connections function")
    if granted != {"dynamodb:GetItem", "kms:Decrypt", "kms:DescribeKey", "lambda:InvokeFunction"}:
        problems.append(f"the reader policy grants {sorted(granted)}")
    holders = {fn for fn, props in functions(tpl).items()
               if any(refers_to(p, "TokenReaderPolicy") for p in as_list(props["Properties"].get("Policies")))}
    if holders != {"ListInvoicesFunction"}:
        problems.append(f"the reader policy is attached to {sorted(holders)}")
    return problems


def check_refresh_pipeline(tpl: dict[str, Any]) -> list[str]:
    """Schedule -> queue (with a DLQ) -> worker with partial batch failures and bounded concurrency."""
    problems = []
    scheduler = functions(tpl)["SchedulerFunction"]["Properties"]
    if [e.get("Type") for e in (scheduler.get("Events") or {}).values()] != ["Schedule"]:
        problems.append("the scheduler has no schedule")
    worker = functions(tpl)["RefreshWorkerFunction"]["Properties"]
    events = [e for e in (worker.get("Events") or {}).values() if e.get("Type") == "SQS"]
    if len(events) != 1:
        return [*problems, "the worker has no SQS event"]
    sqs = events[0]["Properties"]
    if not refers_to(sqs.get("Queue"), "RefreshQueue"):
        problems.append("the worker does not read the refresh queue")
    if sqs.get("FunctionResponseTypes") != ["ReportBatchItemFailures"]:
        problems.append("the worker does not report partial batch failures")
    if not refers_to(sqs.get("ScalingConfig", {}).get("MaximumConcurrency"), "RefreshConcurrency"):
        problems.append("the worker's concurrency is not bounded by RefreshConcurrency")
    concurrency = tpl["Parameters"]["RefreshConcurrency"]
    if not (2 <= concurrency.get("Default", 0) <= 10 and concurrency.get("MaxValue", 99) < 20):
        problems.append("RefreshConcurrency may reach Invoiced's 20 concurrent requests")
    queue = tpl["Resources"]["RefreshQueue"]["Properties"]
    if not refers_to(queue.get("RedrivePolicy", {}).get("deadLetterTargetArn"), "RefreshDeadLetterQueue"):
        problems.append("the refresh queue has no dead-letter queue")
    timeout = worker.get("Timeout", global_function(tpl).get("Timeout", 3))
    if queue.get("VisibilityTimeout", 30) < 6 * timeout:
        problems.append("the queue's visibility timeout is under six times the worker's timeout")
    publishers = {owner for owner, st in iam_statements(tpl) if "events:PutEvents" in actions(st)}
    for owner, statement in iam_statements(tpl):
        if "events:PutEvents" in actions(statement) and not all(
                refers_to(r, "EventBus") for r in as_list(statement.get("Resource"))):
            problems.append(f"{owner}: PutEvents beyond the stack's bus")
    if publishers != TOKEN_ENDPOINT_CALLERS | {"TokenRefresherPolicy"}:
        problems.append(f"events published by {sorted(publishers)}")
    return problems


def check_key_policy(tpl: dict[str, Any]) -> list[str]:
    problems = []
    for name, key in resources(tpl, "AWS::KMS::Key").items():
        props = key["Properties"]
        if props.get("EnableKeyRotation") is not True:
            problems.append(f"{name}: no key rotation")
        if key.get("DeletionPolicy") != "Retain":
            problems.append(f"{name}: not retained on stack deletion")
        for statement in as_list(props.get("KeyPolicy", {}).get("Statement")):
            principal = statement.get("Principal")
            principals = [principal] if isinstance(principal, str) else as_list((principal or {}).get("AWS"))
            if "*" in principals:
                problems.append(f"{name}/{statement.get('Sid')}: open to any principal")
    return problems


def check_table(tpl: dict[str, Any]) -> list[str]:
    table = tpl["Resources"]["TokensTable"]
    props = table["Properties"]
    problems = []
    if props.get("KeySchema") != [{"AttributeName": "pk", "KeyType": "HASH"}]:
        problems.append(f"key schema {props.get('KeySchema')}")
    types = {a["AttributeName"]: a["AttributeType"] for a in props.get("AttributeDefinitions", [])}
    if types != {"pk": "S", "due_shard": "N", "refresh_at": "N"}:
        problems.append(f"attributes {types}")
    if props.get("BillingMode") != "PAY_PER_REQUEST":
        problems.append("not on-demand")
    if props.get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled") is not True:
        problems.append("no point-in-time recovery")
    if props.get("DeletionProtectionEnabled") is not True:
        problems.append("no deletion protection")
    if table.get("DeletionPolicy") != "Retain" or table.get("UpdateReplacePolicy") != "Retain":
        problems.append("not retained on stack deletion or replacement")
    sse = props.get("SSESpecification", {})
    if sse.get("SSEEnabled") is not True or sse.get("SSEType") != "KMS" or not refers_to(sse.get("KMSMasterKeyId"), "TokenKey"):
        problems.append(f"SSE is {sse}")
    if props.get("TimeToLiveSpecification") != {"AttributeName": "ttl", "Enabled": True}:
        problems.append(f"TTL is {props.get('TimeToLiveSpecification')}")
    indexes = {ix["IndexName"]: ix["KeySchema"] for ix in props.get("GlobalSecondaryIndexes", [])}
    expected_index = [
        {"AttributeName": "due_shard", "KeyType": "HASH"},
        {"AttributeName": "refresh_at", "KeyType": "RANGE"},
    ]
    if indexes.get("due-index") != expected_index:
        problems.append(f"due-index is {indexes.get('due-index')}")
    return problems


def check_stage(tpl: dict[str, Any]) -> list[str]:
    props = tpl["Resources"]["HttpApiStage"]["Properties"]
    problems = []
    route_settings = props.get("DefaultRouteSettings", {})
    for limit in ("ThrottlingRateLimit", "ThrottlingBurstLimit"):
        if route_settings.get(limit) in (None, ""):
            problems.append(f"no {limit}")
    logs = props.get("AccessLogSettings", {})
    if not refers_to(logs.get("DestinationArn"), "HttpApiAccessLogs"):
        problems.append("access logs do not go to the declared log group")
    fmt = logs.get("Format", "")
    try:
        json.loads(fmt)
    except ValueError:
        problems.append("access log format is not JSON")
    variables = re.findall(r"\$(?:context|input|request|stageVariables)[.\w]*", fmt)
    if "$context.requestId" not in variables:
        problems.append("access log has no requestId")
    problems += [f"access log field {v}" for v in variables if not v.startswith("$context.")]
    problems += [f"access log field {v}" for v in variables if SENSITIVE_LOG_VARIABLE.search(v)]
    return problems


def check_log_groups(tpl: dict[str, Any]) -> list[str]:
    problems = []
    groups = resources(tpl, "AWS::Logs::LogGroup")
    problems += [f"{name}: no retention" for name, group in groups.items() if "RetentionInDays" not in group["Properties"]]
    for name, fn in functions(tpl).items():
        props = fn["Properties"]
        group_ref = props.get("LoggingConfig", {}).get("LogGroup", {})
        group_id = group_ref.get("Ref") if isinstance(group_ref, dict) else None
        if group_id not in groups:
            problems.append(f"{name}: logs do not go to a declared log group")
            continue
        function_name = text_of(props.get("FunctionName"))
        group_name = text_of(groups[group_id]["Properties"].get("LogGroupName"))
        if not function_name or group_name != f"/aws/lambda/{function_name}":
            problems.append(f"{name}: log group {group_name!r} is not /aws/lambda/{function_name}")
    return problems


def check_contract(tpl: dict[str, Any]) -> list[str]:
    problems = [f"missing resource {r}" for r in sorted(LOGICAL_IDS - set(tpl["Resources"]))]
    problems += [f"missing output {o}" for o in sorted(OUTPUTS - set(tpl.get("Outputs", {})))]
    for name in functions(tpl):
        missing = SHARED_ENV - set(function_env(tpl, name))
        if missing:
            problems.append(f"{name}: no {sorted(missing)}")
    return problems


def check_alarms(tpl: dict[str, Any]) -> list[str]:
    """The refresh outcomes that need a person each have an alarm on the metric the code emits."""
    from invoiced_connect.refresh import Outcome

    env = global_function(tpl)["Environment"]["Variables"]
    alarms = resources(tpl, "AWS::CloudWatch::Alarm")
    watched, problems = set(), []
    for alarm in alarms.values():
        props = alarm["Properties"]
        if props.get("Namespace") == env["POWERTOOLS_METRICS_NAMESPACE"] and props.get("Dimensions") == [
                {"Name": "service", "Value": env["POWERTOOLS_SERVICE_NAME"]}]:
            watched.add(props.get("MetricName"))
        elif props.get("Namespace") == "AWS/SQS" and refers_to(props["Dimensions"][0]["Value"],
                                                                 "RefreshDeadLetterQueue"):
            watched.add("dead-letter queue")
        if props.get("TreatMissingData") != "notBreaching":
            problems.append(f"{props.get('MetricName')}: missing data would alarm")
    needed = {Outcome.KEPT_ASIDE.metric_name, Outcome.UNKNOWN_OUTCOME.metric_name,
              Outcome.CLIENT_AUTH_FAILED.metric_name, "dead-letter queue"}
    return problems + [f"no alarm on {name}" for name in sorted(needed - watched)]


CHECKS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "alarms": check_alarms,
    "runtime": check_runtime,
    "routes": check_routes,
    "no_wildcards": check_no_wildcards,
    "secrets": check_secrets,
    "table_access": check_table_access,
    "key_use": check_key_use,
    "key_policy": check_key_policy,
    "reader_policy": check_reader_policy,
    "refresh_pipeline": check_refresh_pipeline,
    "table": check_table,
    "stage": check_stage,
    "log_groups": check_log_groups,
    "contract": check_contract,
}


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_template_property_holds(template, check):
    assert CHECKS[check](template) == []


# ------------------------------------------------------------------ the checks bite
def _statement(tpl, fn, sid):
    for statement in tpl["Resources"][fn]["Properties"]["Policies"][0]["Statement"]:
        if statement.get("Sid") == sid:
            return statement
    raise KeyError(sid)


def _res(tpl, name):
    return tpl["Resources"][name]["Properties"]


def _managed(tpl, name):
    return tpl["Resources"][name]["Properties"]["PolicyDocument"]["Statement"]


def _managed_statement(tpl, name, sid):
    for statement in _managed(tpl, name):
        if statement.get("Sid") == sid:
            return statement
    raise KeyError(sid)


def _add_statement(tpl, fn, statement):
    tpl["Resources"][fn]["Properties"]["Policies"][0]["Statement"].append(statement)


REGRESSIONS: list[tuple[str, str, Callable[[dict[str, Any]], None]]] = [
    ("runtime", "python3.12", lambda t: t["Globals"]["Function"].update(Runtime="python3.12")),
    ("runtime", "x86_64", lambda t: _res(t, "CallbackFunction").update(Architectures=["x86_64"])),
    ("routes", "POST route", lambda t: _res(t, "ConnectRoute").update(RouteKey="POST /connect")),
    ("routes", "crossed wires", lambda t: _res(t, "ConnectIntegration").update(
        IntegrationUri={"Fn::GetAtt": ["CallbackFunction", "Arn"]})),
    ("routes", "implicit api", lambda t: _res(t, "ConnectFunction").update(
        Events={"Api": {"Type": "HttpApi", "Properties": {"Path": "/x", "Method": "get"}}})),
    ("no_wildcards", "kms:*", lambda t: _statement(t, "CallbackFunction", "EncryptTokensForOneConnection").update(
        Action="kms:*")),
    ("no_wildcards", "resource *", lambda t: _statement(t, "ConnectFunction", "WriteStateRows").update(
        Resource="*")),
    ("no_wildcards", "any table", lambda t: _statement(t, "ConnectFunction", "WriteStateRows").update(
        Resource="arn:aws:dynamodb:*:*:table/*")),
    ("no_wildcards", "policy template", lambda t: _res(t, "ConnectFunction")["Policies"].append(
        {"DynamoDBCrudPolicy": {"TableName": {"Ref": "TokensTable"}}})),
    ("secrets", "connect reads client secret", lambda t: _statement(t, "ConnectFunction", "ReadLinkSigningKey").update(
        Resource=[{"Ref": "LinkSigningSecret"}, {"Ref": "ClientSecret"}])),
    ("secrets", "client secret arn in globals", lambda t: t["Globals"]["Function"]["Environment"]["Variables"].update(
        CLIENT_SECRET_ARN={"Ref": "ClientSecret"})),
    ("table_access", "no leading keys", lambda t: _statement(t, "CallbackFunction", "WriteConnections").pop("Condition")),
    ("table_access", "connect writes connections", lambda t: _statement(t, "ConnectFunction", "WriteStateRows")[
        "Condition"]["ForAllValues:StringLike"].update({"dynamodb:LeadingKeys": ["*"]})),
    ("table_access", "extra action", lambda t: _statement(t, "ConnectFunction", "WriteStateRows").update(
        Action=["dynamodb:PutItem", "dynamodb:GetItem"])),
    ("key_use", "context not required", lambda t: _statement(t, "CallbackFunction", "EncryptTokensForOneConnection")[
        "Condition"].pop("Null")),
    ("key_use", "wrong context", lambda t: _statement(t, "CallbackFunction", "EncryptTokensForOneConnection")[
        "Condition"]["ForAllValues:StringEquals"].update({"kms:EncryptionContextKeys": ["tenant"]})),
    ("key_use", "direct decrypt", lambda t: _add_statement(t, "ConnectFunction", {
        "Effect": "Allow", "Action": "kms:Decrypt", "Resource": {"Fn::GetAtt": ["TokenKey", "Arn"]}})),
    ("key_use", "encrypt via dynamodb", lambda t: _statement(t, "ConnectFunction", "TableEncryptionViaDynamoDB").update(
        Action=["kms:Decrypt", "kms:Encrypt"])),
    ("key_policy", "open principal", lambda t: _res(t, "TokenKey")["KeyPolicy"]["Statement"].append(
        {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:Decrypt", "Resource": "*"})),
    ("key_policy", "no rotation", lambda t: _res(t, "TokenKey").update(EnableKeyRotation=False)),
    ("table", "sort key", lambda t: _res(t, "TokensTable")["KeySchema"].append({"AttributeName": "sk", "KeyType": "RANGE"})),
    ("table", "no pitr", lambda t: _res(t, "TokensTable").pop("PointInTimeRecoverySpecification")),
    ("table", "no deletion protection", lambda t: _res(t, "TokensTable").update(DeletionProtectionEnabled=False)),
    ("table", "aws owned key", lambda t: _res(t, "TokensTable").update(SSESpecification={"SSEEnabled": False})),
    ("table", "ttl renamed", lambda t: _res(t, "TokensTable").update(
        TimeToLiveSpecification={"AttributeName": "expires", "Enabled": True})),
    ("stage", "query string logged", lambda t: _res(t, "HttpApiStage")["AccessLogSettings"].update(
        Format='{"requestId":"$context.requestId","q":"$context.requestQueryString"}')),
    ("stage", "no throttling", lambda t: _res(t, "HttpApiStage").pop("DefaultRouteSettings")),
    ("log_groups", "no retention", lambda t: _res(t, "HttpApiAccessLogs").pop("RetentionInDays")),
    ("log_groups", "function makes its own group", lambda t: _res(t, "CallbackFunction").pop("LoggingConfig")),
    ("secrets", "reader policy reads client secret", lambda t: _managed(t, "TokenReaderPolicy").append(
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": {"Ref": "ClientSecret"}})),
    ("table_access", "scheduler scans", lambda t: _add_statement(t, "SchedulerFunction", {
        "Effect": "Allow", "Action": "dynamodb:Scan", "Resource": {"Fn::GetAtt": ["TokensTable", "Arn"]}})),
    ("table_access", "refresher touches state rows", lambda t: _managed_statement(
        t, "TokenRefresherPolicy", "KeepTokensAside")["Condition"]["ForAllValues:StringLike"].update(
        {"dynamodb:LeadingKeys": ["rescue#*", "state#*"]})),
    ("reader_policy", "reader writes", lambda t: _managed_statement(t, "TokenReaderPolicy", "ReadConnections").update(
        Action=["dynamodb:GetItem", "dynamodb:UpdateItem"])),
    ("reader_policy", "reader scans", lambda t: _managed(t, "TokenReaderPolicy").append(
        {"Effect": "Allow", "Action": "dynamodb:Scan", "Resource": {"Fn::GetAtt": ["TokensTable", "Arn"]}})),
    ("reader_policy", "reader invokes anything", lambda t: _managed_statement(
        t, "TokenReaderPolicy", "AskForRefresh").update(Resource={"Fn::Sub": "arn:aws:lambda:*:*:function:*"})),
    ("key_use", "reader decrypts without context", lambda t: _managed_statement(
        t, "TokenReaderPolicy", "DecryptTokensOfOneConnection").pop("Condition")),
    ("refresh_pipeline", "no dlq", lambda t: _res(t, "RefreshQueue").pop("RedrivePolicy")),
    ("refresh_pipeline", "unbounded worker", lambda t: _res(t, "RefreshWorkerFunction")["Events"]["Queue"][
        "Properties"].pop("ScalingConfig")),
    ("refresh_pipeline", "whole batch fails", lambda t: _res(t, "RefreshWorkerFunction")["Events"]["Queue"][
        "Properties"].pop("FunctionResponseTypes")),
    ("refresh_pipeline", "short visibility", lambda t: _res(t, "RefreshQueue").update(VisibilityTimeout=60)),
    ("refresh_pipeline", "events anywhere", lambda t: _managed_statement(
        t, "TokenRefresherPolicy", "PublishLifecycleEvents").update(Resource="*")),
    ("routes", "http event on the worker", lambda t: _res(t, "RefreshWorkerFunction")["Events"].update(
        Api={"Type": "HttpApi", "Properties": {"Path": "/refresh", "Method": "post"}})),
    ("alarms", "kept-aside metric renamed", lambda t: _res(t, "TokensKeptAsideAlarm").update(
        MetricName="TokensKeptAside")),
    ("alarms", "dlq alarm on the work queue", lambda t: _res(t, "RefreshDeadLetterAlarm").update(
        Dimensions=[{"Name": "QueueName", "Value": {"Fn::GetAtt": ["RefreshQueue", "QueueName"]}}])),
    ("contract", "renamed output", lambda t: t["Outputs"].update(ConnectLink=t["Outputs"].pop("ConnectUrl"))),
]


@pytest.mark.parametrize(
    ("check", "break_it"), [pytest.param(c, apply, id=f"{c}: {r}") for c, r, apply in REGRESSIONS]
)
def test_each_check_catches_its_regression(template, check, break_it):
    broken = copy.deepcopy(template)
    break_it(broken)
    assert CHECKS[check](broken), f"check {check!r} passed a broken template"


# ------------------------------------------------------------------ tools
def sam_cli() -> Path:
    path = Path(os.environ.get("SAM_CLI") or ROOT / ".venv-sam" / "bin" / "sam")
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"SAM CLI not found at {path} (make install)")
        pytest.skip(f"SAM CLI not found at {path} (make install, or set SAM_CLI)")
    return path


def cfn_lint_command() -> list[str]:
    script = Path(sys.executable).parent / "cfn-lint"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from cfnlint.runner import main; sys.exit(main())"]


def tool_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "SAM_CLI_TELEMETRY": "0", **extra}


def run(command: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


def test_cfn_lint_is_clean():
    result = run([*cfn_lint_command(), "--", str(TEMPLATE)], timeout=90, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_sam_validate_accepts_the_template():
    result = run(
        [str(sam_cli()), "validate", "--region", "us-east-1", "--template", str(TEMPLATE)],
        timeout=90, cwd=ROOT, env=tool_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------ sam build
def path_without_python313() -> str:
    """PATH minus every folder holding a python3.13: the build must not need one."""
    kept = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "python3.13").exists()]
    return os.pathsep.join(kept)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    build_dir = tmp_path_factory.mktemp("sam") / "build"
    command = [
        str(sam_cli()), "build", "--template", str(TEMPLATE), "--build-dir", str(build_dir),
        "--no-cached", "--no-use-container",
    ]
    # The layer's pip runs under PYTHON (any Python with pip); make finds
    # python3 on PATH otherwise.
    env = tool_env(PATH=path_without_python313(), PYTHON=os.environ.get("PYTHON") or sys.executable)
    result = run(command, timeout=110, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return build_dir


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.mark.slow
def test_layer_holds_the_package_and_its_dependencies_only(built):
    python = built / "InvoicedConnectLayer" / "python"
    assert (python / "invoiced_connect" / "__init__.py").is_file()
    assert (python / "requests" / "__init__.py").is_file()
    assert (python / "aws_lambda_powertools" / "__init__.py").is_file()
    # The runtime's boto3 is used; shipping one would shadow it.
    assert not [n for n in ("boto3", "botocore", "s3transfer") if (python / n).exists()]
    files = tree(built / "InvoicedConnectLayer")
    assert all(f == "python" or f.startswith("python/") for f in files), "layer content outside python/"
    assert not [f for f in files if "__pycache__" in f or f.endswith((".pyc", ".pyo")) or ".egg-info" in f]
    sources = {p.relative_to(ROOT / "layers" / "invoiced_connect").as_posix()
               for p in (ROOT / "layers" / "invoiced_connect" / "invoiced_connect").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert sources <= {f.removeprefix("python/") for f in files}


@pytest.mark.slow
def test_layer_binaries_are_for_arm64(built):
    libraries = list((built / "InvoicedConnectLayer").rglob("*.so"))
    wrong = []
    for library in libraries:
        header = library.read_bytes()[:20]
        machine = int.from_bytes(header[18:20], "little")
        if header[:4] != b"\x7fELF" or machine != ELF_MACHINE_AARCH64:
            wrong.append(library.name)
    assert wrong == []


@pytest.mark.slow
def test_layer_size(built):
    size = sum(p.stat().st_size for p in (built / "InvoicedConnectLayer").rglob("*") if p.is_file())
    print(f"\nInvoicedConnectLayer unzipped: {size / 1024 / 1024:.2f} MiB ({size} bytes)")
    assert size < MAX_LAYER_BYTES


@pytest.mark.slow
def test_each_function_ships_only_its_own_handler(template, built):
    for name, fn in functions(template).items():
        source = ROOT / fn["Properties"]["CodeUri"]
        shipped = tree(built / name)
        assert "app.py" in shipped, name
        # Only the top-level modules of its own folder: no tests, no package
        # copy (that is the layer's), no other function's code.
        assert set(shipped) <= {p.name for p in source.glob("*.py")}, (name, shipped)
        assert (built / name / "app.py").read_bytes() == (source / "app.py").read_bytes()
