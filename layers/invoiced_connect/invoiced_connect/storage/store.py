"""The token table: the only module that reads or writes DynamoDB.

One table holds two kinds of item, told apart by the key prefix:

* ``conn#<connection id>``: a connection. Tokens are stored only as KMS
  ciphertext, one per token (``access_ciphertext``, ``refresh_ciphertext``;
  rows from before the split have one ``token_ciphertext`` of both, replaced
  at their next refresh); ``version`` grows on every write of new tokens.
* ``state#<sha256(state)>``: an OAuth flow in progress (single use, 10
  minutes, removed by TTL if never used). Only the hash of the state is
  stored, so the table never holds a usable state value.
* ``link#<sha256(link id)>``: a connect link that has completed a connection
  (kept until the link would have expired, then removed by TTL).
* ``rescue#<connection id>``: new tokens that Invoiced issued but whose
  commit to the connection failed, kept aside (encrypted) until recovered.

Active connections and rescue rows carry ``due_shard``/``refresh_at``, which
put them in the sparse ``due-index``: the scheduler queries each shard for
``refresh_at <= now + window`` and reads only what is due. Connections that
need attention (``needs_reauth``, ``failing``) and rescue rows
(``kept_aside``) carry ``attention``, which puts them in the sparse
``attention-index``: the app lists them without a Scan.

A refresh runs under a lease (``lease_owner``/``lease_until``, taken by a
conditional update on the version read) and commits conditioned on that
version and lease, so two refreshers can never both rotate one connection.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from invoiced_connect.cloud import aws
from invoiced_connect.core.lifetimes import REFERENCE_LIFETIME_SECONDS
from invoiced_connect.core.models import Attention, Connection, ConnectionStatus, TokenSet
from invoiced_connect.storage.crypto import SealedTokens

CONNECTION_PREFIX = "conn#"
STATE_PREFIX = "state#"
LINK_PREFIX = "link#"
RESCUE_PREFIX = "rescue#"
DUE_INDEX = "due-index"
ATTENTION_INDEX = "attention-index"
DUE_SHARDS = 16
_LEASE_FIELDS = ("lease_owner", "lease_until")
_FAILURE_FIELDS = ("failure_count", "next_attempt_at", "last_error", "outcome_unknown_at", "attention")
_CIPHERTEXT_FIELDS = ("access_ciphertext", "refresh_ciphertext", "token_ciphertext")
#: What the connection-state view may read of a connection: everything but
#: ciphertexts and lease details (its IAM policy allows exactly these).
STATE_ATTRIBUTES = (
    "pk", "connection_id", "tenant_id", "company_name", "scopes", "issuer", "api_url", "status", "expires_at",
    "version", "created_at", "updated_at", "refreshed_at", "refresh_at", "active_until", "failure_count",
    "next_attempt_at", "last_error", "outcome_unknown_at", "status_reason", "attention",
)
#: What the attention-index projects (and so what a listing can return).
ATTENTION_ATTRIBUTES = ("connection_id", "status", "last_error", "status_reason", "reason")


class StateRejected(Exception):
    """The flow state is unknown, used, expired, or belongs to another browser."""


class LinkAlreadyUsed(Exception):
    """The connect link has already completed a connection."""


class LeaseLost(Exception):
    """A write under a lease found the row changed or the lease gone."""


class CompanyMismatch(Exception):
    """A reconnect authorized another Invoiced company than the connection's; nothing was written."""

    def __init__(self, stored: Connection, chosen_tenant_id: str) -> None:
        super().__init__(f"{stored.connection_id} belongs to another Invoiced company")
        #: The connection as it is stored (and stays).
        self.stored = stored
        self.chosen_tenant_id = chosen_tenant_id


@dataclass(frozen=True)
class Rescue:
    """Tokens kept aside after a failed commit (still encrypted for the connection)."""

    connection_id: str
    sealed: SealedTokens = field(repr=False)
    base_version: int
    expires_at: int
    rescued_at: int
    reason: str
    #: Seconds the kept access token was granted for.
    lifetime: int = REFERENCE_LIFETIME_SECONDS


