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


def test_a_missing_env_file_is_one_sentence_before_or_after_the_command(capsys, tmp_path):
    path = str(tmp_path / "nope.env")
    for argv in (["--env-file", path, "link", "create", "acme-1"], ["link", "create", "acme-1", "--env-file", path]):
        assert cli.main(argv) == 2
        captured = capsys.readouterr()
        assert captured.err == (f"invoiced-connect: no env file at {path} "
                                "(run make run first, or pass --env-file PATH)\n")
        assert captured.out == ""


def test_an_unreadable_env_file_is_one_sentence(capsys, tmp_path):
    binary = tmp_path / "binary.env"
    binary.write_bytes(b"\xff\xfe\x00junk")
    for path, said in ((tmp_path, "is a directory, not an env file"), (binary, "is not a text file")):
        assert cli.main(["connections", "list", "--env-file", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"invoiced-connect: {path} {said}") and err.count("\n") == 1
        assert "Errno" not in err and "Traceback" not in err


# ---------------------------------------------------------------- global options in either place
_COMMANDS = [["link", "create", "acme-1"], ["connections", "list"], ["connections", "show", "acme-1"],
             ["refresh", "acme-1"], ["disconnect", "acme-1", "--yes"]]


@pytest.mark.parametrize("command", _COMMANDS, ids=lambda argv: " ".join(argv[:2]))
@pytest.mark.parametrize("option,dest", [("--env-file", "env_file"), ("--stack", "stack")])
def test_global_options_are_taken_before_or_after_the_command(command, option, dest):
    before = cli.parse_args([option, "V1", *command])
    after = cli.parse_args([*command, option, "V2"])
    assert (getattr(before, dest), getattr(after, dest)) == ("V1", "V2")
    other = {"env_file": "stack", "stack": "env_file"}[dest]
    assert getattr(before, other) is None and getattr(after, other) is None
    assert getattr(cli.parse_args(command), dest) is None


@pytest.mark.parametrize("argv", [
    ["--env-file", "a.env", "refresh", "acme-1", "--stack", "s"],
    ["--stack", "s", "connections", "list", "--env-file", "a.env"],
    ["link", "create", "acme-1", "--env-file", "a.env", "--stack", "s"],
])
def test_env_file_and_stack_are_exclusive_wherever_they_are_given(argv, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.parse_args(argv)
    assert stopped.value.code == 2
    assert "argument --stack: not allowed with argument --env-file" in capsys.readouterr().err


def test_the_env_file_after_the_command_is_the_one_read(monkeypatch, tmp_path, capsys):
    for name in ("TABLE_NAME", "KMS_KEY_ID", "PUBLIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    env = tmp_path / "stack.env"
    env.write_text("IC_TEST_MARKER=read\n")
    monkeypatch.setenv("IC_TEST_MARKER", "unset")
    assert cli.main(["link", "create", "acme-1", "--env-file", str(env)]) == 2  # the file has no settings
    import os

    assert os.environ["IC_TEST_MARKER"] == "read"
    assert "TABLE_NAME is not set" in capsys.readouterr().err
    runtime.reset()


def _every_parser(parser: argparse.ArgumentParser, path: str = "invoiced-connect"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _every_parser(sub, f"{path} {name}")


def test_every_positional_argument_has_help():
    positionals = [(path, action) for path, parser in _every_parser(cli._build_parser())
                   for action in parser._actions if not action.option_strings
                   and not isinstance(action, argparse._SubParsersAction)]
    assert {path for path, _ in positionals} >= {"invoiced-connect link create", "invoiced-connect refresh",
                                                 "invoiced-connect connections show", "invoiced-connect disconnect"}
    for path, action in positionals:
        assert action.help, f"{path} {action.dest} has no help"
        if action.dest == "connection_id":
            assert action.help == "your id for the customer's connection", path


@pytest.mark.parametrize("flag,allowed", [([], False), (["--allow-company-change"], True)])
def test_link_create_passes_allow_company_change_through(monkeypatch, capsys, flag, allowed):
    import inspect

    from invoiced_connect import facade

    made = []

    def create_connect_link(connection_id, return_to=None, ttl=None, *, allow_company_change=False):
        made.append((connection_id, allow_company_change))
        return "https://connect.test/connect?link=v1.x.y"

    assert inspect.signature(facade.create_connect_link).parameters["allow_company_change"].default is False
    monkeypatch.setattr("invoiced_connect.create_connect_link", create_connect_link)
    assert cli.main(["link", "create", "acme-1", *flag]) == 0
    assert made == [("acme-1", allowed)]
    assert capsys.readouterr().out == "https://connect.test/connect?link=v1.x.y\n"


def test_an_allow_company_change_link_carries_the_claim(monkeypatch, capsys):
    from invoiced_connect.connect.links import verify_link_token
    from invoiced_connect.core.settings import load_settings

    key = "k" * 64
    runtime.reset()
    current = runtime.current()
    current.override(settings=load_settings({"TABLE_NAME": "t", "KMS_KEY_ID": "k",
                                             "PUBLIC_BASE_URL": "https://connect.example.com"}))
    monkeypatch.setattr(current, "link_signing_key", lambda: key)
    try:
        for flag, allowed in (([], False), (["--allow-company-change"], True)):
            assert cli.main(["link", "create", "acme-1", *flag]) == 0
            token = capsys.readouterr().out.strip().split("link=", 1)[1]
            assert verify_link_token(token, [key]).allow_company_change is allowed
    finally:
        runtime.reset()


# ---------------------------------------------------------------- outcomes: a line for a person, JSON on request
class _Store:
    def __init__(self, rows=None):
        self.rows = rows or {}

    def get_connection(self, connection_id):
        return self.rows.get(connection_id)


def _row(**changes):
    from invoiced_connect.core.models import Connection, ConnectionStatus

    values = dict(connection_id="acme-1", tenant_id="42", company_name=None, scopes=(), issuer="https://i.test",
                  status=ConnectionStatus.ACTIVE, expires_at=1796234400, version=3, created_at=1700000000,
                  updated_at=1700000000)
    return Connection(**{**values, **changes})


@pytest.fixture
def operator(monkeypatch):
    """The runtime's connections function and store, stood in for; ``answers`` is what the function says."""
    runtime.reset()
    current = runtime.current()
    calls, answers, store = [], [], _Store({"acme-1": (_row(), b"sealed")})
    monkeypatch.setattr(current, "connections_invoker", lambda: lambda payload: calls.append(payload) or answers.pop(0))
    current.override(store=store)
    yield answers, calls, store
    runtime.reset()


@pytest.mark.parametrize("argv,answer,line,status", [
    (["refresh", "acme-1"], {"outcome": "refreshed", "status": "active", "version": 3, "retry_at": None},
     "acme-1: refreshed (version 3), expires 2026-12-02 18:00 UTC", 0),
    (["refresh", "acme-1"], {"outcome": "already_fresh", "status": "active", "version": 3, "retry_at": None},
     "acme-1: already fresh, nothing to do (version 3), expires 2026-12-02 18:00 UTC", 0),
    (["refresh", "acme-1"], {"outcome": "not_found", "status": None, "version": None, "retry_at": None},
     "acme-1: no such connection", 1),
    (["refresh", "acme-1"], {"outcome": "cooling_down", "status": "active", "version": 3, "retry_at": 1796234400},
     "acme-1: not refreshed: cooling down after failed attempts until 2026-12-02 18:00 UTC", 1),
    (["refresh", "acme-1"], {"outcome": "busy", "status": "active", "version": 3, "retry_at": 1796234400},
     "acme-1: busy: another refresh holds the connection until 2026-12-02 18:00 UTC; try again then", 1),
    (["refresh", "acme-1"], {"outcome": "not_active", "status": "revoked", "version": 4, "retry_at": None},
     "acme-1: not refreshed: the connection is revoked", 1),
    (["refresh", "acme-1"], {"outcome": "needs_reauth", "status": "needs_reauth", "version": 3, "retry_at": None},
     "acme-1: needs reauthorization: Invoiced refused the refresh token; send the customer a new connect link", 1),
    (["disconnect", "acme-1", "--yes"], {"outcome": "disconnected", "status": "revoked", "version": 4},
     "acme-1: disconnected: revoked at Invoiced, tokens erased", 0),
    (["disconnect", "acme-1", "--yes"], {"outcome": "already_revoked", "status": "revoked", "version": 4},
     "acme-1: already disconnected", 0),
    (["disconnect", "acme-1", "--yes"], {"outcome": "not_found", "status": None, "version": None},
     "acme-1: no such connection", 1),
    (["disconnect", "acme-1", "--yes"], {"outcome": "unavailable", "status": "active", "version": 3},
     "acme-1: Invoiced could not be reached; nothing changed, try again", 1),
], ids=lambda value: value.get("outcome") if isinstance(value, dict) else None)
def test_refresh_and_disconnect_say_what_happened_in_one_line(operator, capsys, argv, answer, line, status):
    answers, calls, _ = operator
    answers.append({"connection_id": "acme-1", **answer})
    assert cli.main(argv) == status
    assert capsys.readouterr().out == line + "\n"
    assert calls == [{"action": argv[0], "connection_id": "acme-1", **({"force": True} if argv[0] == "refresh" else {})}]


@pytest.mark.parametrize("argv,answer", [
    (["refresh", "acme-1", "--json"], {"outcome": "not_found", "status": "", "version": None, "retry_at": None}),
    (["disconnect", "acme-1", "--yes", "--json"], {"outcome": "not_found", "status": "", "version": None}),
])
def test_with_json_the_answer_is_printed_with_null_for_empty_fields(operator, capsys, argv, answer):
    import json

    answers, _, _ = operator
    answers.append({"connection_id": "acme-1", **answer})
    assert cli.main(argv) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"connection_id": "acme-1", "outcome": "not_found", "status": None, "version": None,
                       **({"retry_at": None} if argv[0] == "refresh" else {})}


def test_a_refresh_the_row_of_which_cannot_be_read_afterwards_still_says_refreshed(operator, capsys):
    from botocore.exceptions import EndpointConnectionError

    answers, _, store = operator

    def unreachable(connection_id):
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

    store.get_connection = unreachable
    answers.append({"connection_id": "acme-1", "outcome": "refreshed", "status": "active", "version": 4,
                    "retry_at": None})
    assert cli.main(["refresh", "acme-1"]) == 0
    assert capsys.readouterr().out == "acme-1: refreshed (version 4)\n"


def test_a_refused_request_is_an_error_not_an_outcome(operator, capsys):
    answers, _, _ = operator
    answers.append({"error": "bad_request", "message": "force must be true or false"})
    assert cli.main(["refresh", "acme-1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("invoiced-connect: the connections function refused the request: "
                            "force must be true or false\n")


def test_show_says_no_such_connection_or_prints_null(operator, capsys):
    assert cli.main(["connections", "show", "acme-2"]) == 1
    assert capsys.readouterr().out == "acme-2: no such connection\n"
    assert cli.main(["connections", "show", "acme-2", "--json"]) == 1
    assert capsys.readouterr().out == "null\n"


def test_show_json_has_null_for_every_empty_field_and_the_table_a_dash(operator, capsys):
    import json

    assert cli.main(["connections", "show", "acme-1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    empty = {"company_name", "refreshed_at", "refresh_at", "active_until", "next_attempt_at", "last_error",
             "outcome_unknown_at", "status_reason", "lease_owner", "lease_until", "scopes"}
    assert {name for name, value in shown.items() if value is None} == empty
    assert "-" not in shown.values() and "" not in shown.values()
    assert shown["expires_at"] == "2026-12-02T18:00:00Z" and shown["has_tokens"] is True
    assert cli.main(["connections", "show", "acme-1"]) == 0
    lines = dict(line.split(None, 1) if " " in line.strip() else (line, "") for line in
                 capsys.readouterr().out.splitlines())
    assert all(lines[name] == "-" for name in empty)


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
    assert cli.parse_args(["--stack", "a", "configure"]).stack == "a"
    assert cli.parse_args(["configure", "--stack", "b", "--client-id", "X1"]).stack == "b"
    assert cli.parse_args(["--stack", "a", "configure", "--stack", "b"]).stack == "b"
    assert cli.parse_args(["next-steps", "--stack", "c"]).stack == "c"
    assert cli.parse_args(["next-steps"]).stack is None


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
                      "KeepAliveDays", "ActiveUseHours", "RejectedTokenWindowSeconds", "PublicBaseUrl", "Returns",
                      "AppName", "SupportContact", "DefaultReturnUrl"]
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
    # The pages' app name, support contact and default return URL share that room.
    pages_texts = {"AppName": "a" * 10, "SupportContact": "s" * 10, "SnapStart": "Enabled"}
    assert snapstart_description_overflow(
        _deploy_env(ReturnUrlAllowlist="y" * (room - 30), DefaultReturnUrl="d" * 10, **pages_texts), None) is None
    problem = snapstart_description_overflow(
        _deploy_env(ReturnUrlAllowlist="y" * (room - 30), DefaultReturnUrl="d" * 11, **pages_texts), None)
    assert problem and "AppName, SupportContact, DefaultReturnUrl" in problem
