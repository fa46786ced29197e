"""Loopback AWS: moto's server, and the template's stateful resources created in it.

Only the resources the functions touch at run time are created (KMS keys
and aliases, DynamoDB tables, Secrets Manager secrets, SQS queues, EventBridge
buses), each from its own ``Properties`` in template.yaml. Everything else
(functions, the HTTP API, log groups, IAM policies, permissions) gets a
stand-in identity so references to it resolve; the gateway plays the API,
the functions run in-process, and :mod:`local.queues` and
:mod:`local.schedule` play Lambda's event sources.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import string
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from local.template import (
    Physical,
    Resolver,
    TemplateError,
    event_bus_physical,
    physical_name,
    references,
    resources_of_type,
    sqs_queue_physical,
)

logger = logging.getLogger(__name__)

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


class MotoServer:
    """moto's threaded server on loopback; ``url`` once started."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self._server: Any = None

    def start(self) -> MotoServer:
        from moto.server import ThreadedMotoServer

        from local.moto_fidelity import make_dynamodb_item_operations_atomic

        make_dynamodb_item_operations_atomic()  # the lease and the versioned commit rely on it
        if self.port:
            # ThreadedMotoServer binds inside its thread; a taken port would
            # leave start() waiting forever, so find out here first.
            ensure_port_free(self.host, self.port)
        self._server = _quick_to_stop(ThreadedMotoServer)(ip_address=self.host, port=self.port, verbose=False)
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


def _quick_to_stop(server_class: type) -> type:
    """moto's ThreadedMotoServer, quick to stop at the end of every stack: its
    serve_forever polls every 50 ms instead of 500 (stop() waits up to one
    interval), and closing does not wait for the requests in flight."""

    class QuickToStop(server_class):  # type: ignore[misc, valid-type]
        def _server_entry(self) -> None:
            from moto.moto_server.werkzeug_app import (
                DomainDispatcherApplication,
                MotoRequestHandler,
                create_backend_app,
            )
            from werkzeug.serving import make_server

            app = DomainDispatcherApplication(create_backend_app)
            self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
            # Closing must not wait for requests in flight (an SQS long poll holds one for a second).
            self._server.block_on_close = False
            self._server_ready_event.set()
            self._server.serve_forever(poll_interval=0.05)

    return QuickToStop


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


_session_lock = threading.Lock()
_session: Any = None


