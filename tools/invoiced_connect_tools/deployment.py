"""Deploying a stack and making it ready to connect accounts.

Three jobs, each on its own:

* :func:`preflight` runs before ``make deploy`` builds anything. It reads the
  environment's table in ``samconfig.toml`` and checks, in seconds, that AWS
  credentials and a region are usable (one STS call, short timeouts, no
  retries), so a missing ``aws configure`` is a sentence, not a failed
  build.
* :func:`next_steps` says, from a deployed stack's outputs and parameters,
  what is left: the callback URL to register at Invoiced, whether the client
  id and secret are stored, and the commands that store them and make a
  first connect link.
* :func:`configure` stores the OAuth client secret in the stack's
  ``ClientSecretArn`` secret and, when it changed, the client id in the
  stack's ``InvoicedClientId`` parameter (the functions read it from their
  environment).

The client secret only ever travels inside :class:`ClientSecret`, whose
``str`` and ``repr`` hide it; no message, exception or log line made here
contains it, and botocore's debug log (which prints request and response
bodies) is switched off around the two calls that carry it.

``python -m invoiced_connect_tools.deployment preflight|next-steps ENV`` is what
the Makefile runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shlex
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

SAMCONFIG = "samconfig.toml"
PROGRAM = "invoiced-connect"
CLIENT_ID_PARAMETER = "InvoicedClientId"
INVOICED_HOSTS = {"production": "https://invoiced.com", "sandbox": "https://sandbox.invoiced.com"}
OAUTH_APPLICATIONS = "Settings > Developers > OAuth Applications"

# The template's InvoicedClientId has AllowedPattern ^[A-Za-z0-9]*$.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9]{1,128}$")
SECRET_MIN, SECRET_MAX = 8, 1024
# UpdateStack straight from a template with a transform (ours has
# AWS::Serverless-2016-10-31) needs CAPABILITY_AUTO_EXPAND; sam deploy goes
# through a change set and needs only CAPABILITY_IAM.
UPDATE_CAPABILITIES = ("CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND")

NO_CREDENTIALS = (
    "no AWS credentials found. Run `aws configure` (access keys) or `aws configure sso` + `aws sso login`, "
    "then `export AWS_PROFILE=<profile>` if it is not the default profile; "
    "or export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN)."
)
NO_REGION = (
    "no AWS region. `export AWS_REGION=us-east-1` (any region), or give your profile one: "
    "`aws configure set region us-east-1` (add `--profile <profile>` for a named profile)."
)


class DeployError(RuntimeError):
    """Something the person deploying must fix; the message says what."""


# ------------------------------------------------------------------ samconfig
@dataclass(frozen=True)
class DeployEnvironment:
    """One environment of samconfig.toml, as ``sam deploy --config-env NAME`` reads it."""

    name: str
    stack_name: str
    region: str | None
    profile: str | None
    parameter_overrides: dict[str, str]
    settings: dict[str, Any] = field(repr=False)


def read_samconfig(path: str = SAMCONFIG) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise DeployError(f"{path} not found: run this from the repository root") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DeployError(f"{path}: {exc}") from None


def parse_parameter_overrides(value: str | Sequence[str] | None) -> dict[str, str]:
    """``Key=Value Key2="a b"`` (a string or a list of such strings) as a dict.

    Also takes the long form ``ParameterKey=K,ParameterValue=V``.
    """
    if not value:
        return {}
    text = value if isinstance(value, str) else " ".join(shlex.quote(item) for item in value)
    result: dict[str, str] = {}
    for token in shlex.split(text):
        if token.startswith("ParameterKey="):
            key, sep, val = token.removeprefix("ParameterKey=").partition(",ParameterValue=")
        else:
            key, sep, val = token.partition("=")
        if not sep or not key:
            raise DeployError(f"cannot read parameter override {token!r}: expected Key=Value")
        result[key] = val
    return result


def deploy_environments(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every environment with a deploy table: its ``global`` parameters
    overlaid with its ``deploy`` ones (SAM CLI's order). An environment
    inherits nothing from ``default``."""
    found: dict[str, dict[str, Any]] = {}
    for name, table in config.items():
        if not isinstance(table, dict) or "deploy" not in table:
            continue
        merged = dict((table.get("global") or {}).get("parameters") or {})
        merged.update((table.get("deploy") or {}).get("parameters") or {})
        found[name] = merged
    return found


