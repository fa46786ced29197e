"""The composition root: every long-lived object a function uses, built here and nowhere else.

A :class:`Runtime` builds each part (settings, AWS clients, the secret cache,
the token store and cipher, the event publisher, the Invoiced client, the
refresher, the connect flow, the token reader and vendor, the scheduler) on
first use, once, and then hands out the same one: an execution environment
keeps its clients, caches and connection pools across invocations, and a
handler imports only what the parts it uses need (the imports are inside
the builders: ``/connect`` never loads the refresher's worker code).

:func:`current` is the process's runtime; :func:`reset` forgets it, and with
it every cached client, secret and token (the local stack and the tests
call it after they change the environment). No other module keeps a
built object at module level.

The layering (checked by ``make test``, see ``[tool.importlinter]`` in
pyproject.toml): the entry glue and the SDK facade use this module; it
builds the logic (connect, lifecycle, app_api, sdk) from the adapters
(storage, invoiced, cloud) and core.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from invoiced_connect.app_api.service import TokenVendor
    from invoiced_connect.cloud.events import EventPublisher
    from invoiced_connect.cloud.secrets import SecretCache
    from invoiced_connect.connect.flow import ConnectFlow
    from invoiced_connect.core.settings import Settings
    from invoiced_connect.invoiced.client import InvoicedClient
    from invoiced_connect.lifecycle.disconnect import Disconnector
    from invoiced_connect.lifecycle.refresh import Refresher, RefreshPolicy
    from invoiced_connect.lifecycle.scheduler import Scheduler
    from invoiced_connect.sdk.tokens import ReadCounts, TokenReader
    from invoiced_connect.storage.crypto import TokenCipher
    from invoiced_connect.storage.store import TokenStore

T = TypeVar("T")

#: What :meth:`Runtime.override` may replace: the parts built by name below.
_PARTS = frozenset({"settings", "secrets", "store", "cipher", "events", "invoiced", "refresher", "disconnector",
                    "flow", "reader", "vendor", "scheduler", "read_counts", "policy"})


class Runtime:
    """The parts of one execution environment, each built on first use.

    ``environ``: where settings come from (``os.environ`` when ``None``).
    Thread-safe: a part is built once even when threads ask for it at once.
    A builder that raises (a setting is missing) caches nothing: the next
    call tries again.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ
        self._lock = threading.RLock()
        self._parts: dict[str, Any] = {}

    def _part(self, name: str, build: Callable[[], T]) -> T:
        part = self._parts.get(name)
        if part is None:
            with self._lock:
                part = self._parts.get(name)
                if part is None:
                    part = self._parts[name] = build()
        return part

    def override(self, **parts: Any) -> None:
        """Put these parts in place of what would be built (tests, benchmarks):
        ``override(reader=fake)``; ``None`` forgets a part, to be built again on next use."""
        unknown = set(parts) - _PARTS
        if unknown:
            raise TypeError(f"not a part of the runtime: {', '.join(sorted(unknown))}")
        with self._lock:
            for name, part in parts.items():
                if part is None:
                    self._parts.pop(name, None)
                else:
                    self._parts[name] = part

    # ------------------------------------------------------------------ configuration and AWS
    @property
    def settings(self) -> Settings:
        from invoiced_connect.core.settings import load_settings

        return self._part("settings", lambda: load_settings(self._environ))

    def client(self, service: str) -> Any:
        """The boto3 client for ``service`` (one per service, from one session)."""
        from invoiced_connect.cloud import aws

        session = self._part("boto3_session", aws.new_session)
        return self._part(f"client:{service}", lambda: aws.new_client(service, session))

    def _client_factory(self, service: str) -> Callable[[], Any]:
        return lambda: self.client(service)

    @property
    def secrets(self) -> SecretCache:
        from invoiced_connect.cloud.secrets import SecretCache

        return self._part("secrets", lambda: SecretCache(client_factory=self._client_factory("secretsmanager")))

    def client_secret(self, force: bool = False) -> str:
        """The OAuth client secret (cached; ``force`` reads it again, after Invoiced rejected it)."""
        return self.secrets.get_field(self.settings.require("client_secret_arn"), "client_secret", force=force)

    def link_keys(self, force: bool = False) -> list[str]:
        """The link signing keys that verify a link: the current one, then the previous one if any."""
        from invoiced_connect.cloud.secrets import SecretError
        from invoiced_connect.connect.links import usable_key

        secret = self.secrets.get_json(self.settings.require("link_signing_secret_arn"), force=force)
        keys = [secret.get("current"), *([secret["previous"]] if secret.get("previous") else [])]
        if not all(usable_key(key) for key in keys):
            raise SecretError("the link signing secret needs a 'current' (and optional 'previous') key of 32+ characters")
        return keys

    def link_signing_key(self) -> str:
        """The key new links are signed with."""
        return self.secrets.get_field(self.settings.require("link_signing_secret_arn"), "current")

    # ------------------------------------------------------------------ adapters
    @property
    def store(self) -> TokenStore:
        from invoiced_connect.storage.store import TokenStore

        return self._part("store", lambda: TokenStore(self.settings.table_name,
                                                      client_factory=self._client_factory("dynamodb")))

    @property
    def cipher(self) -> TokenCipher:
        from invoiced_connect.storage.crypto import TokenCipher

        return self._part("cipher", lambda: TokenCipher(self.settings.kms_key_id,
                                                        client_factory=self._client_factory("kms")))

    @property
    def events(self) -> EventPublisher:
        from invoiced_connect.cloud.events import EventPublisher

        return self._part("events", lambda: EventPublisher(self.settings.event_bus_name,
                                                           client_factory=self._client_factory("events")))

    @property
    def invoiced(self) -> InvoicedClient:
        """The Invoiced client of the token lifecycle (one HTTP connection pool)."""
        from invoiced_connect.invoiced.client import InvoicedClient

        def build() -> InvoicedClient:
            settings = self.settings
            return InvoicedClient(base_url=settings.invoiced_base_url, api_url=settings.invoiced_api_url,
                                  client_id=settings.require_client_id(), client_secret=self.client_secret,
                                  timeout=settings.http_timeout)

        return self._part("invoiced", build)

    # ------------------------------------------------------------------ logic
    @property
    def refresher(self) -> Refresher:
        from invoiced_connect.lifecycle.refresh import Refresher

        return self._part("refresher", lambda: Refresher(
            store=self.store, cipher=self.cipher, invoiced=lambda: self.invoiced, events=self.events,
            policy=self.policy))

    @property
    def policy(self) -> RefreshPolicy:
        """When tokens are refreshed, how failures back off, how long a lease lasts."""
        from invoiced_connect.lifecycle.refresh import RefreshPolicy

        return self._part("policy", lambda: RefreshPolicy.from_settings(self.settings))

    @property
    def disconnector(self) -> Disconnector:
        from invoiced_connect.lifecycle.disconnect import Disconnector

        return self._part("disconnector", lambda: Disconnector(self.refresher))

    @property
    def flow(self) -> ConnectFlow:
        from invoiced_connect.connect.flow import ConnectFlow

        return self._part("flow", lambda: ConnectFlow(
            settings=self.settings, store=self.store, cipher=self.cipher, link_keys=self.link_keys,
            client_secret=self.client_secret, invoiced=lambda: self.invoiced, policy=self.policy,
            events=self.events))

    @property
    def read_counts(self) -> ReadCounts:
        """What this process's readers (the SDK's and the tokens function's) were asked,
        and how often their cache missed: the TokenReads and TokenCacheMisses metrics."""
        from invoiced_connect.sdk.tokens import ReadCounts

        return self._part("read_counts", ReadCounts)

    @property
    def reader(self) -> TokenReader:
        """The token reader of an SDK user: asks the tokens function for a fresh token."""
        from invoiced_connect.sdk.tokens import TokenReader, lambda_invoker

        return self._part("reader", lambda: TokenReader(
            store=self.store, cipher=self.cipher,
            invoke=lambda_invoker(self.settings.require("tokens_function_name"), self._client_factory("lambda")),
            window_seconds=self.settings.refresh_window_seconds, counts=self.read_counts))

    @property
    def vendor(self) -> TokenVendor:
        """The tokens function's vendor: its reader refreshes in process, under the lease."""
        from invoiced_connect.app_api.service import TokenVendor

        return self._part("vendor", lambda: TokenVendor(
            store=self.store, cipher=self.cipher, refresher=lambda: self.refresher,
            window_seconds=self.settings.refresh_window_seconds, counts=self.read_counts))

    @property
    def scheduler(self) -> Scheduler:
        from invoiced_connect.lifecycle.scheduler import Scheduler

        return self._part("scheduler", lambda: Scheduler(
            store=self.store, queue_url=self.settings.require("refresh_queue_url"),
            window_seconds=self.settings.refresh_window_seconds, sqs_factory=self._client_factory("sqs")))

    def connections_invoker(self) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """Invoke the connections function (refresh or disconnect on request)."""
        from invoiced_connect.sdk.tokens import lambda_invoker

        return lambda_invoker(self.settings.require("connections_function_name"), self._client_factory("lambda"))


_current: Runtime | None = None
_current_lock = threading.Lock()


def current() -> Runtime:
    """This process's runtime, made on first use (not at import)."""
    global _current
    runtime = _current
    if runtime is None:
        with _current_lock:
            if _current is None:
                _current = Runtime()
            runtime = _current
    return runtime


def reset() -> None:
    """Forget the process's runtime: the next :func:`current` reads the environment
    again and builds new clients, caches and pools."""
    global _current
    with _current_lock:
        _current = None