def boto_client(service: str, endpoint_url: str, region: str, *, max_pool_connections: int | None = None) -> Any:
    """A boto3 client for ``endpoint_url`` with the fake credentials.

    All come from one session, made once: a new session reads the service
    models from disk again (about 0.1 s a client). Sessions are not
    thread-safe, so clients are made under a lock; the clients themselves are.
    """
    global _session
    import boto3
    from botocore.config import Config

    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        return _session.client(
            service,
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=Config(max_pool_connections=max_pool_connections) if max_pool_connections else None,
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
# SSE key, a secret's KMS key, an alias's target, a queue's KMS key). Within a
# type, a resource comes after those of the same type it refers to (a queue
# after its dead-letter queue).
_ORDER = (
    "AWS::KMS::Key",
    "AWS::KMS::Alias",
    "AWS::SecretsManager::Secret",
    "AWS::DynamoDB::Table",
    "AWS::SQS::Queue",
    "AWS::Events::EventBus",
)


def provision(
    resolver: Resolver,
    endpoint_url: str,
    *,
    secret_strings: Mapping[str, str] | None = None,
    name_suffix: str = "",
) -> Provisioned:
    """Create the template's keys, aliases, secrets, tables, queues and buses in moto.

    ``secret_strings`` overrides the SecretString of secrets by logical id
    (the stack puts the client secret it uses there). ``name_suffix`` makes
    names unique, as CloudFormation's generated names are: moto keeps one
    state per process, so two stacks in one test run must not collide.
    """
    region = resolver.pseudo["AWS::Region"]

    def client(service: str) -> Any:
        return boto_client(service, endpoint_url, region)

    # Made only for the types the template has.
    creators: dict[str, Callable[[], Any]] = {
        "AWS::KMS::Key": lambda: _KeyCreator(client("kms")),
        "AWS::KMS::Alias": lambda: _AliasCreator(client("kms")),
        "AWS::SecretsManager::Secret": lambda: _SecretCreator(client("secretsmanager"), dict(secret_strings or {})),
        "AWS::DynamoDB::Table": lambda: _TableCreator(client("dynamodb")),
        "AWS::SQS::Queue": lambda: _QueueCreator(client("sqs"), region),
        "AWS::Events::EventBus": lambda: _EventBusCreator(client("events")),
    }
    created: dict[str, Physical] = {}
    for resource_type in _ORDER:
        resources = dependency_order(resources_of_type(resolver.template, resource_type))
        creator = creators[resource_type]() if resources else None
        for logical_id, resource in resources.items():
            props = resolver.resolve(resource.get("Properties") or {})
            name = physical_name(resolver.stack_name, logical_id) + name_suffix
            physical = creator.create(logical_id, name, props)
            resolver.physical[logical_id] = created[logical_id] = physical
    unused = set(secret_strings or {}) - set(created)
    if unused:
        raise TemplateError(f"no secrets named {', '.join(sorted(unused))} in the template")
    return Provisioned(created)


def dependency_order(resources: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """``resources`` with each one after those among them its properties refer to.

    Template order otherwise. Resolving a reference to a resource not yet
    created would give it a stand-in identity (and keep it), so a queue must
    be created after its dead-letter queue, whatever the template's order.
    """
    pending = dict(resources)
    needs = {
        logical_id: references(resource.get("Properties") or {}) & set(pending) - {logical_id}
        for logical_id, resource in pending.items()
    }
    ordered: dict[str, Mapping[str, Any]] = {}
    while pending:
        ready = [logical_id for logical_id in pending if not needs[logical_id] - set(ordered)]
        if not ready:
            raise TemplateError(f"circular references between {', '.join(sorted(pending))}")
        for logical_id in ready:
            ordered[logical_id] = pending.pop(logical_id)
    return ordered


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


# CloudFormation properties of AWS::SQS::Queue that are queue attributes of the same name.
_QUEUE_ATTRIBUTES = (
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "DelaySeconds",
    "FifoQueue",
    "FifoThroughputLimit",
    "KmsDataKeyReusePeriodSeconds",
    "KmsMasterKeyId",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "RedriveAllowPolicy",
    "RedrivePolicy",
    "SqsManagedSseEnabled",
    "VisibilityTimeout",
)


class _QueueCreator:
    def __init__(self, sqs: Any, region: str) -> None:
        self.sqs = sqs
        self.region = region

    def create(self, logical_id: str, name: str, props: Mapping[str, Any]) -> Physical:
        fifo = _true(props.get("FifoQueue"))
        queue_name = props.get("QueueName") or self._generated_name(name, fifo)
        attributes = {
            key: _attribute_text(props[key]) for key in _QUEUE_ATTRIBUTES if key in props
        }
        if not fifo:
            attributes.pop("FifoQueue", None)  # SQS refuses FifoQueue=false on a standard queue
        args: dict[str, Any] = {"QueueName": queue_name, "Attributes": attributes}
        if props.get("Tags"):
            args["tags"] = {tag["Key"]: tag["Value"] for tag in props["Tags"]}
        url = self.sqs.create_queue(**args)["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        account = arn.split(":")[4]
        physical = sqs_queue_physical(url, queue_name, self.region, account)
        if physical.attributes["Arn"] != arn:
            raise TemplateError(f"{logical_id}: moto made the queue {arn}, expected {physical.attributes['Arn']}")
        return physical

    @staticmethod
    def _generated_name(name: str, fifo: bool) -> str:
        # SQS names: at most 80 characters (".fifo" included), letters, digits, - and _;
        # the end of the name is the unique part.
        return name[-(80 - len(".fifo")):] + ".fifo" if fifo else name[-80:]


class _EventBusCreator:
    def __init__(self, events: Any) -> None:
        self.events = events

    def create(self, logical_id: str, name: str, props: Mapping[str, Any]) -> Physical:
        bus_name = props.get("Name") or name
        args: dict[str, Any] = {"Name": bus_name}
        if props.get("Description"):
            args["Description"] = props["Description"]
        if props.get("Tags"):
            args["Tags"] = list(props["Tags"])
        arn = self.events.create_event_bus(**args)["EventBusArn"]
        region, account = arn.split(":")[3:5]
        physical = event_bus_physical(bus_name, region, account)
        if physical.attributes["Arn"] != arn:
            raise TemplateError(f"{logical_id}: moto made the bus {arn}, expected {physical.attributes['Arn']}")
        return physical


def _attribute_text(value: Any) -> str:
    """A queue attribute as SQS takes it: JSON for policies, ``true``/``false`` for booleans."""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


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
