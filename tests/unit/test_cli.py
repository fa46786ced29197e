"""The invoiced-connect command: argument parsing and clear failures."""

from __future__ import annotations

import argparse
from datetime import timedelta

import pytest
from invoiced_connect_tools import cli
from invoiced_connect_tools.deployment import DeployError

from invoiced_connect import runtime


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("15m", 900), ("12h", 43200), ("7d", 604800)])
def test_durations(text, seconds):
    assert cli.parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "1w", "-5", "abc", "1.5h"])
def test_bad_durations_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_duration(text)


def test_env_file_is_parsed_and_bad_lines_are_named(tmp_path):
    good = tmp_path / "stack.env"
    good.write_text("# comment\nTABLE_NAME=t\n\nPUBLIC_BASE_URL = http://127.0.0.1:3000\n")
    assert cli.read_env_file(str(good)) == {"TABLE_NAME": "t", "PUBLIC_BASE_URL": "http://127.0.0.1:3000"}
    bad = tmp_path / "bad.env"
    bad.write_text("TABLE_NAME=t\nnot a pair\n")
    with pytest.raises(ValueError, match="bad.env:2"):
        cli.read_env_file(str(bad))


def test_missing_configuration_is_one_clear_line(monkeypatch, capsys, tmp_path):
    from invoiced_connect import runtime

    for name in ("TABLE_NAME", "KMS_KEY_ID", "PUBLIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    runtime.reset()
    assert cli.main(["link", "create", "acme-1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "invoiced-connect: TABLE_NAME is not set "
        "(use --env-file .local/stack.env for the local stack, or --stack NAME for a deployed one)"
    )
    runtime.reset()


def test_env_file_and_stack_are_exclusive(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--env-file", "a.env", "--stack", "s", "link", "create", "acme-1"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_missing_env_file_is_reported(capsys, tmp_path):
    assert cli.main(["--env-file", str(tmp_path / "nope.env"), "link", "create", "acme-1"]) == 2
    assert "nope.env" in capsys.readouterr().err


# CloudFormation reports a CommaDelimitedList parameter as the string it was
# given; moto reports a Python list's repr, so the stand-in uses a String.
STACK_TEMPLATE = """
Parameters:
  ReturnUrlAllowlist: {Type: String, Default: ""}
Resources:
  Placeholder: {Type: AWS::SNS::Topic}
Outputs:
  ConnectUrl: {Value: "https://abc123.execute-api.us-east-1.amazonaws.com/connect"}
  LinkSigningSecretArn: {Value: "arn:aws:secretsmanager:us-east-1:123456789012:secret:link-AbCdEf"}
  TokensTableName: {Value: "tokens-table"}
  TokenKeyArn: {Value: "arn:aws:kms:us-east-1:123456789012:key/1234"}
  ConnectionsFunctionName: {Value: "ic-test-connections"}
"""


def test_stack_environment_reads_outputs_and_parameters():
    import boto3
    from moto import mock_aws

    with mock_aws():
        cfn = boto3.client("cloudformation", region_name="us-east-1")
        cfn.create_stack(
            StackName="ic-test",
            TemplateBody=STACK_TEMPLATE,
            Parameters=[{"ParameterKey": "ReturnUrlAllowlist", "ParameterValue": "https://a.test/x,https://b.test"}],
        )
        env = cli.stack_environment("ic-test", cfn)
        assert env == {
            "PUBLIC_BASE_URL": "https://abc123.execute-api.us-east-1.amazonaws.com",
            "LINK_SIGNING_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:link-AbCdEf",
            "TABLE_NAME": "tokens-table",
            "KMS_KEY_ID": "arn:aws:kms:us-east-1:123456789012:key/1234",
            "CONNECTIONS_FUNCTION_NAME": "ic-test-connections",
            "RETURN_URL_ALLOWLIST": "https://a.test/x,https://b.test",
        }
        cfn.create_stack(StackName="other", TemplateBody=STACK_TEMPLATE.split("Outputs:")[0])
        with pytest.raises(DeployError, match="no output ConnectUrl"):
            cli.stack_environment("other", cfn)


def test_unknown_stack_is_one_clear_line(monkeypatch, capsys):
    from moto import mock_aws


    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    runtime.reset()
    with mock_aws():
        assert cli.main(["--stack", "does-not-exist", "link", "create", "acme-1"]) == 2
    runtime.reset()
    err = capsys.readouterr().err
    assert err.startswith("invoiced-connect: ") and "does-not-exist" in err


# ---------------------------------------------------------------- deploy helpers (no AWS)
# The configure and next-steps commands against a stack, and the Makefile's
# deploy targets, are tested in tests/integration/test_deploy.py.
def test_configure_has_no_option_that_could_carry_the_secret(capsys):
    import re

    with pytest.raises(SystemExit):
        cli.main(["configure", "--help"])
    usage = capsys.readouterr().out
    assert set(re.findall(r"(?<![\w-])--?[a-z][a-z-]*", usage.split("\n\n")[0])) == {"-h", "--stack", "--client-id"}
    with pytest.raises(SystemExit):
        cli.main(["--stack", "s", "configure", "--client-secret", "hunter2hunter2"])
    assert "unrecognized arguments: --client-secret" in capsys.readouterr().err


def test_configure_and_next_steps_take_the_stack_before_or_after_the_command():
    parser = cli._build_parser()
    assert parser.parse_args(["--stack", "a", "configure"]).stack == "a"
    assert parser.parse_args(["configure", "--stack", "b", "--client-id", "X1"]).stack == "b"
    assert parser.parse_args(["next-steps", "--stack", "c"]).stack == "c"
    assert parser.parse_args(["next-steps"]).stack is None


@pytest.mark.parametrize("argv", [["configure"], ["next-steps"], ["--env-file", "x.env", "next-steps"]])
def test_stack_commands_need_a_stack(argv, capsys):
    assert cli.main(argv) == 2
    assert "use --stack NAME" in capsys.readouterr().err


def test_the_client_secret_never_shows_itself():
    import pickle

    from invoiced_connect_tools.deployment import ClientSecret

    secret = ClientSecret("s3cr3tValue-42")
    shown = [str(secret), repr(secret), f"{secret}", format(secret), repr([secret]), repr({"s": secret})]
    assert all("s3cr3tValue" not in text for text in shown), shown
    assert secret.reveal() == "s3cr3tValue-42"
    with pytest.raises(TypeError):
        pickle.dumps(secret)


@pytest.mark.parametrize(
    "text,complaint",
    [
        ("", "is empty"),
        ("short7c", "shorter than 8"),
        ("x" * 1025, "longer than 1024"),
        ("has space-in-it", "spaces, control or non-ASCII"),
        ("tab\tinside-it", "spaces, control or non-ASCII"),
        ("bell\x07inside-it", "spaces, control or non-ASCII"),
        ("smart\u2019quote-x", "spaces, control or non-ASCII"),
        ("AbCdEf123456", "that is the client id"),
    ],
)
def test_bad_client_secrets_are_named_without_being_shown(text, complaint):
    from invoiced_connect_tools.deployment import DeployError, validate_client_secret

    with pytest.raises(DeployError) as caught:
        validate_client_secret(text, client_id="AbCdEf123456")
    message = str(caught.value)
    assert complaint in message
    if len(text) >= 5:
        assert text not in message and repr(text) not in message


@pytest.mark.parametrize("value", ["", "abc-123", "abc 123", "a" * 129, "ünïcode"])
def test_bad_client_ids_are_refused(value):
    from invoiced_connect_tools.deployment import DeployError, validate_client_id

    with pytest.raises(DeployError, match="1-128 letters and digits"):
        validate_client_id(value)


def test_a_good_client_id_and_secret_pass():
    from invoiced_connect_tools.deployment import validate_client_id, validate_client_secret

    assert validate_client_id(" AbC123 ") == "AbC123"
    assert validate_client_secret("aB3$%^&*()_+-={}[]|:;<>?,./~`'\"!@#").reveal().startswith("aB3")


def test_the_secret_is_read_from_one_line_of_stdin_without_its_newline():
    import io

    from invoiced_connect_tools.deployment import DeployError, read_client_secret

    def no_prompt(_):
        raise AssertionError("getpass must not be used when stdin is not a terminal")

    assert read_client_secret(io.StringIO("pipedSecret123\n"), False, no_prompt).reveal() == "pipedSecret123"
    assert read_client_secret(io.StringIO("pipedSecret123\r\n"), False, no_prompt).reveal() == "pipedSecret123"
    assert read_client_secret(io.StringIO("pipedSecret123"), False, no_prompt).reveal() == "pipedSecret123"
    with pytest.raises(DeployError, match="on one line"):
        read_client_secret(io.StringIO("pipedSecret123\nlogin: me\n"), False, no_prompt)
    with pytest.raises(DeployError, match="no client secret on stdin"):
        read_client_secret(io.StringIO(""), False, no_prompt)


def test_at_a_terminal_the_secret_is_read_with_getpass():
    import io

    from invoiced_connect_tools.deployment import read_client_secret

    prompts = []
    stdin = io.StringIO("this must not be read\n")
    secret = read_client_secret(stdin, True, lambda prompt: prompts.append(prompt) or "typedSecret123")
    assert secret.reveal() == "typedSecret123" and prompts == ["Client secret (input is hidden): "]
    assert stdin.read() == "this must not be read\n"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("InvoicedEnvironment=sandbox", {"InvoicedEnvironment": "sandbox"}),
        ('InvoicedEnvironment="sandbox" InvoicedClientId="" ReturnUrlAllowlist="https://a.test/x,https://b.test"',
         {"InvoicedEnvironment": "sandbox", "InvoicedClientId": "", "ReturnUrlAllowlist": "https://a.test/x,https://b.test"}),
        ("ParameterKey=OAuthScope,ParameterValue=read", {"OAuthScope": "read"}),
        (["InvoicedEnvironment=production", "OAuthScope=read"], {"InvoicedEnvironment": "production", "OAuthScope": "read"}),
        ("", {}),
    ],
)
def test_parameter_overrides_are_read_as_sam_writes_them(text, expected):
    from invoiced_connect_tools.deployment import parse_parameter_overrides

    assert parse_parameter_overrides(text) == expected


def test_region_comes_from_samconfig_then_the_environment_then_the_profile():
    from invoiced_connect_tools.deployment import resolve_region

    both = {"AWS_DEFAULT_REGION": "eu-west-1", "AWS_REGION": "eu-central-1"}
    assert resolve_region("ap-south-1", both, "us-west-2") == ("ap-south-1", "samconfig.toml")
    assert resolve_region(None, both, "eu-west-1") == ("eu-west-1", "AWS_DEFAULT_REGION")
    assert resolve_region(None, {"AWS_REGION": "eu-central-1"}, "us-west-2") == ("eu-central-1", "AWS_REGION")
    assert resolve_region(None, {"AWS_REGION": " "}, "us-west-2") == ("us-west-2", "your AWS profile")
    assert resolve_region(None, {}, None) == (None, "")


def _stack(status="UPDATE_COMPLETE", client_id="", **outputs):
    from invoiced_connect_tools.deployment import StackInfo

    return StackInfo(
        name="ic-sandbox", region="us-east-1", status=status,
        outputs={"CallbackUrl": "https://abc.execute-api.us-east-1.amazonaws.com/callback",
                 "ClientSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:cs-AbCdEf", **outputs},
        parameters={"InvoicedEnvironment": "sandbox", "InvoicedClientId": client_id}, capabilities=("CAPABILITY_IAM",),
    )


@pytest.mark.parametrize(
    "status,problem",
    [("UPDATE_IN_PROGRESS", "is busy"), ("UPDATE_ROLLBACK_IN_PROGRESS", "is busy"),
     ("ROLLBACK_COMPLETE", "delete it"), ("UPDATE_COMPLETE", None), ("CREATE_COMPLETE", None),
     ("UPDATE_ROLLBACK_COMPLETE", None), ("REVIEW_IN_PROGRESS", None)],
)
def test_a_stack_sam_deploy_cannot_update_is_named_before_building(status, problem):
    from invoiced_connect_tools.deployment import deployable

    found = deployable(_stack(status))
    assert (found is None) if problem is None else (problem in found)
    assert deployable(None) is None


def test_next_steps_text_before_and_after_configure():
    from invoiced_connect_tools.deployment import next_steps

    before = next_steps(_stack(), (False, ""), program=".venv/bin/invoiced-connect")
    assert "https://abc.execute-api.us-east-1.amazonaws.com/callback" in before
    assert "Settings > Developers > OAuth Applications" in before and "https://sandbox.invoiced.com" in before
    assert ".venv/bin/invoiced-connect --stack ic-sandbox configure" in before
    assert "client id:     not set yet" in before and "client secret: not stored yet" in before
    assert ".venv/bin/invoiced-connect --stack ic-sandbox link create my-customer-42" in before
    after = next_steps(_stack(client_id="Abc123"), (True, ""), program="invoiced-connect")
    assert "Client id Abc123 and client secret: configured" in after and "client secret: stored" in after
    unknown = next_steps(_stack(client_id="Abc123"), (None, "AccessDeniedException"))
    assert "unknown (could not read the secret: AccessDeniedException)" in unknown and "configured" not in unknown
    assert "Wire your app" not in unknown  # a stack without the app API's outputs


def test_next_steps_name_the_app_apis_functions_and_policies():
    from invoiced_connect_tools.deployment import next_steps

    text = next_steps(_stack(client_id="Abc123", LinksFunctionName="ic-sandbox-links",
                             LinkIssuerPolicyArn="arn:aws:iam::123456789012:policy/links",
                             TokensFunctionName="ic-sandbox-tokens",
                             TokenVendingPolicyArn="arn:aws:iam::123456789012:policy/tokens"), (True, ""))
    assert "4. Wire your app" in text and "docs/app-api.md" in text
    assert "ic-sandbox-links  (policy arn:aws:iam::123456789012:policy/links)" in text
    assert "ic-sandbox-tokens  (policy arn:aws:iam::123456789012:policy/tokens)" in text
    assert "connection state       -  (policy -)" in text


def test_next_steps_needs_the_outputs_of_a_finished_deploy():
    from invoiced_connect_tools.deployment import DeployError, StackInfo, next_steps

    bare = StackInfo("ic", "us-east-1", "REVIEW_IN_PROGRESS", {}, {}, ())
    with pytest.raises(DeployError, match="no output CallbackUrl \\(status REVIEW_IN_PROGRESS\\)"):
        next_steps(bare, (False, ""))


# ------------------------------------------------------------------ SnapStart description budget
def _deploy_env(**overrides: str):
    from invoiced_connect_tools.deployment import DeployEnvironment

    return DeployEnvironment("sandbox", "ic-test", None, None, dict(overrides), {})


def _described_stack(**parameters: str):
    from invoiced_connect_tools.deployment import StackInfo

    return StackInfo("ic-test", "us-east-1", "UPDATE_COMPLETE", {}, dict(parameters), ())


def test_the_snapstart_description_budget_matches_the_template():
    import re
    from pathlib import Path

    from invoiced_connect_tools.deployment import VERSION_DESCRIPTION_FIXED

    template = (Path(__file__).resolve().parents[2] / "template.yaml").read_text()
    formats = set(re.findall(r'- "(\$\{Layer\}[^"]+)"', template))
    assert len(formats) == 1, formats
    (description,) = formats
    fields = re.findall(r"\$\{(\w+)\}", description)
    assert fields == ["Layer", "InvoicedEnvironment", "InvoicedClientId", "OAuthScope", "RefreshWindowMinutes",
                      "KeepAliveDays", "ActiveUseHours", "RejectedTokenWindowSeconds", "PublicBaseUrl", "Returns"]
    widest_fixed = {"Layer": 6, "InvoicedEnvironment": len("production"), "OAuthScope": len("read_write"),
                    "RefreshWindowMinutes": 2, "KeepAliveDays": 3, "ActiveUseHours": 3,
                    "RejectedTokenWindowSeconds": 4}
    literal = len(re.sub(r"\$\{\w+\}", "", description))
    assert literal + sum(widest_fixed.values()) == VERSION_DESCRIPTION_FIXED


def test_a_deploy_whose_snapstart_description_would_overflow_is_stopped_first():
    from invoiced_connect_tools.deployment import (
        VERSION_DESCRIPTION_FIXED,
        VERSION_DESCRIPTION_LIMIT,
        snapstart_description_overflow,
    )

    room = VERSION_DESCRIPTION_LIMIT - VERSION_DESCRIPTION_FIXED
    client_id, base = "a" * 20, "https://connect.example.com"
    fits = "https://app.example.com/" + "x" * (room - len(client_id) - len(base) - 24)
    stack = _described_stack(SnapStart="Enabled", InvoicedClientId=client_id, PublicBaseUrl=base)
    assert snapstart_description_overflow(_deploy_env(ReturnUrlAllowlist=fits), stack) is None
    problem = snapstart_description_overflow(_deploy_env(ReturnUrlAllowlist=fits + "y"), stack)
    assert problem and "ReturnUrlAllowlist" in problem and f"at most {room}" in problem
    # Off, the description is not used at all; the overrides decide over the stack.
    assert snapstart_description_overflow(_deploy_env(ReturnUrlAllowlist=fits + "y" * 100, SnapStart="Disabled"), stack) is None
    assert snapstart_description_overflow(_deploy_env(ReturnUrlAllowlist=fits + "y"), None) is None
    assert snapstart_description_overflow(_deploy_env(ReturnUrlAllowlist="y" * room, SnapStart="Enabled"), None) is None
    assert snapstart_description_overflow(_deploy_env(ReturnUrlAllowlist="y" * (room + 1), SnapStart="Enabled"), None)
