"""Each check of tests/support/template_checks.py catches the regression it
is there for: REGRESSIONS breaks a copy of one form of the template (the
source, or the SAM transform's output with SnapStart off or on) the way a
careless change would, and the check must report a problem. A check that
cannot fail is not a check; every check has a breakage of the source and,
unless it reads the source only, of a transformed form.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.template import load_template, refers_to, resources, transformed_forms
from tests.support.template_checks import CHECKS, SOURCE_ONLY


@pytest.fixture(scope="module")
def template_forms() -> dict[str, dict[str, Any]]:
    """Every form the breakages start from, by name (FORMS): the source and the SAM transform's outputs."""
    return transformed_forms(load_template())


# ------------------------------------------------------------------ breaking a form
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
def test_each_check_catches_its_regression(template_forms, check, break_it, form):
    broken = copy.deepcopy(template_forms[form])
    break_it(broken)
    assert CHECKS[check](broken), f"check {check!r} passed a broken template"


def test_every_check_has_a_regression_on_each_kind_of_form():
    sources = {c for c, _, _, on in REGRESSIONS if "source" in on}
    transformed = {c for c, _, _, on in REGRESSIONS if set(on) & {"transformed", "transformed-snapstart"}}
    assert sources == set(CHECKS)
    assert transformed == set(CHECKS) - SOURCE_ONLY