@dataclass(frozen=True)
class Saved:
    """A connection as saved by the callback, and the grant it replaced, if any."""

    connection: Connection
    #: The ciphertexts of the live grant this save replaced (a reconnect), else ``None``.
    replaced: SealedTokens | None = field(default=None, repr=False)
    #: The connection as it was before this save (a reconnect, in any status), else ``None``.
    previous: Connection | None = None


@dataclass(frozen=True)
class DueKey:
    """One entry of the due-index: a connection to refresh, or a rescue to recover."""

    connection_id: str
    rescue: bool
    refresh_at: int


@dataclass(frozen=True)
class FlowState:
    """What ``/connect`` remembers for ``/callback`` (keyed by the state's hash)."""

    state_hash: str
    connection_id: str
    code_verifier: str = field(repr=False)
    binding_hash: str = field(repr=False)
    issuer: str
    redirect_uri: str
    scope: str
    return_to: str | None
    expires_at: int
    link_hash: str
    link_expires_at: int
    #: The link lets this reconnect authorize another Invoiced company than the connection's.
    allow_company_change: bool = False


def _condition_failed(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def due_shard(connection_id: str) -> int:
    """Spread connections evenly over the index's partitions."""
    return int.from_bytes(hashlib.sha256(connection_id.encode("utf-8")).digest()[:4], "big") % DUE_SHARDS


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int) -> dict[str, str]:
    return {"N": str(int(value))}


def _sealed_values(sealed: SealedTokens) -> dict[str, Any]:
    if not sealed.split:
        raise ValueError("new tokens are always written in the split format")
    return {":access_blob": {"B": sealed.access}, ":refresh_blob": {"B": sealed.refresh}}


_SEALED_ASSIGNMENTS = ["access_ciphertext = :access_blob", "refresh_ciphertext = :refresh_blob"]


def sealed_from_item(item: dict[str, Any]) -> SealedTokens | None:
    """The token ciphertexts of a row (either format), or ``None`` if it holds none."""
    access = item.get("access_ciphertext", {}).get("B")
    refresh = item.get("refresh_ciphertext", {}).get("B")
    if access is not None and refresh is not None:
        return SealedTokens(access=access, refresh=refresh)
    pair = item.get("token_ciphertext", {}).get("B")
    return SealedTokens(pair=pair) if pair is not None else None


@dataclass(frozen=True)
class AttentionEntry:
    """One connection (or set of kept-aside tokens) that needs someone to look at it."""

    connection_id: str
    attention: Attention
    reason: str | None
    status: str | None
    since: int