def deploy_environment(name: str, path: str = SAMCONFIG) -> DeployEnvironment:
    environments = deploy_environments(read_samconfig(path))
    known = ", ".join(sorted(environments)) or "none"
    if name not in environments:
        raise DeployError(f"unknown environment {name!r}: {path} defines {known} (e.g. make deploy ENV=sandbox)")
    settings = environments[name]
    stack_name = settings.get("stack_name")
    if not isinstance(stack_name, str) or not stack_name:
        raise DeployError(f"{path}: [{name}.deploy.parameters] has no stack_name")
    return DeployEnvironment(
        name=name,
        stack_name=stack_name,
        region=settings.get("region") or None,
        profile=settings.get("profile") or None,
        parameter_overrides=parse_parameter_overrides(settings.get("parameter_overrides")),
        settings=settings,
    )


def pinned_client_id_conflict(env: DeployEnvironment, stack: StackInfo | None, path: str = SAMCONFIG) -> str | None:
    """Why deploying ``env`` would replace the client id the stack has, or None.

    ``sam deploy`` sends every parameter missing from parameter_overrides as
    UsePreviousValue, so the id ``configure`` set survives, unless the
    environment names InvoicedClientId (``sam deploy --guided`` writes every
    parameter it asked about there, the empty client id included).
    """
    pinned = env.parameter_overrides.get(CLIENT_ID_PARAMETER)
    if pinned is None or stack is None:
        return None
    current = stack.parameters.get(CLIENT_ID_PARAMETER, "")
    if not current or pinned == current:
        return None
    return (
        f"{path} [{env.name}.deploy.parameters] has {CLIENT_ID_PARAMETER}={json.dumps(pinned)} in "
        f"parameter_overrides, but stack {stack.name} uses client id {current} (stored by `{PROGRAM} configure`); "
        f"deploying would replace it. Delete {CLIENT_ID_PARAMETER}=... from parameter_overrides (a parameter left "
        f"out keeps its deployed value), or set it to {json.dumps(current)}."
    )


#: With SnapStart on, the API functions' version description (template.yaml)
#: is "<layer>|<environment>|<client id>|<scope>|<window>|<keep-alive>|
#: <active use>|<rejected-token window>|<public base URL>|<allowlist>|<app name>|
#: <support contact>|<default return URL>"; Lambda takes 256 characters.
VERSION_DESCRIPTION_LIMIT = 256
#: Its longest fixed part: 12 separators, a 6-digit layer version,
#: "production", "read_write" and the four numbers at their maxima.
VERSION_DESCRIPTION_FIXED = 12 + 6 + len("production") + len("read_write") + len("503007203600")
_DESCRIBED = (CLIENT_ID_PARAMETER, "PublicBaseUrl", "ReturnUrlAllowlist", "AppName", "SupportContact",
              "DefaultReturnUrl")


def snapstart_description_overflow(env: DeployEnvironment, stack: StackInfo | None) -> str | None:
    """Why this deploy would fail on the version description's length, or None.

    Only with SnapStart on: checked here, the deploy stops before building;
    found by CloudFormation, it rolls back halfway."""
    values = {**(stack.parameters if stack else {}), **env.parameter_overrides}
    if values.get("SnapStart") != "Enabled":
        return None
    length = VERSION_DESCRIPTION_FIXED + sum(len(values.get(name, "")) for name in _DESCRIBED)
    if length <= VERSION_DESCRIPTION_LIMIT:
        return None
    return (
        f"with SnapStart=Enabled, {', '.join(_DESCRIBED)} together may take at most "
        f"{VERSION_DESCRIPTION_LIMIT - VERSION_DESCRIPTION_FIXED} characters (they are part of the functions' "
        f"version description, {VERSION_DESCRIPTION_LIMIT} at most); this deploy would use "
        f"{length - VERSION_DESCRIPTION_FIXED}. Shorten ReturnUrlAllowlist (or the page texts), or set SnapStart=Disabled "
        "(see docs/operations.md#snapstart)."
    )


# ------------------------------------------------------------------ AWS access
def quick_config() -> Any:
    """One attempt, short timeouts: an answer or a clear failure within seconds."""
    from botocore.config import Config

    return Config(connect_timeout=3, read_timeout=5, retries={"mode": "standard", "total_max_attempts": 1})


