"""The ``invoiced-connect`` command.

Reads the same configuration as the functions: the process environment, or
an env file (``--env-file .local/stack.env`` for the local stack, written by
``make run``). Errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``90``, ``90s``, ``15m``, ``12h`` or ``7d``."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 3600, 15m, 12h, 7d)")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def read_env_file(path: str) -> dict[str, str]:
    values: dict[str, str] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"{path}:{number}: expected KEY=VALUE")
            values[key.strip()] = value.strip()
    return values


def stack_environment(stack_name: str, cloudformation: Any = None) -> dict[str, str]:
    """The settings of a deployed stack, read from its outputs and parameters."""
    from invoiced_connect import aws

    cloudformation = cloudformation or aws.client("cloudformation")
    stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    parameters = {p["ParameterKey"]: p.get("ParameterValue", "") for p in stacks[0].get("Parameters", [])}
    try:
        env = {
            "PUBLIC_BASE_URL": outputs["ConnectUrl"].removesuffix("/connect"),
            "LINK_SIGNING_SECRET_ARN": outputs["LinkSigningSecretArn"],
            "TABLE_NAME": outputs["TokensTableName"],
            "KMS_KEY_ID": outputs["TokenKeyArn"],
        }
    except KeyError as exc:
        raise ValueError(f"stack {stack_name} has no output {exc.args[0]}; is it an invoiced-connect stack?") from None
    env["RETURN_URL_ALLOWLIST"] = parameters.get("ReturnUrlAllowlist", "")
    return env


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="invoiced-connect", description="Operate an invoiced-connect deployment.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--env-file",
        help="read configuration from this KEY=VALUE file (make run writes .local/stack.env)",
    )
    source.add_argument(
        "--stack",
        help="read configuration from this deployed CloudFormation stack (uses your AWS credentials and region)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    link = commands.add_parser("link", help="connect links").add_subparsers(dest="link_command", required=True)
    create = link.add_parser("create", help="make a signed connect link for one of your customers")
    create.add_argument("connection_id", help="your id for the customer (letters, digits, . _ : @ -)")
    create.add_argument("--return-to", help="where to send the browser afterwards (must be allowlisted)")
    create.add_argument(
        "--ttl", type=parse_duration, default=timedelta(hours=1), help="link lifetime (default 1h, at most 30d)"
    )
    return parser


def _hint(exc: Exception, args: argparse.Namespace) -> str:
    from botocore.exceptions import NoRegionError

    from invoiced_connect.settings import SettingsError

    if isinstance(exc, SettingsError) and not (args.env_file or args.stack):
        return " (use --env-file .local/stack.env for the local stack, or --stack NAME for a deployed one)"
    if isinstance(exc, NoRegionError):
        return " (set AWS_REGION or configure a default region for your AWS profile)"
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.env_file:
            os.environ.update(read_env_file(args.env_file))
        if args.stack:
            os.environ.update(stack_environment(args.stack))
        if args.command == "link" and args.link_command == "create":
            from invoiced_connect.links import create_connect_link

            print(create_connect_link(args.connection_id, return_to=args.return_to, ttl=args.ttl))
            return 0
    except (ValueError, OSError, RuntimeError, BotoCoreError, ClientError) as exc:
        # ValueError: bad input; OSError: env file; RuntimeError: settings or
        # secrets; botocore: credentials, region, unknown stack.
        print(f"invoiced-connect: {exc}{_hint(exc, args)}", file=sys.stderr)
        return 2
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
