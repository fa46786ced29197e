"""template.yaml as data: a loader for CloudFormation short tags and a small
intrinsic-function resolver.

The local stack builds everything (tables, secrets, function environments,
routes) from the one template, so the schema and the wiring cannot drift
from what is deployed. Only what that needs is implemented: ``Ref``,
``Fn::GetAtt``, ``Fn::Sub`` (both forms), ``Fn::If`` with ``Conditions``,
``Fn::FindInMap``, ``Fn::Join``, ``Fn::Select``, ``Fn::Split``,
``Fn::Equals``, ``Fn::Not``, ``Fn::And``, ``Fn::Or``, ``Condition``,
``AWS::NoValue`` and SAM's ``Ref`` of ``<Function>.Alias``. Anything else
raises :class:`TemplateError` rather than being passed through half-resolved.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ACCOUNT_ID = "123456789012"  # moto's default account
REGION = "us-east-1"
PARTITION = "aws"
URL_SUFFIX = "amazonaws.com"
DEFAULT_STACK_NAME = "invoiced-connect-local"


class TemplateError(ValueError):
    """The template (or a parameter given for it) cannot be used locally."""


# ---------------------------------------------------------------- loading
class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns ``!Ref X`` into ``{"Ref": "X"}`` and ``!Y ...`` into ``{"Fn::Y": ...}``."""


def _construct_tag(loader: _CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        # The short form's "Resource.Attribute" string; attribute names may contain dots.
        resource, _, attribute = value.partition(".")
        value = [resource, attribute]
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: str | Path) -> dict[str, Any]:
    """Parse a CloudFormation/SAM template, short tags included."""
    with open(path, encoding="utf-8") as handle:
        return loads_template(handle.read())


def loads_template(text: str) -> dict[str, Any]:
    document = yaml.load(text, Loader=_CfnLoader)  # noqa: S506 - a SafeLoader subclass
    if not isinstance(document, dict) or not isinstance(document.get("Resources"), dict):
        raise TemplateError("not a CloudFormation template (no Resources section)")
    return document


