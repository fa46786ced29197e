"""The properties template.yaml must have, checked the way a security
reviewer would: each check is a plain function that returns a list of
problems (empty: the property holds), and reads any form of the template
(see ``tests.support.template``).

tests/integration/test_template_checks.py runs each on every form;
tests/integration/test_template_breakages.py proves each fails on a
deliberately broken copy.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable
from typing import Any

import local.template as template_module
from invoiced_connect.storage.store import ATTENTION_ATTRIBUTES, STATE_ATTRIBUTES
from tests.support.template import (
    actions,
    alias_of,
    as_list,
    choose,
    event_sources,
    function_env,
    function_prop,
    function_role,
    function_tracing,
    functions,
    global_function,
    iam_statements,
    is_source,
    policy_holders,
    reaches,
    refers_to,
    resolver_for,
    resources,
    service_of,
    statements_for,
    text_of,
)

GUARDED_SERVICES = ("dynamodb", "kms", "secretsmanager")

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
    from invoiced_connect.lifecycle.refresh import RefreshOutcome

    problems = []
    # The contract names the code's own refresh outcomes the way the code does.
    for outcome in (RefreshOutcome.NEEDS_REAUTH, RefreshOutcome.UNKNOWN_OUTCOME, RefreshOutcome.KEPT_ASIDE, RefreshOutcome.CLIENT_AUTH_FAILED):
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

