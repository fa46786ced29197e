"""make deploy, samconfig.toml, and the configure / next-steps commands.

AWS here is moto's server in a process of its own (moto keeps its state per
process, and the session's local stack lives in this one), so nothing these
tests create or reset can touch the other tests. The Makefile is run for
real with stand-ins for ``sam`` and the recursive ``make build`` that record
how they were called.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import requests
from botocore.stub import Stubber
from invoiced_connect_tools import cli, deployment
from invoiced_connect_tools.deployment import DeployError, StackParameterUpdater

from invoiced_connect import runtime

ROOT = Path(__file__).resolve().parents[2]
SAMCONFIG = ROOT / "samconfig.toml"
REGION = "us-east-1"
FAKE_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
SECRET = "CANARYclientSecret" + "Zq9" * 8  # what must never be printed or logged
PLACEHOLDER = {"client_secret": ""}
CALLBACK = "https://abc123.execute-api.us-east-1.amazonaws.com/callback"

# The parameters and outputs of template.yaml that configure and next-steps use.
STACK_TEMPLATE = """
Parameters:
  InvoicedEnvironment: {Type: String, Default: sandbox, AllowedValues: [production, sandbox]}
  InvoicedClientId: {Type: String, Default: ""}
  OAuthScope: {Type: String, Default: read_write}
Resources:
  Placeholder: {Type: AWS::SNS::Topic}
Outputs:
  CallbackUrl: {Value: "%(callback)s"}
  ConnectUrl: {Value: "https://abc123.execute-api.us-east-1.amazonaws.com/connect"}
  ClientSecretArn: {Value: "%(secret_arn)s"}
"""


# ---------------------------------------------------------------- fixtures
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{url}/moto-api/", timeout=1)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def aws_env(moto_url, monkeypatch, tmp_path) -> Iterator[dict[str, str]]:
    """This process's boto3 (and the shared clients of invoiced_connect.cloud.aws) on the moto server."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    values = {
        **FAKE_KEYS, "AWS_ENDPOINT_URL": moto_url, "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    runtime.reset()
    yield values
    runtime.reset()


def client(service: str, moto_url: str):
    return boto3.client(service, endpoint_url=moto_url, region_name=REGION, **{k.lower(): v for k, v in FAKE_KEYS.items()})


def make_stack(moto_url: str, name: str | None = None, client_id: str = "", scope: str = "read") -> tuple[str, str]:
    """A stack with template.yaml's relevant parameters and outputs, and its (placeholder) secret.

    Every parameter is given a value: moto (unlike CloudFormation) cannot
    UsePreviousValue a parameter that was left at its default."""
    name = name or f"ic-{uuid.uuid4().hex[:10]}"
    secret_arn = client("secretsmanager", moto_url).create_secret(
        Name=f"{name}-client-secret", SecretString=json.dumps(PLACEHOLDER)
    )["ARN"]
    client("cloudformation", moto_url).create_stack(
        StackName=name,
        TemplateBody=STACK_TEMPLATE % {"callback": CALLBACK, "secret_arn": secret_arn},
        Parameters=[{"ParameterKey": "InvoicedEnvironment", "ParameterValue": "sandbox"},
                    {"ParameterKey": "InvoicedClientId", "ParameterValue": client_id},
                    {"ParameterKey": "OAuthScope", "ParameterValue": scope}],
    )
    return name, secret_arn


def stored_secret(moto_url: str, secret_arn: str) -> dict:
    return json.loads(client("secretsmanager", moto_url).get_secret_value(SecretId=secret_arn)["SecretString"])


def stack_parameters(moto_url: str, name: str) -> dict[str, str]:
    stack = client("cloudformation", moto_url).describe_stacks(StackName=name)["Stacks"][0]
    return {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}


