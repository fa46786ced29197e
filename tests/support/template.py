"""template.yaml as the template tests read it: loading, the SAM transform,
accessors for resources and IAM statements, and the tools (SAM CLI, cfn-lint).

The accessors read both forms of the template: the SAM source
(AWS::Serverless::Function with Globals) and what the SAM transform makes
of it (AWS::Lambda::Function, AWS::IAM::Role, ...). ``transformed_forms``
gives every form the checks run on: the source, and the transform's output
with the ``SnapStart`` parameter off and on.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import local.template as template_module

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"


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



def transformed_forms(source: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every form of FORMS, by name: ``source`` itself and the SAM transform's output for each parameter set."""
    names = list(FORM_PARAMETERS)
    transformed = sam_transform(source, [FORM_PARAMETERS[name] for name in names])
    return {"source": source, **dict(zip(names, transformed, strict=True))}


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