def resources_of_type(template: Mapping[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    """The template's resources of one type, by logical id, in template order."""
    return {
        logical_id: resource
        for logical_id, resource in template["Resources"].items()
        if resource.get("Type") == resource_type
    }


# ---------------------------------------------------------------- resolving
@dataclass(frozen=True)
class Physical:
    """What a created (or stood-in) resource answers to ``Ref`` and ``GetAtt``."""

    ref: str
    attributes: Mapping[str, Any] = field(default_factory=dict)


class _NoValue:
    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()
_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")


class Resolver:
    """Evaluates intrinsic functions against parameters and physical resources.

    ``parameters`` override the template's defaults (values as CloudFormation
    takes them: strings, ``CommaDelimitedList`` comma-separated or a list).
    ``AllowedValues`` are always enforced, ``AllowedPattern`` except for the
    names in ``unchecked_patterns`` (the local stack's http loopback URL is
    not what a deployed stack may take). ``physical`` grows as resources are
    created; a resource not created locally gets a stand-in from
    ``stand_in`` so references to it (an API id, a function ARN) still
    resolve to something shaped like the real thing.
    """

    def __init__(
        self,
        template: Mapping[str, Any],
        parameters: Mapping[str, Any] | None = None,
        *,
        physical: dict[str, Physical] | None = None,
        stack_name: str = DEFAULT_STACK_NAME,
        region: str = REGION,
        account_id: str = ACCOUNT_ID,
        unchecked_patterns: frozenset[str] | set[str] = frozenset(),
        stand_in: Callable[[str, Mapping[str, Any]], Physical] | None = None,
    ) -> None:
        self.template = template
        self.physical = physical if physical is not None else {}
        self.stack_name = stack_name
        self._stand_in = stand_in or self._default_stand_in
        self.pseudo: dict[str, Any] = {
            "AWS::Region": region,
            "AWS::AccountId": account_id,
            "AWS::Partition": PARTITION,
            "AWS::URLSuffix": URL_SUFFIX,
            "AWS::StackName": stack_name,
            "AWS::StackId": f"arn:{PARTITION}:cloudformation:{region}:{account_id}:stack/{stack_name}/local",
            "AWS::NotificationARNs": [],
        }
        self.parameters = self._parameter_values(parameters or {}, frozenset(unchecked_patterns))
        self._conditions: dict[str, bool] = {}

    # -- parameters ------------------------------------------------------------
    def _parameter_values(self, given: Mapping[str, Any], unchecked: frozenset[str]) -> dict[str, Any]:
        declared = self.template.get("Parameters") or {}
        unknown = set(given) - set(declared)
        if unknown:
            raise TemplateError(f"unknown parameters: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for name, spec in declared.items():
            if name in given:
                raw = given[name]
            elif "Default" in spec:
                raw = spec["Default"]
            else:
                raise TemplateError(f"parameter {name} has no default and was not given")
            kind = spec.get("Type", "String")
            if kind == "CommaDelimitedList" or kind.startswith("List<"):
                items = [str(item) for item in raw] if isinstance(raw, (list, tuple)) else str(raw).split(",")
                self._check_parameter(name, spec, items, unchecked)
                values[name] = items
            else:
                text = _scalar_text(raw)
                self._check_parameter(name, spec, [text], unchecked)
                values[name] = text
        return values

    @staticmethod
    def _check_parameter(name: str, spec: Mapping[str, Any], items: list[str], unchecked: frozenset[str]) -> None:
        allowed = spec.get("AllowedValues")
        pattern = spec.get("AllowedPattern")
        for item in items:
            if allowed is not None and item not in [_scalar_text(value) for value in allowed]:
                raise TemplateError(f"parameter {name}: {item!r} is not one of {allowed}")
            if pattern is not None and name not in unchecked and not re.fullmatch(pattern, item):
                raise TemplateError(f"parameter {name}: {item!r} does not match {pattern}")

    # -- the evaluator ---------------------------------------------------------
    def resolve(self, value: Any) -> Any:
        """``value`` with every intrinsic function evaluated (``AWS::NoValue`` dropped)."""
        if isinstance(value, list):
            return [item for item in (self.resolve(item) for item in value) if item is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, argument), = value.items()
            if key == "Ref":
                return self.ref(argument)
            if key == "Condition":
                return self.condition(argument)
            if key.startswith("Fn::"):
                function = self._FUNCTIONS.get(key)
                if function is None:
                    raise TemplateError(f"{key} is not supported by the local stack")
                return function(self, argument)
        resolved = {key: self.resolve(item) for key, item in value.items()}
        return {key: item for key, item in resolved.items() if item is not NO_VALUE}

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name.endswith(".Alias"):
            return self.function_alias_arn(name.removesuffix(".Alias"))
        return self.resource(name).ref

    def function_alias_arn(self, logical_id: str) -> str:
        """SAM's ``!Ref Function.Alias``: the function's ARN qualified by its ``AutoPublishAlias``."""
        resource = self.template["Resources"].get(logical_id) or {}
        alias = (resource.get("Properties") or {}).get("AutoPublishAlias")
        if resource.get("Type") != "AWS::Serverless::Function" or alias is None:
            raise TemplateError(f"{logical_id}.Alias: {logical_id} is not a function with an AutoPublishAlias")
        return f"{self.get_att(logical_id, 'Arn')}:{_scalar_text(self.resolve(alias))}"

    def get_att(self, logical_id: str, attribute: str) -> Any:
        physical = self.resource(logical_id)
        if attribute not in physical.attributes:
            raise TemplateError(f"{logical_id} has no attribute {attribute} locally")
        return physical.attributes[attribute]

    def resource(self, logical_id: str) -> Physical:
        if logical_id not in self.physical:
            resource = self.template["Resources"].get(logical_id)
            if resource is None:
                raise TemplateError(f"reference to unknown resource or parameter {logical_id}")
            self.physical[logical_id] = self._stand_in(logical_id, resource)
        return self.physical[logical_id]

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            conditions = self.template.get("Conditions") or {}
            if name not in conditions:
                raise TemplateError(f"unknown condition {name}")
            self._conditions[name] = _boolean(self.resolve(conditions[name]), f"condition {name}")
        return self._conditions[name]

    def _get_att(self, argument: Any) -> Any:
        if isinstance(argument, str):
            argument = argument.split(".", 1)
        logical_id, attribute = (self.resolve(part) for part in argument)
        return self.get_att(logical_id, attribute)

    def _sub(self, argument: Any) -> str:
        if isinstance(argument, list):
            text, variables = argument[0], {key: self.resolve(item) for key, item in argument[1].items()}
        else:
            text, variables = argument, {}

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"  # ${!Literal} stays as written, minus the "!"
            if name in variables:
                return _scalar_text(variables[name])
            if "." in name and name not in self.pseudo:
                return _scalar_text(self.get_att(*name.split(".", 1)))
            return _scalar_text(self.ref(name))

        return _SUB_VARIABLE.sub(substitute, text)

    def _if(self, argument: list[Any]) -> Any:
        name, when_true, when_false = argument
        return self.resolve(when_true if self.condition(name) else when_false)

    def _find_in_map(self, argument: list[Any]) -> Any:
        map_name, top_key, second_key = (self.resolve(part) for part in argument[:3])
        try:
            return self.template["Mappings"][map_name][top_key][second_key]
        except (KeyError, TypeError):
            raise TemplateError(f"Fn::FindInMap: no {map_name}/{top_key}/{second_key}") from None

    def _join(self, argument: list[Any]) -> str:
        delimiter, items = argument
        return delimiter.join(_scalar_text(item) for item in _as_list(self.resolve(items), "Fn::Join"))

    def _select(self, argument: list[Any]) -> Any:
        index, items = self.resolve(argument[0]), _as_list(self.resolve(argument[1]), "Fn::Select")
        try:
            return items[int(index)]
        except (IndexError, ValueError):
            raise TemplateError(f"Fn::Select: index {index!r} out of range") from None

    def _split(self, argument: list[Any]) -> list[str]:
        delimiter, text = argument
        return str(self.resolve(text)).split(delimiter)

    def _equals(self, argument: list[Any]) -> bool:
        left, right = (self.resolve(part) for part in argument)
        return _scalar_text(left) == _scalar_text(right) if not isinstance(left, list) else left == right

    def _not(self, argument: list[Any]) -> bool:
        return not _boolean(self.resolve(argument[0]), "Fn::Not")

    def _and(self, argument: list[Any]) -> bool:
        return all(_boolean(self.resolve(part), "Fn::And") for part in argument)

    def _or(self, argument: list[Any]) -> bool:
        return any(_boolean(self.resolve(part), "Fn::Or") for part in argument)

    _FUNCTIONS: dict[str, Callable[[Resolver, Any], Any]] = {
        "Fn::GetAtt": _get_att,
        "Fn::Sub": _sub,
        "Fn::If": _if,
        "Fn::FindInMap": _find_in_map,
        "Fn::Join": _join,
        "Fn::Select": _select,
        "Fn::Split": _split,
        "Fn::Equals": _equals,
        "Fn::Not": _not,
        "Fn::And": _and,
        "Fn::Or": _or,
    }

    # -- stand-ins for resources the local stack does not create ---------------
    def _default_stand_in(self, logical_id: str, resource: Mapping[str, Any]) -> Physical:
        name = physical_name(self.stack_name, logical_id)
        region, account = self.pseudo["AWS::Region"], self.pseudo["AWS::AccountId"]
        kind = resource.get("Type", "")
        props = resource.get("Properties") or {}
        if kind in ("AWS::Serverless::Function", "AWS::Lambda::Function"):
            if props.get("FunctionName") is not None:
                name = _scalar_text(self.resolve(props["FunctionName"]))
            arn = f"arn:{PARTITION}:lambda:{region}:{account}:function:{name}"
            return Physical(name, {"Arn": arn})
        if kind in ("AWS::Serverless::LayerVersion", "AWS::Lambda::LayerVersion"):
            return Physical(f"arn:{PARTITION}:lambda:{region}:{account}:layer:{name}:1")
        if kind == "AWS::Logs::LogGroup":
            group = props.get("LogGroupName")
            group = _scalar_text(self.resolve(group)) if group is not None else name
            arn = f"arn:{PARTITION}:logs:{region}:{account}:log-group:{group}:*"
            return Physical(group, {"Arn": arn})
        if kind == "AWS::SQS::Queue":
            queue = props.get("QueueName")
            queue = _scalar_text(self.resolve(queue)) if queue is not None else name
            return sqs_queue_physical(f"https://sqs.{region}.{URL_SUFFIX}/{account}/{queue}", queue, region, account)
        if kind == "AWS::Events::EventBus":
            bus = _scalar_text(self.resolve(props["Name"])) if props.get("Name") is not None else name
            return event_bus_physical(bus, region, account)
        if kind == "AWS::IAM::ManagedPolicy":
            policy = props.get("ManagedPolicyName")
            policy = _scalar_text(self.resolve(policy)) if policy is not None else name
            path = _scalar_text(self.resolve(props.get("Path", "/"))) or "/"
            arn = f"arn:{PARTITION}:iam::{account}:policy{path}{policy}"
            return Physical(arn, {"PolicyArn": arn})
        # API ids, integration ids and the like: ten lowercase characters, stable per stack.
        token = hashlib.sha256(f"{self.stack_name}/{logical_id}".encode()).hexdigest()[:10]
        return Physical(token, {"Arn": f"arn:{PARTITION}:local:{region}:{account}:{token}"})


def sqs_queue_physical(url: str, name: str, region: str, account: str) -> Physical:
    """What a queue answers: ``Ref`` its URL, ``GetAtt`` ``Arn``, ``QueueName`` and ``QueueUrl``."""
    arn = f"arn:{PARTITION}:sqs:{region}:{account}:{name}"
    return Physical(url, {"Arn": arn, "QueueName": name, "QueueUrl": url})


def event_bus_physical(name: str, region: str, account: str) -> Physical:
    """What an event bus answers: ``Ref`` its name, ``GetAtt`` ``Arn`` and ``Name``."""
    return Physical(name, {"Arn": f"arn:{PARTITION}:events:{region}:{account}:event-bus/{name}", "Name": name})


def references(value: Any) -> set[str]:
    """The names ``value`` refers to through ``Ref``, ``Fn::GetAtt`` and ``Fn::Sub``.

    Parameters and pseudo parameters are included; callers intersect the
    result with the logical ids they care about.
    """
    found: set[str] = set()
    if isinstance(value, list):
        for item in value:
            found |= references(item)
    elif isinstance(value, dict):
        for key, argument in value.items():
            if key == "Ref" and isinstance(argument, str):
                # SAM's "Function.Alias" / "Function.Version" name the function.
                found.add(argument.rsplit(".", 1)[0] if argument.endswith((".Alias", ".Version")) else argument)
            elif key == "Fn::GetAtt":
                target = argument.split(".", 1)[0] if isinstance(argument, str) else argument[0]
                found |= {target} if isinstance(target, str) else references(target)
            elif key == "Fn::Sub":
                text = argument[0] if isinstance(argument, list) else argument
                if isinstance(text, str):
                    found |= {name.split(".", 1)[0] for name in _SUB_VARIABLE.findall(text) if not name.startswith("!")}
                if isinstance(argument, list) and len(argument) > 1:
                    found |= references(argument[1])
            else:
                found |= references(argument)
    return found


def physical_name(stack_name: str, logical_id: str) -> str:
    """The name CloudFormation would generate: ``<stack>-<LogicalId>-<suffix>``.

    The suffix is fixed so the same template gives the same names; the local
    stack adds its own per-run suffix where names must not collide.
    """
    return f"{stack_name}-{logical_id}"


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        raise TemplateError(f"expected a scalar, got {value!r}")
    return "" if value is None else str(value)


def _boolean(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise TemplateError(f"{where} needs a boolean, got {value!r}")


def _as_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise TemplateError(f"{where} needs a list, got {value!r}")
    return value


# ---------------------------------------------------------------- functions and routes
@dataclass(frozen=True)
class FunctionSpec:
    """An ``AWS::Serverless::Function`` as the local runtime needs it."""

    logical_id: str
    code_dir: Path
    handler: str
    memory_mb: int
    timeout_s: float
    environment: Mapping[str, str]

    @property
    def handler_file(self) -> Path:
        module, _, _ = self.handler.rpartition(".")
        return self.code_dir / (module.replace(".", "/") + ".py")

    @property
    def handler_name(self) -> str:
        return self.handler.rpartition(".")[2]


def function_environment(template: Mapping[str, Any], logical_id: str, resolver: Resolver) -> dict[str, str]:
    """Globals.Function.Environment.Variables overlaid with the function's own, resolved."""
    merged: dict[str, Any] = {}
    global_env = ((template.get("Globals") or {}).get("Function") or {}).get("Environment") or {}
    own_env = (template["Resources"][logical_id].get("Properties") or {}).get("Environment") or {}
    merged.update(global_env.get("Variables") or {})
    merged.update(own_env.get("Variables") or {})
    resolved = resolver.resolve(merged)
    return {name: _scalar_text(value) for name, value in resolved.items()}


def function_spec(template: Mapping[str, Any], logical_id: str, base_dir: Path, resolver: Resolver) -> FunctionSpec:
    resource = template["Resources"].get(logical_id)
    if resource is None or resource.get("Type") != "AWS::Serverless::Function":
        raise TemplateError(f"{logical_id} is not an AWS::Serverless::Function")
    defaults = (template.get("Globals") or {}).get("Function") or {}
    props = {**defaults, **(resource.get("Properties") or {})}
    code_uri = resolver.resolve(props.get("CodeUri"))
    if not isinstance(code_uri, str) or not props.get("Handler"):
        raise TemplateError(f"{logical_id} needs a local CodeUri and a Handler")
    return FunctionSpec(
        logical_id=logical_id,
        code_dir=(base_dir / code_uri).resolve(),
        handler=resolver.resolve(props["Handler"]),
        memory_mb=int(resolver.resolve(props.get("MemorySize", 128))),
        timeout_s=float(resolver.resolve(props.get("Timeout", 3))),
        environment=function_environment(template, logical_id, resolver),
    )


@dataclass(frozen=True)
class RouteSpec:
    """One HTTP API route: ``route_key`` as API Gateway has it (``GET /connect``, ``$default``)."""

    route_key: str
    function: str  # logical id

    @property
    def method(self) -> str:
        return "ANY" if self.route_key == "$default" else self.route_key.split(" ", 1)[0].upper()

    @property
    def path(self) -> str | None:
        return None if self.route_key == "$default" else self.route_key.split(" ", 1)[1]


def http_routes(template: Mapping[str, Any], resolver: Resolver) -> list[RouteSpec]:
    """The HTTP API routes and the function behind each.

    Follows Route -> ``integrations/<id>`` -> Integration -> function ARN ->
    function, the chain the deployed API uses; also reads SAM ``HttpApi``
    events on functions.
    """
    functions = resources_of_type(template, "AWS::Serverless::Function")
    by_arn = {resolver.get_att(logical_id, "Arn"): logical_id for logical_id in functions}
    integrations = resources_of_type(template, "AWS::ApiGatewayV2::Integration")
    by_integration_id = {resolver.ref(logical_id): logical_id for logical_id in integrations}

    routes: list[RouteSpec] = []
    for logical_id, resource in resources_of_type(template, "AWS::ApiGatewayV2::Route").items():
        props = resolver.resolve(resource.get("Properties") or {})
        target = props.get("Target", "")
        integration_id = target.removeprefix("integrations/")
        if not target.startswith("integrations/") or integration_id not in by_integration_id:
            raise TemplateError(f"route {logical_id} has no integration the local stack knows ({target!r})")
        integration = resolver.resolve(integrations[by_integration_id[integration_id]]["Properties"])
        if integration.get("IntegrationType") != "AWS_PROXY" or str(integration.get("PayloadFormatVersion")) != "2.0":
            raise TemplateError(f"route {logical_id}: only AWS_PROXY integrations with payload 2.0 run locally")
        uri = integration.get("IntegrationUri", "")
        # The function ARN, maybe qualified by an alias or version (all run the
        # local code), or the apigateway ".../functions/<arn>/invocations" form.
        function = next((name for arn, name in by_arn.items()
                         if uri == arn or uri.startswith(f"{arn}:") or f"/functions/{arn}/" in uri
                         or f"/functions/{arn}:" in uri), None)
        if function is None:
            raise TemplateError(f"route {logical_id}: integration target {uri!r} is not a function of this template")
        routes.append(RouteSpec(props["RouteKey"], function))

    for logical_id, resource in functions.items():
        for event in ((resource.get("Properties") or {}).get("Events") or {}).values():
            if event.get("Type") == "HttpApi":
                props = resolver.resolve(event.get("Properties") or {})
                if "Path" in props:
                    method = str(props.get("Method", "ANY")).upper()
                    routes.append(RouteSpec(f"{'ANY' if method in ('ANY', '*') else method} {props['Path']}", logical_id))
                else:
                    routes.append(RouteSpec("$default", logical_id))
    return routes