def resolve_region(env_region: str | None, environ: Mapping[str, str], profile_region: str | None) -> tuple[str | None, str]:
    """The region and where it came from: samconfig (which sam deploy puts
    first), then AWS_DEFAULT_REGION, AWS_REGION (which botocore, and so the
    SAM CLI, would ignore: the Makefile passes it on as --region), the profile."""
    if env_region:
        return env_region, "samconfig.toml"
    for variable in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        if environ.get(variable, "").strip():
            return environ[variable].strip(), variable
    if profile_region:
        return profile_region, "your AWS profile"
    return None, ""


def _session(profile: str | None) -> Any:
    import boto3
    from botocore.exceptions import ProfileNotFound

    try:
        return boto3.session.Session(profile_name=profile)
    except ProfileNotFound:
        where = "samconfig.toml" if profile else "AWS_PROFILE"
        name = profile or os.environ.get("AWS_PROFILE", "")
        raise DeployError(
            f"AWS profile {name!r} (from {where}) is not in your AWS config: create it with "
            f"`aws configure --profile {name}` (or `aws configure sso`), or use another one"
        ) from None


def _session_region(session: Any) -> str | None:
    """AWS_DEFAULT_REGION, else the profile's region (botocore's own order)."""
    from botocore.exceptions import BotoCoreError

    try:
        return session.region_name
    except BotoCoreError:  # a malformed config file shows up again when credentials are loaded
        return None


def caller_identity(sts: Any) -> dict[str, str]:
    """STS GetCallerIdentity, its failures turned into what to do about them."""
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    try:
        answer = sts.get_caller_identity()
    except NoCredentialsError:
        raise DeployError(NO_CREDENTIALS) from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise DeployError(
            f"AWS refused your credentials ({error.get('Code', '?')}: {error.get('Message', '')}). "
            "Refresh them (`aws sso login`, or new access keys with `aws configure`) or pick another "
            "profile with AWS_PROFILE."
        ) from None
    except EndpointConnectionError as exc:
        raise DeployError(f"could not reach AWS STS ({exc}); check the network and the region") from None
    except BotoCoreError as exc:
        raise DeployError(f"could not check your AWS credentials: {exc}") from None
    return {"account": answer["Account"], "arn": answer["Arn"]}


# ------------------------------------------------------------------ stacks
@dataclass(frozen=True)
class StackInfo:
    name: str
    region: str
    status: str
    outputs: dict[str, str]
    parameters: dict[str, str]
    capabilities: tuple[str, ...]

    def output(self, key: str) -> str:
        value = self.outputs.get(key)
        if not value:
            raise DeployError(
                f"stack {self.name} has no output {key} (status {self.status}); "
                "is it an invoiced-connect stack whose deploy finished?"
            )
        return value

    @property
    def busy(self) -> bool:
        return self.status.endswith("_IN_PROGRESS") and self.status != "REVIEW_IN_PROGRESS"


def describe_stack(cloudformation: Any, name: str, *, missing_ok: bool = False) -> StackInfo | None:
    from botocore.exceptions import ClientError

    region = cloudformation.meta.region_name
    try:
        stacks = cloudformation.describe_stacks(StackName=name)["Stacks"]
    except ClientError as exc:
        if "does not exist" in str(exc):
            if missing_ok:
                return None
            raise DeployError(f"no stack {name} in {region}: deploy it first (make deploy), or check the region") from None
        raise
    stack = stacks[0]
    return StackInfo(
        name=stack["StackName"],
        region=region,
        status=stack["StackStatus"],
        outputs={o["OutputKey"]: o.get("OutputValue", "") for o in stack.get("Outputs", [])},
        parameters={p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])},
        capabilities=tuple(stack.get("Capabilities", [])),
    )


def deployable(stack: StackInfo | None, then: str = "deploy again") -> str | None:
    """Why ``stack`` could not take an update now, or None."""
    if stack is None:
        return None
    if stack.busy:
        return f"stack {stack.name} is busy ({stack.status}); wait until it finishes, then {then}"
    if stack.status == "ROLLBACK_COMPLETE":
        return (
            f"stack {stack.name} failed to create and rolled back (ROLLBACK_COMPLETE), so it cannot be updated; "
            f"see why in its events, delete it (.venv-sam/bin/sam delete --stack-name {stack.name} "
            f"--region {stack.region}) and deploy it again"
        )
    return None


