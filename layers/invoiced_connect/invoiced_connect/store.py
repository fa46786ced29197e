"""The token table: the only module that reads or writes DynamoDB.

One table holds two kinds of item, told apart by the key prefix:

* ``conn#<connection id>``: a connection. Tokens are stored only as KMS
  ciphertext; ``version`` grows on every write of new tokens.
* ``state#<sha256(state)>``: an OAuth flow in progress (single use, 10
  minutes, removed by TTL if never used). Only the hash of the state is
  stored, so the table never holds a usable state value.
* ``link#<sha256(link id)>``: a connect link that has completed a connection
  (kept until the link would have expired, then removed by TTL).

Active connections also carry ``due_shard``/``refresh_at``, which put them in
the sparse ``due-index`` used to find connections that need a refresh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from invoiced_connect import aws
from invoiced_connect.models import Connection, ConnectionStatus, TokenSet

CONNECTION_PREFIX = "conn#"
STATE_PREFIX = "state#"
LINK_PREFIX = "link#"
DUE_SHARDS = 16


class StateRejected(Exception):
    """The flow state is unknown, used, expired, or belongs to another browser."""


class LinkAlreadyUsed(Exception):
    """The connect link has already completed a connection."""


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


def _condition_failed(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def due_shard(connection_id: str) -> int:
    """Spread connections evenly over the index's partitions."""
    return int.from_bytes(hashlib.sha256(connection_id.encode("utf-8")).digest()[:4], "big") % DUE_SHARDS


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int) -> dict[str, str]:
    return {"N": str(int(value))}


class TokenStore:
    def __init__(self, table_name: str, client_factory: Callable[[], Any] = lambda: aws.client("dynamodb")) -> None:
        self.table_name = table_name
        self._client_factory = client_factory

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
    def save_connection(
        self,
        *,
        connection_id: str,
        tokens: TokenSet,
        ciphertext: bytes,
        company_name: str | None,
        issuer: str,
        now: int,
    ) -> Connection:
        """Create the connection or replace its tokens (reconnect); version grows."""
        names = {"#status": "status"}
        values: dict[str, Any] = {
            ":cid": _s(connection_id),
            ":tenant": _s(tokens.tenant_id),
            ":scopes": {"L": [_s(s) for s in tokens.scopes]},
            ":issuer": _s(issuer),
            ":active": _s(ConnectionStatus.ACTIVE.value),
            ":exp": _n(tokens.expires_at),
            ":blob": {"B": ciphertext},
            ":now": _n(now),
            ":shard": _n(due_shard(connection_id)),
            ":one": _n(1),
        }
        assignments = [
            "connection_id = :cid",
            "tenant_id = :tenant",
            "scopes = :scopes",
            "issuer = :issuer",
            "#status = :active",
            "expires_at = :exp",
            "token_ciphertext = :blob",
            "created_at = if_not_exists(created_at, :now)",
            "connected_at = :now",
            "refreshed_at = :now",
            "updated_at = :now",
            "due_shard = :shard",
            "refresh_at = :exp",
        ]
        removals = ["lease_owner", "lease_until", "failure_count", "next_attempt_at", "status_reason", "revoked_at"]
        if company_name is not None:
            assignments.append("company_name = :company")
            values[":company"] = _s(company_name)
        else:
            removals.append("company_name")  # a reconnect may be to another company
        response = self._db.update_item(
            TableName=self.table_name,
            Key={"pk": _s(CONNECTION_PREFIX + connection_id)},
            UpdateExpression="SET " + ", ".join(assignments) + " ADD version :one REMOVE " + ", ".join(removals),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
            ReturnValues="ALL_NEW",
        )
        return connection_from_item(response["Attributes"])

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

    def get_connection(self, connection_id: str, *, consistent: bool = True) -> tuple[Connection, bytes | None] | None:
        """The connection and its token ciphertext, or ``None`` if unknown."""
        response = self._db.get_item(
            TableName=self.table_name,
            Key={"pk": _s(CONNECTION_PREFIX + connection_id)},
            ConsistentRead=consistent,
        )
        item = response.get("Item")
        if not item:
            return None
        blob = item.get("token_ciphertext", {}).get("B")
        return connection_from_item(item), blob


def connection_from_item(item: dict[str, Any]) -> Connection:
    return Connection(
        connection_id=item["connection_id"]["S"],
        tenant_id=item["tenant_id"]["S"],
        company_name=item.get("company_name", {}).get("S"),
        scopes=tuple(v["S"] for v in item.get("scopes", {}).get("L", [])),
        issuer=item["issuer"]["S"],
        status=ConnectionStatus(item["status"]["S"]),
        expires_at=int(item["expires_at"]["N"]),
        version=int(item["version"]["N"]),
        created_at=int(item["created_at"]["N"]),
        updated_at=int(item["updated_at"]["N"]),
    )