def record_update_stack_calls() -> list[dict]:
    """The UpdateStack requests the command's CloudFormation client sends."""
    calls: list[dict] = []
    runtime.current().client("cloudformation").meta.events.register(
        "provide-client-params.cloudformation.UpdateStack", lambda params, **_: calls.append(dict(params))
    )
    return calls


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def assert_never_shown(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text and SECRET[6:30] not in text


# ---------------------------------------------------------------- samconfig.toml
def _all_keys(table: dict, path: str = "") -> Iterator[str]:
    for key, value in table.items():
        yield f"{path}{key}"
        if isinstance(value, dict):
            yield from _all_keys(value, f"{path}{key}.")


def test_samconfig_has_complete_sandbox_and_production_environments():
    config = tomllib.loads(SAMCONFIG.read_text())
    assert not [key for key in _all_keys(config) if key.endswith("s3_bucket")], "SAM must manage the bucket (resolve_s3)"
    environments = deployment.deploy_environments(config)
    assert set(environments) == {"default", "sandbox", "production"}
    for name, settings in environments.items():
        overrides = deployment.parse_parameter_overrides(settings["parameter_overrides"])
        server = "production" if name == "production" else "sandbox"
        assert settings["stack_name"] == f"invoiced-connect-{server}"
        assert settings["resolve_s3"] is True
        assert "CAPABILITY_IAM" in settings["capabilities"].split()
        assert overrides["InvoicedEnvironment"] == server
        # A pinned client id would undo `invoiced-connect configure` on the next deploy.
        assert "InvoicedClientId" not in overrides
        assert settings["fail_on_empty_changeset"] is False
        assert "region" not in settings and "profile" not in settings
        assert config[name]["build"]["parameters"] == {"cached": True, "parallel": True}
    assert environments["production"]["confirm_changeset"] is True
    assert environments["sandbox"]["confirm_changeset"] is False


def test_the_sam_cli_reads_samconfig_the_same_way_and_knows_every_key():
    """SAM CLI 1.170's own reader (no inheritance from [default]) gives the
    same tables, and every key is an option of the command it configures."""
    sam_python = ROOT / ".venv-sam" / "bin" / "python"
    if not sam_python.exists():
        pytest.skip("no .venv-sam (make install)")
    script = """
import json, sys
from pathlib import Path
from samcli.lib.config.samconfig import SamConfig
from samcli.commands.build.command import cli as build
from samcli.commands.deploy.command import cli as deploy
from samcli.commands.delete.command import cli as delete
config = SamConfig(Path.cwd())
print(json.dumps({
    "options": {name: sorted(str(p.name) for p in command.params)
                for name, command in (("build", build), ("deploy", deploy), ("delete", delete))},
    "read": {env: {cmd: dict(config.get_all([cmd], "parameters", env=env)) for cmd in ("build", "deploy", "delete")}
             for env in ("default", "sandbox", "production")},
}))
"""
    done = subprocess.run([str(sam_python), "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SAM_CLI_TELEMETRY": "0"})
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    config = tomllib.loads(SAMCONFIG.read_text())
    for env, commands in answer["read"].items():
        assert commands["deploy"] == deployment.deploy_environments(config)[env]
        for command, settings in commands.items():
            unknown = set(settings) - set(answer["options"][command])
            assert not unknown, f"[{env}.{command}.parameters] has keys sam {command} does not know: {unknown}"
    assert answer["read"]["sandbox"]["delete"] == {"stack_name": "invoiced-connect-sandbox"}


def test_samconfig_environments_inherit_nothing_from_default(tmp_path):
    path = tmp_path / "samconfig.toml"
    path.write_text('version = 0.1\n[default.deploy.parameters]\nregion = "eu-west-1"\nstack_name = "a"\n'
                    '[staging.global.parameters]\nregion = "ap-south-1"\n[staging.deploy.parameters]\nstack_name = "b"\n')
    staging = deployment.deploy_environment("staging", str(path))
    assert (staging.stack_name, staging.region) == ("b", "ap-south-1")
    with pytest.raises(DeployError, match="unknown environment 'prod': .* defines default, staging"):
        deployment.deploy_environment("prod", str(path))


# ---------------------------------------------------------------- preflight
@pytest.fixture
def bare_env(monkeypatch, tmp_path) -> dict[str, str]:
    """No AWS credentials or region anywhere: no variables, no files, no instance metadata."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    values = {"AWS_CONFIG_FILE": str(tmp_path / "missing-config"),
              "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "missing-credentials"),
              "AWS_EC2_METADATA_DISABLED": "true"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def _fails_fast(call) -> str:
    started = time.monotonic()
    with pytest.raises(DeployError) as caught:
        call()
    assert time.monotonic() - started < 5
    return str(caught.value)


def test_preflight_without_credentials_says_what_to_set(bare_env, monkeypatch):
    monkeypatch.setenv("AWS_REGION", REGION)
    message = _fails_fast(lambda: deployment.preflight("sandbox", samconfig=str(SAMCONFIG)))
    assert message == deployment.NO_CREDENTIALS
    assert "aws configure" in message and "AWS_PROFILE" in message and "AWS_ACCESS_KEY_ID" in message


def test_preflight_without_a_region_says_what_to_set(bare_env, monkeypatch):
    for name, value in FAKE_KEYS.items():
        monkeypatch.setenv(name, value)
    message = _fails_fast(lambda: deployment.preflight("sandbox", samconfig=str(SAMCONFIG)))
    assert message == deployment.NO_REGION and "AWS_REGION" in message and "aws configure set region" in message


def test_preflight_without_either_names_both(bare_env):
    message = _fails_fast(lambda: deployment.preflight("production", samconfig=str(SAMCONFIG)))
    assert message == f"{deployment.NO_CREDENTIALS}\n{deployment.NO_REGION}"


def test_preflight_names_a_missing_profile(bare_env, monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "nosuchprofile")
    message = _fails_fast(lambda: deployment.preflight("sandbox", samconfig=str(SAMCONFIG)))
    assert "'nosuchprofile' (from AWS_PROFILE)" in message and "aws configure --profile nosuchprofile" in message


def test_preflight_rejects_an_unknown_environment(bare_env):
    message = _fails_fast(lambda: deployment.preflight("staging", samconfig=str(SAMCONFIG)))
    assert message.startswith("unknown environment 'staging'") and "default, production, sandbox" in message


def test_preflight_gives_up_at_once_when_sts_cannot_be_reached(bare_env, monkeypatch):
    for name, value in {**FAKE_KEYS, "AWS_REGION": REGION, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}"}.items():
        monkeypatch.setenv(name, value)
    message = _fails_fast(lambda: deployment.preflight("sandbox", samconfig=str(SAMCONFIG)))
    assert message.startswith("could not reach AWS STS")


def test_refused_credentials_are_reported_with_what_to_do():
    sts = boto3.client("sts", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(sts) as stub:
        stub.add_client_error("get_caller_identity", "ExpiredToken", "The security token included in the request is expired")
        with pytest.raises(DeployError) as caught:
            deployment.caller_identity(sts)
    assert "AWS refused your credentials (ExpiredToken: The security token" in str(caught.value)
    assert "aws sso login" in str(caught.value)


def test_preflight_checks_are_quick_and_not_retried():
    config = deployment.quick_config()
    assert config.retries == {"mode": "standard", "total_max_attempts": 1}
    assert config.connect_timeout <= 3 and config.read_timeout <= 5


def test_preflight_with_credentials_reports_the_account_and_honours_aws_region(aws_env, monkeypatch, moto_url):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")  # botocore alone would ignore it
    result = deployment.preflight("sandbox", samconfig=str(SAMCONFIG))
    assert (result.region, result.region_source) == ("eu-west-1", "AWS_REGION")
    assert result.account == "123456789012" and result.stack is None
    assert "stack invoiced-connect-sandbox in eu-west-1 (region from AWS_REGION), not created yet" in result.summary()


def test_preflight_refuses_a_deploy_that_would_replace_the_configured_client_id(aws_env, moto_url, tmp_path):
    name, _ = make_stack(moto_url, client_id="Configured1")
    config = tmp_path / "samconfig.toml"
    table = f'[sandbox.deploy.parameters]\nstack_name = "{name}"\n'
    # What `sam deploy --guided` saves: every parameter it asked about.
    config.write_text(table + 'parameter_overrides = "InvoicedEnvironment=\\"sandbox\\" InvoicedClientId=\\"\\""\n')
    message = _fails_fast(lambda: deployment.preflight("sandbox", samconfig=str(config)))
    assert f"stack {name} uses client id Configured1" in message
    assert 'Delete InvoicedClientId=... from parameter_overrides' in message
    config.write_text(table + 'parameter_overrides = "InvoicedEnvironment=sandbox InvoicedClientId=Configured1"\n')
    assert deployment.preflight("sandbox", samconfig=str(config)).stack.parameters["InvoicedClientId"] == "Configured1"
    config.write_text(table + 'parameter_overrides = "InvoicedEnvironment=sandbox"\n')
    assert deployment.preflight("sandbox", samconfig=str(config)).stack.status == "CREATE_COMPLETE"


# ---------------------------------------------------------------- make deploy
FAKE_TOOL = """#!/bin/sh
printf '%s %s\\n' "$(basename "$0")" "$*" >> "$FAKE_TOOL_LOG"
"""


@pytest.fixture
def make_deploy(tmp_path):
    """Run ``make <target>`` in the repository, with ``sam`` and the
    recursive ``make build`` replaced by tools that only log their arguments."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for name in ("sam", "make"):
        (tools / name).write_text(FAKE_TOOL)
        (tools / name).chmod(stat.S_IRWXU)
    log = tmp_path / "tools.log"

    def run(target: str, env: dict[str, str], *variables: str) -> tuple[subprocess.CompletedProcess, list[str], float]:
        started = time.monotonic()
        # -o: the virtual environments count as installed (no pip runs), even
        # when pyproject.toml is newer than them; sam itself is a stand-in.
        done = subprocess.run(
            ["make", "--no-print-directory", "-o", ".venv/.installed", "-o", ".venv-sam/.installed", target,
             f"SAM={tools / 'sam'}", f"MAKE={tools / 'make'}", *variables],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
            env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "FAKE_TOOL_LOG": str(log), **env},
        )
        calls = log.read_text().splitlines() if log.exists() else []
        return done, calls, time.monotonic() - started

    return run


