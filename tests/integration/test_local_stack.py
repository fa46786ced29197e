"""The local stack behind `make run`: template loading and intrinsics, the
resources it creates, the API Gateway stand-in, and one end-to-end flow.

The full-stack tests use the session's ``stack`` (tests/integration/conftest.py);
the gateway tests serve small handlers from an inline template, no AWS needed.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import string
import textwrap
import threading
import time
from pathlib import Path

import pytest
import requests

from local.gateway import api_event, gateway_for_template
from local.lambda_runtime import load_handler
from local.stack import _EnvironmentPatch, main, upstream_from_env
from local.template import (
    Physical,
    Resolver,
    TemplateError,
    function_environment,
    load_template,
    loads_template,
)

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "template.yaml"


# ---------------------------------------------------------------- the loader and the resolver
def test_loader_turns_short_tags_into_long_form_intrinsics():
    document = loads_template(textwrap.dedent("""
        Resources:
          R:
            Type: Test
            Properties:
              Ref: !Ref Thing
              DotAtt: !GetAtt Table.StreamArn
              ListAtt: !GetAtt [Table, Arn]
              Sub: !Sub "${AWS::Region}-x"
              SubList: !Sub ["${A}", {A: !Ref Thing}]
              If: !If [Cond, a, !Ref AWS::NoValue]
              Cond: !Not [!Equals [!Ref P, ""]]
              Map: !FindInMap [M, !Ref P, K]
              Join: !Join [",", [a, b]]
              Select: !Select [0, !Split [",", "a,b"]]
              Condition: !Condition Cond
    """))
    props = document["Resources"]["R"]["Properties"]
    assert props == {
        "Ref": {"Ref": "Thing"},
        "DotAtt": {"Fn::GetAtt": ["Table", "StreamArn"]},
        "ListAtt": {"Fn::GetAtt": ["Table", "Arn"]},
        "Sub": {"Fn::Sub": "${AWS::Region}-x"},
        "SubList": {"Fn::Sub": ["${A}", {"A": {"Ref": "Thing"}}]},
        "If": {"Fn::If": ["Cond", "a", {"Ref": "AWS::NoValue"}]},
        "Cond": {"Fn::Not": [{"Fn::Equals": [{"Ref": "P"}, ""]}]},
        "Map": {"Fn::FindInMap": ["M", {"Ref": "P"}, "K"]},
        "Join": {"Fn::Join": [",", ["a", "b"]]},
        "Select": {"Fn::Select": [0, {"Fn::Split": [",", "a,b"]}]},
        "Condition": {"Condition": "Cond"},
    }


RESOLVER_TEMPLATE = textwrap.dedent("""
    Parameters:
      Env:
        Type: String
        Default: sandbox
        AllowedValues: [production, sandbox]
      Name:
        Type: String
        Default: ""
        AllowedPattern: "^[a-z]*$"
      Origins:
        Type: CommaDelimitedList
        Default: ""
      Size:
        Type: Number
        Default: 20
    Mappings:
      Hosts:
        production: {Url: https://prod.example}
        sandbox: {Url: https://sandbox.example}
    Conditions:
      HasName: !Not [!Equals [!Ref Name, ""]]
      IsProd: !Equals [!Ref Env, production]
      Both: !And [!Condition HasName, !Condition IsProd]
      Either: !Or [!Condition HasName, !Condition IsProd]
    Resources:
      Table:
        Type: AWS::DynamoDB::Table
      Fn:
        Type: AWS::Serverless::Function
        Properties:
          FunctionName: !Sub "${AWS::StackName}-fn"
      Api:
        Type: AWS::ApiGatewayV2::Api
""")


def resolver(**parameters):
    template = loads_template(RESOLVER_TEMPLATE)
    table = Physical("tokens-1", {"Arn": "arn:aws:dynamodb:us-east-1:123456789012:table/tokens-1"})
    return Resolver(template, parameters, physical={"Table": table}, stack_name="teststack")


def resolve(expression: str, **parameters):
    return resolver(**parameters).resolve(loads_template(f"Resources: {{}}\nX: {expression}")["X"])


@pytest.mark.parametrize(
    ("expression", "parameters", "expected"),
    [
        ("!Ref Env", {}, "sandbox"),
        ("!Ref Env", {"Env": "production"}, "production"),
        ("!Ref Size", {}, "20"),
        ("!Ref AWS::Region", {}, "us-east-1"),
        ("!Ref AWS::AccountId", {}, "123456789012"),
        ("!Ref AWS::StackName", {}, "teststack"),
        ("!Ref Table", {}, "tokens-1"),
        ("!GetAtt Table.Arn", {}, "arn:aws:dynamodb:us-east-1:123456789012:table/tokens-1"),
        ("!GetAtt [Table, Arn]", {}, "arn:aws:dynamodb:us-east-1:123456789012:table/tokens-1"),
        # Resources the stack does not create get stand-ins shaped like the real thing.
        ("!GetAtt Fn.Arn", {}, "arn:aws:lambda:us-east-1:123456789012:function:teststack-fn"),
        ('!Sub "${AWS::Region}/${Env}/${Table}/${Table.Arn}/${!Literal}"', {},
         "us-east-1/sandbox/tokens-1/arn:aws:dynamodb:us-east-1:123456789012:table/tokens-1/${Literal}"),
        ('!Sub ["${Base}/x-${Env}", {Base: !FindInMap [Hosts, !Ref Env, Url]}]', {"Env": "production"},
         "https://prod.example/x-production"),
        ("!FindInMap [Hosts, !Ref Env, Url]", {}, "https://sandbox.example"),
        ("!If [HasName, !Ref Name, none]", {}, "none"),
        ("!If [HasName, !Ref Name, none]", {"Name": "acme"}, "acme"),
        ("!If [Both, both, neither]", {"Name": "acme"}, "neither"),
        ("!If [Both, both, neither]", {"Name": "acme", "Env": "production"}, "both"),
        ("!If [Either, either, neither]", {"Env": "production"}, "either"),
        ("!If [Either, either, neither]", {}, "neither"),
        ("!Not [!Equals [!Ref Env, sandbox]]", {}, False),
        ("!Equals [!Ref Size, 20]", {}, True),
        ('!Join [",", !Ref Origins]', {}, ""),
        ('!Join [",", !Ref Origins]', {"Origins": ["https://a.example", "https://b.example/x"]},
         "https://a.example,https://b.example/x"),
        ('!Join [",", !Ref Origins]', {"Origins": "https://a.example,https://b.example"},
         "https://a.example,https://b.example"),
        ('!Join ["-", [a, !Ref Env, !Ref AWS::NoValue]]', {}, "a-sandbox"),
        ("!Select [1, [a, b, c]]", {}, "b"),
        ('!Select [1, !Split [",", "x,y,z"]]', {}, "y"),
        ("{A: !If [HasName, set, !Ref AWS::NoValue], B: kept}", {}, {"B": "kept"}),
    ],
)
def test_resolver_evaluates_intrinsics(expression, parameters, expected):
    assert resolve(expression, **parameters) == expected


@pytest.mark.parametrize(
    ("parameters", "expression", "message"),
    [
        ({"Env": "staging"}, "!Ref Env", "not one of"),
        ({"Name": "Not-Lower"}, "!Ref Name", "does not match"),
        ({"Nope": "x"}, "!Ref Env", "unknown parameters: Nope"),
        ({}, "!Ref Missing", "unknown resource or parameter Missing"),
        ({}, "!ImportValue shared", "Fn::ImportValue is not supported"),
        ({}, "!If [NoSuchCondition, a, b]", "unknown condition"),
        ({}, "!FindInMap [Hosts, staging, Url]", "no Hosts/staging/Url"),
        ({}, "!GetAtt Table.StreamArn", "no attribute StreamArn"),
    ],
)
def test_resolver_refuses_what_it_cannot_resolve(parameters, expression, message):
    with pytest.raises(TemplateError, match=message):
        resolve(expression, **parameters)


def test_allowed_pattern_can_be_waived_for_named_parameters():
    template = loads_template(RESOLVER_TEMPLATE)
    assert Resolver(template, {"Name": "Not-Lower"}, unchecked_patterns={"Name"}).ref("Name") == "Not-Lower"


def test_function_environment_is_globals_overlaid_with_the_function_own():
    template = load_template(TEMPLATE_PATH)
    given = {"InvoicedClientId": "abc123", "PublicBaseUrl": "https://connect.example.com"}
    env = {
        name: function_environment(template, name, Resolver(template, given))
        for name in ("ConnectFunction", "CallbackFunction")
    }
    global_names = set(template["Globals"]["Function"]["Environment"]["Variables"])
    own = {name: set(template["Resources"][name]["Properties"].get("Environment", {}).get("Variables", {}))
           for name in env}
    for name, variables in env.items():
        assert set(variables) == global_names | own[name]
        assert variables["INVOICED_CLIENT_ID"] == "abc123"
        assert variables["PUBLIC_BASE_URL"] == "https://connect.example.com"
        assert variables["INVOICED_BASE_URL"] == template["Mappings"]["InvoicedHosts"]["sandbox"]["BaseUrl"]
    # Each secret's ARN only where that function's role may read it.
    assert "CLIENT_SECRET_ARN" in env["CallbackFunction"] and "CLIENT_SECRET_ARN" not in env["ConnectFunction"]

    # No public base URL: the API's own execute-api URL; production hosts by parameter.
    production = function_environment(
        template, "ConnectFunction", Resolver(template, {"InvoicedEnvironment": "production"})
    )
    assert re.fullmatch(r"https://[a-z0-9]{10}\.execute-api\.us-east-1\.amazonaws\.com", production["PUBLIC_BASE_URL"])
    assert production["INVOICED_API_URL"] == template["Mappings"]["InvoicedHosts"]["production"]["ApiUrl"]


# ---------------------------------------------------------------- resources from template.yaml
def test_table_is_created_as_the_template_defines_it(stack):
    props = load_template(TEMPLATE_PATH)["Resources"]["TokensTable"]["Properties"]
    db = stack.client("dynamodb")
    table = db.describe_table(TableName=stack.table_name)["Table"]

    assert table["KeySchema"] == props["KeySchema"]
    assert sorted(table["AttributeDefinitions"], key=str) == sorted(props["AttributeDefinitions"], key=str)
    assert table["BillingModeSummary"]["BillingMode"] == props["BillingMode"]
    assert [
        {key: index[key] for key in ("IndexName", "KeySchema", "Projection")}
        for index in table.get("GlobalSecondaryIndexes", [])
    ] == props["GlobalSecondaryIndexes"]
    assert table["DeletionProtectionEnabled"] is props["DeletionProtectionEnabled"]
    assert table["SSEDescription"]["KMSMasterKeyArn"] == stack.kms_key_arn

    ttl = db.describe_time_to_live(TableName=stack.table_name)["TimeToLiveDescription"]
    assert ttl == {"AttributeName": props["TimeToLiveSpecification"]["AttributeName"], "TimeToLiveStatus": "ENABLED"}


def test_secrets_and_key_are_created_from_the_template(stack):
    resources = load_template(TEMPLATE_PATH)["Resources"]
    sm = stack.client("secretsmanager")

    client_secret = json.loads(sm.get_secret_value(SecretId=stack.env["CLIENT_SECRET_ARN"])["SecretString"])
    assert client_secret == {"client_secret": stack.client_secret}

    spec = resources["LinkSigningSecret"]["Properties"]["GenerateSecretString"]
    link_secret = json.loads(sm.get_secret_value(SecretId=stack.env["LINK_SIGNING_SECRET_ARN"])["SecretString"])
    key = link_secret[spec["GenerateStringKey"]]
    assert len(key) == spec["PasswordLength"]
    assert set(link_secret) == set(json.loads(spec["SecretStringTemplate"])) | {spec["GenerateStringKey"]}
    if spec.get("ExcludePunctuation"):
        assert set(key) <= set(string.ascii_letters + string.digits)

    kms = stack.client("kms")
    metadata = kms.describe_key(KeyId=stack.kms_key_arn)["KeyMetadata"]
    assert metadata["Description"] == resources["TokenKey"]["Properties"]["Description"]
    assert kms.get_key_rotation_status(KeyId=stack.kms_key_arn)["KeyRotationEnabled"] is True
    aliases = {alias["AliasName"]: alias.get("TargetKeyId") for alias in kms.list_aliases()["Aliases"]}
    assert aliases[f"alias/{stack.stack_name}-tokens"] == metadata["KeyId"]


def test_process_environment_is_the_union_of_the_functions_environments(stack):
    assert stack.env["AWS_ENDPOINT_URL"] == stack.moto_url
    assert stack.env["PUBLIC_BASE_URL"] == stack.gateway_url
    assert stack.env["INVOICED_BASE_URL"] == stack.invoiced.base_url
    assert stack.env["INVOICED_API_URL"] == stack.invoiced.api_url
    assert stack.env["INVOICED_CLIENT_ID"] == stack.client_id
    for function in stack.functions.values():
        assert function.spec.environment.items() <= stack.env.items()
    assert "CLIENT_SECRET_ARN" not in stack.functions["ConnectFunction"].spec.environment
    assert "LINK_SIGNING_SECRET_ARN" not in stack.functions["CallbackFunction"].spec.environment
    assert {name: os.environ.get(name) for name in stack.env} == stack.env


def test_environment_patch_hides_real_aws_settings_and_restores_everything(monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "production")
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "https://dynamodb.example")
    monkeypatch.setenv("KEEP_ME", "1")
    monkeypatch.delenv("LOCAL_STACK_TEST_VAR", raising=False)
    before = dict(os.environ)
    patch = _EnvironmentPatch()
    patch.apply({"LOCAL_STACK_TEST_VAR": "x", "KEEP_ME": "2"})
    assert "AWS_PROFILE" not in os.environ and "AWS_ENDPOINT_URL_DYNAMODB" not in os.environ
    assert os.environ["LOCAL_STACK_TEST_VAR"] == "x" and os.environ["KEEP_ME"] == "2"
    patch.restore()
    assert dict(os.environ) == before


# ---------------------------------------------------------------- the gateway and execution environments
HANDLERS = '''
import base64, json, threading, time, uuid

ENVIRONMENT = uuid.uuid4().hex  # one per import, i.e. per execution environment
_active = 0
_max_active = 0
_lock = threading.Lock()


def echo(event, context):
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json", "x-environment": ENVIRONMENT},
        "cookies": ["first=1; Path=/; HttpOnly", "second=2; Path=/"],
        "body": json.dumps({"event": event, "context": {
            "function_name": context.function_name,
            "memory_limit_in_mb": context.memory_limit_in_mb,
            "invoked_function_arn": context.invoked_function_arn,
            "aws_request_id": context.aws_request_id,
            "remaining_ms": context.get_remaining_time_in_millis(),
        }}),
    }


def slow(event, context):
    global _active, _max_active
    with _lock:
        _active += 1
        _max_active = max(_max_active, _active)
    time.sleep(0.6)
    with _lock:
        _active -= 1
    return {"statusCode": 200, "body": json.dumps({"environment": ENVIRONMENT, "max_active": _max_active})}


def boom(event, context):
    raise RuntimeError("boom from the handler")


def bare(event, context):
    return {"hello": "world"}


def binary(event, context):
    return {"statusCode": 201, "isBase64Encoded": True, "body": base64.b64encode(bytes([0, 255, 1])).decode()}
'''

GATEWAY_ROUTES = {  # route key -> function (logical id prefix)
    "GET /echo": "Echo",
    "ANY /items/{id}": "Echo",
    "GET /files/{path+}": "Echo",
    "GET /slow": "Slow",
    "GET /boom": "Boom",
    "GET /bare": "Bare",
    "GET /binary": "Binary",
}


def gateway_template() -> str:
    lines = [
        "Transform: AWS::Serverless-2016-10-31",
        "Globals:",
        "  Function: {MemorySize: 256, Timeout: 5, Environment: {Variables: {SHARED: !Ref AWS::Region}}}",
        "Resources:",
        "  Api: {Type: AWS::ApiGatewayV2::Api, Properties: {Name: test, ProtocolType: HTTP}}",
    ]
    for name in sorted(set(GATEWAY_ROUTES.values())):
        lines += [
            f"  {name}Function:",
            "    Type: AWS::Serverless::Function",
            f"    Properties: {{CodeUri: fn/, Handler: handlers.{name.lower()}}}",
            f"  {name}Integration:",
            "    Type: AWS::ApiGatewayV2::Integration",
            f"    Properties: {{ApiId: !Ref Api, IntegrationType: AWS_PROXY, IntegrationUri: !GetAtt {name}Function.Arn,"
            ' PayloadFormatVersion: "2.0"}',
        ]
    for number, (route_key, name) in enumerate(GATEWAY_ROUTES.items()):
        # Both ways a template names the integration: !Sub and !Join.
        target = (f'!Sub "integrations/${{{name}Integration}}"' if number % 2
                  else f'!Join ["/", [integrations, !Ref {name}Integration]]')
        lines += [
            f"  Route{number}:",
            "    Type: AWS::ApiGatewayV2::Route",
            f"    Properties: {{ApiId: !Ref Api, RouteKey: '{route_key}', Target: {target}}}",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def template_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gateway")
    (root / "fn").mkdir()
    (root / "fn" / "handlers.py").write_text(HANDLERS)
    (root / "template.yaml").write_text(gateway_template())
    return root / "template.yaml"


@pytest.fixture(scope="module")
def gateway(template_file):
    with gateway_for_template(template_file, access_log=True) as running:
        yield running


def send(gateway, method: str, target: str, headers=(), body: bytes | None = None):
    """A raw request (repeated headers allowed); returns status, header pairs, body."""
    connection = http.client.HTTPConnection(gateway.host, gateway.port, timeout=10)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


def echoed(gateway, method: str, target: str, headers=(), body: bytes | None = None) -> dict:
    status, _, data = send(gateway, method, target, headers, body)
    assert status == 200, data
    return json.loads(data)


def test_gateway_sends_a_payload_v2_event(gateway):
    before = time.time()
    result = echoed(gateway, "GET", "/echo?b=2&a=1&a=x%20y&empty=", headers=[
        ("X-Multi", "one"), ("X-Multi", "two"), ("User-Agent", "tests/1.0"),
        ("Cookie", "session=abc; theme=dark"), ("Cookie", "extra=1"),
    ])
    event = result["event"]

    assert event["version"] == "2.0"
    assert event["routeKey"] == "GET /echo"
    assert event["rawPath"] == "/echo"
    assert event["rawQueryString"] == "b=2&a=1&a=x%20y&empty="
    assert event["queryStringParameters"] == {"a": "1,x y", "b": "2", "empty": ""}
    assert event["cookies"] == ["session=abc", "theme=dark", "extra=1"]
    headers = event["headers"]
    assert "cookie" not in headers
    assert all(name == name.lower() for name in headers)
    assert headers["x-multi"] == "one,two"
    assert headers["user-agent"] == "tests/1.0"
    assert headers["host"] == f"127.0.0.1:{gateway.port}"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert event["isBase64Encoded"] is False
    assert "body" not in event and "pathParameters" not in event

    context = event["requestContext"]
    assert context["http"] == {"method": "GET", "path": "/echo", "protocol": "HTTP/1.1",
                               "sourceIp": "127.0.0.1", "userAgent": "tests/1.0"}
    assert context["routeKey"] == "GET /echo"
    assert context["stage"] == "$default"
    assert context["accountId"] == "123456789012"
    assert context["apiId"] == gateway.api_id
    assert context["domainName"] == "127.0.0.1"
    assert re.fullmatch(r"\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000", context["time"])
    assert before * 1000 - 1000 <= context["timeEpoch"] <= time.time() * 1000

    lambda_context = result["context"]
    assert lambda_context["function_name"] == "invoiced-connect-local-EchoFunction"
    assert lambda_context["invoked_function_arn"].endswith(":function:invoiced-connect-local-EchoFunction")
    assert lambda_context["memory_limit_in_mb"] == 256
    assert 0 < lambda_context["remaining_ms"] <= 5000
    assert re.fullmatch(r"[0-9a-f-]{36}", lambda_context["aws_request_id"])


def test_every_request_gets_its_own_request_id(gateway):
    ids = []
    for _ in range(2):
        status, headers, data = send(gateway, "GET", "/echo")
        event = json.loads(data)["event"]
        assert dict(headers)["Apigw-Requestid"] == event["requestContext"]["requestId"]
        ids.append(event["requestContext"]["requestId"])
    assert ids[0] != ids[1]


def test_each_response_cookie_becomes_its_own_set_cookie_header(gateway):
    status, headers, _ = send(gateway, "GET", "/echo")
    assert status == 200
    assert [value for name, value in headers if name.lower() == "set-cookie"] == [
        "first=1; Path=/; HttpOnly", "second=2; Path=/"]
    assert ("content-type", "application/json") in headers  # as the function named it


def test_path_parameters_bodies_and_any_method_routes(gateway):
    event = echoed(gateway, "GET", "/items/42")["event"]
    assert (event["routeKey"], event["pathParameters"]) == ("ANY /items/{id}", {"id": "42"})

    event = echoed(gateway, "GET", "/files/a/b%20c.txt")["event"]
    assert event["rawPath"] == "/files/a/b c.txt"  # HTTP APIs hand over the decoded path
    assert event["pathParameters"] == {"path": "a/b c.txt"}

    event = echoed(gateway, "POST", "/items/7", headers=[("Content-Type", "text/plain")], body=b"hello")["event"]
    assert event["requestContext"]["http"]["method"] == "POST"
    assert (event["body"], event["isBase64Encoded"]) == ("hello", False)

    event = echoed(gateway, "PUT", "/items/7", body=bytes([0xff, 0x00]))["event"]
    assert event["isBase64Encoded"] is True and base64.b64decode(event["body"]) == bytes([0xff, 0x00])


@pytest.mark.parametrize(("method", "target"), [("GET", "/nope"), ("POST", "/echo"), ("GET", "/items/1/2")])
def test_unknown_routes_get_api_gateway_404(gateway, method, target):
    status, headers, data = send(gateway, method, target)
    assert status == 404
    assert json.loads(data) == {"message": "Not Found"}
    assert dict(headers)["Content-Type"] == "application/json"


def test_a_failing_handler_is_a_500_and_logged(gateway, capfd):
    status, _, data = send(gateway, "GET", "/boom")
    assert (status, json.loads(data)) == (500, {"message": "Internal Server Error"})
    assert "RuntimeError: boom from the handler" in capfd.readouterr().err


def test_results_without_status_code_and_binary_bodies(gateway):
    status, headers, data = send(gateway, "GET", "/bare")
    assert (status, dict(headers)["Content-Type"], json.loads(data)) == (200, "application/json", {"hello": "world"})
    status, _, data = send(gateway, "GET", "/binary")
    assert (status, data) == (201, bytes([0, 255, 1]))


def test_access_log_leaves_the_query_string_out(gateway, caplog):
    caplog.set_level("INFO", logger="local.gateway")
    send(gateway, "GET", "/echo?code=SECRET-CODE&state=SECRET-STATE")
    assert "GET /echo -> 200 (EchoFunction" in caplog.text
    assert "SECRET" not in caplog.text


def test_concurrent_requests_run_in_separate_execution_environments(gateway):
    results: list[dict] = []

    def call():
        results.append(echoed(gateway, "GET", "/slow"))

    started = time.monotonic()
    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started

    assert elapsed < 1.1, "the two 0.6 s requests ran one after the other"
    environments = {result["environment"] for result in results}
    assert len(environments) == 2
    assert all(result["max_active"] == 1 for result in results), "two requests shared one environment"
    assert gateway.functions["SlowFunction"].cold_starts == 2
    # A later request reuses a warm environment.
    assert echoed(gateway, "GET", "/slow")["environment"] in environments
    assert gateway.functions["SlowFunction"].cold_starts == 2


def test_load_handler_and_api_event_call_a_handler_directly(template_file):
    handler = load_handler(template_file, "EchoFunction")
    event = api_event("GET", "/echo", query=[("a", "1"), ("a", "2")], cookies={"c": "3"},
                      headers={"Cookie": "d=4", "X-Thing": "y"})
    response = handler(event)
    echoed_event = json.loads(response["body"])["event"]
    assert echoed_event == event
    assert event["queryStringParameters"] == {"a": "1,2"}
    assert event["rawQueryString"] == "a=1&a=2"
    assert event["cookies"] == ["c=3", "d=4"]
    assert event["headers"]["x-thing"] == "y" and "cookie" not in event["headers"]
    assert api_event()["requestContext"]["requestId"] != api_event()["requestContext"]["requestId"]
    # Each load is a fresh execution environment.
    other = load_handler(template_file, "EchoFunction")(event)
    assert other["headers"]["x-environment"] != response["headers"]["x-environment"]


# ---------------------------------------------------------------- end to end through the real stack
COOKIE = re.compile(r"__Host-invoiced-connect=([^;]*)")


# ---------------------------------------------------------------- the command's configuration
UPSTREAM = {
    "INVOICED_BASE_URL": "https://sandbox.invoiced.com/",
    "INVOICED_API_URL": "https://api.sandbox.invoiced.com",
    "INVOICED_CLIENT_ID": "abc",
    "INVOICED_CLIENT_SECRET": "s3cret",
}


def test_upstream_is_all_four_variables_or_none():
    assert upstream_from_env({}) is None
    upstream = upstream_from_env(UPSTREAM)
    assert (upstream.base_url, upstream.client_secret) == ("https://sandbox.invoiced.com", "s3cret")
    assert "s3cret" not in repr(upstream)
    partial = {name: UPSTREAM[name] for name in ("INVOICED_BASE_URL", "INVOICED_CLIENT_ID")}
    with pytest.raises(ValueError, match="missing: INVOICED_API_URL, INVOICED_CLIENT_SECRET"):
        upstream_from_env(partial)


def test_command_refuses_a_partial_upstream_before_starting_anything(monkeypatch, capsys, tmp_path):
    import local.stack as stack_module

    monkeypatch.setattr(stack_module, "DEFAULT_ENV_FILE", tmp_path / "stack.env")  # not a developer's running stack
    for name in UPSTREAM:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("INVOICED_CLIENT_ID", "abc")
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "missing: INVOICED_BASE_URL, INVOICED_API_URL, INVOICED_CLIENT_SECRET" in err


def test_command_with_a_real_invoiced_will_not_move_the_registered_callback_port(monkeypatch, capsys, tmp_path):
    import socket

    import local.stack as stack_module

    monkeypatch.setattr(stack_module, "DEFAULT_ENV_FILE", tmp_path / "stack.env")
    for name, value in UPSTREAM.items():
        monkeypatch.setenv(name, value)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--gateway-port", str(port)]) == 2
    assert f"port {port} (gateway) is taken" in capsys.readouterr().err


def test_a_second_stack_refuses_to_start_while_the_first_serves(stack, monkeypatch, capsys, tmp_path):
    import local.stack as stack_module

    env_file = tmp_path / "stack.env"
    env_file.write_text(f"PUBLIC_BASE_URL={stack.gateway_url}\n")
    monkeypatch.setattr(stack_module, "DEFAULT_ENV_FILE", env_file)
    assert stack_module.running_stack_url(env_file) == stack.gateway_url
    assert main([]) == 1
    assert f"Another local stack is running at {stack.gateway_url}" in capsys.readouterr().err

    env_file.write_text("PUBLIC_BASE_URL=http://127.0.0.1:1\n")  # a stale file: nobody serves there
    assert stack_module.running_stack_url(env_file) is None


def test_demo_return_page_shows_what_the_app_receives_escaped(stack):
    response = requests.get(f"{stack.gateway_url}/done?connection_id=%3Cb%3Eacme&status=connected", timeout=10)
    assert response.status_code == 200
    assert "<b>acme" not in response.text and "&lt;b&gt;acme" in response.text
    assert "<code>connected</code>" in response.text
    assert requests.post(f"{stack.gateway_url}/done", timeout=10).status_code == 404