class TokenStore:
    def __init__(self, table_name: str, client_factory: Callable[[], Any] | None = None) -> None:
        self.table_name = table_name
        self._client_factory = client_factory or aws.lazy_client("dynamodb")

    @property
    def _db(self) -> Any:
        return self._client_factory()

    # ---------------------------------------------------------------- flow state
    def put_state(self, state: FlowState) -> None:
        item = {
            "pk": _s(STATE_PREFIX + state.state_hash),
            "connection_id": _s(state.connection_id),
            "code_verifier": _s(state.code_verifier),
            "binding_hash": _s(state.binding_hash),
            "issuer": _s(state.issuer),
            "redirect_uri": _s(state.redirect_uri),
            "scope": _s(state.scope),
            "expires_at": _n(state.expires_at),
            # DynamoDB's TTL sweep is lazy; expires_at is what is enforced.
            "ttl": _n(state.expires_at),
            "link_hash": _s(state.link_hash),
            "link_expires_at": _n(state.link_expires_at),
        }
        if state.return_to:
            item["return_to"] = _s(state.return_to)
        if state.allow_company_change:
            item["allow_company_change"] = {"BOOL": True}
        self._db.put_item(
            TableName=self.table_name, Item=item, ConditionExpression="attribute_not_exists(pk)"
        )

    def consume_state(self, state_hash: str, binding_hash: str, now: int) -> FlowState:
        """Delete and return the flow state in one conditional write.

        The condition makes consumption atomic (two callbacks with the same
        state: one wins) and leaves the row untouched when the browser is
        not the one that started the flow or the state has expired.
        """
        try:
            response = self._db.delete_item(
                TableName=self.table_name,
                Key={"pk": _s(STATE_PREFIX + state_hash)},
                ConditionExpression="attribute_exists(pk) AND binding_hash = :b AND expires_at > :now",
                ExpressionAttributeValues={":b": _s(binding_hash), ":now": _n(now)},
                ReturnValues="ALL_OLD",
            )
        except ClientError as exc:
            if _condition_failed(exc):
                raise StateRejected("state is unknown, used, expired or from another browser") from None
            raise
        item = response.get("Attributes") or {}
        return FlowState(
            state_hash=state_hash,
            connection_id=item["connection_id"]["S"],
            code_verifier=item["code_verifier"]["S"],
            binding_hash=item["binding_hash"]["S"],
            issuer=item["issuer"]["S"],
            redirect_uri=item["redirect_uri"]["S"],
            scope=item["scope"]["S"],
            return_to=item.get("return_to", {}).get("S"),
            expires_at=int(item["expires_at"]["N"]),
            link_hash=item["link_hash"]["S"],
            link_expires_at=int(item["link_expires_at"]["N"]),
            allow_company_change=item.get("allow_company_change", {}).get("BOOL") is True,
        )

    # ---------------------------------------------------------------- used links
    def is_link_used(self, link_hash: str) -> bool:
        response = self._db.get_item(
            TableName=self.table_name, Key={"pk": _s(LINK_PREFIX + link_hash)}, ConsistentRead=True
        )
        return "Item" in response

    def claim_link(self, link_hash: str, *, connection_id: str, expires_at: int, now: int) -> None:
        """Mark a link used, once; :class:`LinkAlreadyUsed` if it already was."""
        try:
            self._db.put_item(
                TableName=self.table_name,
                Item={
                    "pk": _s(LINK_PREFIX + link_hash),
                    "connection_id": _s(connection_id),
                    "used_at": _n(now),
                    "ttl": _n(expires_at),
                },
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if _condition_failed(exc):
                raise LinkAlreadyUsed("the connect link was already used") from None
            raise

    def release_link(self, link_hash: str) -> None:
        """Give a link back after a connection attempt that failed."""
        self._db.delete_item(TableName=self.table_name, Key={"pk": _s(LINK_PREFIX + link_hash)})

    # ---------------------------------------------------------------- connections
    def save_connection(self, **fields: Any) -> Connection:
        """:meth:`save_replacing` (same arguments), returning only the saved connection."""
        return self.save_replacing(**fields).connection

    def save_replacing(
        self,
        *,
        connection_id: str,
        tokens: TokenSet,
        ciphertext: SealedTokens,
        company_name: str | None,
        issuer: str,
        now: int,
        api_url: str | None = None,
        refresh_at: int | None = None,
        active_until: int = 0,
        allow_company_change: bool = False,
    ) -> Saved:
        """Create the connection or replace its tokens (reconnect); version grows.
        Also returns the ciphertexts of the grant it replaced (a reconnect of a
        live connection) and the row as it was, read in the same write. A
        reconnect wins over a refresh in flight: the lease is cleared, so that
        refresher's commit fails and its tokens are kept aside.

        A reconnect must be to the connection's own Invoiced company (its
        ``tenant_id``), checked in the same write: otherwise nothing is written
        and :class:`CompanyMismatch` carries the stored connection; unless
        ``allow_company_change``."""
        attributes: dict[str, Any] = {
            "connection_id": _s(connection_id),
            "tenant_id": _s(tokens.tenant_id),
            "scopes": {"L": [_s(scope) for scope in tokens.scopes]},
            "issuer": _s(issuer),
            "status": _s(ConnectionStatus.ACTIVE.value),
            "expires_at": _n(tokens.expires_at),
            "token_lifetime": _n(tokens.lifetime),
            "access_ciphertext": {"B": ciphertext.access},
            "refresh_ciphertext": {"B": ciphertext.refresh},
            "connected_at": _n(now),
            "refreshed_at": _n(now),
            "updated_at": _n(now),
            "due_shard": _n(due_shard(connection_id)),
            "refresh_at": _n(tokens.expires_at if refresh_at is None else refresh_at),
            "active_until": _n(active_until),
        }
        if not ciphertext.split:
            raise ValueError("new tokens are always written in the split format")
        removals = [*_LEASE_FIELDS, *_FAILURE_FIELDS, "status_reason", "revoked_at", "token_ciphertext",
                    "rejected_refresh_at", "rejected_notice_at"]
        if api_url is not None:
            attributes["api_url"] = _s(api_url)
        else:
            removals.append("api_url")
        if company_name is not None:
            attributes["company_name"] = _s(company_name)
        else:
            removals.append("company_name")  # named again after the company lookup
        names = {f"#a{number}": name for number, name in enumerate(attributes)}
        values = {f":a{number}": value for number, value in enumerate(attributes.values())}
        values.update({":now": _n(now), ":one": _n(1)})
        expression = ("SET " + ", ".join(f"#a{number} = :a{number}" for number in range(len(attributes)))
                      + ", created_at = if_not_exists(created_at, :now) ADD version :one REMOVE "
                      + ", ".join(removals))
        condition: dict[str, Any] = {}
        if not allow_company_change:
            condition["ConditionExpression"] = "attribute_not_exists(tenant_id) OR tenant_id = :tenant"
            values[":tenant"] = _s(tokens.tenant_id)
        try:
            response = self._db.update_item(
                TableName=self.table_name,
                Key={"pk": _s(CONNECTION_PREFIX + connection_id)},
                UpdateExpression=expression,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_OLD",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **condition,
            )
        except ClientError as exc:
            if _condition_failed(exc) and exc.response.get("Item"):
                raise CompanyMismatch(connection_from_item(exc.response["Item"]), tokens.tenant_id) from None
            raise
        old = response.get("Attributes") or {}
        # The row as written: what it kept, what was set, the grown version.
        item = {name: value for name, value in old.items() if name not in removals}
        item.update(attributes)
        item["created_at"] = old.get("created_at", _n(now))
        item["version"] = _n(int(old.get("version", {}).get("N", "0")) + 1)
        live = old.get("status", {}).get("S") != ConnectionStatus.REVOKED.value
        previous = connection_from_item(old) if old else None
        return Saved(connection_from_item(item), sealed_from_item(old) if old and live else None, previous)

    def set_company_name(self, connection_id: str, company_name: str, *, version: int) -> bool:
        """Label a connection, unless a newer write has replaced it meanwhile."""
        try:
            self._db.update_item(
                TableName=self.table_name,
                Key={"pk": _s(CONNECTION_PREFIX + connection_id)},
                UpdateExpression="SET company_name = :company",
                ConditionExpression="version = :version",
                ExpressionAttributeValues={":company": _s(company_name), ":version": _n(version)},
            )
        except ClientError as exc:
            if _condition_failed(exc):
                return False
            raise
        return True

    def get_connection(
        self, connection_id: str, *, consistent: bool = True
    ) -> tuple[Connection, SealedTokens | None] | None:
        """The connection and its token ciphertexts, or ``None`` if unknown."""
        response = self._db.get_item(
            TableName=self.table_name,
            Key={"pk": _s(CONNECTION_PREFIX + connection_id)},
            ConsistentRead=consistent,
        )
        item = response.get("Item")
        if not item:
            return None
        return connection_from_item(item), sealed_from_item(item)

    def get_connection_state(self, connection_id: str) -> Connection | None:
        """The connection without its ciphertexts (only :data:`STATE_ATTRIBUTES` are read)."""
        response = self._db.get_item(
            TableName=self.table_name,
            Key={"pk": _s(CONNECTION_PREFIX + connection_id)},
            ConsistentRead=True,
            ProjectionExpression=", ".join(f"#a{i}" for i in range(len(STATE_ATTRIBUTES))),
            ExpressionAttributeNames={f"#a{i}": name for i, name in enumerate(STATE_ATTRIBUTES)},
        )
        item = response.get("Item")
        return connection_from_item(item) if item else None

    def attention(self, kind: Attention, *, limit: int, start: dict[str, Any] | None = None
                  ) -> tuple[list[AttentionEntry], dict[str, Any] | None]:
        """One page of the attention-index for ``kind``, newest first, and where the next page starts."""
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "IndexName": ATTENTION_INDEX,
            "KeyConditionExpression": "attention = :kind",
            "ExpressionAttributeValues": {":kind": _s(kind.value)},
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if start:
            kwargs["ExclusiveStartKey"] = start
        response = self._db.query(**kwargs)
        entries = [
            AttentionEntry(
                connection_id=item["connection_id"]["S"],
                attention=kind,
                reason=(item.get("status_reason") or item.get("last_error") or item.get("reason") or {}).get("S"),
                status=item.get("status", {}).get("S"),
                since=_int(item, "updated_at"),
            )
            for item in response.get("Items", [])
        ]
        return entries, response.get("LastEvaluatedKey")


    # ---------------------------------------------------------------- refresh lifecycle
    def _update(self, connection_id: str, expression: str, condition: str, values: dict[str, Any],
                names: dict[str, str] | None = None) -> Connection:
        """A conditional update of a connection; :class:`LeaseLost` if the condition fails."""
        return connection_from_item(self._update_item(connection_id, expression, condition, values, names))

    def _update_item(self, connection_id: str, expression: str, condition: str, values: dict[str, Any],
                     names: dict[str, str] | None = None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "Key": {"pk": _s(CONNECTION_PREFIX + connection_id)},
            "UpdateExpression": expression,
            "ConditionExpression": condition,
            "ExpressionAttributeValues": values,
            "ReturnValues": "ALL_NEW",
        }
        if names:
            kwargs["ExpressionAttributeNames"] = names
        try:
            response = self._db.update_item(**kwargs)
        except ClientError as exc:
            if _condition_failed(exc):
                raise LeaseLost(f"{connection_id} changed or its lease is gone") from None
            raise
        return response["Attributes"]

    def take_lease(
        self,
        connection_id: str,
        *,
        owner: str,
        now: int,
        until: int,
        version: int | None = None,
        statuses: tuple[ConnectionStatus, ...] = (ConnectionStatus.ACTIVE,),
        due_by: int | None = None,
        stale_version: int | None = None,
        expiring_before: int | None = None,
        rejected_since: int | None = None,
    ) -> tuple[Connection, SealedTokens | None]:
        """Become the only refresher of the connection; the row as leased, with its ciphertexts.

        Fails (:class:`LeaseLost`) if the row has another status, someone
        else holds an unexpired lease, or a requirement does not hold:
        ``version`` (the row is still as read), ``due_by`` (its
        ``refresh_at`` is at most this), ``stale_version`` (its version is at
        most this), ``expiring_before`` (its token expires before this), and
        outside a cooldown unless ``version`` is given (the caller checked).
        ``rejected_since``: a rotation asked for because Invoiced rejected the
        token; refused if one was taken after this time, and recorded.
        Without ``version`` no read is needed first: the update returns the row.
        """
        values: dict[str, Any] = {":owner": _s(owner), ":until": _n(until), ":now": _n(now)}
        names = {"#status": "status"}
        allowed = []
        for number, status in enumerate(statuses):
            values[f":s{number}"] = _s(status.value)
            allowed.append(f":s{number}")
        conditions = [f"#status IN ({', '.join(allowed)})",
                      "(attribute_not_exists(lease_until) OR lease_until <= :now)"]
        assignments = ["lease_owner = :owner", "lease_until = :until"]
        if version is not None:
            conditions.append("version = :v")
            values[":v"] = _n(version)
        else:
            conditions.append("(attribute_not_exists(next_attempt_at) OR next_attempt_at <= :now)")
        if due_by is not None:
            conditions.append("refresh_at <= :due_by")
            values[":due_by"] = _n(due_by)
        if stale_version is not None:
            conditions.append("version <= :stale")
            values[":stale"] = _n(stale_version)
        if expiring_before is not None:
            conditions.append("expires_at < :expiring")
            values[":expiring"] = _n(expiring_before)
        if rejected_since is not None:
            conditions.append("(attribute_not_exists(rejected_refresh_at) OR rejected_refresh_at <= :rejected)")
            values[":rejected"] = _n(rejected_since)
            assignments.append("rejected_refresh_at = :now")
        item = self._update_item(connection_id, "SET " + ", ".join(assignments), " AND ".join(conditions),
                                 values, names)
        return connection_from_item(item), sealed_from_item(item)

    def note_rejection(self, connection_id: str, *, now: int, rotated_at: int) -> bool:
        """Record that a token was rejected again after the rotation at ``rotated_at``;
        ``True`` only for the first such note since then (one event per rotation)."""
        try:
            self._update(connection_id, "SET rejected_notice_at = :now",
                         "attribute_exists(pk) AND "
                         "(attribute_not_exists(rejected_notice_at) OR rejected_notice_at < :rotated)",
                         {":now": _n(now), ":rotated": _n(rotated_at)})
        except LeaseLost:
            return False
        return True

    def release_lease(self, connection_id: str, *, owner: str) -> bool:
        """Give the lease back untouched (only if it is still ours)."""
        try:
            self._update(connection_id, "REMOVE lease_owner, lease_until", "lease_owner = :owner",
                         {":owner": _s(owner)})
        except LeaseLost:
            return False
        return True

    def commit_tokens(
        self,
        connection_id: str,
        *,
        owner: str,
        version: int,
        ciphertext: SealedTokens,
        expires_at: int,
        now: int,
        refresh_at: int,
        active_until: int | None = None,
        lifetime: int = REFERENCE_LIFETIME_SECONDS,
    ) -> Connection:
        """Store rotated tokens, if the row is still at ``version`` and the lease ours."""
        values: dict[str, Any] = {
            **_sealed_values(ciphertext),
            ":exp": _n(expires_at),
            ":lifetime": _n(lifetime),
            ":now": _n(now),
            ":refresh_at": _n(refresh_at),
            ":shard": _n(due_shard(connection_id)),
            ":active": _s(ConnectionStatus.ACTIVE.value),
            ":one": _n(1),
            ":v": _n(version),
            ":owner": _s(owner),
        }
        assignments = [
            *_SEALED_ASSIGNMENTS, "expires_at = :exp", "token_lifetime = :lifetime", "refreshed_at = :now",
            "updated_at = :now",
            "refresh_at = :refresh_at", "due_shard = :shard", "#status = :active",
        ]
        if active_until is not None:
            assignments.append("active_until = :active_until")
            values[":active_until"] = _n(active_until)
        return self._update(
            connection_id,
            "SET " + ", ".join(assignments) + " ADD version :one REMOVE "
            + ", ".join([*_LEASE_FIELDS, *_FAILURE_FIELDS, "status_reason", "token_ciphertext"]),
            "version = :v AND lease_owner = :owner",
            values,
            {"#status": "status"},
        )

    def record_failure(
        self,
        connection_id: str,
        *,
        owner: str,
        version: int,
        now: int,
        reason: str,
        next_attempt_at: int,
        outcome_unknown: bool | None = None,
        refresh_at: int,
        failing: bool = False,
    ) -> Connection:
        """Count a failed refresh, set the cooldown, release the lease; tokens untouched.

        ``outcome_unknown``: ``True`` flags a lost answer (now), ``False``
        clears the flag (a probe found the pair alive), ``None`` leaves it.
        ``failing``: it has failed often enough (or its outcome is unknown) to
        be listed as needing attention. ``refresh_at``: where the row goes in
        the due-index (the refresher puts it a window after ``next_attempt_at``,
        so the scheduler finds it only once it may be tried).
        """
        values: dict[str, Any] = {
            ":zero": _n(0), ":one": _n(1), ":next": _n(next_attempt_at), ":reason": _s(reason),
            ":now": _n(now), ":v": _n(version), ":owner": _s(owner),
            ":due": _n(refresh_at),
        }
        assignments = [
            "failure_count = if_not_exists(failure_count, :zero) + :one", "next_attempt_at = :next",
            "refresh_at = :due", "last_error = :reason", "updated_at = :now",
        ]
        removals = ["lease_owner", "lease_until"]
        if outcome_unknown:
            assignments.append("outcome_unknown_at = :now")
        elif outcome_unknown is False:
            removals.append("outcome_unknown_at")
        if failing or outcome_unknown:
            assignments.append("attention = :attention")
            values[":attention"] = _s(Attention.FAILING.value)
        elif outcome_unknown is False:
            removals.append("attention")
        return self._update(
            connection_id,
            "SET " + ", ".join(assignments) + " REMOVE " + ", ".join(removals),
            "version = :v AND lease_owner = :owner",
            values,
        )

    def mark_needs_reauth(self, connection_id: str, *, owner: str, version: int, now: int, reason: str) -> Connection:
        """The refresh token is dead: stop refreshing (leave the due-index), keep the row;
        a lost answer, if there was one, is settled."""
        return self._update(
            connection_id,
            "SET #status = :needs, status_reason = :reason, updated_at = :now, attention = :attention "
            "REMOVE lease_owner, lease_until, due_shard, refresh_at, next_attempt_at, outcome_unknown_at",
            "version = :v AND lease_owner = :owner",
            {":needs": _s(ConnectionStatus.NEEDS_REAUTH.value), ":reason": _s(reason), ":now": _n(now),
             ":v": _n(version), ":owner": _s(owner), ":attention": _s(Attention.NEEDS_REAUTH.value)},
            {"#status": "status"},
        )

    def mark_revoked(self, connection_id: str, *, owner: str, version: int, now: int, reason: str) -> Connection:
        """Disconnected: erase the tokens, leave the due-index; the row and its history stay."""
        return self._update(
            connection_id,
            "SET #status = :revoked, status_reason = :reason, revoked_at = :now, updated_at = :now "
            "ADD version :one REMOVE due_shard, refresh_at, "
            + ", ".join([*_CIPHERTEXT_FIELDS, *_LEASE_FIELDS, *_FAILURE_FIELDS]),
            "version = :v AND lease_owner = :owner",
            {":revoked": _s(ConnectionStatus.REVOKED.value), ":reason": _s(reason), ":now": _n(now),
             ":one": _n(1), ":v": _n(version), ":owner": _s(owner)},
            {"#status": "status"},
        )

    # ---------------------------------------------------------------- tokens kept aside
    def put_rescue(self, rescue: Rescue) -> None:
        """Keep new tokens aside; in the due-index at once so the scheduler finds them."""
        self._db.put_item(
            TableName=self.table_name,
            Item={
                "pk": _s(RESCUE_PREFIX + rescue.connection_id),
                "connection_id": _s(rescue.connection_id),
                **({"access_ciphertext": {"B": rescue.sealed.access}, "refresh_ciphertext": {"B": rescue.sealed.refresh}}
                   if rescue.sealed.split else {"token_ciphertext": {"B": rescue.sealed.pair}}),
                "base_version": _n(rescue.base_version),
                "expires_at": _n(rescue.expires_at),
                "token_lifetime": _n(rescue.lifetime),
                "rescued_at": _n(rescue.rescued_at),
                "reason": _s(rescue.reason),
                "due_shard": _n(due_shard(rescue.connection_id)),
                "refresh_at": _n(rescue.rescued_at),
                "attention": _s(Attention.KEPT_ASIDE.value),
                "updated_at": _n(rescue.rescued_at),
            },
        )

    def get_rescue(self, connection_id: str) -> Rescue | None:
        response = self._db.get_item(
            TableName=self.table_name, Key={"pk": _s(RESCUE_PREFIX + connection_id)}, ConsistentRead=True
        )
        item = response.get("Item")
        if not item:
            return None
        return Rescue(
            connection_id=item["connection_id"]["S"],
            sealed=sealed_from_item(item),
            base_version=int(item["base_version"]["N"]),
            expires_at=int(item["expires_at"]["N"]),
            rescued_at=int(item["rescued_at"]["N"]),
            reason=item["reason"]["S"],
            lifetime=_int(item, "token_lifetime") or REFERENCE_LIFETIME_SECONDS,
        )

    def delete_rescue(self, rescue: Rescue) -> None:
        """Remove a recovered rescue (not a newer one written meanwhile)."""
        try:
            self._db.delete_item(
                TableName=self.table_name,
                Key={"pk": _s(RESCUE_PREFIX + rescue.connection_id)},
                ConditionExpression="rescued_at = :at AND base_version = :bv",
                ExpressionAttributeValues={":at": _n(rescue.rescued_at), ":bv": _n(rescue.base_version)},
            )
        except ClientError as exc:
            if not _condition_failed(exc):
                raise

    # ---------------------------------------------------------------- finding work
    def due(self, shard: int, until: int, *, page_size: int = 500) -> Iterator[tuple[list[DueKey], int]]:
        """Pages of what is due on one shard (``refresh_at <= until``), with items read per page."""
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "IndexName": DUE_INDEX,
            "KeyConditionExpression": "due_shard = :shard AND refresh_at <= :until",
            "ExpressionAttributeValues": {":shard": _n(shard), ":until": _n(until)},
            "Limit": page_size,
        }
        while True:
            response = self._db.query(**kwargs)
            keys = []
            for item in response.get("Items", []):
                pk = item["pk"]["S"]
                rescue = pk.startswith(RESCUE_PREFIX)
                keys.append(DueKey(pk.split("#", 1)[1], rescue, int(item["refresh_at"]["N"])))
            yield keys, int(response.get("ScannedCount", len(keys)))
            if "LastEvaluatedKey" not in response:
                return
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def list_connections(self) -> Iterator[Connection]:
        """Every connection (an operator's listing: a Scan, never used by the functions)."""
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "FilterExpression": "begins_with(pk, :prefix)",
            "ExpressionAttributeValues": {":prefix": _s(CONNECTION_PREFIX)},
        }
        while True:
            response = self._db.scan(**kwargs)
            for item in response.get("Items", []):
                yield connection_from_item(item)
            if "LastEvaluatedKey" not in response:
                return
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]


