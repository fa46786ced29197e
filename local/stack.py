"""The whole system on loopback, built from template.yaml: what `make run` starts.

``sam local`` needs Docker; this needs nothing but the project's venv:

* AWS is moto's server; the functions reach it through boto3's standard
  ``AWS_ENDPOINT_URL``, so they run the same code paths as in Lambda.
* The keys, tables and secrets are created from their definitions in
  template.yaml, and each function's environment is resolved from the
  template (Globals merged with the function's own variables), with the
  parameters a local run needs (client id, public URL, return allowlist).
* The HTTP API's routes are read from the template too and served by a
  loopback gateway that speaks API Gateway's payload format 2.0 to the
  handlers, which run in-process (see :mod:`local.gateway` and
  :mod:`local.lambda_runtime`).
* What else invokes the functions in AWS is played too: Lambda's Invoke API
  (:mod:`local.lambda_api`, reached through boto3's standard
  ``AWS_ENDPOINT_URL_LAMBDA``), the SQS event sources (:mod:`local.queues`),
  the schedules (:mod:`local.schedule`), and a tap on the event buses that
  shows what the functions publish (:mod:`local.events`).
* Invoiced is the local stand-in (:mod:`local.invoiced`), unless a real one
  is configured.

Locally all functions share one process, hence one environment: ``os.environ``
holds the union of the functions' variables while the stack runs (they
differ only in which secret ARN each may read) and is restored by ``stop()``.
The package's per-process caches are reset on both changes. So one stack per
process at a time.

    python -m local.stack [--connection-id ID] [--return-to URL] [--gateway-port N] [--schedule-every S] ...
    invoiced-connect --env-file .local/stack.env link create ID   # another link, from a second shell
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import os
import re
import secrets
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from invoiced_connect.connect.links import DEFAULT_TTL
from local.aws import MotoServer, Provisioned, aws_environment, boto_client, port_is_free, provision
from local.events import EventTap, event_summary
from local.gateway import Gateway, api_logical_id
from local.http_server import HttpResponse
from local.lambda_api import LambdaApi
from local.lambda_runtime import Activity, LocalFunction, local_functions
from local.queues import PollerStats, QueuePollers, sqs_event_sources
from local.schedule import ScheduleFirer, schedule_specs
from local.template import (
    DEFAULT_STACK_NAME,
    REGION,
    Resolver,
    TemplateError,
    http_routes,
    load_template,
    resources_of_type,
)

if TYPE_CHECKING:
    from local.invoiced import Company, LocalInvoiced

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEMPLATE = PROJECT_ROOT / "template.yaml"
DEFAULT_ENV_FILE = PROJECT_ROOT / ".local" / "stack.env"
LOOPBACK = "127.0.0.1"

#: What an app's code needs besides the functions' own variables, for .local/stack.env:
#: the app API's function names (docs/app-api.md), by the functions' logical ids.
APP_API_VARIABLES = {"LINKS_FUNCTION_NAME": "LinksFunction", "TOKENS_FUNCTION_NAME": "TokensFunction",
                     "CONNECTION_STATE_FUNCTION_NAME": "ConnectionStateFunction",
                     "CONNECTIONS_FUNCTION_NAME": "ConnectionsFunction"}

#: The environment variables that point the stack at a real Invoiced (all or none).
UPSTREAM_VARIABLES = ("INVOICED_BASE_URL", "INVOICED_API_URL", "INVOICED_CLIENT_ID", "INVOICED_CLIENT_SECRET")

# Variables that could send boto3 somewhere other than moto, or with real
# credentials; hidden while a stack runs.
_AWS_OVERRIDES = re.compile(
    r"AWS_(SESSION_TOKEN|SECURITY_TOKEN|PROFILE|DEFAULT_PROFILE|IGNORE_CONFIGURED_ENDPOINT_URLS|ENDPOINT_URL_\w+)$"
)


@dataclass(frozen=True)
class InvoicedUpstream:
    """A real Invoiced (e.g. the sandbox) to use instead of the local stand-in."""

    base_url: str
    api_url: str
    client_id: str
    client_secret: str = field(repr=False)


def upstream_from_env(env: Mapping[str, str]) -> InvoicedUpstream | None:
    """A real Invoiced if all of :data:`UPSTREAM_VARIABLES` are set, ``None`` if none are."""
    present = [name for name in UPSTREAM_VARIABLES if env.get(name, "").strip()]
    if not present:
        return None
    missing = [name for name in UPSTREAM_VARIABLES if name not in present]
    if missing:
        raise ValueError(
            f"To use a real Invoiced, set all of {', '.join(UPSTREAM_VARIABLES)}; "
            f"missing: {', '.join(missing)}. Unset them all to use the local Invoiced."
        )
    values = [env[name].strip() for name in UPSTREAM_VARIABLES]
    return InvoicedUpstream(values[0].rstrip("/"), values[1].rstrip("/"), values[2], values[3])


def reset_package_caches() -> None:
    """Make the invoiced_connect package re-read the environment on next use."""
    from invoiced_connect import runtime

    runtime.reset()


class _EnvironmentPatch:
    """Sets variables in ``os.environ`` and puts back exactly what was there."""

    def __init__(self) -> None:
        self._saved: dict[str, str | None] = {}

    def apply(self, values: Mapping[str, str]) -> None:
        hidden = [name for name in os.environ if _AWS_OVERRIDES.match(name) and name not in values]
        for name in [*values, *hidden]:
            self._saved.setdefault(name, os.environ.get(name))
        for name in hidden:
            del os.environ[name]
        os.environ.update(values)

    def restore(self) -> None:
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved.clear()


def secret_behind(template: Mapping[str, Any], variable: str) -> str:
    """The logical id of the secret whose ARN a function gets as ``variable``."""
    sources = [((template.get("Globals") or {}).get("Function") or {})]
    sources += [resource.get("Properties") or {} for resource in
                resources_of_type(template, "AWS::Serverless::Function").values()]
    secrets_in_template = resources_of_type(template, "AWS::SecretsManager::Secret")
    found = {
        value["Ref"]
        for source in sources
        if isinstance(value := ((source.get("Environment") or {}).get("Variables") or {}).get(variable), dict)
        and isinstance(value.get("Ref"), str)
        and value["Ref"] in secrets_in_template
    }
    if len(found) != 1:
        raise TemplateError(f"expected {variable} to be a !Ref to one secret of the template, found {sorted(found)}")
    return found.pop()


DEMO_RETURN_PATH = "/done"
#: What the local connect pages say about the integrating app (template parameters
#: AppName and SupportContact); the default return URL is the demo return page.
LOCAL_APP_NAME = "Example App"
LOCAL_SUPPORT_CONTACT = "support@example.com"


def demo_return_page(raw_query: str) -> HttpResponse:
    """What an app's return page would get: ``connection_id`` and ``status``."""
    query = dict(parse_qsl(raw_query))
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td><code>{html.escape(query.get(name, '-'))}</code></td></tr>"
        for name in ("connection_id", "status")
    )
    body = (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Back in your app</title></head>"
        "<body><h1>Back in your app</h1><p>This local page stands in for the return URL of the "
        f"integrating application, which receives:</p><table>{rows}</table></body></html>"
    )
    return 200, [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")], body.encode()


def shared_environment(functions: Mapping[str, LocalFunction]) -> dict[str, str]:
    """The union of the functions' environments (one process locally)."""
    merged: dict[str, str] = {}
    owner: dict[str, str] = {}
    for logical_id, function in functions.items():
        for name, value in function.spec.environment.items():
            if name in merged and merged[name] != value:
                raise TemplateError(
                    f"{name} differs between {owner[name]} and {logical_id}; locally all functions share one "
                    "environment, so a variable must mean the same for every function"
                )
            merged[name], owner[name] = value, logical_id
    return merged


def _name_suffix() -> str:
    # CloudFormation appends a random suffix to generated names; moto keeps
    # one state per process, so a second stack in a test run must not collide.
    return "-" + "".join(secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(12))


class LocalStack:
    """moto + the template's resources + local Invoiced + the gateway, on loopback.

    ``invoiced``: an already started :class:`LocalInvoiced` to use (then give
    its ``client_id`` and ``client_secret``; register the callback as
    ``http://127.0.0.1/callback``, which it matches on any port), or ``None``
    to start one (with ``companies``, default: its own). ``upstream``: a real
    Invoiced instead; no local one then. ``return_url_allowlist`` defaults to
    ``<gateway>/done``. Ports 0 pick free ones. ``env_file``: where to write
    the resolved environment (``KEY=VALUE``, mode 600) while running.

    Besides the gateway, the functions are invoked as AWS would: through the
    Lambda Invoke API at ``lambda_url`` (``AWS_ENDPOINT_URL_LAMBDA`` in the
    functions' environment), by a poller per SQS event source, and by their
    schedules. ``auto_schedule``: fire rate schedules on their own (``make
    run``); off by default, so tests fire them with :meth:`fire_schedule`
    when they choose. ``schedule_every``: seconds between automatic fires
    instead of the template's rate. ``on_event``: called (from a thread) with
    each event published on the template's buses, as it arrives.

    After :meth:`start`: ``gateway_url``, ``connect_url``, ``callback_url``,
    ``moto_url``, ``lambda_url``, ``table_name``, ``kms_key_arn``, ``env``,
    ``invoiced``, ``client_id``, ``client_secret``, ``resources``,
    ``functions``, ``lambda_api``, ``pollers``, ``scheduler``, ``event_tap``.
    """

    _active: ClassVar[LocalStack | None] = None
    _active_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        template_path: str | Path = DEFAULT_TEMPLATE,
        invoiced: LocalInvoiced | None = None,
        return_url_allowlist: Sequence[str] | None = None,
        gateway_port: int = 0,
        moto_port: int = 0,
        *,
        upstream: InvoicedUpstream | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        companies: Sequence[Company] | None = None,
        invoiced_app_port: int = 0,
        invoiced_api_port: int = 0,
        env_file: str | Path | None = None,
        access_log: bool = False,
        stack_name: str = DEFAULT_STACK_NAME,
        lambda_port: int = 0,
        auto_schedule: bool = False,
        schedule_every: float | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if upstream is not None and (invoiced is not None or client_id or client_secret or companies):
            raise ValueError("upstream carries its own client credentials; do not pass invoiced, client_id, "
                             "client_secret or companies with it")
        if invoiced is not None and not (client_id and client_secret):
            raise ValueError("pass the client_id and client_secret the given LocalInvoiced was made with")
        if schedule_every is not None and schedule_every <= 0:
            raise ValueError("schedule_every must be a positive number of seconds")
        self.template_path = Path(template_path)
        self._given_invoiced = invoiced
        self._upstream = upstream
        self._allowlist = None if return_url_allowlist is None else tuple(return_url_allowlist)
        self._ports = {"gateway": gateway_port, "moto": moto_port, "lambda": lambda_port,
                       "invoiced_app": invoiced_app_port, "invoiced_api": invoiced_api_port}
        self._auto_schedule = auto_schedule
        self._schedule_every = schedule_every
        self._on_event = on_event
        self._companies = list(companies) if companies else None
        self._env_file = Path(env_file) if env_file is not None else None
        self._access_log = access_log
        self.stack_name = stack_name

        self.client_id: str = upstream.client_id if upstream else client_id or f"local{secrets.token_hex(8)}"
        self.client_secret: str = upstream.client_secret if upstream else client_secret or secrets.token_urlsafe(32)
        self.invoiced: LocalInvoiced | None = invoiced
        self.gateway_url = self.connect_url = self.callback_url = self.moto_url = self.lambda_url = ""
        self.table_name = self.kms_key_arn = ""
        self.env: dict[str, str] = {}
        self.consumer_env: dict[str, str] = {}
        self.resources: Provisioned | None = None
        self.functions: dict[str, LocalFunction] = {}
        self.activity = Activity()  # every background invocation, for wait_for_queues
        self.lambda_api: LambdaApi | None = None
        self.pollers: QueuePollers | None = None
        self.scheduler: ScheduleFirer | None = None
        self.event_tap: EventTap | None = None
        self._cleanup = contextlib.ExitStack()
        self._started = False

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> LocalStack:
        with LocalStack._active_lock:
            if LocalStack._active is not None:
                raise RuntimeError("another LocalStack is running in this process; they would share os.environ")
            LocalStack._active = self
        self._cleanup.callback(self._release)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self._started = True
        return self

    def _start(self) -> None:
        template = load_template(self.template_path)

        moto = MotoServer(self._ports["moto"], LOOPBACK).start()
        self._cleanup.callback(moto.stop)
        self.moto_url = moto.url

        # Bound now, served last: the callback URL (and so the port) is
        # needed by Invoiced and the function environment first.
        gateway = Gateway(host=LOOPBACK, port=self._ports["gateway"], access_log=self._access_log).bind()
        self._cleanup.callback(gateway.stop)
        self.gateway_url = gateway.url
        self.connect_url = f"{self.gateway_url}/connect"
        self.callback_url = f"{self.gateway_url}/callback"
        # Likewise the Lambda API: its URL goes into the functions' environment.
        lambda_api = LambdaApi(host=LOOPBACK, port=self._ports["lambda"], activity=self.activity,
                               access_log=self._access_log).bind()
        self._cleanup.callback(lambda_api.stop)
        self.lambda_api = lambda_api
        self.lambda_url = lambda_api.url

        base_url, api_url = self._start_invoiced()
        demo_return = f"{self.gateway_url}{DEMO_RETURN_PATH}"
        allowlist = self._allowlist if self._allowlist is not None else (demo_return,)
        resolver = Resolver(
            template,
            {"InvoicedClientId": self.client_id, "PublicBaseUrl": self.gateway_url,
             "ReturnUrlAllowlist": list(allowlist), "AppName": LOCAL_APP_NAME,
             "SupportContact": LOCAL_SUPPORT_CONTACT,
             # "Back to Example App" leads to the demo return page, when it is allowlisted.
             "DefaultReturnUrl": demo_return if self._allowlist is None else ""},
            stack_name=self.stack_name,
            # The deployed API is https only; the local one is http on loopback.
            unchecked_patterns={"PublicBaseUrl", "DefaultReturnUrl"},
        )
        client_secret_id = secret_behind(template, "CLIENT_SECRET_ARN")
        name_suffix = _name_suffix()
        self.resources = provision(
            resolver,
            self.moto_url,
            secret_strings={client_secret_id: json.dumps({"client_secret": self.client_secret})},
            name_suffix=name_suffix,
        )
        self.functions = local_functions(template, self.template_path.parent, resolver)

        # What differs from a deployment: where Invoiced and AWS (Lambda's Invoke API included) are.
        local = {"INVOICED_BASE_URL": base_url, "INVOICED_API_URL": api_url,
                 **aws_environment(self.moto_url, resolver.pseudo["AWS::Region"]),
                 "AWS_ENDPOINT_URL_LAMBDA": self.lambda_url}
        for function in self.functions.values():
            function.spec = replace(function.spec, environment={**function.spec.environment, **local})
        env = shared_environment(self.functions)
        from invoiced_connect.core.settings import load_settings

        load_settings(env)  # a bad value fails here, naming the variable, not on the first request
        self.env = env
        #: The functions' environment plus what an app's own code needs (written to env_file).
        self.consumer_env = {**env, **{name: resolver.ref(logical_id) for name, logical_id in APP_API_VARIABLES.items()
                                       if logical_id in self.functions}}
        self.table_name = env["TABLE_NAME"]
        self.kms_key_arn = next(
            (self.resources.arn(key) for key in resources_of_type(template, "AWS::KMS::Key")), ""
        )

        patch = _EnvironmentPatch()
        self._cleanup.callback(reset_package_caches)
        self._cleanup.callback(patch.restore)
        patch.apply(env)
        reset_package_caches()

        api_id = api_logical_id(template)
        gateway.api_id = resolver.ref(api_id) if api_id else "local"
        gateway.mount(http_routes(template, resolver), self.functions)
        gateway.extra_pages[DEMO_RETURN_PATH] = demo_return_page
        gateway.start()
        self._cleanup.callback(gateway.stop)  # on stop, after the drivers below: no request sees a half-restored process
        self._start_drivers(template, resolver, name_suffix)
        if self._env_file is not None:
            self._write_env_file(self._env_file)

    def _start_drivers(self, template: Mapping[str, Any], resolver: Resolver, name_suffix: str) -> None:
        """What invokes the functions besides the gateway; stopped (in reverse) before anything else."""
        region = resolver.pseudo["AWS::Region"]
        account = resolver.pseudo["AWS::AccountId"]
        assert self.lambda_api is not None
        self.lambda_api.mount(self.functions).start()
        self._cleanup.callback(self.lambda_api.stop)

        self.pollers = QueuePollers(sqs_event_sources(template, resolver), self.functions, self.moto_url,
                                    activity=self.activity)
        self._cleanup.callback(self.pollers.stop)  # before moto resets and the environment is restored
        self.pollers.start()

        self.scheduler = ScheduleFirer(
            schedule_specs(template, resolver, name_suffix=name_suffix), self.functions,
            region=region, account_id=account, events_client=boto_client("events", self.moto_url, region),
            every=self._schedule_every, activity=self.activity,
        )
        self._cleanup.callback(self.scheduler.stop)
        self.scheduler.start(auto=self._auto_schedule)

        buses = [self.resources.ref(logical_id) for logical_id in resources_of_type(template, "AWS::Events::EventBus")
                 if self.resources is not None and logical_id in self.resources.physical]
        self.event_tap = EventTap(self.moto_url, region, buses, name=f"{self.stack_name}-local-tap{name_suffix}",
                                  account_id=account).create()
        self._cleanup.callback(self.event_tap.stop)
        if self._on_event is not None:
            self.event_tap.watch(self._on_event)

    def _start_invoiced(self) -> tuple[str, str]:
        if self._upstream is not None:
            return self._upstream.base_url, self._upstream.api_url
        if self.invoiced is None:
            from local.invoiced import LocalInvoiced

            self.invoiced = LocalInvoiced(
                client_id=self.client_id,
                client_secret=self.client_secret,
                redirect_uris=[self.callback_url],
                companies=self._companies,
                # Registered under the app's name, which its consent page shows (as Invoiced's does).
                client_name=LOCAL_APP_NAME,
                host=LOOPBACK,
                app_port=self._ports["invoiced_app"],
                api_port=self._ports["invoiced_api"],
            ).start()
            self._cleanup.callback(self._stop_own_invoiced)
        return self.invoiced.base_url, self.invoiced.api_url

    def _stop_own_invoiced(self) -> None:
        if self.invoiced is not None and self.invoiced is not self._given_invoiced:
            self.invoiced.stop()
            self.invoiced = self._given_invoiced

    def _write_env_file(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = ["# The running local stack's environment (python -m local.stack); removed when it stops.",
                 "# For your own code and the examples: source it (set -a; . .local/stack.env; set +a works too)."]
        for name, value in sorted(self.consumer_env.items()):
            if "\n" in value:
                raise ValueError(f"{name} has a line break; it cannot go into {path}")
            lines.append(f"export {name}={shlex.quote(value)}")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(descriptor, 0o600)  # also when the file already existed
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        self._cleanup.callback(path.unlink, missing_ok=True)

    def _release(self) -> None:
        with LocalStack._active_lock:
            if LocalStack._active is self:
                LocalStack._active = None

    def stop(self) -> None:
        """Stop everything started, restore ``os.environ``; safe to call twice."""
        self._started = False
        self._cleanup.close()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- helpers
    def make_link(self, connection_id: str, return_to: str | None = None,
                  ttl: timedelta = DEFAULT_TTL, *, allow_company_change: bool = False) -> str:
        """A signed connect link, made as an integrating app makes one (key read from Secrets Manager)."""
        self._require_started()
        from invoiced_connect import create_connect_link

        return create_connect_link(connection_id, return_to, ttl, allow_company_change=allow_company_change)

    def client(self, service: str) -> Any:
        """A boto3 client for the stack's moto server (``lambda``: for its Lambda Invoke API)."""
        self._require_started()
        endpoint = self.lambda_url if service == "lambda" else self.moto_url
        return boto_client(service, endpoint, self.env.get("AWS_REGION", REGION))

    def wait_for_queues(self, timeout: float = 30.0) -> bool:
        """Wait until every polled queue is empty and no invocation is in flight.

        In flight: SQS batches, asynchronous Invoke API calls and scheduled
        runs. A failed message counts until it is processed or moved to its
        dead-letter queue (its visibility timeout must pass first). ``True``
        once quiet, ``False`` if ``timeout`` seconds passed first.
        """
        self._require_started()
        assert self.pollers is not None
        return self.pollers.wait_drained(timeout)

    def queue_stats(self) -> dict[str, PollerStats]:
        """What each SQS event source has done (invocations, messages, deleted, failed, errors), by
        ``Function.Event``."""
        self._require_started()
        assert self.pollers is not None
        return self.pollers.stats

    def fire_schedule(self, logical_id: str | None = None) -> dict[str, Any]:
        """Invoke the scheduled function(s) now, synchronously, with EventBridge's Scheduled Event.

        ``logical_id``: one function; ``None``: every schedule. Returns each
        function's result by logical id; a function error propagates.
        """
        self._require_started()
        assert self.scheduler is not None
        return self.scheduler.fire(logical_id)

    def published_events(self) -> list[dict[str, Any]]:
        """Every event published on the template's buses since the stack started, oldest first."""
        self._require_started()
        assert self.event_tap is not None
        return self.event_tap.all_events()

    def _require_started(self) -> None:
        if not self._started:
            raise RuntimeError("the LocalStack is not running; call start() or use it as a context manager")


# ---------------------------------------------------------------- the command
DEFAULT_PORTS = {"gateway": 3000, "moto": 5000, "lambda": 3001, "invoiced_app": 9000, "invoiced_api": 9001}
_PORT_ENV = {"gateway": "LOCAL_GATEWAY_PORT", "moto": "LOCAL_MOTO_PORT", "lambda": "LOCAL_LAMBDA_PORT",
             "invoiced_app": "LOCAL_INVOICED_PORT", "invoiced_api": "LOCAL_INVOICED_API_PORT"}


def _cli() -> str:
    """The invoiced-connect command beside this interpreter, as the user can type it."""
    executable = Path(sys.executable).parent / "invoiced-connect"
    with contextlib.suppress(ValueError):
        return str(executable.relative_to(Path.cwd()))
    return str(executable)


def running_stack_url(env_file: Path) -> str | None:
    """The gateway URL of a local stack that still serves from ``env_file``, if any."""
    try:
        from invoiced_connect_tools.cli import read_env_file

        url = read_env_file(str(env_file)).get("PUBLIC_BASE_URL", "")
    except (OSError, ValueError):
        return None
    parts = urlsplit(url)
    if not parts.hostname or not parts.port or port_is_free(parts.hostname, parts.port):
        return None
    return url


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m local.stack",
        description="Run invoiced-connect on loopback (moto, local Invoiced, the functions behind a local "
        "API Gateway) and print a connect link. Set INVOICED_BASE_URL, INVOICED_API_URL, INVOICED_CLIENT_ID "
        "and INVOICED_CLIENT_SECRET to use a real Invoiced instead of the local one.",
        epilog="Another link while it runs: invoiced-connect --env-file .local/stack.env link create CONNECTION_ID",
    )
    parser.add_argument("--connection-id", default="demo-customer", help="for the printed link (default: %(default)s)")
    parser.add_argument("--return-to", help="send the browser here after connecting (added to the allowlist)")
    for name, default in DEFAULT_PORTS.items():
        flag = "--" + name.replace("_", "-") + "-port"
        env_name = _PORT_ENV[name]
        parser.add_argument(flag, type=_port, default=None, dest=f"{name}_port",
                            help=f"default {default} (or ${env_name}); taken: any free port")
    parser.add_argument("--schedule-every", type=_seconds, metavar="SECONDS",
                        help="fire the scheduled functions this often instead of the template's rate (for demos)")
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE, help=argparse.SUPPRESS)
    parser.add_argument("--env-file", type=Path, default=None, help=argparse.SUPPRESS)  # tests: not .local/
    return parser