def test_make_deploy_without_credentials_fails_fast_and_builds_nothing(make_deploy, bare_env):
    done, calls, seconds = make_deploy("deploy", {**bare_env, "AWS_REGION": REGION})
    assert done.returncode != 0 and seconds < 20
    assert f"deploy: {deployment.NO_CREDENTIALS}" in done.stderr
    assert calls == []  # neither `make build` nor `sam` was started


def test_make_deploy_without_a_region_fails_fast_and_builds_nothing(make_deploy, bare_env):
    done, calls, seconds = make_deploy("deploy-guided", {**bare_env, **FAKE_KEYS}, "ENV=production")
    assert done.returncode != 0 and seconds < 20
    assert f"deploy: {deployment.NO_REGION}" in done.stderr and calls == []


def test_make_deploy_rejects_an_unknown_env(make_deploy, bare_env):
    done, calls, _ = make_deploy("deploy", {**bare_env, **FAKE_KEYS, "AWS_REGION": REGION}, "ENV=prod")
    assert done.returncode != 0 and calls == []
    assert "deploy: unknown environment 'prod': samconfig.toml defines default, production, sandbox" in done.stderr


@pytest.mark.parametrize("target,extra", [("deploy", ""), ("deploy-guided", " --guided")])
def test_make_deploy_checks_then_builds_then_deploys_then_prints_the_next_steps(
    make_deploy, bare_env, moto_url, target, extra
):
    """The control for the tests above: with credentials (moto's) the same
    command reaches the build and the deploy, in that order."""
    try:
        client("cloudformation", moto_url).describe_stacks(StackName="invoiced-connect-sandbox")
    except client("cloudformation", moto_url).exceptions.ClientError:
        make_stack(moto_url, name="invoiced-connect-sandbox")
    env = {**bare_env, **FAKE_KEYS, "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": moto_url}
    done, calls, _ = make_deploy(target, env)
    assert done.returncode == 0, done.stderr
    assert calls == ["make --no-print-directory build", f"sam deploy --config-env sandbox --region us-east-1{extra}"]
    assert "deploy sandbox: stack invoiced-connect-sandbox in us-east-1 (region from AWS_REGION)" in done.stderr
    assert CALLBACK in done.stdout and "Settings > Developers > OAuth Applications" in done.stdout
    assert ".venv/bin/invoiced-connect --stack invoiced-connect-sandbox configure" in done.stdout
    assert ".venv/bin/invoiced-connect --stack invoiced-connect-sandbox link create" in done.stdout


