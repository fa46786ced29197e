"""The ``invoiced-connect`` command.

Reads the same configuration as the functions: the process environment, or
an env file (``--env-file .local/stack.env`` for the local stack, written by
``make run``), or a deployed stack's outputs (``--stack NAME``); either
option may come before or after the command. Errors are one line on stderr
and exit status 2.

    invoiced-connect link create ID [--return-to URL] [--ttl 1h] [--allow-company-change]
    invoiced-connect connections list [--json]
    invoiced-connect connections show ID [--json]
    invoiced-connect refresh ID [--json]          # a locked refresh, through the connections function
    invoiced-connect disconnect ID [--yes] [--json]
    invoiced-connect next-steps --stack NAME      # after a deploy: what is left to do
    invoiced-connect configure --stack NAME [--client-id ID]

``refresh`` and ``disconnect`` invoke the stack's connections function, as the
reader SDK does, so the command never needs the client secret. Nothing it
prints contains a token. What they (and ``connections show``) come to is one
line for a person, ``acme-1: no such connection``, or with ``--json`` one JSON
value in which an empty field is ``null``; the exit status is 0 when it was
done (or was already so), 1 when not (no such connection included).

``configure`` stores the OAuth client secret in the stack's secret and the
client id in the stack's parameter (see :mod:`invoiced_connect_tools.deployment`).
The secret is read at a prompt that does not echo it, or from stdin when
stdin is not a terminal; no argument carries it, so it stays out of shell
history and the process list, and nothing printed contains it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from invoiced_connect.connect.links import DEFAULT_TTL

if TYPE_CHECKING:
    from invoiced_connect.core.models import Connection

from botocore.exceptions import BotoCoreError, ClientError

from invoiced_connect.sdk.tokens import TokenError

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
            key, sep, value = line.removeprefix("export ").partition("=")
            if not sep or not key.strip():
                raise ValueError(f"{path}:{number}: expected KEY=VALUE")
            try:  # shell quoting, as `source` reads it
                words = shlex.split(value.strip())
            except ValueError:
                raise ValueError(f"{path}:{number}: unbalanced quotes") from None
            values[key.strip()] = " ".join(words)
    return values


def load_env_file(path: str) -> dict[str, str]:
    """:func:`read_env_file`, with a file that cannot be read said in one sentence (``ValueError``)."""
    try:
        return read_env_file(path)
    except FileNotFoundError:
        raise ValueError(f"no env file at {path} (run make run first, or pass --env-file PATH)") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory, not an env file (pass --env-file PATH)") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file of KEY=VALUE lines (pass --env-file PATH)") from None
    except OSError as exc:
        reason = (exc.strerror or type(exc).__name__).lower()
        raise ValueError(f"cannot read the env file {path}: {reason}") from None


def stack_environment(stack_name: str, cloudformation: Any = None) -> dict[str, str]:
    """The settings of a deployed stack, read from its outputs and parameters."""
    from invoiced_connect import runtime
    from invoiced_connect_tools.deployment import describe_stack

    stack = describe_stack(cloudformation or runtime.current().client("cloudformation"), stack_name)
    return {
        "PUBLIC_BASE_URL": stack.output("ConnectUrl").removesuffix("/connect"),
        "LINK_SIGNING_SECRET_ARN": stack.output("LinkSigningSecretArn"),
        "TABLE_NAME": stack.output("TokensTableName"),
        "KMS_KEY_ID": stack.output("TokenKeyArn"),
        "CONNECTIONS_FUNCTION_NAME": stack.output("ConnectionsFunctionName"),
        "RETURN_URL_ALLOWLIST": stack.parameters.get("ReturnUrlAllowlist", ""),
    }


#: The help of every ``connection_id`` argument.
CONNECTION_ID_HELP = "your id for the customer's connection"


def _global_options() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """``--env-file`` and ``--stack``, each defined once, for before or after any command.

    Their defaults are SUPPRESS so that a subcommand, which has them too,
    does not overwrite a value given before it; :func:`parse_args` fills in
    ``None`` for an option given nowhere.
    """
    env_file = argparse.ArgumentParser(add_help=False)
    env_file.add_argument(
        "--env-file", default=argparse.SUPPRESS, metavar="PATH",
        help="read configuration from this KEY=VALUE file (make run writes .local/stack.env)",
    )
    stack = argparse.ArgumentParser(add_help=False)
    stack.add_argument(
        "--stack", default=argparse.SUPPRESS, metavar="NAME",
        help="read configuration from this deployed CloudFormation stack (uses your AWS credentials and region)",
    )
    return env_file, stack


def _build_parser() -> argparse.ArgumentParser:
    env_file, stack = _global_options()
    both = [env_file, stack]
    parser = argparse.ArgumentParser(
        prog="invoiced-connect", description="Operate an invoiced-connect deployment.", parents=both,
        epilog="--env-file and --stack may be given before or after the command.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    link = commands.add_parser("link", help="connect links").add_subparsers(dest="link_command", required=True)
    create = link.add_parser(
        "create", parents=both, help="make a signed connect link for one of your customers",
        description="Make a signed connect link. The id is 1-128 letters, digits and . _ : @ -",
    )
    create.add_argument("connection_id", help=CONNECTION_ID_HELP)
    create.add_argument("--return-to", help="where to send the browser afterwards (must be allowlisted)")
    create.add_argument(
        "--ttl", type=parse_duration, default=DEFAULT_TTL, help="link lifetime (default 1h, at most 30d)"
    )
    create.add_argument(
        "--allow-company-change", action="store_true",
        help="let a reconnect through this link pick another Invoiced company than the connection had "
        "(by default such a reconnect is refused and the connection stays as it is)",
    )

    connections = commands.add_parser("connections", help="look at connections (never their tokens)")
    connection_commands = connections.add_subparsers(dest="connections_command", required=True)
    listing = connection_commands.add_parser("list", parents=both, help="every connection, one line each")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    show = connection_commands.add_parser("show", parents=both, help="one connection in detail")
    show.add_argument("connection_id", help=CONNECTION_ID_HELP)
    show.add_argument("--json", action="store_true", help="as a JSON object (null when there is no such connection)")

    refresh = commands.add_parser(
        "refresh", parents=both, help="refresh a connection's tokens now (locked, like any refresh)"
    )
    refresh.add_argument("connection_id", help=CONNECTION_ID_HELP)
    refresh.add_argument("--json", action="store_true", help="the connections function's answer as a JSON object")
    disconnect = commands.add_parser(
        "disconnect", parents=both, help="revoke a connection at Invoiced and erase its tokens"
    )
    disconnect.add_argument("connection_id", help=CONNECTION_ID_HELP)
    disconnect.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    disconnect.add_argument("--json", action="store_true", help="the connections function's answer as a JSON object")

    commands.add_parser(
        "next-steps", parents=[stack],
        help="after a deploy: the callback URL to register at Invoiced, and what is left to configure",
    )
    configure = commands.add_parser(
        "configure",
        parents=[stack],
        help="store the OAuth client id and secret in the stack (the secret is asked for, or read from stdin)",
        description="Store the Invoiced OAuth application's client id (in the stack's InvoicedClientId "
        "parameter) and client secret (in the stack's ClientSecretArn secret). The secret is asked for "
        "without echo, or read from stdin when stdin is not a terminal: "
        "`pass show invoiced/secret | head -n 1 | invoiced-connect --stack NAME configure --client-id ID`.",
    )
    configure.add_argument(
        "--client-id", help="the client id (asked for when omitted in a terminal; else the stack's current one)"
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with ``--env-file`` and ``--stack`` taken from before or after the command."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    for name in ("env_file", "stack"):
        if not hasattr(args, name):
            setattr(args, name, None)
    if args.env_file is not None and args.stack is not None:
        parser.error("argument --stack: not allowed with argument --env-file")
    return args


# ---------------------------------------------------------------- connections
_SHOWN = ("connection_id", "status", "company_name", "tenant_id", "version", "expires_at", "refresh_at",
          "refreshed_at", "active_until", "failure_count", "next_attempt_at", "last_error", "outcome_unknown_at",
          "status_reason", "lease_owner", "lease_until", "created_at", "updated_at", "issuer", "scopes")
_TIMES = {"expires_at", "refresh_at", "refreshed_at", "active_until", "next_attempt_at", "outcome_unknown_at",
          "lease_until", "created_at", "updated_at"}
#: Refresh outcomes after which the connection holds a current token.
_GOOD_OUTCOMES = {"refreshed", "already_fresh", "race_recovered", "rescue_applied"}
_GOOD_DISCONNECTS = {"disconnected", "already_revoked"}


def _when(epoch: int | None) -> str | None:
    if not epoch:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _utc(epoch: int | None) -> str:
    """A time for a sentence: ``2026-12-02 18:00 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch)) if epoch else "an unknown time"