def _choose_port(name: str, given: int | None, env: Mapping[str, str], *, strict: bool = False) -> int:
    if given is None:
        given = _port(env[_PORT_ENV[name]]) if env.get(_PORT_ENV[name]) else DEFAULT_PORTS[name]
    if given and not port_is_free(LOOPBACK, given):
        if strict:
            raise ValueError(f"port {given} ({name.replace('_', ' ')}) is taken; free it or choose another")
        print(f"Port {given} ({name.replace('_', ' ')}) is taken; using a free one.")
        return 0
    return given


def _allowlist_entry(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def run(argv: Sequence[str]) -> int:
    args = _run_parser().parse_args(argv)
    env_file = args.env_file or DEFAULT_ENV_FILE
    other = running_stack_url(env_file)
    if other:
        print(f"Another local stack is running at {other} (its settings are in "
              f"{os.path.relpath(env_file)}); stop it first.", file=sys.stderr)
        return 1
    try:
        upstream = upstream_from_env(os.environ)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    needed = [name for name in DEFAULT_PORTS if not (upstream and name.startswith("invoiced"))]
    try:
        # With a real Invoiced the callback URL is registered there: it must not move.
        ports = {name: _choose_port(name, getattr(args, f"{name}_port"), os.environ,
                                    strict=upstream is not None and name == "gateway") for name in needed}
    except ValueError as exc:
        print(f"Cannot start: {exc}", file=sys.stderr)
        return 2

    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # moto's server logs every AWS call (werkzeug's logger), botocore how it found them: noise here.
    for noisy in ("werkzeug", "botocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    stack = LocalStack(
        args.template,
        # The entry that admits --return-to: its origin and path (an entry has no query).
        return_url_allowlist=(_allowlist_entry(args.return_to),) if args.return_to else None,
        gateway_port=ports["gateway"],
        moto_port=ports["moto"],
        upstream=upstream,
        invoiced_app_port=ports.get("invoiced_app", 0),
        invoiced_api_port=ports.get("invoiced_api", 0),
        lambda_port=ports["lambda"],
        env_file=env_file,
        access_log=True,
        auto_schedule=True,
        schedule_every=args.schedule_every,
        on_event=_print_event,
    )
    # SIGTERM stops it the way Ctrl-C does. (A handler that sets a
    # threading.Event can deadlock: it runs in the main thread, which may hold
    # the Event's lock inside wait(); a second SIGTERM then never returns.)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        stack.start()
    except Exception as exc:  # noqa: BLE001 - a sentence, not a traceback, for a setup problem
        print(f"Could not start the local stack: {exc}", file=sys.stderr)
        return 1
    try:
        try:
            first_link = stack.make_link(args.connection_id, return_to=args.return_to)
        except ValueError as exc:
            print(f"Cannot make the link: {exc}", file=sys.stderr)
            return 2
        _print_banner(stack, args.connection_id, first_link, upstream, env_file)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("\nStopping the local stack...")
        stack.stop()
    return 0


def _print_event(event: dict[str, Any]) -> None:
    # The detail-type and the connection id only: never the whole detail.
    print(f"{time.strftime('%H:%M:%S')} {event_summary(event)}", flush=True)


def _print_banner(stack: LocalStack, connection_id: str, link: str, upstream: InvoicedUpstream | None,
                  env_file: Path) -> None:
    relative_env = os.path.relpath(env_file)
    lines = [
        "",
        "invoiced-connect is running on loopback. Ctrl-C stops it.",
        "",
        f"  Connect link for {connection_id!r} (valid 1 hour):",
        f"    {link}",
        "",
    ]
    if upstream is None and stack.invoiced is not None:
        companies = ", ".join(f"{company.name} (#{company.id})" for company in stack.invoiced.companies)
        lines += [
            f"  Callback URL     {stack.callback_url}  (registered with the local Invoiced)",
            f"  Local Invoiced   {stack.invoiced.base_url}  API {stack.invoiced.api_url}",
            f"                   companies: {companies}",
        ]
    else:
        lines += [
            f"  Callback URL     {stack.callback_url}",
            "                   register it as a redirect URI of your Invoiced OAuth application",
            f"  Invoiced         {stack.env['INVOICED_BASE_URL']}  API {stack.env['INVOICED_API_URL']}",
        ]
    lines += [
        f"  AWS (moto)       {stack.moto_url}  table {stack.table_name}",
        f"  Lambda API       {stack.lambda_url}  (Invoke; boto3 finds it through AWS_ENDPOINT_URL_LAMBDA)",
    ]
    assert stack.pollers is not None and stack.scheduler is not None and stack.event_tap is not None
    for index, line in enumerate(stack.scheduler.describe()):
        lines.append(f"  {'Schedule' if index == 0 else '':<16} {line}")
    for index, line in enumerate(stack.pollers.describe()):
        lines.append(f"  {'Queue' if index == 0 else '':<16} {line}")
    if stack.event_tap.bus_names:
        lines.append(f"  Events           published on {', '.join(stack.event_tap.bus_names)}: printed below as they come")
    lines += [
        f"  Environment      {relative_env}",
        "",
        f"  Another link:    {_cli()} --env-file {relative_env} link create CONNECTION_ID [--return-to URL]",
        f"  Return page      {stack.gateway_url}{DEMO_RETURN_PATH}  (stands in for your app's page; allowlisted)",
        "",
    ]
    print("\n".join(lines), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    return run(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