# ------------------------------------------------------------------ preflight
@dataclass(frozen=True)
class Preflight:
    environment: DeployEnvironment
    region: str
    region_source: str
    account: str
    arn: str
    stack: StackInfo | None

    def summary(self) -> str:
        where = f"stack {self.environment.stack_name} in {self.region} (region from {self.region_source})"
        state = f", now {self.stack.status}" if self.stack else ", not created yet"
        return f"deploy {self.environment.name}: {where}{state}; account {self.account} as {self.arn}"


def preflight(env_name: str, *, samconfig: str = SAMCONFIG) -> Preflight:
    """Everything ``sam deploy --config-env env_name`` needs from AWS, checked first.

    Credentials come from wherever botocore finds them (variables, profile,
    SSO, container or instance metadata with botocore's own 1 s timeouts);
    only the one STS call, then one DescribeStacks, go over the network."""
    from botocore.exceptions import BotoCoreError, ClientError

    env = deploy_environment(env_name, samconfig)
    session = _session(env.profile)
    region, source = resolve_region(env.region, os.environ, _session_region(session))
    problems = [] if region else [NO_REGION]
    try:
        credentials = session.get_credentials()
    except BotoCoreError as exc:  # e.g. an expired SSO token, a failing credential_process
        raise DeployError(f"could not load your AWS credentials: {exc}. " + NO_CREDENTIALS) from None
    if credentials is None:
        problems.insert(0, NO_CREDENTIALS)
    if problems or not region:
        raise DeployError("\n".join(problems))
    identity = caller_identity(session.client("sts", region_name=region, config=quick_config()))
    cloudformation = session.client("cloudformation", region_name=region, config=quick_config())
    try:
        stack = describe_stack(cloudformation, env.stack_name, missing_ok=True)
    except (BotoCoreError, ClientError) as exc:  # e.g. no cloudformation:DescribeStacks
        raise DeployError(f"could not read stack {env.stack_name}: {exc}") from None
    for problem in (deployable(stack), pinned_client_id_conflict(env, stack, samconfig),
                    snapstart_description_overflow(env, stack)):
        if problem:
            raise DeployError(problem)
    return Preflight(env, region, source, identity["account"], identity["arn"], stack)


# ------------------------------------------------------------------ secrets
class ClientSecret:
    """The OAuth client secret; shown as ``***`` by str, repr and format."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "ClientSecret('***')"

    __str__ = __repr__

    def __reduce__(self) -> Any:  # no pickling into a cache or a queue by accident
        raise TypeError("a ClientSecret cannot be pickled")


@contextlib.contextmanager
def _no_debug_logs() -> Iterator[None]:
    """botocore logs request and response bodies at DEBUG: none while a secret is in one."""
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.DEBUG))
    try:
        yield
    finally:
        logging.disable(previous)


def validate_client_id(text: str) -> str:
    value = text.strip()
    if not _CLIENT_ID.match(value):
        # The value is not repeated: it might be a secret typed in the wrong place.
        raise DeployError(
            f"the client id must be 1-128 letters and digits, as Invoiced shows it under {OAUTH_APPLICATIONS}"
        )
    return value


def validate_client_secret(text: str, client_id: str | None = None) -> ClientSecret:
    """Checks that never echo the value: printable ASCII, no spaces, a sane length."""
    if not text:
        raise DeployError("the client secret is empty")
    if any(not ("!" <= char <= "~") for char in text):
        raise DeployError(
            "the client secret contains spaces, control or non-ASCII characters; "
            "copy it again from Invoiced (only the secret, nothing around it)"
        )
    if len(text) < SECRET_MIN:
        raise DeployError(f"the client secret is shorter than {SECRET_MIN} characters; copy the whole secret")
    if len(text) > SECRET_MAX:
        raise DeployError(f"the client secret is longer than {SECRET_MAX} characters; copy only the secret")
    if client_id is not None and text == client_id:
        raise DeployError("that is the client id, not the client secret")
    return ClientSecret(text)


def read_client_secret(
    stdin: IO[str], interactive: bool, getpass: Callable[[str], str], client_id: str | None = None
) -> ClientSecret:
    """At a prompt that does not echo (a terminal), else the one line on stdin."""
    if interactive:
        text = getpass("Client secret (input is hidden): ")
    else:
        text = stdin.read(SECRET_MAX + 3)
        if text.endswith("\n"):
            text = text[:-1].removesuffix("\r")
        if "\n" in text or "\r" in text:
            raise DeployError(
                "stdin must hold only the client secret, on one line "
                "(e.g. `pass show invoiced/client-secret | head -n 1 | invoiced-connect ... configure`)"
            )
        if not text:
            raise DeployError("no client secret on stdin (pipe it in, or run the command in a terminal to be asked)")
    return validate_client_secret(text, client_id)


def client_secret_state(secretsmanager: Any, secret_arn: str) -> tuple[bool | None, str]:
    """Whether the secret holds a non-empty ``client_secret`` (None: could not tell, and why)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        with _no_debug_logs():
            raw = secretsmanager.get_secret_value(SecretId=secret_arn).get("SecretString") or ""
    except ClientError as exc:
        return None, exc.response.get("Error", {}).get("Code", "error")
    except BotoCoreError as exc:
        return None, type(exc).__name__
    try:
        value = json.loads(raw)
    except ValueError:
        return False, "not JSON"
    stored = isinstance(value, dict) and isinstance(value.get("client_secret"), str) and bool(value["client_secret"])
    return stored, ""