def connection_from_item(item: dict[str, Any]) -> Connection:
    return Connection(
        connection_id=item["connection_id"]["S"],
        tenant_id=item["tenant_id"]["S"],
        company_name=item.get("company_name", {}).get("S"),
        scopes=tuple(v["S"] for v in item.get("scopes", {}).get("L", [])),
        issuer=item["issuer"]["S"],
        api_url=item.get("api_url", {}).get("S"),
        status=ConnectionStatus(item["status"]["S"]),
        expires_at=int(item["expires_at"]["N"]),
        version=int(item["version"]["N"]),
        created_at=int(item["created_at"]["N"]),
        updated_at=int(item["updated_at"]["N"]),
        refreshed_at=_int(item, "refreshed_at"),
        refresh_at=int(item["refresh_at"]["N"]) if "refresh_at" in item else None,
        active_until=_int(item, "active_until"),
        lease_owner=item.get("lease_owner", {}).get("S"),
        lease_until=_int(item, "lease_until"),
        failure_count=_int(item, "failure_count"),
        next_attempt_at=_int(item, "next_attempt_at"),
        last_error=item.get("last_error", {}).get("S"),
        outcome_unknown_at=_int(item, "outcome_unknown_at"),
        status_reason=item.get("status_reason", {}).get("S"),
        attention=Attention(item["attention"]["S"]) if "attention" in item else None,
        rejected_refresh_at=_int(item, "rejected_refresh_at"),
        rejected_notice_at=_int(item, "rejected_notice_at"),
        token_lifetime=_int(item, "token_lifetime") or REFERENCE_LIFETIME_SECONDS,
    )


def _int(item: dict[str, Any], name: str) -> int:
    return int(item[name]["N"]) if name in item else 0
