"""The invoiced-connect command: argument parsing and clear failures."""

from __future__ import annotations

import argparse
from datetime import timedelta

import pytest

from invoiced_connect import cli


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
    from invoiced_connect.settings import get_settings

    for name in ("TABLE_NAME", "KMS_KEY_ID", "PUBLIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    assert cli.main(["link", "create", "acme-1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "invoiced-connect: TABLE_NAME is not set "
        "(use --env-file .local/stack.env for the local stack, or --stack NAME for a deployed one)"
    )
    get_settings.cache_clear()


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
        with pytest.raises(ValueError, match="no output ConnectUrl"):
            cli.stack_environment("other", cfn)


def test_unknown_stack_is_one_clear_line(monkeypatch, capsys):
    from moto import mock_aws

    from invoiced_connect import aws

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    aws.reset_clients()
    with mock_aws():
        assert cli.main(["--stack", "does-not-exist", "link", "create", "acme-1"]) == 2
    aws.reset_clients()
    err = capsys.readouterr().err
    assert err.startswith("invoiced-connect: ") and "does-not-exist" in err