def store_client_secret(secretsmanager: Any, secret_arn: str, secret: ClientSecret) -> None:
    """PutSecretValue ``{"client_secret": ...}``, the shape the functions read."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        with _no_debug_logs():
            secretsmanager.put_secret_value(
                SecretId=secret_arn, SecretString=json.dumps({"client_secret": secret.reveal()})
            )
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise DeployError(
            f"could not store the client secret in {secret_arn} ({error.get('Code', '?')}: "
            f"{error.get('Message', '')})"
        ) from None
    except BotoCoreError as exc:
        raise DeployError(f"could not store the client secret in {secret_arn}: {type(exc).__name__}") from None


# ------------------------------------------------------------------ stack update
class StackParameterUpdater:
    """Sets one parameter of a stack and waits: same template, every other
    parameter UsePreviousValue, tags, role and notifications untouched."""

    def __init__(self, cloudformation: Any, *, delay: int = 5, max_attempts: int = 720) -> None:
        self._cfn = cloudformation
        self._delay = delay
        self._max_attempts = max_attempts

    def set_parameter(self, stack: StackInfo, key: str, value: str) -> str:
        """The stack's status once the update is complete; DeployError if it failed."""
        from botocore.exceptions import ClientError, WaiterError

        parameters: list[dict[str, Any]] = [
            {"ParameterKey": name, "UsePreviousValue": True} for name in stack.parameters if name != key
        ]
        parameters.append({"ParameterKey": key, "ParameterValue": value})
        capabilities = sorted(set(stack.capabilities) | set(UPDATE_CAPABILITIES))
        try:
            self._cfn.update_stack(
                StackName=stack.name, UsePreviousTemplate=True, Parameters=parameters, Capabilities=capabilities
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise DeployError(
                f"could not update stack {stack.name} ({error.get('Code', '?')}: {error.get('Message', '')})"
            ) from None
        try:
            self._cfn.get_waiter("stack_update_complete").wait(
                StackName=stack.name, WaiterConfig={"Delay": self._delay, "MaxAttempts": self._max_attempts}
            )
        except WaiterError:
            raise DeployError(f"the update of stack {stack.name} did not complete: {self._failure(stack.name)}") from None
        except KeyboardInterrupt:
            raise DeployError(
                f"stopped waiting; the update of stack {stack.name} goes on in CloudFormation "
                f"(`aws cloudformation describe-stacks --stack-name {stack.name}` shows how it ends)"
            ) from None
        return "UPDATE_COMPLETE"

    def _failure(self, name: str) -> str:
        """The stack's status and the first failure of this update (best effort)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            status = self._cfn.describe_stacks(StackName=name)["Stacks"][0]["StackStatus"]
            events = self._cfn.describe_stack_events(StackName=name)["StackEvents"]
        except (BotoCoreError, ClientError) as exc:
            return f"(could not read its status: {exc})"
        reasons = []
        for event in events:  # newest first, back to the start of this update
            if event.get("ResourceStatus", "").endswith("FAILED") and event.get("ResourceStatusReason"):
                reasons.append(f"{event['LogicalResourceId']}: {event['ResourceStatusReason']}")
            if event.get("LogicalResourceId") == name and event.get("ResourceStatus") == "UPDATE_IN_PROGRESS":
                break
        return f"status {status}" + (f"; first failure: {reasons[-1]}" if reasons else "")


# ------------------------------------------------------------------ configure
@dataclass(frozen=True)
class ConfigureResult:
    stack: str
    secret_arn: str
    client_id: str
    previous_client_id: str
    status: str

    @property
    def client_id_changed(self) -> bool:
        return self.client_id != self.previous_client_id


def choose_client_id(given: str | None, current: str, interactive: bool, ask: Callable[[str], str]) -> str:
    if given is not None:
        return validate_client_id(given)
    if interactive:
        answer = ask(f"Client id{f' [{current}]' if current else ''}: ").strip()
        return validate_client_id(answer or current)
    if current:
        return current
    raise DeployError("no client id: pass --client-id ID (stdin carries only the secret)")


def configure(
    stack_name: str,
    *,
    cloudformation: Any,
    secretsmanager: Any,
    client_id: str | None,
    stdin: IO[str],
    interactive: bool,
    getpass: Callable[[str], str],
    ask: Callable[[str], str],
    updater: StackParameterUpdater | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> ConfigureResult:
    """Read and check the client id and secret, then store them (nothing is
    written until both are valid and the stack can take an update)."""
    stack = describe_stack(cloudformation, stack_name)
    assert stack is not None
    secret_arn = stack.output("ClientSecretArn")
    if CLIENT_ID_PARAMETER not in stack.parameters:
        raise DeployError(f"stack {stack.name} has no {CLIENT_ID_PARAMETER} parameter; is it an invoiced-connect stack?")
    problem = deployable(stack, then="run configure again")
    if problem:
        raise DeployError(problem)
    current = stack.parameters.get(CLIENT_ID_PARAMETER, "")
    chosen = choose_client_id(client_id, current, interactive, ask)
    secret = read_client_secret(stdin, interactive, getpass, chosen)
    store_client_secret(secretsmanager, secret_arn, secret)
    progress(f"Stored the client secret in {secret_arn}.")
    status = stack.status
    if chosen != current:
        progress(f"Updating stack {stack.name} so the functions use client id {chosen} (a minute or two)...")
        try:
            status = (updater or StackParameterUpdater(cloudformation)).set_parameter(
                stack, CLIENT_ID_PARAMETER, chosen
            )
        except DeployError as exc:
            raise DeployError(
                f"{exc}. The client secret is already stored; if the stack does not end up with client id "
                f"{chosen}, run configure again"
            ) from None
    return ConfigureResult(stack.name, secret_arn, chosen, current, status)


def configured_message(result: ConfigureResult, program: str = PROGRAM) -> str:
    lines = [f"Client secret stored in {result.secret_arn}."]
    if result.client_id_changed:
        lines.append(f"Client id {result.client_id} set on stack {result.stack} ({result.status}).")
    else:
        lines.append(f"Client id {result.client_id} unchanged; running functions pick up the new secret within "
                     "5 minutes (at once if Invoiced refuses the old one).")
    lines += ["", "Next, make a connect link for one of your customers and open it:", "",
              f"    {program} --stack {result.stack} link create my-customer-42"]
    return "\n".join(lines)


def samconfig_pins(stack_name: str, client_id: str, path: str = SAMCONFIG) -> list[str]:
    """Warnings for environments of a local samconfig.toml that would undo ``configure`` on their next deploy."""
    if not os.path.isfile(path):
        return []
    try:
        environments = deploy_environments(read_samconfig(path))
    except DeployError:
        return []
    warnings = []
    for name, settings in sorted(environments.items()):
        if settings.get("stack_name") != stack_name:
            continue
        try:
            pinned = parse_parameter_overrides(settings.get("parameter_overrides")).get(CLIENT_ID_PARAMETER)
        except DeployError:
            continue
        if pinned is not None and pinned != client_id:
            warnings.append(
                f"warning: {path} [{name}.deploy.parameters] has {CLIENT_ID_PARAMETER}={json.dumps(pinned)} in "
                f"parameter_overrides; delete it there, or `make deploy ENV={name}` will refuse to run "
                "(a plain sam deploy would put that id back)"
            )
    return warnings


# ------------------------------------------------------------------ next steps
def next_steps(stack: StackInfo, secret_state: tuple[bool | None, str], program: str = PROGRAM) -> str:
    """What is left to do, from the stack's outputs and parameters only."""
    callback = stack.output("CallbackUrl")
    stack.output("ClientSecretArn")  # configure needs it: say so now if it is missing
    environment = stack.parameters.get("InvoicedEnvironment", "")
    invoiced = INVOICED_HOSTS.get(environment, "Invoiced")
    client_id = stack.parameters.get(CLIENT_ID_PARAMETER, "")
    stored, why = secret_state
    if stored is None:
        secret_text = f"unknown (could not read the secret: {why})"
    else:
        secret_text = "stored" if stored else "not stored yet"
    configure_cmd = f"{program} --stack {stack.name} configure"
    server = f"Invoiced {environment} ({invoiced})" if environment in INVOICED_HOSTS else "Invoiced"
    lines = [
        f"Stack {stack.name} in {stack.region} ({stack.status}), connecting to {server}.",
        "",
        f"1. Register the callback URL at Invoiced: at {invoiced} open",
        f"   {OAUTH_APPLICATIONS}, create an application (or open yours)",
        "   and add this redirect URI:",
        "",
        f"       {callback}",
        "",
    ]
    done = bool(client_id) and stored is True
    if done:
        lines += [f"2. Client id {client_id} and client secret: configured. To change them:", ""]
    else:
        lines += [
            "2. Store the application's client id and client secret in the stack. The command asks",
            "   for both (the secret without echo; or pipe the secret in on stdin with --client-id ID):",
            "",
        ]
    lines += [
        f"       {configure_cmd}",
        "",
        f"   client id:     {client_id or 'not set yet'}",
        f"   client secret: {secret_text}",
        "",
        "3. Make a connect link for one of your customers" + ("" if done else " (after step 2)")
        + "; open it in a browser to connect an Invoiced account:",
        "",
        f"       {program} --stack {stack.name} link create my-customer-42",
    ]
    app_api = [(what, stack.outputs.get(name), stack.outputs.get(policy)) for what, name, policy in APP_API_OUTPUTS]
    if any(name for _, name, _ in app_api):
        lines += ["", "4. Wire your app (any language, Lambda Invoke with IAM; docs/app-api.md): invoke",
                  "   the function, with the managed policy on the caller's role:", ""]
        lines += [f"       {what:<22} {name or '-'}  (policy {policy or '-'})" for what, name, policy in app_api]
    return "\n".join(lines)


#: What the app calls, by output: (what, function name output, policy output).
APP_API_OUTPUTS = (
    ("connect links", "LinksFunctionName", "LinkIssuerPolicyArn"),
    ("access tokens", "TokensFunctionName", "TokenVendingPolicyArn"),
    ("connection state", "ConnectionStateFunctionName", "ConnectionStatePolicyArn"),
)


def stack_next_steps(stack_name: str, cloudformation: Any, secretsmanager: Any, program: str = PROGRAM) -> str:
    stack = describe_stack(cloudformation, stack_name)
    assert stack is not None
    return next_steps(stack, client_secret_state(secretsmanager, stack.output("ClientSecretArn")), program)


# ------------------------------------------------------------------ make's entry point
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m invoiced_connect_tools.deployment")
    parser.add_argument("--samconfig", default=SAMCONFIG)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("preflight", help="check samconfig, credentials and region; print the region")
    check.add_argument("env")
    after = commands.add_parser("next-steps", help="what to do after deploying env")
    after.add_argument("env")
    after.add_argument("--program", default=PROGRAM, help="how to spell the invoiced-connect command")
    args = parser.parse_args(argv)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        if args.command == "preflight":
            result = preflight(args.env, samconfig=args.samconfig)
            print(result.summary(), file=sys.stderr)
            print(result.region)
            return 0
        env = deploy_environment(args.env, args.samconfig)
        session = _session(env.profile)
        region, _ = resolve_region(env.region, os.environ, _session_region(session))
        if not region:
            raise DeployError(NO_REGION)
        print()
        print(stack_next_steps(env.stack_name, session.client("cloudformation", region_name=region),
                               session.client("secretsmanager", region_name=region), args.program))
        return 0
    except (DeployError, BotoCoreError, ClientError) as exc:
        print(f"deploy: {exc}".replace("\n", "\ndeploy: "), file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