# ---------------------------------------------------------------- configure
def _configure(argv: list[str], stdin: io.StringIO, monkeypatch, getpass=None) -> int:
    monkeypatch.setattr(sys, "stdin", stdin)
    if getpass is not None:
        monkeypatch.setattr("getpass.getpass", getpass)
    return cli.main(argv)


@pytest.fixture
def logs(caplog):
    """Every DEBUG record, botocore's included (its debug log prints request
    and response bodies), whatever other code quietened before this test."""
    for name in (None, "botocore", "botocore.endpoint", "botocore.parsers", "urllib3"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def test_configure_from_stdin_stores_the_secret_and_sets_the_client_id(aws_env, moto_url, monkeypatch, capsys, logs):
    name, secret_arn = make_stack(moto_url, scope="read")
    updates = record_update_stack_calls()
    code = _configure(["--stack", name, "configure", "--client-id", "NewClient42"], io.StringIO(SECRET + "\n"), monkeypatch)
    out, err, logged = *capsys.readouterr(), logs.text
    assert code == 0, err
    assert stored_secret(moto_url, secret_arn) == {"client_secret": SECRET}
    assert stack_parameters(moto_url, name) == {"InvoicedEnvironment": "sandbox", "InvoicedClientId": "NewClient42",
                                                "OAuthScope": "read"}
    [update] = updates
    assert update["UsePreviousTemplate"] is True
    assert set(update["Capabilities"]) >= {"CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"}
    assert sorted(update["Parameters"], key=lambda p: p["ParameterKey"]) == [
        {"ParameterKey": "InvoicedClientId", "ParameterValue": "NewClient42"},
        {"ParameterKey": "InvoicedEnvironment", "UsePreviousValue": True},
        {"ParameterKey": "OAuthScope", "UsePreviousValue": True},
    ]
    assert "Tags" not in update and "NotificationARNs" not in update
    assert f"Client id NewClient42 set on stack {name}" in out and f"--stack {name} link create" in out
    assert f"Stored the client secret in {secret_arn}" in err
    assert_never_shown(out, err, logged)


def test_configure_at_a_terminal_asks_for_the_id_and_hides_the_secret(aws_env, moto_url, monkeypatch, capsys, logs):
    name, secret_arn = make_stack(moto_url)
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return SECRET

    code = _configure(["configure", "--stack", name], Terminal("TypedId7\n"), monkeypatch, fake_getpass)
    out, err, logged = *capsys.readouterr(), logs.text
    assert code == 0, err
    assert prompts == ["Client secret (input is hidden): "] and "Client id: " in err
    assert stored_secret(moto_url, secret_arn) == {"client_secret": SECRET}
    assert stack_parameters(moto_url, name)["InvoicedClientId"] == "TypedId7"
    assert_never_shown(out, err, logged)


def test_a_new_secret_for_the_same_client_leaves_the_stack_alone(aws_env, moto_url, monkeypatch, capsys, logs):
    name, secret_arn = make_stack(moto_url, client_id="Existing1")
    updates = record_update_stack_calls()
    code = _configure(["--stack", name, "configure"], io.StringIO(SECRET), monkeypatch)  # no --client-id: keep it
    out, err, logged = *capsys.readouterr(), logs.text
    assert code == 0, err
    assert updates == [] and stored_secret(moto_url, secret_arn) == {"client_secret": SECRET}
    assert "Client id Existing1 unchanged" in out and "within 5 minutes" in out
    assert_never_shown(out, err, logged)


@pytest.mark.parametrize(
    "argv,stdin,complaint",
    [
        (["--client-id", "Good1"], "", "no client secret on stdin"),
        (["--client-id", "Good1"], "short\n", "shorter than 8"),
        (["--client-id", "Good1"], SECRET + " trailing\n", "spaces, control or non-ASCII"),
        (["--client-id", "Good1"], f"{SECRET}\nuser: me\n", "on one line"),
        (["--client-id", "Good1"], f"\x1b[A{SECRET}\n", "spaces, control or non-ASCII"),
        (["--client-id", "bad-id"], SECRET, "1-128 letters and digits"),
        (["--client-id", SECRET + "-"], SECRET, "1-128 letters and digits"),  # not repeated: it might be a secret
        (["--client-id", SECRET], SECRET, "that is the client id"),
        ([], SECRET, "pass --client-id ID"),
    ],
    ids=["empty", "short", "space", "two-lines", "escape", "bad-id", "secret-as-id", "secret-as-bad-id", "no-id"],
)
def test_bad_input_is_refused_clearly_and_nothing_is_written(
    aws_env, moto_url, monkeypatch, capsys, logs, argv, stdin, complaint
):
    name, secret_arn = make_stack(moto_url)
    updates = record_update_stack_calls()
    code = _configure(["--stack", name, "configure", *argv], io.StringIO(stdin), monkeypatch)
    out, err, logged = *capsys.readouterr(), logs.text
    assert code == 2 and err.startswith("invoiced-connect: ") and complaint in err
    assert stored_secret(moto_url, secret_arn) == PLACEHOLDER
    assert updates == [] and stack_parameters(moto_url, name)["InvoicedClientId"] == ""
    assert_never_shown(out, err, logged)


def test_the_installed_command_takes_a_piped_secret(moto_url, bare_env, tmp_path):
    """`pass show x | head -n 1 | invoiced-connect --stack NAME configure --client-id ID`, for real: a
    separate process whose stdin is a pipe, with nothing secret on its command line or in its output."""
    name, secret_arn = make_stack(moto_url)
    argv = [str(Path(sys.executable).parent / "invoiced-connect"), "--stack", name, "configure", "--client-id", "Piped1"]
    done = subprocess.run(argv, input=SECRET + "\n", capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**bare_env, **FAKE_KEYS, "AWS_REGION": REGION, "AWS_ENDPOINT_URL": moto_url,
                               "PATH": os.environ["PATH"]})
    assert done.returncode == 0, done.stderr
    assert stored_secret(moto_url, secret_arn) == {"client_secret": SECRET}
    assert stack_parameters(moto_url, name)["InvoicedClientId"] == "Piped1"
    assert_never_shown(" ".join(argv), done.stdout, done.stderr)
    assert f"--stack {name} link create my-customer-42" in done.stdout