def _empty_is_null(view: dict[str, Any]) -> dict[str, Any]:
    return {name: None if value == "" else value for name, value in view.items()}


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def connection_fields(connection: Connection) -> dict[str, Any]:
    """What the command shows of a connection: metadata only; ``None`` where a field is empty."""
    view: dict[str, Any] = {}
    for name in _SHOWN:
        value = getattr(connection, name)
        if name == "status":
            value = value.value
        elif name == "scopes":
            value = " ".join(value)
        elif name in _TIMES:
            value = _when(value)
        view[name] = value
    return _empty_is_null(view)


def _list_connections(as_json: bool) -> int:
    from invoiced_connect import runtime

    rows = sorted(runtime.current().store.list_connections(), key=lambda c: c.connection_id)
    if as_json:
        for connection in rows:
            print(json.dumps(connection_fields(connection)))
        return 0
    columns = ("connection_id", "status", "company_name", "version", "expires_at", "refresh_at", "failure_count")
    table = [[_cell(connection_fields(connection)[name]) for name in columns] for connection in rows]
    widths = [max([len(name), *(len(row[i]) for row in table)]) for i, name in enumerate(columns)]
    print("  ".join(name.upper().ljust(width) for name, width in zip(columns, widths, strict=True)).rstrip())
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print(f"{len(rows)} connection(s)", file=sys.stderr)
    return 0


