"""Loopback AWS: moto's server, and the template's stateful resources created in it.

Only the resources the functions touch at run time are created (KMS keys
and aliases, DynamoDB tables, Secrets Manager secrets), each from its own
``Properties`` in template.yaml. Everything else (functions, the HTTP API,
log groups, permissions) gets a stand-in identity so references to it
resolve; the gateway plays the API and the functions run in-process.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from local.template import Physical, Resolver, TemplateError, physical_name, resources_of_type

logger = logging.getLogger(__name__)

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


class MotoServer:
    """moto's threaded server on loopback; ``url`` once started."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self._server: Any = None

    def start(self) -> MotoServer:
        from moto.server import ThreadedMotoServer

        if self.port:
            # ThreadedMotoServer binds inside its thread; a taken port would
            # leave start() waiting forever, so find out here first.
            ensure_port_free(self.host, self.port)
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            # moto keeps its backends in process memory, not in the server:
            # reset them so the next stack in this process starts empty.
            import requests

            try:
                requests.post(f"{self.url}/moto-api/reset", timeout=5)
            finally:
                self._server.stop()
                self._server = None


def ensure_port_free(host: str, port: int) -> None:
    """Raise ``OSError`` if ``host:port`` cannot be bound (as a server would, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def port_is_free(host: str, port: int) -> bool:
    try:
        ensure_port_free(host, port)
    except OSError:
        return False
    return True


def aws_environment(endpoint_url: str, region: str) -> dict[str, str]:
    """What boto3 needs to send every call to ``endpoint_url`` with fake credentials."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        **FAKE_CREDENTIALS,
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
    }