def test_a_failed_client_id_update_says_the_secret_is_stored(aws_env, moto_url):
    name, secret_arn = make_stack(moto_url)

    class FailingUpdater:
        def set_parameter(self, stack, key, value):
            raise DeployError(f"the update of stack {stack.name} did not complete: status UPDATE_ROLLBACK_COMPLETE")

    with pytest.raises(DeployError) as caught:
        deployment.configure(name, cloudformation=client("cloudformation", moto_url),
                             secretsmanager=client("secretsmanager", moto_url), client_id="Abc1",
                             stdin=io.StringIO(SECRET), interactive=False, getpass=None, ask=None,
                             updater=FailingUpdater())
    assert str(caught.value) == (
        f"the update of stack {name} did not complete: status UPDATE_ROLLBACK_COMPLETE. The client secret is "
        "already stored; if the stack does not end up with client id Abc1, run configure again"
    )
    assert stored_secret(moto_url, secret_arn) == {"client_secret": SECRET}


def test_configure_names_an_unknown_stack(aws_env, monkeypatch, capsys):
    code = _configure(["--stack", "no-such-stack", "configure"], io.StringIO(SECRET), monkeypatch)
    assert code == 2
    assert capsys.readouterr().err.startswith("invoiced-connect: no stack no-such-stack in us-east-1")