def _show_connection(connection_id: str, as_json: bool) -> int:
    from invoiced_connect import runtime
    from invoiced_connect.core.models import validate_connection_id

    found = runtime.current().store.get_connection(validate_connection_id(connection_id))
    if found is None:
        print("null" if as_json else f"{connection_id}: no such connection")
        return 1
    view = connection_fields(found[0])
    view["has_tokens"] = found[1] is not None
    if as_json:
        print(json.dumps(view, indent=2))
    else:
        for name, value in view.items():
            print(f"{name:<20} {_cell(value)}")
    return 0


def _invoke(action: str, connection_id: str) -> dict[str, Any]:
    from invoiced_connect import runtime
    from invoiced_connect.core.models import validate_connection_id

    payload: dict[str, Any] = {"action": action, "connection_id": validate_connection_id(connection_id)}
    if action == "refresh":
        payload["force"] = True
    answer = runtime.current().connections_invoker()(payload)
    if "error" in answer:  # the function refused the request: as bad as bad input here
        raise ValueError(f"the connections function refused the request: {answer.get('message') or answer['error']}")
    return answer


def _expiry(connection_id: str) -> str:
    """``, expires 2026-12-02 18:00 UTC`` from the connection's row, or nothing when it cannot be read."""
    from invoiced_connect import runtime

    try:
        found = runtime.current().store.get_connection(connection_id)
    except (BotoCoreError, ClientError):  # the refresh is done; only the detail is missing
        return ""
    return f", expires {_utc(found[0].expires_at)}" if found and found[0].expires_at else ""


def refresh_sentence(answer: dict[str, Any], expiry: str = "") -> str:
    """One line for a person: what a refresh came to (``expiry`` as :func:`_expiry` makes it)."""
    outcome, status, version = answer.get("outcome"), answer.get("status"), answer.get("version")
    retry = _utc(answer.get("retry_at"))
    at_version = f" (version {version})" if version is not None else ""
    said = {
        "refreshed": f"refreshed{at_version}{expiry}",
        "already_fresh": f"already fresh, nothing to do{at_version}{expiry}",
        "race_recovered": f"refreshed by another caller meanwhile{at_version}{expiry}",
        "rescue_applied": f"refreshed: tokens kept aside earlier were recovered{at_version}{expiry}",
        "not_found": "no such connection",
        "not_active": f"not refreshed: the connection is {status or 'not active'}",
        "busy": f"busy: another refresh holds the connection until {retry}; try again then",
        "cooling_down": f"not refreshed: cooling down after failed attempts until {retry}",
        "transient": f"not refreshed: Invoiced could not be reached or failed; try again after {retry}",
        "unknown_outcome": f"not refreshed: Invoiced's answer to a token request was lost; it is settled at {retry}",
        "needs_reauth": "needs reauthorization: Invoiced refused the refresh token; send the customer a new "
                        "connect link",
        "client_auth_failed": "not refreshed: Invoiced refused the OAuth client (check the client id and secret)",
        "kept_aside": "not refreshed yet: new tokens could not be stored and were kept aside; the scheduler "
                      "recovers them",
        "rescue_discarded": "tokens kept aside earlier were discarded: the connection had moved on",
        "token_rejected": f"not refreshed: its token was already replaced once after a rejection; try again "
                          f"after {retry}",
    }
    return f"{answer.get('connection_id')}: {said.get(str(outcome), f'refresh ended with {outcome}')}"


def disconnect_sentence(answer: dict[str, Any]) -> str:
    """One line for a person: what a disconnect came to."""
    outcome = answer.get("outcome")
    said = {
        "disconnected": "disconnected: revoked at Invoiced, tokens erased",
        "already_revoked": "already disconnected",
        "not_found": "no such connection",
        "busy": "busy: a refresh holds the connection; nothing changed, try again",
        "unavailable": "Invoiced could not be reached; nothing changed, try again",
    }
    return f"{answer.get('connection_id')}: {said.get(str(outcome), f'disconnect ended with {outcome}')}"