def boto_client(service: str, endpoint_url: str, region: str) -> Any:
    import boto3

    return boto3.session.Session().client(
        service,
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


# ---------------------------------------------------------------- provisioning
@dataclass(frozen=True)
class Provisioned:
    """The physical identities of the created resources, by logical id."""

    physical: Mapping[str, Physical]

    def ref(self, logical_id: str) -> str:
        return self.physical[logical_id].ref

    def arn(self, logical_id: str) -> str:
        return self.physical[logical_id].attributes["Arn"]


# Created in this order so a property can refer to an earlier type (a table's
# SSE key, a secret's KMS key, an alias's target).
_ORDER = (
    "AWS::KMS::Key",
    "AWS::KMS::Alias",
    "AWS::SecretsManager::Secret",
    "AWS::DynamoDB::Table",
)


def provision(
    resolver: Resolver,
    endpoint_url: str,
    *,
    secret_strings: Mapping[str, str] | None = None,
    name_suffix: str = "",
) -> Provisioned:
    """Create the template's keys, aliases, secrets and tables in moto.

    ``secret_strings`` overrides the SecretString of secrets by logical id
    (the stack puts the client secret it uses there). ``name_suffix`` makes
    names unique, as CloudFormation's generated names are: moto keeps one
    state per process, so two stacks in one test run must not collide.
    """
    region = resolver.pseudo["AWS::Region"]
    creators = {
        "AWS::KMS::Key": _KeyCreator(boto_client("kms", endpoint_url, region)),
        "AWS::KMS::Alias": _AliasCreator(boto_client("kms", endpoint_url, region)),
        "AWS::SecretsManager::Secret": _SecretCreator(
            boto_client("secretsmanager", endpoint_url, region), dict(secret_strings or {})
        ),
        "AWS::DynamoDB::Table": _TableCreator(boto_client("dynamodb", endpoint_url, region)),
    }
    created: dict[str, Physical] = {}
    for resource_type in _ORDER:
        for logical_id, resource in resources_of_type(resolver.template, resource_type).items():
            props = resolver.resolve(resource.get("Properties") or {})
            name = physical_name(resolver.stack_name, logical_id) + name_suffix
            physical = creators[resource_type].create(logical_id, name, props)
            resolver.physical[logical_id] = created[logical_id] = physical
    unused = set(secret_strings or {}) - set(created)
    if unused:
        raise TemplateError(f"no secrets named {', '.join(sorted(unused))} in the template")
    return Provisioned(created)


class _KeyCreator:
    def __init__(self, kms: Any) -> None:
        self.kms = kms

    def create(self, logical_id: str, name: str, props: Mapping[str, Any]) -> Physical:
        args: dict[str, Any] = {
            "Description": props.get("Description", ""),
            "KeyUsage": props.get("KeyUsage", "ENCRYPT_DECRYPT"),
            "KeySpec": props.get("KeySpec", "SYMMETRIC_DEFAULT"),
        }
        if "KeyPolicy" in props:
            policy = props["KeyPolicy"]
            args["Policy"] = policy if isinstance(policy, str) else json.dumps(policy)
        if props.get("Tags"):
            args["Tags"] = [{"TagKey": tag["Key"], "TagValue": tag["Value"]} for tag in props["Tags"]]
        metadata = self.kms.create_key(**args)["KeyMetadata"]
        if _true(props.get("EnableKeyRotation")):
            self.kms.enable_key_rotation(KeyId=metadata["KeyId"])
        return Physical(metadata["KeyId"], {"Arn": metadata["Arn"], "KeyId": metadata["KeyId"]})


class _AliasCreator:
    def __init__(self, kms: Any) -> None:
        self.kms = kms

    def create(self, logical_id: str, name: str, props: Mapping[str, Any]) -> Physical:
        alias = props["AliasName"]
        self.kms.create_alias(AliasName=alias, TargetKeyId=props["TargetKeyId"])
        return Physical(alias)


class _SecretCreator:
    def __init__(self, secretsmanager: Any, overrides: dict[str, str]) -> None:
        self.sm = secretsmanager
        self.overrides = overrides

    def create(self, logical_id: str, name: str, props: Mapping[str, Any]) -> Physical:
        if logical_id in self.overrides:
            value = self.overrides[logical_id]
        elif "SecretString" in props:
            value = props["SecretString"]
        elif "GenerateSecretString" in props:
            value = generate_secret_string(props["GenerateSecretString"])
        else:
            value = None
        args: dict[str, Any] = {"Name": props.get("Name") or name}
        if props.get("Description"):
            args["Description"] = props["Description"]
        if props.get("KmsKeyId"):
            args["KmsKeyId"] = props["KmsKeyId"]
        if props.get("Tags"):
            args["Tags"] = list(props["Tags"])
        if value is not None:
            args["SecretString"] = value
        arn = self.sm.create_secret(**args)["ARN"]
        return Physical(arn, {"Id": arn})


def generate_secret_string(spec: Mapping[str, Any]) -> str:
    """A random value as Secrets Manager's GenerateSecretString would make it."""
    excluded = set(spec.get("ExcludeCharacters", ""))
    classes = []
    if not _true(spec.get("ExcludeLowercase")):
        classes.append(string.ascii_lowercase)
    if not _true(spec.get("ExcludeUppercase")):
        classes.append(string.ascii_uppercase)
    if not _true(spec.get("ExcludeNumbers")):
        classes.append(string.digits)
    if not _true(spec.get("ExcludePunctuation")):
        classes.append(string.punctuation)
    if _true(spec.get("IncludeSpace")):
        classes.append(" ")
    classes = ["".join(c for c in chars if c not in excluded) for chars in classes]
    classes = [chars for chars in classes if chars]
    if not classes:
        raise ValueError("GenerateSecretString excludes every character")
    length = int(spec.get("PasswordLength", 32))
    alphabet = "".join(classes)
    require_each = spec.get("RequireEachIncludedType", True)
    while True:
        password = "".join(secrets.choice(alphabet) for _ in range(length))
        if not _true(require_each) or length < len(classes) or all(
            any(c in chars for c in password) for chars in classes
        ):
            break
    template = spec.get("SecretStringTemplate")
    if template is None:
        return password
    document = json.loads(template)
    document[spec.get("GenerateStringKey", "password")] = password
    return json.dumps(document)


class _TableCreator:
    def __init__(self, dynamodb: Any) -> None:
        self.db = dynamodb

    def create(self, logical_id: str, name: str, props: Mapping[str, Any]) -> Physical:
        table_name = props.get("TableName") or name
        billing = props.get("BillingMode", "PROVISIONED")
        args: dict[str, Any] = {
            "TableName": table_name,
            "KeySchema": props["KeySchema"],
            "AttributeDefinitions": props["AttributeDefinitions"],
            "BillingMode": billing,
        }
        if billing == "PROVISIONED":
            args["ProvisionedThroughput"] = _throughput(props.get("ProvisionedThroughput"))
        if props.get("GlobalSecondaryIndexes"):
            args["GlobalSecondaryIndexes"] = [
                _index(index, billing, with_throughput=True) for index in props["GlobalSecondaryIndexes"]
            ]
        if props.get("LocalSecondaryIndexes"):
            args["LocalSecondaryIndexes"] = [
                _index(index, billing, with_throughput=False) for index in props["LocalSecondaryIndexes"]
            ]
        if props.get("StreamSpecification"):
            args["StreamSpecification"] = {
                "StreamEnabled": True,
                "StreamViewType": props["StreamSpecification"]["StreamViewType"],
            }
        sse = props.get("SSESpecification")
        if sse:
            args["SSESpecification"] = {
                key: value
                for key, value in (
                    ("Enabled", _true(sse.get("SSEEnabled"))),
                    ("SSEType", sse.get("SSEType")),
                    ("KMSMasterKeyId", sse.get("KMSMasterKeyId")),
                )
                if value is not None
            }
        if "DeletionProtectionEnabled" in props:
            args["DeletionProtectionEnabled"] = _true(props["DeletionProtectionEnabled"])
        if props.get("Tags"):
            args["Tags"] = list(props["Tags"])
        description = self.db.create_table(**args)["TableDescription"]

        ttl = props.get("TimeToLiveSpecification")
        if ttl:
            self.db.update_time_to_live(
                TableName=table_name,
                TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": _true(ttl["Enabled"])},
            )
        pitr = props.get("PointInTimeRecoverySpecification")
        if pitr:
            self._optional(
                "point-in-time recovery",
                self.db.update_continuous_backups,
                TableName=table_name,
                PointInTimeRecoverySpecification={
                    "PointInTimeRecoveryEnabled": _true(pitr.get("PointInTimeRecoveryEnabled"))
                },
            )
        attributes = {"Arn": description["TableArn"]}
        if description.get("LatestStreamArn"):
            attributes["StreamArn"] = description["LatestStreamArn"]
        return Physical(table_name, attributes)

    @staticmethod
    def _optional(feature: str, call: Any, **kwargs: Any) -> None:
        """Settings that change nothing locally: applied when moto knows them."""
        from botocore.exceptions import ClientError

        try:
            call(**kwargs)
        except ClientError as exc:
            logger.debug("moto does not support %s: %s", feature, exc)


def _index(index: Mapping[str, Any], billing: str, *, with_throughput: bool) -> dict[str, Any]:
    result = {key: index[key] for key in ("IndexName", "KeySchema", "Projection")}
    if with_throughput and billing == "PROVISIONED":
        result["ProvisionedThroughput"] = _throughput(index.get("ProvisionedThroughput"))
    return result


def _throughput(spec: Mapping[str, Any] | None) -> dict[str, int]:
    spec = spec or {}
    return {
        "ReadCapacityUnits": int(spec.get("ReadCapacityUnits", 5)),
        "WriteCapacityUnits": int(spec.get("WriteCapacityUnits", 5)),
    }


def _true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")