def test_configure_warns_when_the_local_samconfig_would_undo_it(aws_env, moto_url, monkeypatch, capsys, tmp_path):
    name, _ = make_stack(moto_url)
    (tmp_path / "samconfig.toml").write_text(
        f'[sandbox.deploy.parameters]\nstack_name = "{name}"\nparameter_overrides = "InvoicedClientId=\\"\\""\n'
    )
    monkeypatch.chdir(tmp_path)
    assert _configure(["--stack", name, "configure", "--client-id", "Abc1"], io.StringIO(SECRET), monkeypatch) == 0
    assert 'warning: samconfig.toml [sandbox.deploy.parameters] has InvoicedClientId="" in parameter_overrides' in (
        capsys.readouterr().err
    )


def _stubbed(service: str) -> tuple[object, Stubber]:
    made = boto3.client(service, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    return made, Stubber(made)


def _described(status: str, **extra) -> dict:
    return {"Stacks": [{
        "StackName": "ic", "StackStatus": status, "CreationTime": "2025-01-01T00:00:00Z",
        "Parameters": [{"ParameterKey": "InvoicedClientId", "ParameterValue": ""},
                       {"ParameterKey": "InvoicedEnvironment", "ParameterValue": "sandbox"}],
        "Outputs": [{"OutputKey": "ClientSecretArn", "OutputValue": "arn:aws:secretsmanager:us-east-1:1:secret:x"}],
        "Capabilities": ["CAPABILITY_NAMED_IAM"], **extra,
    }]}


def test_a_failed_stack_update_is_reported_with_its_reason():
    """moto completes every update, so the failure path runs against stubbed answers."""
    cfn, stub = _stubbed("cloudformation")
    stub.add_response("describe_stacks", _described("UPDATE_COMPLETE"), {"StackName": "ic"})
    stub.add_response("update_stack", {"StackId": "arn:stack/ic"}, {
        "StackName": "ic", "UsePreviousTemplate": True,
        "Parameters": [{"ParameterKey": "InvoicedEnvironment", "UsePreviousValue": True},
                       {"ParameterKey": "InvoicedClientId", "ParameterValue": "Abc1"}],
        "Capabilities": ["CAPABILITY_AUTO_EXPAND", "CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
    })
    stub.add_response("describe_stacks", _described("UPDATE_ROLLBACK_COMPLETE"), {"StackName": "ic"})  # the waiter
    stub.add_response("describe_stacks", _described("UPDATE_ROLLBACK_COMPLETE"), {"StackName": "ic"})
    stub.add_response("describe_stack_events", {"StackEvents": [
        {"StackId": "s", "EventId": "3", "StackName": "ic", "Timestamp": "2025-01-01T00:03:00Z",
         "LogicalResourceId": "ic", "ResourceStatus": "UPDATE_ROLLBACK_IN_PROGRESS",
         "ResourceStatusReason": "The following resource(s) failed to update: [ConnectFunction]."},
        {"StackId": "s", "EventId": "2", "StackName": "ic", "Timestamp": "2025-01-01T00:02:00Z",
         "LogicalResourceId": "ConnectFunction", "ResourceStatus": "UPDATE_FAILED",
         "ResourceStatusReason": "Resource handler returned message: AccessDenied"},
        {"StackId": "s", "EventId": "1", "StackName": "ic", "Timestamp": "2025-01-01T00:01:00Z",
         "LogicalResourceId": "ic", "ResourceStatus": "UPDATE_IN_PROGRESS"},
        {"StackId": "s", "EventId": "0", "StackName": "ic", "Timestamp": "2024-01-01T00:01:00Z",
         "LogicalResourceId": "Old", "ResourceStatus": "CREATE_FAILED", "ResourceStatusReason": "long ago"},
    ]}, {"StackName": "ic"})
    with stub:
        info = deployment.describe_stack(cfn, "ic")
        with pytest.raises(DeployError) as caught:
            StackParameterUpdater(cfn, delay=1, max_attempts=2).set_parameter(info, "InvoicedClientId", "Abc1")
        stub.assert_no_pending_responses()
    assert str(caught.value) == (
        "the update of stack ic did not complete: status UPDATE_ROLLBACK_COMPLETE; "
        "first failure: ConnectFunction: Resource handler returned message: AccessDenied"
    )


def test_configure_writes_nothing_while_the_stack_is_busy():
    cfn, cfn_stub = _stubbed("cloudformation")
    secrets, secrets_stub = _stubbed("secretsmanager")  # no answers queued: any call would fail the test
    cfn_stub.add_response("describe_stacks", _described("UPDATE_IN_PROGRESS"), {"StackName": "ic"})
    with cfn_stub, secrets_stub, pytest.raises(DeployError, match=r"stack ic is busy \(UPDATE_IN_PROGRESS\)"):
        deployment.configure("ic", cloudformation=cfn, secretsmanager=secrets, client_id="Abc1",
                             stdin=io.StringIO(SECRET), interactive=False, getpass=None, ask=None)


# ---------------------------------------------------------------- next steps
def test_next_steps_from_the_stack_before_and_after_configure(aws_env, moto_url, monkeypatch, capsys, logs):
    name, _ = make_stack(moto_url)
    assert cli.main(["--stack", name, "next-steps"]) == 0
    before = capsys.readouterr().out
    assert CALLBACK in before and "Settings > Developers > OAuth Applications" in before
    assert f"invoiced-connect --stack {name} configure" in before
    assert "client id:     not set yet" in before and "client secret: not stored yet" in before
    assert f"invoiced-connect --stack {name} link create my-customer-42" in before
    assert _configure(["--stack", name, "configure", "--client-id", "Ready1"], io.StringIO(SECRET), monkeypatch) == 0
    capsys.readouterr()
    assert cli.main(["next-steps", "--stack", name]) == 0  # reads the secret to tell whether it is there
    after, err = capsys.readouterr()
    assert "Client id Ready1 and client secret: configured" in after and "client secret: stored" in after
    assert_never_shown(before, after, err, logs.text)


def test_next_steps_says_when_the_secret_cannot_be_read():
    secrets, stub = _stubbed("secretsmanager")
    stub.add_client_error("get_secret_value", "AccessDeniedException", "no")
    with stub:
        assert deployment.client_secret_state(secrets, "arn:x") == (None, "AccessDeniedException")


def test_the_secret_is_kept_out_of_botocore_debug_logs_even_when_they_are_on(aws_env, moto_url, logs):
    """The control: without the guard, botocore's debug log holds the request body."""
    name, secret_arn = make_stack(moto_url)
    secrets = client("secretsmanager", moto_url)
    secrets.put_secret_value(SecretId=secret_arn, SecretString=json.dumps({"client_secret": "LOGGED" + SECRET}))
    assert "LOGGED" in logs.text
    logs.clear()
    deployment.store_client_secret(secrets, secret_arn, deployment.ClientSecret(SECRET))
    assert deployment.client_secret_state(secrets, secret_arn) == (True, "")
    assert SECRET not in logs.text
    assert logging.root.manager.disable == logging.NOTSET  # the guard put logging back