def _refresh(connection_id: str, as_json: bool) -> int:
    answer = _invoke("refresh", connection_id)
    good = answer.get("outcome") in _GOOD_OUTCOMES
    if as_json:
        print(json.dumps(_empty_is_null(answer)))
    else:
        print(refresh_sentence(answer, _expiry(connection_id) if good else ""))
    return 0 if good else 1


def _disconnect(connection_id: str, yes: bool, as_json: bool) -> int:
    if not yes:
        if not sys.stdin.isatty():
            print("invoiced-connect: disconnect needs --yes when not run interactively", file=sys.stderr)
            return 2
        try:
            reply = _ask(f"Revoke {connection_id!r} at Invoiced and erase its tokens? [y/N] ")
        except EOFError:
            reply = ""
        if reply.strip().lower() not in ("y", "yes"):
            print("Nothing changed.", file=sys.stderr)
            return 1
    answer = _invoke("disconnect", connection_id)
    print(json.dumps(_empty_is_null(answer)) if as_json else disconnect_sentence(answer))
    return 0 if answer.get("outcome") in _GOOD_DISCONNECTS else 1


def _hint(exc: Exception, args: argparse.Namespace) -> str:
    from botocore.exceptions import NoCredentialsError, NoRegionError

    from invoiced_connect.core.settings import SettingsError

    if isinstance(exc, SettingsError) and not (args.env_file or args.stack):
        return " (use --env-file .local/stack.env for the local stack, or --stack NAME for a deployed one)"
    if isinstance(exc, NoRegionError):
        return " (set AWS_REGION or configure a default region for your AWS profile)"
    if isinstance(exc, NoCredentialsError):
        return " (run `aws configure`, or set AWS_PROFILE to a configured profile)"
    return ""


# ---------------------------------------------------------------- deployment
def _program() -> str:
    """How the person typed this command, for the commands it prints."""
    typed = sys.argv[0] if sys.argv else ""
    if os.path.basename(typed) != "invoiced-connect":
        return "invoiced-connect"  # python -m, or a test
    found = shutil.which("invoiced-connect")
    if found and os.path.realpath(found) == os.path.realpath(typed):
        return "invoiced-connect"
    return typed


def _ask(prompt: str) -> str:
    print(prompt, end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\r\n")


def _stack_command(args: argparse.Namespace) -> int:
    from invoiced_connect import runtime
    from invoiced_connect_tools import deployment

    if args.env_file or not args.stack:
        raise ValueError(f"{args.command} works on a deployed stack: use --stack NAME (not --env-file)")
    cloudformation, secretsmanager = runtime.current().client("cloudformation"), runtime.current().client("secretsmanager")
    if args.command == "next-steps":
        print(deployment.stack_next_steps(args.stack, cloudformation, secretsmanager, _program()))
        return 0
    import getpass

    try:
        result = deployment.configure(
            args.stack,
            cloudformation=cloudformation,
            secretsmanager=secretsmanager,
            client_id=args.client_id,
            stdin=sys.stdin,
            interactive=sys.stdin.isatty(),
            getpass=getpass.getpass,
            ask=_ask,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except (KeyboardInterrupt, EOFError):
        print("\ninvoiced-connect: cancelled", file=sys.stderr)
        return 130
    for warning in deployment.samconfig_pins(result.stack, result.client_id):
        print(warning, file=sys.stderr)
    print(deployment.configured_message(result, _program()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.environ.get("AWS_REGION") and not os.environ.get("AWS_DEFAULT_REGION"):
        # botocore reads only AWS_DEFAULT_REGION (and the profile); AWS_REGION is the SDKs' common name.
        os.environ["AWS_DEFAULT_REGION"] = os.environ["AWS_REGION"]
    try:
        if args.command in ("configure", "next-steps"):
            return _stack_command(args)
        if args.env_file:
            os.environ.update(load_env_file(args.env_file))
        if args.stack:
            os.environ.update(stack_environment(args.stack))
        if args.env_file or args.stack:
            from invoiced_connect import runtime

            runtime.reset()  # read what was just configured
        if args.command == "link" and args.link_command == "create":
            from invoiced_connect import create_connect_link

            print(create_connect_link(args.connection_id, return_to=args.return_to, ttl=args.ttl,
                                      allow_company_change=args.allow_company_change))
            return 0
        if args.command == "connections":
            if args.connections_command == "list":
                return _list_connections(args.json)
            return _show_connection(args.connection_id, args.json)
        if args.command == "refresh":
            return _refresh(args.connection_id, args.json)
        if args.command == "disconnect":
            return _disconnect(args.connection_id, args.yes, args.json)
    except (ValueError, OSError, RuntimeError, BotoCoreError, ClientError, TokenError) as exc:
        # ValueError: bad input, the env file; OSError: other I/O; RuntimeError: settings or
        # secrets; botocore: credentials, region, unknown stack.
        print(f"invoiced-connect: {exc}{_hint(exc, args)}", file=sys.stderr)
        return 2
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
