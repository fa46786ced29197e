"""template.yaml and its build, checked the way a security reviewer would.

The structural checks are plain functions that return a list of problems.
Each runs on three forms of the template: the SAM source, and what the SAM
transform makes of it (the resources CloudFormation actually creates: the
roles, the managed policies attached to them, the event source mapping, the
versions and aliases) with the ``SnapStart`` parameter off and on. Each check
is also run against a deliberately broken copy
(``test_each_check_catches_its_regression``): a check that cannot fail is
not a check. The SAM CLI tests (marked ``slow``) run ``sam validate`` and a
real ``sam build`` into a temporary directory, with no Docker and with every
python3.13 removed from PATH.
"""

from __future__ import annotations

import copy
import fnmatch
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
from invoiced_connect.storage.store import ATTENTION_ATTRIBUTES, STATE_ATTRIBUTES

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"

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
    "LinksFunction", "TokensFunction", "ConnectionStateFunction",
    "LinkIssuerPolicy", "TokenVendingPolicy", "ConnectionStatePolicy", "ConnectionsOperatorPolicy",
}
OUTPUTS = {
    "ConnectUrl", "CallbackUrl", "TokensTableName", "TokenKeyArn",
    "ClientSecretArn", "LinkSigningSecretArn", "LayerArn",
    "TokenReaderPolicyArn", "ConnectionsFunctionName", "ListInvoicesFunctionName", "EventBusName",
    "RefreshQueueUrl", "RefreshDeadLetterQueueUrl",
    "LinkIssuerPolicyArn", "TokenVendingPolicyArn", "ConnectionStatePolicyArn", "ConnectionsOperatorPolicyArn",
    "LinksFunctionName", "TokensFunctionName", "ConnectionStateFunctionName",
}
SHARED_ENV = {
    "TABLE_NAME", "KMS_KEY_ID", "INVOICED_BASE_URL", "INVOICED_API_URL", "INVOICED_CLIENT_ID",
    "INVOICED_SCOPE", "PUBLIC_BASE_URL", "RETURN_URL_ALLOWLIST",
    "POWERTOOLS_SERVICE_NAME", "POWERTOOLS_LOG_LEVEL", "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOGGER_LOG_EVENT", "POWERTOOLS_TRACER_CAPTURE_RESPONSE",
    "EVENT_BUS_NAME", "CONNECTIONS_FUNCTION_NAME", "TOKENS_FUNCTION_NAME", "REJECTED_TOKEN_WINDOW_SECONDS",
    "REFRESH_WINDOW_MINUTES", "KEEPALIVE_DAYS", "ACTIVE_USE_HOURS",
}
#: Shared settings that name a function of the stack (by name: a function cannot !Ref itself).
FUNCTION_NAME_SETTINGS = {"CONNECTIONS_FUNCTION_NAME": "ConnectionsFunction", "TOKENS_FUNCTION_NAME": "TokensFunction"}
#: The functions that call Invoiced's token endpoint: the only readers of the
#: client secret, and the only ones that may decrypt a refresh token.
TOKEN_ENDPOINT_CALLERS = {"CallbackFunction", "RefreshWorkerFunction", "ConnectionsFunction", "TokensFunction"}
#: Who may decrypt a refresh token: the refreshers (the callback only ever seals
#: new ones, and opens a replaced grant's access token to revoke it).
REFRESH_TOKEN_OPENERS = {"RefreshWorkerFunction", "ConnectionsFunction", "TokensFunction", "TokenRefresherPolicy"}
#: The functions that sign or check connect links: the only readers of the link signing secret.
LINK_SIGNERS = {"ConnectFunction", "LinksFunction"}
#: The app API's managed policies, each for the app's roles and allowing the
#: invocation of one function only; and the output that publishes each.
APP_POLICIES = {
    "LinkIssuerPolicy": "LinksFunction",
    "TokenVendingPolicy": "TokensFunction",
    "ConnectionStatePolicy": "ConnectionStateFunction",
    "ConnectionsOperatorPolicy": "ConnectionsFunction",
}
#: What no reader of connection state may see: the token ciphertexts (either
#: row format) and the refresh lease.
CIPHERTEXT_ATTRIBUTES = {"access_ciphertext", "refresh_ciphertext", "token_ciphertext"}
LEASE_ATTRIBUTES = {"lease_owner", "lease_until"}
#: The keys a token envelope's encryption context is made of.
ENCRYPTION_CONTEXT_KEYS = {"connection_id", "token"}
#: The indexes a grant may name instead of the table, and what each projects.
INDEXES = {"due-index": ("KEYS_ONLY", ()), "attention-index": ("INCLUDE", ATTENTION_ATTRIBUTES)}
#: Event sources a function may have (an HTTP API event would create an implicit API).
ALLOWED_EVENTS = {"SchedulerFunction": "Schedule", "RefreshWorkerFunction": "SQS"}
ROUTES = {"GET /connect": "ConnectFunction", "GET /callback": "CallbackFunction"}
#: The functions the SnapStart parameter applies to: the two the browser waits on.
SNAPSTART_FUNCTIONS = set(ROUTES.values())
#: AWS managed policies SAM attaches to the generated roles, by what asks for them:
#: every function (logs), Tracing: Active (X-Ray writes), an SQS event source.
BASE_MANAGED_POLICIES = {"service-role/AWSLambdaBasicExecutionRole", "AWSXrayWriteOnlyAccess"}
EXTRA_MANAGED_POLICIES = {"RefreshWorkerFunction": {"service-role/AWSLambdaSQSQueueExecutionRole"}}
#: Who holds TokenRefresherPolicy (and the policy itself).
REFRESHERS = ("RefreshWorkerFunction", "ConnectionsFunction", "TokensFunction", "TokenRefresherPolicy")
# Exactly what each handler does to the table, by key prefix.
TABLE_GRANTS = {
    ("ConnectFunction", "dynamodb:PutItem", "state#*"),
    ("ConnectFunction", "dynamodb:GetItem", "link#*"),
    ("CallbackFunction", "dynamodb:DeleteItem", "state#*"),
    ("CallbackFunction", "dynamodb:PutItem", "link#*"),
    ("CallbackFunction", "dynamodb:DeleteItem", "link#*"),
    ("CallbackFunction", "dynamodb:UpdateItem", "conn#*"),
    *{(fn, action, "conn#*") for fn in REFRESHERS for action in ("dynamodb:GetItem", "dynamodb:UpdateItem")},
    *{(fn, action, "rescue#*") for fn in REFRESHERS
      for action in ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem")},
    ("ListInvoicesFunction", "dynamodb:GetItem", "conn#*"),
    ("TokenReaderPolicy", "dynamodb:GetItem", "conn#*"),
    # The scheduler's one grant: Query on the due-index (keys only), not the table.
    ("SchedulerFunction", "dynamodb:Query", "index/due-index"),
    # The connection-state view: the state attributes of connection rows
    # (check_table_access holds it to them), and the attention-index.
    ("ConnectionStateFunction", "dynamodb:GetItem", "conn#*"),
    ("ConnectionStateFunction", "dynamodb:Query", "index/attention-index"),
}
# Access-log variables that could carry a code, a state, a cookie or a token.
SENSITIVE_LOG_VARIABLE = re.compile(r"query|body|header|cookie|authori[sz]|override|apikey|jwt|claims", re.I)

#: The metrics the code emits as EMF (namespace InvoicedConnect, dimension
#: service=invoiced-connect, unit Count; ConnectFailed also has a reason
#: dimension): the contract between the code and the alarms.
EMITTED_METRICS = {
    "RefreshFailed",  # every failed refresh: transient, unknown outcome, needs reauth, client auth, kept aside
    "RefreshPermanentFailure", "RefreshNeedsReauth", "RefreshUnknownOutcome", "RefreshKeptAside",
    "RefreshClientAuthFailed", "ConnectStarted", "ConnectFailed", "Connected", "Reconnected", "TokenReads",
}
#: The EMF metrics that must each have an alarm.
ALARMED_METRICS = {"RefreshFailed", "RefreshNeedsReauth", "RefreshUnknownOutcome", "RefreshKeptAside",
                   "RefreshClientAuthFailed"}
ALARM_ACTIONS = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
OPERATIONS_LINK = re.compile(r"docs/operations\.md#([a-z0-9-]+)")
#: What a version description must stay under (Lambda's limit), and the room
#: it must leave for PublicBaseUrl plus the comma-joined ReturnUrlAllowlist
#: (docs/operations.md promises this much).
VERSION_DESCRIPTION_LIMIT = 256
URL_BUDGET = 180


# ------------------------------------------------------------------ loading
def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    # The local stack's loader: the same reading of short forms everywhere.
    return template_module.load_template(path)


#: Run under the SAM CLI's own Python, where the transform (samtranslator)
#: lives. Local CodeUri/ContentUri folders become S3 locations first, as
#: `sam validate` does; no AWS call is made (no managed policy is named).
SAM_TRANSFORM_SCRIPT = """
import json, sys
from samtranslator.translator.transform import transform

class NoManagedPolicies:
    def load(self):
        return {}

request = json.load(sys.stdin)
results = []
for parameters in request["parameter_sets"]:
    template = json.loads(json.dumps(request["template"]))
    for resource in template["Resources"].values():
        props = resource.get("Properties") or {}
        for key in ("CodeUri", "ContentUri"):
            if isinstance(props.get(key), str) and not props[key].startswith("s3://"):
                props[key] = "s3://bucket/" + props[key].strip("/")
    results.append(transform(template, parameters, NoManagedPolicies()))
json.dump(results, sys.stdout)
"""
FORMS = ("source", "transformed", "transformed-snapstart")
FORM_PARAMETERS = {"transformed": {}, "transformed-snapstart": {"SnapStart": "Enabled"}}


def sam_transform(tpl: dict[str, Any], parameter_sets: list[dict[str, str]]) -> list[dict[str, Any]]:
    python = sam_cli().parent / "python"
    result = run(
        [str(python), "-c", SAM_TRANSFORM_SCRIPT],
        timeout=90, cwd=ROOT, input=json.dumps({"template": tpl, "parameter_sets": parameter_sets}),
        env=tool_env(AWS_DEFAULT_REGION="us-east-1"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module")
def forms(template) -> dict[str, dict[str, Any]]:
    names = list(FORM_PARAMETERS)
    transformed = sam_transform(template, [FORM_PARAMETERS[name] for name in names])
    return {"source": template, **dict(zip(names, transformed, strict=True))}


# ------------------------------------------------------------------ helpers
# They read both forms: AWS::Serverless::Function (with Globals) and the
# AWS::Lambda::Function, AWS::IAM::Role, ... the transform makes of it.
def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def resources(tpl: dict[str, Any], *type_names: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in tpl["Resources"].items() if res.get("Type") in type_names}


def is_source(tpl: dict[str, Any]) -> bool:
    return bool(resources(tpl, "AWS::Serverless::Function"))


def functions(tpl: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return resources(tpl, "AWS::Serverless::Function", "AWS::Lambda::Function")


def global_function(tpl: dict[str, Any]) -> dict[str, Any]:
    return tpl.get("Globals", {}).get("Function", {})


def function_prop(tpl: dict[str, Any], name: str, key: str, default: Any = None) -> Any:
    """A function property, Globals included for the SAM form."""
    props = functions(tpl)[name]["Properties"]
    if key in props:
        return props[key]
    if functions(tpl)[name]["Type"] == "AWS::Serverless::Function":
        return global_function(tpl).get(key, default)
    return default


def function_env(tpl: dict[str, Any], name: str) -> dict[str, Any]:
    merged = {}
    if functions(tpl)[name]["Type"] == "AWS::Serverless::Function":
        merged.update(global_function(tpl).get("Environment", {}).get("Variables", {}))
    merged.update(functions(tpl)[name]["Properties"].get("Environment", {}).get("Variables", {}))
    return merged


def function_tracing(tpl: dict[str, Any], name: str) -> Any:
    if functions(tpl)[name]["Type"] == "AWS::Serverless::Function":
        return function_prop(tpl, name, "Tracing")
    return function_prop(tpl, name, "TracingConfig", {}).get("Mode")


def function_role(tpl: dict[str, Any], name: str) -> str | None:
    """The logical id of the role the function runs as (transformed form)."""
    role = function_prop(tpl, name, "Role")
    get_att = role.get("Fn::GetAtt") if isinstance(role, dict) else None
    return get_att[0] if isinstance(get_att, list) and get_att[1:] == ["Arn"] else None


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


def alias_of(tpl: dict[str, Any], value: Any) -> str | None:
    """The function whose alias ``value`` names: SAM's ``!Ref Fn.Alias`` or a Ref to an AWS::Lambda::Alias."""
    ref = value.get("Ref") if isinstance(value, dict) and len(value) == 1 else None
    if not isinstance(ref, str):
        return None
    if ref.endswith(".Alias"):
        return ref.removesuffix(".Alias")
    alias = resources(tpl, "AWS::Lambda::Alias").get(ref)
    target = (alias or {}).get("Properties", {}).get("FunctionName")
    return target.get("Ref") if isinstance(target, dict) else None


def reaches(tpl: dict[str, Any], value: Any, logical_id: str) -> bool:
    """Whether an invocation target is the function or one of its aliases, whichever way an Fn::If goes."""
    branches = value.get("Fn::If") if isinstance(value, dict) else None
    if isinstance(branches, list) and len(branches) == 3:
        return reaches(tpl, branches[1], logical_id) and reaches(tpl, branches[2], logical_id)
    return refers_to(value, logical_id) or alias_of(tpl, value) == logical_id


def choose(value: Any, resolver: template_module.Resolver) -> Any:
    """``value`` with every Fn::If decided (and AWS::NoValue dropped); other intrinsics left as they are."""
    if isinstance(value, list):
        return [item for item in (choose(item, resolver) for item in value) if item != {"Ref": "AWS::NoValue"}]
    if not isinstance(value, dict):
        return value
    branches = value.get("Fn::If")
    if len(value) == 1 and isinstance(branches, list) and len(branches) == 3:
        return choose(branches[1] if resolver.condition(branches[0]) else branches[2], resolver)
    chosen = {key: choose(item, resolver) for key, item in value.items()}
    return {key: item for key, item in chosen.items() if item != {"Ref": "AWS::NoValue"}}


def resolver_for(tpl: dict[str, Any], **parameters: Any) -> template_module.Resolver:
    return template_module.Resolver(tpl, parameters)


def policy_holders(tpl: dict[str, Any], policy_id: str) -> set[str]:
    """The functions a template managed policy is attached to (by SAM Policies or by role)."""
    holders = set()
    for name in functions(tpl):
        attached = as_list(function_prop(tpl, name, "Policies"))
        role = function_role(tpl, name)
        if role in tpl["Resources"]:
            attached += as_list(tpl["Resources"][role]["Properties"].get("ManagedPolicyArns"))
        if any(refers_to(p, policy_id) for p in attached):
            holders.add(name)
    return holders


def iam_statements(tpl: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(owner, statement) for every identity-policy statement in the template.

    The owner is a function's logical id whenever the statement applies to
    a function (its SAM Policies, its generated role, a managed policy
    attached to it), else the role or policy's own id.
    """
    role_owner = {function_role(tpl, name): name for name in functions(tpl) if function_role(tpl, name)}
    for name in functions(tpl):
        for policy in as_list(functions(tpl)[name]["Properties"].get("Policies")):
            if isinstance(policy, dict) and "Statement" in policy:
                for statement in as_list(policy["Statement"]):
                    yield name, statement
    for name, role in resources(tpl, "AWS::IAM::Role").items():
        for policy in as_list(role["Properties"].get("Policies")):
            for statement in as_list(policy.get("PolicyDocument", {}).get("Statement")):
                yield role_owner.get(name, name), statement
    for name, res in resources(tpl, "AWS::IAM::Policy").items():
        for statement in as_list(res["Properties"].get("PolicyDocument", {}).get("Statement")):
            yield name, statement
    # A managed policy's statements count for every function that attaches
    # it, and for the policy itself (consumers outside the stack attach it).
    for name, res in resources(tpl, "AWS::IAM::ManagedPolicy").items():
        for statement in as_list(res["Properties"].get("PolicyDocument", {}).get("Statement")):
            for owner in [*sorted(policy_holders(tpl, name)), name]:
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


def event_sources(tpl: dict[str, Any], name: str) -> list[tuple[str, dict[str, Any]]]:
    """(type, properties) of what invokes a function besides the API, in SAM's terms."""
    fn = functions(tpl)[name]
    if fn["Type"] == "AWS::Serverless::Function":
        return [(e.get("Type"), e.get("Properties") or {}) for e in (fn["Properties"].get("Events") or {}).values()]
    found = []
    for mapping in resources(tpl, "AWS::Lambda::EventSourceMapping").values():
        props = mapping["Properties"]
        if refers_to(props.get("FunctionName"), name):
            found.append(("SQS", {"Queue": props.get("EventSourceArn"), **props}))
    for rule in resources(tpl, "AWS::Events::Rule").values():
        props = rule["Properties"]
        if any(refers_to(target.get("Arn"), name) for target in as_list(props.get("Targets"))):
            found.append(("Schedule", {"Schedule": props.get("ScheduleExpression"), **props}))
    return found


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def operations_anchors() -> set[str]:
    return {slug(line.lstrip("#")) for line in OPERATIONS_DOC.read_text(encoding="utf-8").splitlines()
            if line.startswith("#")}


# ------------------------------------------------------------------ checks
# Each returns a list of human-readable problems; empty means the property holds.
def check_runtime(tpl: dict[str, Any]) -> list[str]:
    problems = []
    for name, fn in functions(tpl).items():
        runtime = function_prop(tpl, name, "Runtime")
        architectures = function_prop(tpl, name, "Architectures")
        if runtime != "python3.13":
            problems.append(f"{name}: runtime {runtime!r}")
        if architectures != ["arm64"]:
            problems.append(f"{name}: architectures {architectures!r}")
        if fn.get("Metadata", {}).get("BuildMethod") != "makefile":
            problems.append(f"{name}: not built by its Makefile")
    for name, layer in resources(tpl, "AWS::Serverless::LayerVersion", "AWS::Lambda::LayerVersion").items():
        props = layer["Properties"]
        if props.get("CompatibleRuntimes") != ["python3.13"] or props.get("CompatibleArchitectures") != ["arm64"]:
            problems.append(f"{name}: not a python3.13/arm64 layer")
        meta = layer.get("Metadata", {})
        if layer["Type"] == "AWS::Serverless::LayerVersion" and (
                meta.get("BuildMethod") != "makefile" or meta.get("BuildArchitecture") != "arm64"):
            problems.append(f"{name}: not built by its Makefile for arm64")
    return problems


def check_routes(tpl: dict[str, Any]) -> list[str]:
    problems = []
    apis = sorted(resources(tpl, "AWS::ApiGatewayV2::Api", "AWS::Serverless::HttpApi", "AWS::Serverless::Api",
                            "AWS::ApiGateway::RestApi"))
    if apis != ["HttpApi"]:
        problems.append(f"APIs are {apis} (an implicit API would loop back into PUBLIC_BASE_URL)")
    routes = resources(tpl, "AWS::ApiGatewayV2::Route")
    keys = sorted(route["Properties"]["RouteKey"] for route in routes.values())
    if keys != sorted(ROUTES):
        problems.append(f"routes are {keys}")
    integrations = resources(tpl, "AWS::ApiGatewayV2::Integration")
    permissions = resources(tpl, "AWS::Lambda::Permission")
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
        if expected and not reaches(tpl, props.get("IntegrationUri"), expected):
            problems.append(f"{name}: {key} does not reach {expected}")
        # The API may invoke exactly what the integration invokes (a function
        # permission does not cover its alias), from this route only.
        path = key.split(" ", 1)[-1]
        granted = [p for p in permissions.values()
                   if p["Properties"].get("FunctionName") == props.get("IntegrationUri")
                   and text_of(p["Properties"].get("SourceArn")).endswith(f"/GET{path}")]
        if len(granted) != 1:
            problems.append(f"{name}: no invoke permission for what its integration invokes, from {key} only")
    for name in functions(tpl):
        for kind, _ in event_sources(tpl, name):
            if kind != ALLOWED_EVENTS.get(name):
                problems.append(f"{name}: has a {kind} event (an implicit API would loop back "
                                "into PUBLIC_BASE_URL; only the scheduler and the worker have event sources)")
        # The app API is Lambda Invoke under IAM: a URL would put the tokens
        # function (or another) on the internet, past the app's policies.
        if "FunctionUrlConfig" in functions(tpl)[name]["Properties"]:
            problems.append(f"{name}: has a function URL")
    problems += [f"{name}: a function URL" for name in resources(tpl, "AWS::Lambda::Url")]
    rules = resources(tpl, "AWS::Events::Rule")
    for name, permission in permissions.items():
        props = permission["Properties"]
        source = text_of(props.get("SourceArn"))
        if props.get("Principal") == "apigateway.amazonaws.com":
            if not re.search(r"/GET/\w+$", source):
                problems.append(f"{name}: invoke permission not scoped to one route ({source!r})")
        elif props.get("Principal") != "events.amazonaws.com" or not any(
                refers_to(props.get("SourceArn"), rule) for rule in rules):
            problems.append(f"{name}: invoke permission for {props.get('Principal')} not scoped to the schedule")
    return problems


def check_roles(tpl: dict[str, Any]) -> list[str]:
    """One role per function, made for it: in the source no function brings
    its own; transformed, each runs as its own role, trusted by Lambda only,
    with only the AWS managed policies SAM adds for logs, X-Ray and SQS."""
    problems = []
    if is_source(tpl):
        return [f"{name}: sets a Role (SAM would not make it its own)"
                for name in functions(tpl) if function_prop(tpl, name, "Role") is not None]
    roles = resources(tpl, "AWS::IAM::Role")
    used: dict[str, str] = {}
    for name in functions(tpl):
        role = function_role(tpl, name)
        if role not in roles:
            problems.append(f"{name}: does not run as a role of this template")
            continue
        if role in used:
            problems.append(f"{name}: shares {role} with {used[role]}")
        used[role] = name
        props = roles[role]["Properties"]
        trust = as_list(props.get("AssumeRolePolicyDocument", {}).get("Statement"))
        principals = [p for st in trust for p in as_list(st.get("Principal", {}).get("Service"))]
        if principals != ["lambda.amazonaws.com"]:
            problems.append(f"{role}: trusted by {principals}")
        allowed = BASE_MANAGED_POLICIES | EXTRA_MANAGED_POLICIES.get(name, set())
        for arn in as_list(props.get("ManagedPolicyArns")):
            if isinstance(arn, str):
                policy = arn.split(":policy/", 1)[-1]
                if not arn.startswith("arn:aws:iam::aws:policy/") or policy not in allowed:
                    problems.append(f"{role}: managed policy {arn}")
            elif not any(refers_to(arn, own) for own in resources(tpl, "AWS::IAM::ManagedPolicy")):
                problems.append(f"{role}: managed policy {arn!r} is not one of the template's")
    problems += [f"{role}: a role no function runs as" for role in sorted(set(roles) - set(used))]
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
                if "*" in text_of(r)
            ]
    # SAM policy templates and managed policies for these services grant more
    # than the handlers need; only inline statements are reviewable here.
    # (Transformed, check_roles allows only SAM's logs, X-Ray and SQS policies.)
    for name in functions(tpl):
        for policy in as_list(function_prop(tpl, name, "Policies")):
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
    if readers["LinkSigningSecret"] != LINK_SIGNERS:
        problems.append(f"LinkSigningSecret readable by {sorted(readers['LinkSigningSecret'])}")
    # A secret's ARN goes only where it can be read.
    global_env = global_function(tpl).get("Environment", {}).get("Variables", {})
    for variable, owners in (("CLIENT_SECRET_ARN", TOKEN_ENDPOINT_CALLERS),
                             ("LINK_SIGNING_SECRET_ARN", LINK_SIGNERS)):
        if variable in global_env:
            problems.append(f"{variable} is in Globals")
        holders = {name for name in functions(tpl) if variable in function_env(tpl, name)}
        if holders != owners:
            problems.append(f"{variable} given to {sorted(holders)}")
    return problems


TABLE_ARN = {"Fn::GetAtt": ["TokensTable", "Arn"]}
INDEX_RESOURCE = re.compile(r"\$\{TokensTable\.Arn\}/index/([\w.-]+)")


def check_table_access(tpl: dict[str, Any]) -> list[str]:
    """Each grant is on the table by key prefix, or on one of its indexes;
    together they are exactly TABLE_GRANTS. The connection-state view reads
    connection rows only through the attributes of STATE_ATTRIBUTES."""
    problems, grants = [], set()
    for owner, statement in statements_for(tpl, "dynamodb"):
        sid = f"{owner}/{statement.get('Sid')}"
        targets = [text_of(r) for r in as_list(statement.get("Resource"))]
        index = INDEX_RESOURCE.fullmatch(targets[0]) if len(targets) == 1 else None
        if index and index.group(1) in INDEXES:
            grants |= {(owner, action, f"index/{index.group(1)}") for action in actions(statement)}
            continue
        if not targets or not all(r == TABLE_ARN or t == "${TokensTable.Arn}"
                                  for r, t in zip(as_list(statement.get("Resource")), targets, strict=True)):
            problems.append(f"{sid}: on {statement.get('Resource')!r}, not TokensTable or one of its indexes")
        condition = statement.get("Condition", {})
        prefixes = condition.get("ForAllValues:StringLike", {}).get("dynamodb:LeadingKeys")
        if not prefixes:
            problems.append(f"{sid}: no dynamodb:LeadingKeys condition")
            continue
        grants |= {(owner, action, prefix) for action in actions(statement) for prefix in as_list(prefixes)}
        if owner == "ConnectionStateFunction":
            problems += _state_read_problems(sid, condition)
    if grants != TABLE_GRANTS:
        problems.append(f"table grants {sorted(grants)} != {sorted(TABLE_GRANTS)}")
    return problems


def _state_read_problems(sid: str, condition: dict[str, Any]) -> list[str]:
    """The read is held to the state attributes: dynamodb:Attributes lists
    them (and no ciphertext or lease), and dynamodb:Select, when the request
    has one, must be SPECIFIC_ATTRIBUTES (AWS's pattern for attribute-level
    access: StringEquals or StringEqualsIfExists)."""
    problems = []
    attributes = condition.get("ForAllValues:StringEquals", {}).get("dynamodb:Attributes")
    if not isinstance(attributes, list) or not attributes:
        return [f"{sid}: reads connection rows without a dynamodb:Attributes condition"]
    hidden = sorted(set(attributes) & (CIPHERTEXT_ATTRIBUTES | LEASE_ATTRIBUTES))
    if hidden:
        problems.append(f"{sid}: may read {hidden}")
    if sorted(attributes) != sorted(STATE_ATTRIBUTES):
        problems.append(f"{sid}: reads {sorted(attributes)}, not store.STATE_ATTRIBUTES {sorted(STATE_ATTRIBUTES)}")
    select = [condition.get(op, {}).get("dynamodb:Select") for op in ("StringEquals", "StringEqualsIfExists")]
    if "SPECIFIC_ATTRIBUTES" not in select or len([s for s in select if s is not None]) != 1:
        problems.append(f"{sid}: dynamodb:Select is not held to SPECIFIC_ATTRIBUTES")
    return problems


def _via_dynamodb(statement: dict[str, Any]) -> bool:
    via = statement.get("Condition", {}).get("StringEquals", {}).get("kms:ViaService")
    return text_of(via).startswith("dynamodb.")


def _context_required(condition: dict[str, Any], key: str) -> bool:
    return str(condition.get("Null", {}).get(f"kms:EncryptionContext:{key}")).lower() == "false"


def check_key_use(tpl: dict[str, Any]) -> list[str]:
    """Every kms grant is on TokenKey and either only via DynamoDB (table SSE)
    or only under an encryption context of the keys connection_id and token
    (the token envelope), connection_id present. The token endpoint's callers
    alone encrypt, and the callback (which writes new connections only) seals
    under both keys."""
    problems = []
    for owner, statement in statements_for(tpl, "kms"):
        sid = f"{owner}/{statement.get('Sid')}"
        if not all(refers_to(r, "TokenKey") for r in as_list(statement.get("Resource"))):
            problems.append(f"{sid}: not on TokenKey")
        condition = statement.get("Condition", {})
        context_keys = as_list(condition.get("ForAllValues:StringEquals", {}).get("kms:EncryptionContextKeys"))
        bound_to_connection = (bool(context_keys) and set(context_keys) <= ENCRYPTION_CONTEXT_KEYS
                               and _context_required(condition, "connection_id"))
        if not (_via_dynamodb(statement) or bound_to_connection):
            problems.append(f"{sid}: neither via DynamoDB nor bound to a connection_id (and token) context")
        if _via_dynamodb(statement) and set(actions(statement)) - {"kms:Decrypt", "kms:DescribeKey"}:
            problems.append(f"{sid}: more than table decryption via DynamoDB")
        if owner == "CallbackFunction" and "kms:Encrypt" in actions(statement) and not _context_required(
                condition, "token"):
            problems.append(f"{sid}: encrypts without saying which token")
    encrypters = {owner for owner, st in statements_for(tpl, "kms") if "kms:Encrypt" in actions(st)}
    if encrypters != TOKEN_ENDPOINT_CALLERS | {"TokenRefresherPolicy"}:
        problems.append(f"kms:Encrypt granted to {sorted(encrypters)}")
    return problems


def _decrypts(statement: dict[str, Any]) -> bool:
    return any(fnmatch.fnmatchcase("kms:decrypt", action.lower()) for action in actions(statement))


def check_refresh_tokens(tpl: dict[str, Any]) -> list[str]:
    """A refresh token is decrypted only by the token endpoint's callers (and
    the policy they share): any other kms:Decrypt of the envelope holds the
    encryption context's token to "access"."""
    problems = []
    for owner, statement in statements_for(tpl, "kms"):
        if not _decrypts(statement) or _via_dynamodb(statement):
            continue
        if owner in REFRESH_TOKEN_OPENERS:
            continue
        token = statement.get("Condition", {}).get("StringEquals", {}).get("kms:EncryptionContext:token")
        if as_list(token) != ["access"]:
            problems.append(f"{owner}/{statement.get('Sid')}: may decrypt refresh tokens "
                            f"(kms:EncryptionContext:token is {token!r}, not 'access')")
    return problems


def check_reader_policy(tpl: dict[str, Any]) -> list[str]:
    """What consumers attach: read connection rows, decrypt access tokens
    under a connection's context, invoke the tokens function. Nothing else
    (no refresh, no disconnect: that is the connections function)."""
    problems = []
    granted = set()
    for owner, statement in iam_statements(tpl):
        if owner != "TokenReaderPolicy":
            continue
        for action in actions(statement):
            granted.add(action)
            if action == "lambda:InvokeFunction" and [
                    r for r in as_list(statement.get("Resource")) if r != function_arn("TokensFunction")]:
                problems.append("the reader policy invokes something other than the tokens function")
    if granted != {"dynamodb:GetItem", "kms:Decrypt", "kms:DescribeKey", "lambda:InvokeFunction"}:
        problems.append(f"the reader policy grants {sorted(granted)}")
    holders = policy_holders(tpl, "TokenReaderPolicy")
    if holders != {"ListInvoicesFunction"}:
        problems.append(f"the reader policy is attached to {sorted(holders)}")
    return problems


def function_arn(name: str) -> dict[str, Any]:
    return {"Fn::GetAtt": [name, "Arn"]}


def check_app_policies(tpl: dict[str, Any]) -> list[str]:
    """Each app API policy allows lambda:InvokeFunction on its one function
    and nothing else, is for the app's roles (no function of the stack holds
    it) and is published as an output. Behind them, the links function reads
    the link signing secret and nothing else, and the connection-state
    function reads no secret and decrypts only through DynamoDB."""
    problems = []
    policies = resources(tpl, "AWS::IAM::ManagedPolicy")
    for policy, target in APP_POLICIES.items():
        if policy not in policies:
            problems.append(f"no {policy}")
            continue
        statements = as_list(policies[policy]["Properties"].get("PolicyDocument", {}).get("Statement"))
        allowed = [{"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": function_arn(target)}]
        if [{k: v for k, v in st.items() if k != "Sid"} for st in statements] != allowed:
            problems.append(f"{policy}: grants {statements}, not lambda:InvokeFunction on {target} alone")
        holders = policy_holders(tpl, policy)
        if holders:
            problems.append(f"{policy}: attached to {sorted(holders)} (it is for the app's roles)")
        output = tpl.get("Outputs", {}).get(f"{policy}Arn", {})
        if output.get("Value") != {"Ref": policy}:
            problems.append(f"{policy}: output {policy}Arn is {output.get('Value')!r}")
    for owner, statement in iam_statements(tpl):
        sid = f"{owner}/{statement.get('Sid')}"
        if statement.get("Effect") != "Allow":
            continue
        if owner == "LinksFunction" and (actions(statement) != ["secretsmanager:GetSecretValue"] or not all(
                r == {"Ref": "LinkSigningSecret"} for r in as_list(statement.get("Resource")))):
            problems.append(f"{sid}: the links function may do more than read the link signing secret")
        if owner == "ConnectionStateFunction":
            services = {service_of(a) for a in actions(statement)}
            if "secretsmanager" in services:
                problems.append(f"{sid}: the connection-state function reads a secret")
            if "kms" in services and not _via_dynamodb(statement):
                problems.append(f"{sid}: the connection-state function uses the key outside DynamoDB")
    return problems


def check_refresh_pipeline(tpl: dict[str, Any]) -> list[str]:
    """Schedule -> queue (with a DLQ) -> worker with partial batch failures and bounded concurrency."""
    problems = []
    if [kind for kind, _ in event_sources(tpl, "SchedulerFunction")] != ["Schedule"]:
        problems.append("the scheduler has no schedule")
    events = [props for kind, props in event_sources(tpl, "RefreshWorkerFunction") if kind == "SQS"]
    if len(events) != 1:
        return [*problems, "the worker has no SQS event"]
    sqs = events[0]
    if not refers_to(sqs.get("Queue"), "RefreshQueue"):
        problems.append("the worker does not read the refresh queue")
    if sqs.get("FunctionResponseTypes") != ["ReportBatchItemFailures"]:
        problems.append("the worker does not report partial batch failures")
    # Bounded by the event source (MaximumConcurrency), or else by reserved concurrency.
    bounded = refers_to(sqs.get("ScalingConfig", {}).get("MaximumConcurrency"), "RefreshConcurrency")
    reserved = function_prop(tpl, "RefreshWorkerFunction", "ReservedConcurrentExecutions")
    if not bounded and not (isinstance(reserved, int) and 0 < reserved < 20):
        problems.append("the worker's concurrency is not bounded by RefreshConcurrency")
    concurrency = tpl["Parameters"]["RefreshConcurrency"]
    if not (2 <= concurrency.get("Default", 0) <= 10 and concurrency.get("MaxValue", 99) < 20):
        problems.append("RefreshConcurrency may reach Invoiced's 20 concurrent requests")
    queue = tpl["Resources"]["RefreshQueue"]["Properties"]
    if not refers_to(queue.get("RedrivePolicy", {}).get("deadLetterTargetArn"), "RefreshDeadLetterQueue"):
        problems.append("the refresh queue has no dead-letter queue")
    timeout = function_prop(tpl, "RefreshWorkerFunction", "Timeout", 3)
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
    if types != {"pk": "S", "due_shard": "N", "refresh_at": "N", "attention": "S", "updated_at": "N"}:
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
    indexes = {ix["IndexName"]: ix for ix in props.get("GlobalSecondaryIndexes", [])}
    if sorted(indexes) != sorted(INDEXES):
        problems.append(f"indexes are {sorted(indexes)}")
    key_schemas = {"due-index": ("due_shard", "refresh_at"), "attention-index": ("attention", "updated_at")}
    for name, (hash_key, range_key) in key_schemas.items():
        index = indexes.get(name, {})
        expected = [{"AttributeName": hash_key, "KeyType": "HASH"}, {"AttributeName": range_key, "KeyType": "RANGE"}]
        if index.get("KeySchema") != expected:
            problems.append(f"{name}: key schema {index.get('KeySchema')}")
        # What a Query of the index can return: never a ciphertext or the lease.
        kind, included = INDEXES[name]
        projection = index.get("Projection", {})
        projected = projection.get("NonKeyAttributes", [])
        if projection.get("ProjectionType") != kind or sorted(projected) != sorted(included):
            problems.append(f"{name}: projects {projection}, not {kind} {sorted(included)}")
        leaked = sorted(set(projected) & (CIPHERTEXT_ATTRIBUTES | LEASE_ATTRIBUTES))
        if leaked:
            problems.append(f"{name}: projects {leaked}")
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
    """Every log group has a retention, and every function logs into one declared for it."""
    problems = []
    groups = resources(tpl, "AWS::Logs::LogGroup")
    problems += [f"{name}: no retention" for name, group in groups.items() if "RetentionInDays" not in group["Properties"]]
    for name in functions(tpl):
        group_ref = (function_prop(tpl, name, "LoggingConfig") or {}).get("LogGroup", {})
        group_id = group_ref.get("Ref") if isinstance(group_ref, dict) else None
        if group_id not in groups:
            problems.append(f"{name}: logs do not go to a declared log group")
            continue
        function_name = text_of(function_prop(tpl, name, "FunctionName"))
        group_name = text_of(groups[group_id]["Properties"].get("LogGroupName"))
        if not function_name or group_name != f"/aws/lambda/{function_name}":
            problems.append(f"{name}: log group {group_name!r} is not /aws/lambda/{function_name}")
    return problems


def check_tracing(tpl: dict[str, Any]) -> list[str]:
    """X-Ray on every function; Powertools never puts an event or a response
    (codes, states, cookies, tokens) into a log line or a trace."""
    problems = []
    for name in functions(tpl):
        if function_tracing(tpl, name) != "Active":
            problems.append(f"{name}: tracing is {function_tracing(tpl, name)!r}")
        env = function_env(tpl, name)
        for variable in ("POWERTOOLS_TRACER_CAPTURE_RESPONSE", "POWERTOOLS_LOGGER_LOG_EVENT"):
            if env.get(variable) != "false":
                problems.append(f"{name}: {variable} is {env.get(variable)!r}, not 'false'")
        role = function_role(tpl, name)
        if not is_source(tpl) and role in tpl["Resources"] and not any(
                isinstance(arn, str) and arn.endswith(":policy/AWSXrayWriteOnlyAccess")
                for arn in as_list(tpl["Resources"][role]["Properties"].get("ManagedPolicyArns"))):
            problems.append(f"{name}: its role cannot write traces")
    return problems


def check_contract(tpl: dict[str, Any]) -> list[str]:
    problems = [f"missing resource {r}" for r in sorted(LOGICAL_IDS - set(tpl["Resources"]))]
    problems += [f"missing output {o}" for o in sorted(OUTPUTS - set(tpl.get("Outputs", {})))]
    for name in functions(tpl):
        missing = SHARED_ENV - set(function_env(tpl, name))
        if missing:
            problems.append(f"{name}: no {sorted(missing)}")
    shared = global_function(tpl).get("Environment", {}).get("Variables", {})
    for variable, function in FUNCTION_NAME_SETTINGS.items():
        named = text_of(functions(tpl).get(function, {}).get("Properties", {}).get("FunctionName"))
        if not named or text_of(shared.get(variable)) != named:
            problems.append(f"{variable} is {shared.get(variable)!r}, not the name of {function} ({named!r})")
    return problems


def _alarm_on(props: dict[str, Any], namespace: str, metric: str) -> bool:
    return props.get("Namespace") == namespace and props.get("MetricName") == metric


def check_alarms(tpl: dict[str, Any]) -> list[str]:
    """Every function's errors and throttles, API 5xx, the dead-letter queue and
    the refresh metrics that need a person each have an alarm; each notifies
    AlarmTopicArn (when set) both ways, treats no data as OK and says where
    to read what to do."""
    from invoiced_connect.lifecycle.refresh import Outcome

    problems = []
    # The contract names the code's own refresh outcomes the way the code does.
    for outcome in (Outcome.NEEDS_REAUTH, Outcome.UNKNOWN_OUTCOME, Outcome.KEPT_ASIDE, Outcome.CLIENT_AUTH_FAILED):
        if outcome.metric_name not in EMITTED_METRICS:
            problems.append(f"the code counts {outcome.value} as {outcome.metric_name}, not a contract metric")
    env = function_env(tpl, next(iter(functions(tpl))))
    service = [{"Name": "service", "Value": env["POWERTOOLS_SERVICE_NAME"]}]
    alarms = {name: alarm["Properties"] for name, alarm in resources(tpl, "AWS::CloudWatch::Alarm").items()}
    for name, props in alarms.items():
        if props.get("TreatMissingData") != "notBreaching":
            problems.append(f"{name}: missing data would alarm")
        for key in ("AlarmActions", "OKActions"):
            if props.get(key) != ALARM_ACTIONS:
                problems.append(f"{name}: {key} is not the alarm topic when one is set")
        if not OPERATIONS_LINK.search(props.get("AlarmDescription", "")):
            problems.append(f"{name}: the description does not point at docs/operations.md")
        if props.get("Namespace") == env["POWERTOOLS_METRICS_NAMESPACE"]:
            if props.get("MetricName") not in EMITTED_METRICS:
                problems.append(f"{name}: {props.get('MetricName')} is not a metric the code emits")
            if props.get("Dimensions") != service:
                problems.append(f"{name}: dimensions {props.get('Dimensions')} are not the code's")
    emf = {props.get("MetricName") for props in alarms.values()
           if props.get("Namespace") == env["POWERTOOLS_METRICS_NAMESPACE"] and props.get("Dimensions") == service}
    problems += [f"no alarm on {metric}" for metric in sorted(ALARMED_METRICS - emf)]
    for fn in functions(tpl):
        for metric in ("Errors", "Throttles"):
            if not any(_alarm_on(props, "AWS/Lambda", metric) and len(props.get("Dimensions", [])) == 1
                       and props["Dimensions"][0].get("Name") == "FunctionName"
                       and refers_to(props["Dimensions"][0].get("Value"), fn) for props in alarms.values()):
                problems.append(f"no {metric} alarm on {fn}")
    stage = tpl["Resources"]["HttpApiStage"]["Properties"].get("StageName")
    if not any(_alarm_on(props, "AWS/ApiGateway", "5xx")
               and {d.get("Name") for d in props.get("Dimensions", [])} == {"ApiId", "Stage"}
               and all(refers_to(d["Value"], "HttpApi") if d["Name"] == "ApiId" else d["Value"] == stage
                       for d in props["Dimensions"]) for props in alarms.values()):
        problems.append("no 5xx alarm on the HTTP API's stage")
    if not any(_alarm_on(props, "AWS/SQS", "ApproximateNumberOfMessagesVisible")
               and refers_to(props.get("Dimensions", [{}])[0].get("Value"), "RefreshDeadLetterQueue")
               for props in alarms.values()):
        problems.append("no alarm on the dead-letter queue")
    return problems


def check_snapstart(tpl: dict[str, Any]) -> list[str]:
    """Off by default and then nothing is billed; on, the API functions publish
    versions with snapshots and the API (and its permission) uses the alias.
    Decided for both settings of the parameter, whatever the form."""
    problems = []
    parameter = tpl["Parameters"].get("SnapStart", {})
    if set(parameter.get("AllowedValues", [])) != {"Enabled", "Disabled"} or parameter.get("Default") != "Disabled":
        return [f"the SnapStart parameter is {parameter}"]
    integrations = resources(tpl, "AWS::ApiGatewayV2::Integration")
    permissions = resources(tpl, "AWS::Lambda::Permission")
    for setting in ("Enabled", "Disabled"):
        resolver = resolver_for(tpl, SnapStart=setting)
        on = setting == "Enabled"
        for name in functions(tpl):
            apply_on = (choose(function_prop(tpl, name, "SnapStart"), resolver) or {}).get("ApplyOn", "None")
            wanted = "PublishedVersions" if on and name in SNAPSTART_FUNCTIONS else "None"
            if apply_on != wanted:
                problems.append(f"{setting}: {name} has SnapStart {apply_on}")
        for name in sorted(SNAPSTART_FUNCTIONS):
            targets = [choose(i["Properties"].get("IntegrationUri"), resolver) for i in integrations.values()
                       if reaches(tpl, i["Properties"].get("IntegrationUri"), name)]
            if len(targets) != 1 or (alias_of(tpl, targets[0]) == name) != on:
                problems.append(f"{setting}: the API invokes {name} as {targets}")
            granted = [choose(p["Properties"].get("FunctionName"), resolver) for p in permissions.values()
                       if p["Properties"].get("Principal") == "apigateway.amazonaws.com"
                       and reaches(tpl, p["Properties"].get("FunctionName"), name)]
            if granted != targets:
                problems.append(f"{setting}: the API may invoke {granted}, but invokes {targets}")
    # Versions and the alias: the SAM properties, or what SAM made of them.
    for name in sorted(SNAPSTART_FUNCTIONS):
        if is_source(tpl):
            props = functions(tpl)[name]["Properties"]
            if not props.get("AutoPublishAlias") or props.get("AutoPublishAliasAllProperties") is not True:
                problems.append(f"{name}: no alias published on every change of its properties")
            if props.get("VersionDeletionPolicy") != "Delete":
                problems.append(f"{name}: versions the alias left are kept (and billed with SnapStart)")
            description = props.get("VersionDescription")
        else:
            versions = [v for v in resources(tpl, "AWS::Lambda::Version").values()
                        if refers_to(v["Properties"].get("FunctionName"), name)]
            aliases = [a for a in resources(tpl, "AWS::Lambda::Alias").values()
                       if refers_to(a["Properties"].get("FunctionName"), name)]
            if len(versions) != 1 or len(aliases) != 1:
                problems.append(f"{name}: {len(versions)} versions and {len(aliases)} aliases")
                continue
            if versions[0].get("DeletionPolicy") != "Delete":
                problems.append(f"{name}: versions the alias left are kept (and billed with SnapStart)")
            description = versions[0]["Properties"].get("Description")
        problems += check_version_description(tpl, name, description)
    return problems


def check_version_description(tpl: dict[str, Any], name: str, description: Any) -> list[str]:
    """SAM publishes a version only when the function's properties *as
    written* change, so with SnapStart on, the version's description must
    change with every parameter value the function's environment takes, and
    with the layer; and it must fit in Lambda's 256 characters."""
    problems = []
    resolver = resolver_for(tpl, SnapStart="Enabled")
    chosen = choose(description, resolver)
    named = template_module.references(chosen)
    feeding = template_module.references(function_env(tpl, name)) & set(tpl["Parameters"])
    missing = feeding - named
    if missing:
        problems.append(f"{name}: its version does not change with {sorted(missing)}")
    layers = resources(tpl, "AWS::Serverless::LayerVersion", "AWS::Lambda::LayerVersion")
    if not named & set(layers):
        problems.append(f"{name}: its version does not change with the layer")
    if choose(description, resolver_for(tpl, SnapStart="Disabled")) not in (None, {"Ref": "AWS::NoValue"}):
        problems.append(f"{name}: a version description with SnapStart off (versions would churn for nothing)")
    if not problems:
        # Longest values of everything but the two URL settings: room left for them.
        longest = resolver_for(tpl, SnapStart="Enabled", InvoicedEnvironment="production",
                               InvoicedClientId="c" * 24, OAuthScope="read_write", RefreshWindowMinutes=50,
                               KeepAliveDays=300, ActiveUseHours=720, RejectedTokenWindowSeconds=3600)
        text = longest.resolve(chosen)
        room = VERSION_DESCRIPTION_LIMIT - (len(text) + 4)  # + a 5-digit layer version instead of the stand-in's 1
        if room < URL_BUDGET:
            problems.append(f"{name}: its version description leaves {room} characters for the URLs")
    return problems


CHECKS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "alarms": check_alarms,
    "runtime": check_runtime,
    "routes": check_routes,
    "roles": check_roles,
    "no_wildcards": check_no_wildcards,
    "secrets": check_secrets,
    "table_access": check_table_access,
    "key_use": check_key_use,
    "key_policy": check_key_policy,
    "refresh_tokens": check_refresh_tokens,
    "reader_policy": check_reader_policy,
    "app_policies": check_app_policies,
    "refresh_pipeline": check_refresh_pipeline,
    "table": check_table,
    "stage": check_stage,
    "log_groups": check_log_groups,
    "tracing": check_tracing,
    "snapstart": check_snapstart,
    "contract": check_contract,
}
#: Checks of the source only: the transform renames the layer (content hash).
SOURCE_ONLY = {"contract"}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("check", sorted(CHECKS))
def test_template_property_holds(forms, check, form):
    if check in SOURCE_ONLY and form != "source":
        pytest.skip("a property of the source template")
    assert CHECKS[check](forms[form]) == []


def test_alarm_descriptions_point_at_sections_of_the_operations_page(template):
    anchors = operations_anchors()
    for name, alarm in resources(template, "AWS::CloudWatch::Alarm").items():
        links = OPERATIONS_LINK.findall(alarm["Properties"].get("AlarmDescription", ""))
        assert links and set(links) <= anchors, (name, links)


def test_the_metric_contract_is_what_the_code_emits():
    """The alarms' metric names are the code's: the shared names, one
    ``Refresh<Outcome>`` per refresh outcome, and RefreshFailed aggregating
    exactly the outcomes the README and docs/operations.md list for it."""
    from invoiced_connect.entry import observability
    from invoiced_connect.lifecycle.refresh import Outcome

    emitted = {observability.CONNECT_STARTED, observability.CONNECT_FAILED, observability.CONNECTED,
               observability.RECONNECTED, observability.REFRESH_FAILED, observability.REFRESH_PERMANENT_FAILURE,
               observability.TOKEN_READS} | {outcome.metric_name for outcome in Outcome}
    assert not EMITTED_METRICS - emitted
    aggregated = set(observability.REFRESH_FAILED_OUTCOMES)
    assert aggregated == {"transient", "unknown_outcome", "needs_reauth", "client_auth_failed", "kept_aside"}


def test_local_stack_reads_both_snapstart_settings(template):
    """The local stack's resolver follows the API to the same functions either way."""
    for setting in ("Enabled", "Disabled"):
        resolver = resolver_for(template, SnapStart=setting)
        routes = {route.route_key: route.function for route in template_module.http_routes(template, resolver)}
        assert routes == ROUTES, setting


# ------------------------------------------------------------------ the checks bite
def _statement(tpl, fn, sid):
    for statement in tpl["Resources"][fn]["Properties"]["Policies"][0]["Statement"]:
        if statement.get("Sid") == sid:
            return statement
    raise KeyError(sid)


def _role_statement(tpl, fn, sid):
    for statement in tpl["Resources"][f"{fn}Role"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]:
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


def _env(tpl, fn):
    return tpl["Resources"][fn]["Properties"]["Environment"]["Variables"]


def _of_type(tpl, type_name, fn):
    """The logical id of the transformed resource of a type that belongs to a function."""
    return next(name for name, res in resources(tpl, type_name).items()
                if refers_to(res["Properties"].get("FunctionName"), fn))


def _drop(tpl, name):
    del tpl["Resources"][name]


def _inline(tpl, fn, *statements):
    """Give a function one more inline policy, in SAM's terms or on its transformed role."""
    document = {"Version": "2012-10-17", "Statement": list(statements)}
    if tpl["Resources"][fn]["Type"] == "AWS::Serverless::Function":
        _res(tpl, fn).setdefault("Policies", []).append(document)
    else:
        _res(tpl, f"{fn}Role").setdefault("Policies", []).append(
            {"PolicyName": f"{fn}Extra", "PolicyDocument": document})


def _attach(tpl, fn, policy):
    """Attach a template managed policy to a function (SAM Policies, or its transformed role)."""
    if tpl["Resources"][fn]["Type"] == "AWS::Serverless::Function":
        _res(tpl, fn)["Policies"].append({"Ref": policy})
    else:
        _res(tpl, f"{fn}Role")["ManagedPolicyArns"].append({"Ref": policy})


def _index(tpl, name):
    return next(ix for ix in _res(tpl, "TokensTable")["GlobalSecondaryIndexes"] if ix["IndexName"] == name)


def _state_read(tpl):
    """The condition of the connection-state function's GetItem, in either form."""
    if tpl["Resources"]["ConnectionStateFunction"]["Type"] == "AWS::Serverless::Function":
        return _statement(tpl, "ConnectionStateFunction", "ReadConnectionState")["Condition"]
    return _role_statement(tpl, "ConnectionStateFunction", "ReadConnectionState")["Condition"]


def _reader_decrypt(tpl):
    return _managed_statement(tpl, "TokenReaderPolicy", "DecryptAccessTokensOfOneConnection")


_KEY = {"Fn::GetAtt": ["TokenKey", "Arn"]}
#: A kms:Decrypt of the token envelope bound to a connection, but to either token.
_ANY_TOKEN_DECRYPT = {
    "Effect": "Allow", "Action": "kms:Decrypt", "Resource": _KEY,
    "Condition": {"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["connection_id", "token"]},
                  "Null": {"kms:EncryptionContext:connection_id": "false"}},
}


S, T, TS = ("source",), ("transformed",), ("transformed-snapstart",)
REGRESSIONS: list[tuple[str, str, Callable[[dict[str, Any]], None], tuple[str, ...]]] = [
    ("runtime", "python3.12", lambda t: t["Globals"]["Function"].update(Runtime="python3.12"), S),
    ("runtime", "x86_64", lambda t: _res(t, "CallbackFunction").update(Architectures=["x86_64"]), S),
    ("runtime", "transformed x86_64", lambda t: _res(t, "CallbackFunction").update(Architectures=["x86_64"]), T),
    ("routes", "POST route", lambda t: _res(t, "ConnectRoute").update(RouteKey="POST /connect"), S),
    ("routes", "crossed wires", lambda t: _res(t, "ConnectIntegration").update(
        IntegrationUri={"Fn::GetAtt": ["CallbackFunction", "Arn"]}), S),
    ("routes", "crossed alias", lambda t: _res(t, "ConnectIntegration").update(
        IntegrationUri={"Fn::If": ["SnapStartEnabled", {"Ref": "CallbackFunction.Alias"},
                                   {"Fn::GetAtt": ["ConnectFunction", "Arn"]}]}), S),
    ("routes", "implicit api", lambda t: _res(t, "ConnectFunction").update(
        Events={"Api": {"Type": "HttpApi", "Properties": {"Path": "/x", "Method": "get"}}}), S),
    ("routes", "transformed implicit api", lambda t: t["Resources"].update(
        ServerlessHttpApi={"Type": "AWS::ApiGatewayV2::Api", "Properties": {"ProtocolType": "HTTP"}}), T),
    ("routes", "permission on the function only", lambda t: _res(t, "CallbackInvokePermission").update(
        FunctionName={"Fn::GetAtt": ["CallbackFunction", "Arn"]}), T),
    ("routes", "any rule may invoke the scheduler", lambda t: next(
        p["Properties"] for p in resources(t, "AWS::Lambda::Permission").values()
        if p["Properties"]["Principal"] == "events.amazonaws.com").update(
        SourceArn={"Fn::Sub": "arn:aws:events:${AWS::Region}:${AWS::AccountId}:rule/*"}), T),
    ("roles", "own role", lambda t: _res(t, "ConnectFunction").update(
        Role={"Fn::GetAtt": ["SomeRole", "Arn"]}), S),
    ("roles", "shared role", lambda t: _res(t, "CallbackFunction").update(
        Role={"Fn::GetAtt": ["ConnectFunctionRole", "Arn"]}), T),
    ("roles", "aws managed dynamodb policy", lambda t: _res(t, "ConnectFunctionRole")["ManagedPolicyArns"].append(
        "arn:aws:iam::aws:policy/AmazonDynamoDBFullAccess"), T),
    ("roles", "sqs policy on the api", lambda t: _res(t, "CallbackFunctionRole")["ManagedPolicyArns"].append(
        "arn:aws:iam::aws:policy/service-role/AWSLambdaSQSQueueExecutionRole"), T),
    ("roles", "trusted by anyone", lambda t: _res(t, "ConnectFunctionRole")["AssumeRolePolicyDocument"][
        "Statement"][0]["Principal"].update(Service=["lambda.amazonaws.com", "ec2.amazonaws.com"]), T),
    ("no_wildcards", "kms:*", lambda t: _statement(t, "CallbackFunction", "EncryptTokensForOneConnection").update(
        Action="kms:*"), S),
    ("no_wildcards", "resource *", lambda t: _statement(t, "ConnectFunction", "WriteStateRows").update(
        Resource="*"), S),
    ("no_wildcards", "any table", lambda t: _statement(t, "ConnectFunction", "WriteStateRows").update(
        Resource="arn:aws:dynamodb:*:*:table/*"), S),
    ("no_wildcards", "policy template", lambda t: _res(t, "ConnectFunction")["Policies"].append(
        {"DynamoDBCrudPolicy": {"TableName": {"Ref": "TokensTable"}}}), S),
    ("no_wildcards", "transformed resource *", lambda t: _role_statement(t, "ConnectFunction", "WriteStateRows").update(
        Resource="*"), T),
    ("no_wildcards", "wildcard in a substituted resource", lambda t: _statement(
        t, "ConnectionStateFunction", "ListNeedingAttention").update(
        Resource={"Fn::Sub": "${TokensTable.Arn}/index/*"}), S),
    ("no_wildcards", "transformed secretsmanager:*", lambda t: _role_statement(
        t, "ConnectFunction", "ReadLinkSigningKey").update(Action="secretsmanager:*"), TS),
    ("secrets", "connect reads client secret", lambda t: _statement(t, "ConnectFunction", "ReadLinkSigningKey").update(
        Resource=[{"Ref": "LinkSigningSecret"}, {"Ref": "ClientSecret"}]), S),
    ("secrets", "client secret arn in globals", lambda t: t["Globals"]["Function"]["Environment"]["Variables"].update(
        CLIENT_SECRET_ARN={"Ref": "ClientSecret"}), S),
    ("secrets", "transformed connect reads client secret", lambda t: _role_statement(
        t, "ConnectFunction", "ReadLinkSigningKey").update(Resource=[{"Ref": "LinkSigningSecret"},
                                                                     {"Ref": "ClientSecret"}]), T),
    ("secrets", "refresher policy on the scheduler", lambda t: _res(t, "SchedulerFunctionRole")[
        "ManagedPolicyArns"].append({"Ref": "TokenRefresherPolicy"}), T),
    ("secrets", "tokens function without the client secret's arn", lambda t: _env(t, "TokensFunction").pop(
        "CLIENT_SECRET_ARN"), S),
    ("secrets", "connection state given the link signing key's arn", lambda t: _res(
        t, "ConnectionStateFunction").update(
        Environment={"Variables": {"LINK_SIGNING_SECRET_ARN": {"Ref": "LinkSigningSecret"}}}), S),
    ("secrets", "transformed links function cannot sign", lambda t: _res(t, "LinksFunctionRole").pop("Policies"), T),
    ("secrets", "transformed tokens role reads the link signing key", lambda t: _inline(t, "TokensFunction", {
        "Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": {"Ref": "LinkSigningSecret"}}),
     TS),
    ("table_access", "no leading keys", lambda t: _statement(t, "CallbackFunction", "WriteConnections").pop("Condition"), S),
    ("table_access", "connect writes connections", lambda t: _statement(t, "ConnectFunction", "WriteStateRows")[
        "Condition"]["ForAllValues:StringLike"].update({"dynamodb:LeadingKeys": ["*"]}), S),
    ("table_access", "extra action", lambda t: _statement(t, "ConnectFunction", "WriteStateRows").update(
        Action=["dynamodb:PutItem", "dynamodb:GetItem"]), S),
    ("table_access", "transformed no leading keys", lambda t: _role_statement(
        t, "CallbackFunction", "WriteConnections").pop("Condition"), T),
    ("table_access", "state view reads the ciphertexts", lambda t: _state_read(t)["ForAllValues:StringEquals"][
        "dynamodb:Attributes"].extend(["access_ciphertext", "refresh_ciphertext"]), S),
    ("table_access", "state view reads the old ciphertext", lambda t: _state_read(t)["ForAllValues:StringEquals"][
        "dynamodb:Attributes"].append("token_ciphertext"), S),
    ("table_access", "state view reads the lease", lambda t: _state_read(t)["ForAllValues:StringEquals"][
        "dynamodb:Attributes"].append("lease_owner"), S),
    ("table_access", "state view reads whole rows", lambda t: _state_read(t).pop("ForAllValues:StringEquals"), S),
    ("table_access", "state view misses what the store reads", lambda t: _state_read(t)[
        "ForAllValues:StringEquals"]["dynamodb:Attributes"].remove("attention"), S),
    ("table_access", "state view selects all attributes", lambda t: _state_read(t).update(
        StringEqualsIfExists={"dynamodb:Select": "ALL_ATTRIBUTES"}), S),
    ("table_access", "state view select left open", lambda t: _state_read(t).pop("StringEqualsIfExists"), S),
    ("table_access", "state view queries the due-index", lambda t: _statement(
        t, "ConnectionStateFunction", "ListNeedingAttention").update(
        Resource={"Fn::Sub": "${TokensTable.Arn}/index/due-index"}), S),
    ("table_access", "state view queries the table", lambda t: _statement(
        t, "ConnectionStateFunction", "ListNeedingAttention").update(
        Resource={"Fn::GetAtt": ["TokensTable", "Arn"]},
        Condition={"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["conn#*"]}}), S),
    ("table_access", "state view on any index", lambda t: _statement(
        t, "ConnectionStateFunction", "ListNeedingAttention").update(
        Resource={"Fn::Sub": "${TokensTable.Arn}/index/*"}), S),
    ("table_access", "tokens function without the refresher's policy", lambda t: _res(
        t, "TokensFunction").update(Policies=[]), S),
    ("table_access", "transformed state view reads the ciphertexts", lambda t: _state_read(t)[
        "ForAllValues:StringEquals"]["dynamodb:Attributes"].append("refresh_ciphertext"), T),
    ("table_access", "transformed state view selects all attributes", lambda t: _state_read(t).update(
        StringEqualsIfExists={"dynamodb:Select": "ALL_ATTRIBUTES"}), TS),
    ("key_use", "context not required", lambda t: _statement(t, "CallbackFunction", "EncryptTokensForOneConnection")[
        "Condition"].pop("Null"), S),
    ("key_use", "wrong context", lambda t: _statement(t, "CallbackFunction", "EncryptTokensForOneConnection")[
        "Condition"]["ForAllValues:StringEquals"].update({"kms:EncryptionContextKeys": ["tenant"]}), S),
    ("key_use", "direct decrypt", lambda t: _add_statement(t, "ConnectFunction", {
        "Effect": "Allow", "Action": "kms:Decrypt", "Resource": {"Fn::GetAtt": ["TokenKey", "Arn"]}}), S),
    ("key_use", "encrypt via dynamodb", lambda t: _statement(t, "ConnectFunction", "TableEncryptionViaDynamoDB").update(
        Action=["kms:Decrypt", "kms:Encrypt"]), S),
    ("key_use", "transformed context not required", lambda t: _role_statement(
        t, "CallbackFunction", "EncryptTokensForOneConnection")["Condition"].pop("Null"), T),
    ("key_policy", "open principal", lambda t: _res(t, "TokenKey")["KeyPolicy"]["Statement"].append(
        {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:Decrypt", "Resource": "*"}), S),
    ("key_policy", "no rotation", lambda t: _res(t, "TokenKey").update(EnableKeyRotation=False), S),
    ("key_policy", "transformed key not retained", lambda t: t["Resources"]["TokenKey"].update(
        DeletionPolicy="Delete"), T),
    ("table", "sort key", lambda t: _res(t, "TokensTable")["KeySchema"].append({"AttributeName": "sk", "KeyType": "RANGE"}), S),
    ("table", "no pitr", lambda t: _res(t, "TokensTable").pop("PointInTimeRecoverySpecification"), S),
    ("table", "no deletion protection", lambda t: _res(t, "TokensTable").update(DeletionProtectionEnabled=False), S),
    ("table", "aws owned key", lambda t: _res(t, "TokensTable").update(SSESpecification={"SSEEnabled": False}), S),
    ("table", "ttl renamed", lambda t: _res(t, "TokensTable").update(
        TimeToLiveSpecification={"AttributeName": "expires", "Enabled": True}), S),
    ("table", "transformed no pitr", lambda t: _res(t, "TokensTable").pop("PointInTimeRecoverySpecification"), T),
    ("table", "transformed aws managed key", lambda t: _res(t, "TokensTable")["SSESpecification"].pop(
        "KMSMasterKeyId"), TS),
    ("table", "transformed no deletion protection", lambda t: _res(t, "TokensTable").update(
        DeletionProtectionEnabled=False), T),
    ("table", "attention-index projects everything", lambda t: _index(t, "attention-index").update(
        Projection={"ProjectionType": "ALL"}), S),
    ("table", "attention-index projects a ciphertext", lambda t: _index(t, "attention-index")["Projection"][
        "NonKeyAttributes"].append("refresh_ciphertext"), S),
    ("table", "attention-index keyed on status", lambda t: _index(t, "attention-index")["KeySchema"][0].update(
        AttributeName="status"), S),
    ("table", "no attention-index", lambda t: _res(t, "TokensTable")["GlobalSecondaryIndexes"].remove(
        _index(t, "attention-index")), S),
    ("table", "transformed attention-index projects the lease", lambda t: _index(t, "attention-index")[
        "Projection"]["NonKeyAttributes"].append("lease_owner"), T),
    ("table", "transformed due-index projects everything", lambda t: _index(t, "due-index").update(
        Projection={"ProjectionType": "ALL"}), TS),
    ("stage", "query string logged", lambda t: _res(t, "HttpApiStage")["AccessLogSettings"].update(
        Format='{"requestId":"$context.requestId","q":"$context.requestQueryString"}'), S),
    ("stage", "no throttling", lambda t: _res(t, "HttpApiStage").pop("DefaultRouteSettings"), S),
    ("stage", "transformed body logged", lambda t: _res(t, "HttpApiStage")["AccessLogSettings"].update(
        Format='{"requestId":"$context.requestId","b":"$input.body"}'), T),
    ("stage", "transformed no throttling", lambda t: _res(t, "HttpApiStage").pop("DefaultRouteSettings"), T),
    ("log_groups", "no retention", lambda t: _res(t, "HttpApiAccessLogs").pop("RetentionInDays"), S),
    ("log_groups", "function makes its own group", lambda t: _res(t, "CallbackFunction").pop("LoggingConfig"), S),
    ("log_groups", "transformed function makes its own group", lambda t: _res(t, "RefreshWorkerFunction").pop(
        "LoggingConfig"), T),
    ("log_groups", "tokens function logs into the links group", lambda t: _res(t, "TokensFunction").update(
        LoggingConfig={"LogGroup": {"Ref": "LinksLogGroup"}}), S),
    ("log_groups", "transformed connection-state function makes its own group", lambda t: _res(
        t, "ConnectionStateFunction").pop("LoggingConfig"), T),
    ("log_groups", "transformed group without retention", lambda t: _res(t, "SchedulerLogGroup").pop(
        "RetentionInDays"), TS),
    ("log_groups", "transformed new group without retention", lambda t: t["Resources"].update(
        VersionLogs={"Type": "AWS::Logs::LogGroup", "Properties": {}}), TS),
    ("secrets", "reader policy reads client secret", lambda t: _managed(t, "TokenReaderPolicy").append(
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": {"Ref": "ClientSecret"}}), S),
    ("table_access", "scheduler scans", lambda t: _add_statement(t, "SchedulerFunction", {
        "Effect": "Allow", "Action": "dynamodb:Scan", "Resource": {"Fn::GetAtt": ["TokensTable", "Arn"]}}), S),
    ("table_access", "refresher touches state rows", lambda t: _managed_statement(
        t, "TokenRefresherPolicy", "KeepTokensAside")["Condition"]["ForAllValues:StringLike"].update(
        {"dynamodb:LeadingKeys": ["rescue#*", "state#*"]}), S),
    ("reader_policy", "reader writes", lambda t: _managed_statement(t, "TokenReaderPolicy", "ReadConnections").update(
        Action=["dynamodb:GetItem", "dynamodb:UpdateItem"]), S),
    ("reader_policy", "reader scans", lambda t: _managed(t, "TokenReaderPolicy").append(
        {"Effect": "Allow", "Action": "dynamodb:Scan", "Resource": {"Fn::GetAtt": ["TokensTable", "Arn"]}}), S),
    ("reader_policy", "reader invokes anything", lambda t: _managed_statement(
        t, "TokenReaderPolicy", "AskForFreshTokens").update(Resource={"Fn::Sub": "arn:aws:lambda:*:*:function:*"}), S),
    ("reader_policy", "reader may disconnect", lambda t: _managed_statement(
        t, "TokenReaderPolicy", "AskForFreshTokens").update(Resource={"Fn::GetAtt": ["ConnectionsFunction", "Arn"]}),
     S),
    ("reader_policy", "reader invokes the tokens and connections functions", lambda t: _managed_statement(
        t, "TokenReaderPolicy", "AskForFreshTokens").update(Resource=[
            {"Fn::GetAtt": ["TokensFunction", "Arn"]}, {"Fn::GetAtt": ["ConnectionsFunction", "Arn"]}]), S),
    ("reader_policy", "reader policy on the connection-state function", lambda t: _attach(
        t, "ConnectionStateFunction", "TokenReaderPolicy"), S),
    ("reader_policy", "transformed reader may disconnect", lambda t: _managed_statement(
        t, "TokenReaderPolicy", "AskForFreshTokens").update(Resource={"Fn::GetAtt": ["ConnectionsFunction", "Arn"]}),
     TS),
    ("reader_policy", "transformed reader policy on the connect function", lambda t: _res(
        t, "ConnectFunctionRole")["ManagedPolicyArns"].append({"Ref": "TokenReaderPolicy"}), T),
    ("reader_policy", "transformed reader writes", lambda t: _managed_statement(
        t, "TokenReaderPolicy", "ReadConnections").update(Action=["dynamodb:GetItem", "dynamodb:PutItem"]), TS),
    ("key_use", "reader decrypts without context", lambda t: _reader_decrypt(t).pop("Condition"), S),
    ("key_use", "context of other keys too", lambda t: _managed_statement(
        t, "TokenRefresherPolicy", "TokensOfOneConnection")["Condition"]["ForAllValues:StringEquals"].update(
        {"kms:EncryptionContextKeys": ["connection_id", "token", "tenant_id"]}), S),
    ("key_use", "token named but connection not required", lambda t: _reader_decrypt(t)["Condition"].update(
        Null={"kms:EncryptionContext:token": "false"}), S),
    ("key_use", "callback seals without naming the token", lambda t: _statement(
        t, "CallbackFunction", "EncryptTokensForOneConnection")["Condition"]["Null"].pop(
        "kms:EncryptionContext:token"), S),
    ("key_use", "links function encrypts", lambda t: _inline(t, "LinksFunction", {
        **_ANY_TOKEN_DECRYPT, "Action": "kms:Encrypt"}), S),
    ("key_use", "transformed callback seals without naming the token", lambda t: _role_statement(
        t, "CallbackFunction", "EncryptTokensForOneConnection")["Condition"]["Null"].pop(
        "kms:EncryptionContext:token"), T),
    ("key_use", "transformed reader context of other keys", lambda t: _reader_decrypt(t)["Condition"][
        "ForAllValues:StringEquals"].update({"kms:EncryptionContextKeys": ["connection_id", "token", "purpose"]}),
     TS),
    ("refresh_tokens", "callback decrypts the replaced grant's refresh token", lambda t: _statement(
        t, "CallbackFunction", "DecryptReplacedAccessTokens")["Condition"]["StringEquals"].update(
        {"kms:EncryptionContext:token": "refresh"}), S),
    ("refresh_tokens", "transformed callback decrypts either token", lambda t: _role_statement(
        t, "CallbackFunction", "DecryptReplacedAccessTokens")["Condition"].pop("StringEquals"), T),
    ("refresh_tokens", "reader decrypts either token", lambda t: _reader_decrypt(t)["Condition"].pop(
        "StringEquals"), S),
    ("refresh_tokens", "reader decrypts refresh tokens", lambda t: _reader_decrypt(t)["Condition"].update(
        StringEquals={"kms:EncryptionContext:token": "refresh"}), S),
    ("refresh_tokens", "reader decrypts both tokens", lambda t: _reader_decrypt(t)["Condition"].update(
        StringEquals={"kms:EncryptionContext:token": ["access", "refresh"]}), S),
    ("refresh_tokens", "reader matches any token", lambda t: _reader_decrypt(t)["Condition"].update(
        StringEquals={}, StringLike={"kms:EncryptionContext:token": "*"}), S),
    ("refresh_tokens", "consumer given its own decrypt", lambda t: _inline(
        t, "ListInvoicesFunction", _ANY_TOKEN_DECRYPT), S),
    ("refresh_tokens", "consumer given the refresher's policy", lambda t: _attach(
        t, "ListInvoicesFunction", "TokenRefresherPolicy"), S),
    ("refresh_tokens", "transformed reader decrypts either token", lambda t: _reader_decrypt(t)["Condition"].pop(
        "StringEquals"), T),
    ("refresh_tokens", "transformed reader matches any token", lambda t: _reader_decrypt(t)["Condition"].update(
        StringEquals={}, StringLike={"kms:EncryptionContext:token": "*"}), TS),
    ("refresh_tokens", "transformed consumer role decrypts either token", lambda t: _inline(
        t, "ListInvoicesFunction", _ANY_TOKEN_DECRYPT), T),
    ("refresh_tokens", "transformed consumer given the refresher's policy", lambda t: _attach(
        t, "ListInvoicesFunction", "TokenRefresherPolicy"), TS),
    ("app_policies", "link issuer invokes the tokens function", lambda t: _managed_statement(
        t, "LinkIssuerPolicy", "MakeConnectLinks").update(Resource={"Fn::GetAtt": ["TokensFunction", "Arn"]}), S),
    ("app_policies", "token vending reads the function's configuration too", lambda t: _managed_statement(
        t, "TokenVendingPolicy", "GetAccessTokens").update(
        Action=["lambda:InvokeFunction", "lambda:GetFunctionConfiguration"]), S),
    ("app_policies", "connection state on any qualifier", lambda t: _managed_statement(
        t, "ConnectionStatePolicy", "ReadConnectionState").update(
        Resource={"Fn::Sub": "${ConnectionStateFunction.Arn}:*"}), S),
    ("app_policies", "operator invokes any function", lambda t: _managed_statement(
        t, "ConnectionsOperatorPolicy", "RefreshAndDisconnect").update(
        Resource="arn:aws:lambda:*:*:function:*"), S),
    ("app_policies", "operator gets tokens too", lambda t: _managed(t, "ConnectionsOperatorPolicy").append(
        {"Effect": "Allow", "Action": "lambda:InvokeFunction",
         "Resource": {"Fn::GetAtt": ["TokensFunction", "Arn"]}}), S),
    ("app_policies", "token vending attached to the links function", lambda t: _attach(
        t, "LinksFunction", "TokenVendingPolicy"), S),
    ("app_policies", "no output for the link issuer", lambda t: t["Outputs"].pop("LinkIssuerPolicyArn"), S),
    ("app_policies", "output names the reader policy", lambda t: t["Outputs"]["TokenVendingPolicyArn"].update(
        Value={"Ref": "TokenReaderPolicy"}), S),
    ("app_policies", "no connection-state policy", lambda t: _drop(t, "ConnectionStatePolicy"), S),
    ("app_policies", "links function reads the table", lambda t: _inline(t, "LinksFunction", {
        "Effect": "Allow", "Action": "dynamodb:GetItem", "Resource": {"Fn::GetAtt": ["TokensTable", "Arn"]},
        "Condition": {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["link#*"]}}}), S),
    ("app_policies", "links function reads the client secret", lambda t: _statement(
        t, "LinksFunction", "ReadLinkSigningKey").update(Resource=[{"Ref": "LinkSigningSecret"},
                                                                   {"Ref": "ClientSecret"}]), S),
    ("app_policies", "connection state reads the link signing secret", lambda t: _inline(
        t, "ConnectionStateFunction", {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                                       "Resource": {"Ref": "LinkSigningSecret"}}), S),
    ("app_policies", "connection state decrypts access tokens", lambda t: _inline(
        t, "ConnectionStateFunction", {**_ANY_TOKEN_DECRYPT, "Condition": {
            **_ANY_TOKEN_DECRYPT["Condition"], "StringEquals": {"kms:EncryptionContext:token": "access"}}}), S),
    ("app_policies", "transformed link issuer invokes the tokens function", lambda t: _managed_statement(
        t, "LinkIssuerPolicy", "MakeConnectLinks").update(Resource={"Fn::GetAtt": ["TokensFunction", "Arn"]}), T),
    ("app_policies", "transformed token vending reads configuration too", lambda t: _managed_statement(
        t, "TokenVendingPolicy", "GetAccessTokens").update(
        Action=["lambda:InvokeFunction", "lambda:GetFunctionConfiguration"]), TS),
    ("app_policies", "transformed connection state on any qualifier", lambda t: _managed_statement(
        t, "ConnectionStatePolicy", "ReadConnectionState").update(
        Resource={"Fn::Sub": "${ConnectionStateFunction.Arn}:*"}), T),
    ("app_policies", "transformed operator policy on the connection-state role", lambda t: _attach(
        t, "ConnectionStateFunction", "ConnectionsOperatorPolicy"), T),
    ("app_policies", "transformed no output for the operator policy", lambda t: t["Outputs"].pop(
        "ConnectionsOperatorPolicyArn"), T),
    ("app_policies", "transformed links role reads the table", lambda t: _inline(t, "LinksFunction", {
        "Effect": "Allow", "Action": "dynamodb:GetItem", "Resource": {"Fn::GetAtt": ["TokensTable", "Arn"]},
        "Condition": {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["link#*"]}}}), TS),
    ("app_policies", "transformed connection-state role decrypts outside DynamoDB", lambda t: _role_statement(
        t, "ConnectionStateFunction", "TableEncryptionViaDynamoDB").pop("Condition"), T),
    ("refresh_pipeline", "no dlq", lambda t: _res(t, "RefreshQueue").pop("RedrivePolicy"), S),
    ("refresh_pipeline", "unbounded worker", lambda t: _res(t, "RefreshWorkerFunction")["Events"]["Queue"][
        "Properties"].pop("ScalingConfig"), S),
    ("refresh_pipeline", "whole batch fails", lambda t: _res(t, "RefreshWorkerFunction")["Events"]["Queue"][
        "Properties"].pop("FunctionResponseTypes"), S),
    ("refresh_pipeline", "short visibility", lambda t: _res(t, "RefreshQueue").update(VisibilityTimeout=60), S),
    ("refresh_pipeline", "events anywhere", lambda t: _managed_statement(
        t, "TokenRefresherPolicy", "PublishLifecycleEvents").update(Resource="*"), S),
    ("refresh_pipeline", "transformed unbounded worker", lambda t: _res(t, "RefreshWorkerFunctionQueue").pop(
        "ScalingConfig"), T),
    ("refresh_pipeline", "transformed worker without its queue", lambda t: _drop(t, "RefreshWorkerFunctionQueue"), T),
    ("refresh_pipeline", "transformed worker reads another queue", lambda t: _res(
        t, "RefreshWorkerFunctionQueue").update(EventSourceArn={"Fn::GetAtt": ["RefreshDeadLetterQueue", "Arn"]}), T),
    ("routes", "http event on the tokens function", lambda t: _res(t, "TokensFunction").update(
        Events={"Api": {"Type": "HttpApi", "Properties": {"Path": "/tokens", "Method": "post"}}}), S),
    ("routes", "tokens function on a url", lambda t: _res(t, "TokensFunction").update(
        FunctionUrlConfig={"AuthType": "AWS_IAM"}), S),
    ("routes", "transformed tokens function on a url", lambda t: t["Resources"].update(TokensFunctionUrl={
        "Type": "AWS::Lambda::Url", "Properties": {"AuthType": "NONE", "TargetFunctionArn": {
            "Fn::GetAtt": ["TokensFunction", "Arn"]}}}), T),
    ("routes", "http event on the worker", lambda t: _res(t, "RefreshWorkerFunction")["Events"].update(
        Api={"Type": "HttpApi", "Properties": {"Path": "/refresh", "Method": "post"}}), S),
    ("tracing", "tracing off", lambda t: t["Globals"]["Function"].pop("Tracing"), S),
    ("tracing", "one function passes through", lambda t: _res(t, "ConnectionsFunction").update(
        Tracing="PassThrough"), S),
    ("tracing", "responses captured", lambda t: t["Globals"]["Function"]["Environment"]["Variables"].update(
        POWERTOOLS_TRACER_CAPTURE_RESPONSE="true"), S),
    ("tracing", "events logged", lambda t: _env(t, "CallbackFunction").update(POWERTOOLS_LOGGER_LOG_EVENT="true"), S),
    ("tracing", "log event left to the default", lambda t: t["Globals"]["Function"]["Environment"][
        "Variables"].pop("POWERTOOLS_LOGGER_LOG_EVENT"), S),
    ("tracing", "transformed tracing off", lambda t: _res(t, "SchedulerFunction").pop("TracingConfig"), T),
    ("tracing", "transformed responses captured", lambda t: _env(t, "ConnectFunction").update(
        POWERTOOLS_TRACER_CAPTURE_RESPONSE="true"), TS),
    ("tracing", "transformed role cannot write traces", lambda t: _res(t, "ConnectionsFunctionRole")[
        "ManagedPolicyArns"].remove("arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess"), T),
    ("alarms", "kept-aside metric renamed", lambda t: _res(t, "TokensKeptAsideAlarm").update(
        MetricName="TokensKeptAside"), S),
    ("alarms", "dlq alarm on the work queue", lambda t: _res(t, "RefreshDeadLetterAlarm").update(
        Dimensions=[{"Name": "QueueName", "Value": {"Fn::GetAtt": ["RefreshQueue", "QueueName"]}}]), S),
    ("alarms", "no throttles alarm", lambda t: _drop(t, "ListInvoicesThrottlesAlarm"), S),
    ("alarms", "errors alarm on another function", lambda t: _res(t, "SchedulerErrorsAlarm").update(
        Dimensions=[{"Name": "FunctionName", "Value": {"Ref": "RefreshWorkerFunction"}}]), S),
    ("alarms", "rest api metric name", lambda t: _res(t, "Api5xxAlarm").update(MetricName="5XXError"), S),
    ("alarms", "5xx of another stage", lambda t: _res(t, "Api5xxAlarm").update(
        Dimensions=[{"Name": "ApiId", "Value": {"Ref": "HttpApi"}}, {"Name": "Stage", "Value": "prod"}]), S),
    ("alarms", "no needs-reauth alarm", lambda t: _drop(t, "NeedsReauthAlarm"), S),
    ("alarms", "refresh failures renamed", lambda t: _res(t, "RefreshFailedAlarm").update(
        MetricName="RefreshFailures"), S),
    ("alarms", "emf alarm without the service dimension", lambda t: _res(t, "UnknownOutcomeAlarm").update(
        Dimensions=[]), S),
    ("alarms", "no ok notification", lambda t: _res(t, "ClientAuthFailedAlarm").pop("OKActions"), S),
    ("alarms", "always notifies", lambda t: _res(t, "Api5xxAlarm").update(AlarmActions=[{"Ref": "AlarmTopicArn"}]), S),
    ("alarms", "missing data alarms", lambda t: _res(t, "ConnectErrorsAlarm").update(TreatMissingData="breaching"), S),
    ("alarms", "no pointer to the runbook", lambda t: _res(t, "RefreshFailedAlarm").update(
        AlarmDescription="Refreshes failed."), S),
    ("alarms", "transformed function without errors alarm", lambda t: _drop(t, "RefreshWorkerErrorsAlarm"), T),
    ("alarms", "no errors alarm on the tokens function", lambda t: _drop(t, "TokensErrorsAlarm"), S),
    ("alarms", "connection-state throttles alarm on the links function", lambda t: _res(
        t, "ConnectionStateThrottlesAlarm").update(
        Dimensions=[{"Name": "FunctionName", "Value": {"Ref": "LinksFunction"}}]), S),
    ("alarms", "transformed no throttles alarm on the links function", lambda t: _drop(t, "LinksThrottlesAlarm"), TS),
    ("alarms", "transformed unknown metric", lambda t: _res(t, "NeedsReauthAlarm").update(
        MetricName="ConnectionsNeedingReauth"), TS),
    ("snapstart", "on by default", lambda t: t["Parameters"]["SnapStart"].update(Default="Enabled"), S),
    ("snapstart", "api keeps calling $LATEST", lambda t: _res(t, "ConnectIntegration").update(
        IntegrationUri={"Fn::GetAtt": ["ConnectFunction", "Arn"]}), S),
    ("snapstart", "alias even when off", lambda t: _res(t, "CallbackIntegration").update(
        IntegrationUri={"Ref": "CallbackFunction.Alias"}), S),
    ("snapstart", "permission on the function, api on the alias", lambda t: _res(t, "ConnectInvokePermission").update(
        FunctionName={"Fn::GetAtt": ["ConnectFunction", "Arn"]}), S),
    ("snapstart", "always on", lambda t: _res(t, "CallbackFunction").update(
        SnapStart={"ApplyOn": "PublishedVersions"}), S),
    ("snapstart", "on the worker", lambda t: _res(t, "RefreshWorkerFunction").update(
        SnapStart={"ApplyOn": {"Fn::If": ["SnapStartEnabled", "PublishedVersions", "None"]}}), S),
    ("snapstart", "versions only on code changes", lambda t: _res(t, "ConnectFunction").pop(
        "AutoPublishAliasAllProperties"), S),
    ("snapstart", "version blind to the client id", lambda t: _res(t, "CallbackFunction").update(
        VersionDescription={"Fn::If": ["SnapStartEnabled", {"Fn::Sub": "config ${InvoicedEnvironment}"},
                                       {"Ref": "AWS::NoValue"}]}), S),
    ("snapstart", "transformed api keeps calling $LATEST", lambda t: _res(t, "CallbackIntegration").update(
        IntegrationUri={"Fn::GetAtt": ["CallbackFunction", "Arn"]}), TS),
    ("snapstart", "transformed snapshot never taken", lambda t: _res(t, "ConnectFunction").update(
        SnapStart={"ApplyOn": "None"}), TS),
    ("snapstart", "transformed no alias", lambda t: _drop(t, "ConnectFunctionAliaslive"), T),
    ("snapstart", "old versions kept", lambda t: _res(t, "CallbackFunction").pop("VersionDeletionPolicy"), S),
    ("snapstart", "transformed old versions kept", lambda t: t["Resources"][
        _of_type(t, "AWS::Lambda::Version", "CallbackFunction")].update(DeletionPolicy="Retain"), T),
    ("snapstart", "transformed version blind to the layer", lambda t: _res(
        t, _of_type(t, "AWS::Lambda::Version", "ConnectFunction")).update(
        Description={"Fn::If": ["SnapStartEnabled", {"Fn::Sub": "config ${InvoicedClientId}"},
                                {"Ref": "AWS::NoValue"}]}), TS),
    ("contract", "renamed output", lambda t: t["Outputs"].update(ConnectLink=t["Outputs"].pop("ConnectUrl")), S),
    ("contract", "shared setting missing", lambda t: t["Globals"]["Function"]["Environment"]["Variables"].pop(
        "ACTIVE_USE_HOURS"), S),
    ("contract", "no rejected-token window", lambda t: t["Globals"]["Function"]["Environment"]["Variables"].pop(
        "REJECTED_TOKEN_WINDOW_SECONDS"), S),
    ("contract", "the SDK sent to the connections function", lambda t: t["Globals"]["Function"]["Environment"][
        "Variables"].update(TOKENS_FUNCTION_NAME={"Fn::Sub": "${AWS::StackName}-connections"}), S),
    ("contract", "tokens function renamed", lambda t: _res(t, "TokensFunction").update(
        FunctionName={"Fn::Sub": "${AWS::StackName}-token-vending"}), S),
    ("contract", "no output for the connection-state function", lambda t: t["Outputs"].pop(
        "ConnectionStateFunctionName"), S),
]


@pytest.mark.parametrize(
    ("check", "break_it", "form"),
    [pytest.param(c, apply, form, id=f"{c}: {r} ({form})") for c, r, apply, on in REGRESSIONS for form in on],
)
def test_each_check_catches_its_regression(forms, check, break_it, form):
    broken = copy.deepcopy(forms[form])
    break_it(broken)
    assert CHECKS[check](broken), f"check {check!r} passed a broken template"


def test_every_check_has_a_regression_on_each_kind_of_form():
    sources = {c for c, _, _, on in REGRESSIONS if "source" in on}
    transformed = {c for c, _, _, on in REGRESSIONS if set(on) & {"transformed", "transformed-snapstart"}}
    assert sources == set(CHECKS)
    assert transformed == set(CHECKS) - SOURCE_ONLY


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
