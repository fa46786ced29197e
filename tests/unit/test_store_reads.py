"""TokenStore against an in-process DynamoDB (moto): the flow states (single
use, bound to the browser, expiring), the used links, the rescue rows, the
reads of connections, and the sparse indexes (attention-index pages, the
sharded due-index), with the exact items written and what each read returns."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from invoiced_connect.core.models import Attention, Connection, ConnectionStatus
from invoiced_connect.storage.crypto import SealedTokens
from invoiced_connect.storage.store import (
    AttentionEntry,
    DueKey,
    FlowState,
    LinkAlreadyUsed,
    Rescue,
    Saved,
    StateRejected,
    TokenStore,
)
from tests.support.dynamodb import TABLE_NAME as TABLE
from tests.support.dynamodb import db_fixture, moto_client_fixture, store_fixture

__all__ = ["db_fixture", "moto_client_fixture", "store_fixture"]  # fixtures: one moto per module, a new table per test

NOW = 1_700_000_000


def _shard(connection_id: str) -> int:
    return int.from_bytes(hashlib.sha256(connection_id.encode("utf-8")).digest()[:4], "big") % 16


def _raw(db: Any, pk: str) -> dict[str, Any] | None:
    return db.get_item(TableName=TABLE, Key={"pk": {"S": pk}}, ConsistentRead=True).get("Item")


def _all(db: Any) -> list[dict[str, Any]]:
    return sorted(db.scan(TableName=TABLE)["Items"], key=lambda item: item["pk"]["S"])


def _flow(**changes: Any) -> FlowState:
    values = dict(
        state_hash="statehash1", connection_id="conn-1", code_verifier="verifier-1", binding_hash="bind-1",
        issuer="https://issuer.test", redirect_uri="https://app.test/callback", scope="read write",
        return_to="https://app.test/done", expires_at=NOW + 600, link_hash="linkhash1", link_expires_at=NOW + 9000,
    )
    values.update(changes)
    return FlowState(**values)


# ---------------------------------------------------------------- the classes
def test_the_records_are_frozen_and_keep_secrets_out_of_their_repr() -> None:
    flow = _flow()
    assert "verifier-1" not in repr(flow) and "bind-1" not in repr(flow)
    assert "statehash1" in repr(flow) and "https://app.test/callback" in repr(flow)
    sealed = SealedTokens(access=b"secret-access", refresh=b"secret-refresh")
    rescue = Rescue("conn-1", sealed, 3, NOW + 3600, NOW, "commit failed")
    assert rescue.lifetime == 3600
    assert "secret" not in repr(rescue) and "conn-1" in repr(rescue)
    conn = _connection()
    saved = Saved(conn)
    assert saved.replaced is None
    assert "secret" not in repr(Saved(conn, sealed))
    key = DueKey("conn-1", False, NOW)
    entry = AttentionEntry("conn-1", Attention.FAILING, "boom", "active", NOW)
    for record in (flow, rescue, saved, key, entry):
        with pytest.raises(dataclasses.FrozenInstanceError):
            record.connection_id = "other"  # type: ignore[misc]


def _connection() -> Connection:
    return Connection("conn-1", "tenant-1", None, ("read",), "https://issuer.test", ConnectionStatus.ACTIVE,
                      NOW + 3600, 1, NOW, NOW)


# ---------------------------------------------------------------- flow states
def test_put_state_writes_the_hashed_key_every_field_and_the_ttl(db: Any, store: TokenStore) -> None:
    store.put_state(_flow())
    assert _all(db) == [{
        "pk": {"S": "state#statehash1"},
        "connection_id": {"S": "conn-1"},
        "code_verifier": {"S": "verifier-1"},
        "binding_hash": {"S": "bind-1"},
        "issuer": {"S": "https://issuer.test"},
        "redirect_uri": {"S": "https://app.test/callback"},
        "scope": {"S": "read write"},
        "return_to": {"S": "https://app.test/done"},
        "expires_at": {"N": str(NOW + 600)},
        "ttl": {"N": str(NOW + 600)},
        "link_hash": {"S": "linkhash1"},
        "link_expires_at": {"N": str(NOW + 9000)},
    }]


@pytest.mark.parametrize("return_to", [None, ""])
def test_put_state_without_a_return_address_writes_none(db: Any, store: TokenStore, return_to: Any) -> None:
    store.put_state(_flow(return_to=return_to))
    item = _raw(db, "state#statehash1")
    assert item is not None and "return_to" not in item and item["scope"] == {"S": "read write"}


def test_put_state_never_overwrites_a_state(db: Any, store: TokenStore) -> None:
    store.put_state(_flow())
    with pytest.raises(ClientError) as raised:
        store.put_state(_flow(connection_id="conn-2", binding_hash="bind-2"))
    assert raised.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    assert _raw(db, "state#statehash1")["connection_id"] == {"S": "conn-1"}


@pytest.mark.parametrize("return_to", ["https://app.test/done", None])
def test_consume_state_returns_the_state_and_deletes_it(db: Any, store: TokenStore, return_to: Any) -> None:
    flow = _flow(return_to=return_to)
    store.put_state(flow)
    assert store.consume_state("statehash1", "bind-1", NOW + 599) == flow
    assert _all(db) == []
    with pytest.raises(StateRejected, match=r"^state is unknown, used, expired or from another browser$"):
        store.consume_state("statehash1", "bind-1", NOW + 599)


def test_a_flow_that_may_change_company_keeps_that_to_its_callback(db: Any, store: TokenStore) -> None:
    flow = _flow(allow_company_change=True)
    store.put_state(flow)
    assert _raw(db, "state#statehash1")["allow_company_change"] == {"BOOL": True}
    consumed = store.consume_state("statehash1", "bind-1", NOW + 599)
    assert consumed.allow_company_change is True and consumed == flow


@pytest.mark.parametrize(
    ("state_hash", "binding", "now"),
    [
        ("statehash1", "bind-other", NOW),  # another browser
        ("statehash1", "bind-1", NOW + 600),  # expired: expires_at is not after now
        ("statehash1", "bind-1", NOW + 601),
        ("statehash2", "bind-1", NOW),  # unknown
    ],
)
def test_consume_state_refuses_and_leaves_the_row(db: Any, store: TokenStore, state_hash: str, binding: str,
                                                  now: int) -> None:
    store.put_state(_flow())
    before = _all(db)
    with pytest.raises(StateRejected, match=r"^state is unknown, used, expired or from another browser$") as raised:
        store.consume_state(state_hash, binding, now)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert _all(db) == before


def test_other_errors_pass_through_unchanged(db: Any) -> None:
    missing = TokenStore("no-such-table", client_factory=lambda: boto3.client("dynamodb"))
    for call in (lambda: missing.consume_state("s", "b", NOW),
                 lambda: missing.claim_link("l", connection_id="c", expires_at=NOW, now=NOW),
                 lambda: missing.delete_rescue(Rescue("c", SealedTokens(pair=b"p"), 1, NOW, NOW, "r"))):
        with pytest.raises(ClientError) as raised:
            call()
        assert raised.value.response["Error"]["Code"] == "ResourceNotFoundException"


# ---------------------------------------------------------------- used links
def test_claim_link_writes_the_hashed_key_and_refuses_a_second_claim(db: Any, store: TokenStore) -> None:
    assert store.is_link_used("linkhash1") is False
    store.claim_link("linkhash1", connection_id="conn-1", expires_at=NOW + 9000, now=NOW)
    expected = [{"pk": {"S": "link#linkhash1"}, "connection_id": {"S": "conn-1"}, "used_at": {"N": str(NOW)},
                 "ttl": {"N": str(NOW + 9000)}}]
    assert _all(db) == expected
    assert store.is_link_used("linkhash1") is True
    assert store.is_link_used("linkhash2") is False
    with pytest.raises(LinkAlreadyUsed, match=r"^the connect link was already used$") as raised:
        store.claim_link("linkhash1", connection_id="conn-2", expires_at=NOW + 1, now=NOW + 5)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert _all(db) == expected


def test_is_link_used_reads_only_link_rows(db: Any, store: TokenStore) -> None:
    store.put_state(_flow(state_hash="linkhash1"))
    assert store.is_link_used("linkhash1") is False


def test_release_link_removes_only_that_link(db: Any, store: TokenStore) -> None:
    store.claim_link("linkhash1", connection_id="conn-1", expires_at=NOW + 9000, now=NOW)
    store.claim_link("linkhash2", connection_id="conn-2", expires_at=NOW + 9000, now=NOW)
    store.release_link("linkhash1")
    assert [item["pk"]["S"] for item in _all(db)] == ["link#linkhash2"]
    store.claim_link("linkhash1", connection_id="conn-3", expires_at=NOW + 9000, now=NOW)
    assert store.is_link_used("linkhash1")


# ---------------------------------------------------------------- connections
def _full_connection_item(connection_id: str = "conn-1", **extra: Any) -> dict[str, Any]:
    item = {
        "pk": {"S": "conn#" + connection_id},
        "connection_id": {"S": connection_id},
        "tenant_id": {"S": "tenant-1"},
        "company_name": {"S": "Acme"},
        "scopes": {"L": [{"S": "read"}, {"S": "write"}]},
        "issuer": {"S": "https://issuer.test"},
        "api_url": {"S": "https://api.test"},
        "status": {"S": "active"},
        "expires_at": {"N": "101"},
        "version": {"N": "7"},
        "created_at": {"N": "102"},
        "updated_at": {"N": "103"},
        "refreshed_at": {"N": "104"},
        "refresh_at": {"N": "105"},
        "active_until": {"N": "106"},
        "lease_owner": {"S": "owner-1"},
        "lease_until": {"N": "107"},
        "failure_count": {"N": "2"},
        "next_attempt_at": {"N": "108"},
        "last_error": {"S": "timeout"},
        "outcome_unknown_at": {"N": "109"},
        "status_reason": {"S": "why"},
        "attention": {"S": "failing"},
        "rejected_refresh_at": {"N": "110"},
        "rejected_notice_at": {"N": "111"},
        "token_lifetime": {"N": "90"},
        "access_ciphertext": {"B": b"acc"},
        "refresh_ciphertext": {"B": b"ref"},
        "due_shard": {"N": str(_shard(connection_id))},
    }
    item.update(extra)
    return item


FULL = Connection(
    connection_id="conn-1", tenant_id="tenant-1", company_name="Acme", scopes=("read", "write"),
    issuer="https://issuer.test", status=ConnectionStatus.ACTIVE, expires_at=101, version=7, created_at=102,
    updated_at=103, refreshed_at=104, refresh_at=105, active_until=106, lease_owner="owner-1", lease_until=107,
    failure_count=2, next_attempt_at=108, last_error="timeout", outcome_unknown_at=109, status_reason="why",
    api_url="https://api.test", attention=Attention.FAILING, rejected_refresh_at=110, rejected_notice_at=111,
    token_lifetime=90,
)


@pytest.mark.parametrize("consistent", [True, False])
def test_get_connection_returns_every_field_and_the_ciphertexts(db: Any, store: TokenStore,
                                                                consistent: bool) -> None:
    db.put_item(TableName=TABLE, Item=_full_connection_item())
    assert store.get_connection("conn-1", consistent=consistent) == (
        FULL, SealedTokens(access=b"acc", refresh=b"ref"))
    assert store.get_connection("conn-1") == (FULL, SealedTokens(access=b"acc", refresh=b"ref"))
    assert store.get_connection("conn-2") is None


def test_get_connection_of_a_minimal_pre_split_row(db: Any, store: TokenStore) -> None:
    item = {key: _full_connection_item()[key] for key in
            ("pk", "connection_id", "tenant_id", "issuer", "status", "expires_at", "version", "created_at",
             "updated_at")}
    db.put_item(TableName=TABLE, Item={**item, "token_ciphertext": {"B": b"pair"}, "status": {"S": "revoked"}})
    assert store.get_connection("conn-1") == (
        Connection("conn-1", "tenant-1", None, (), "https://issuer.test", ConnectionStatus.REVOKED, 101, 7, 102,
                   103),
        SealedTokens(pair=b"pair"),
    )
    db.put_item(TableName=TABLE, Item=item)
    assert store.get_connection("conn-1")[1] is None


def test_get_connection_ignores_other_kinds_of_row(db: Any, store: TokenStore) -> None:
    db.put_item(TableName=TABLE, Item=_full_connection_item(pk={"S": "rescue#conn-1"}))
    assert store.get_connection("conn-1") is None
    assert store.get_connection_state("conn-1") is None


def test_get_connection_state_reads_everything_but_ciphertexts_and_leases(db: Any, store: TokenStore) -> None:
    db.put_item(TableName=TABLE, Item=_full_connection_item())
    assert store.get_connection_state("conn-1") == dataclasses.replace(
        FULL, lease_owner=None, lease_until=0, rejected_refresh_at=0, rejected_notice_at=0, token_lifetime=3600)
    assert store.get_connection_state("conn-2") is None


# ---------------------------------------------------------------- attention-index
def _attention_row(db: Any, pk: str, kind: str, updated_at: int, **extra: Any) -> None:
    connection_id = pk.split("#", 1)[1]
    db.put_item(TableName=TABLE, Item={"pk": {"S": pk}, "connection_id": {"S": connection_id},
                                        "attention": {"S": kind}, "updated_at": {"N": str(updated_at)}, **extra})


def test_attention_lists_one_kind_newest_first_with_reason_and_status(db: Any, store: TokenStore) -> None:
    _attention_row(db, "conn#a", "failing", NOW + 1, status={"S": "active"}, last_error={"S": "timeout"},
                   status_reason={"S": "stated"})
    _attention_row(db, "conn#b", "failing", NOW + 3, status={"S": "active"}, last_error={"S": "timeout"})
    _attention_row(db, "rescue#c", "failing", NOW + 2, reason={"S": "commit failed"})
    _attention_row(db, "conn#d", "failing", NOW + 4)
    _attention_row(db, "conn#e", "needs_reauth", NOW + 5, status={"S": "needs_reauth"})
    db.put_item(TableName=TABLE, Item={"pk": {"S": "conn#f"}, "connection_id": {"S": "f"},
                                        "updated_at": {"N": str(NOW + 9)}})
    entries, after = store.attention(Attention.FAILING, limit=10)
    assert entries == [
        AttentionEntry("d", Attention.FAILING, None, None, NOW + 4),
        AttentionEntry("b", Attention.FAILING, "timeout", "active", NOW + 3),
        AttentionEntry("c", Attention.FAILING, "commit failed", None, NOW + 2),
        AttentionEntry("a", Attention.FAILING, "stated", "active", NOW + 1),
    ]
    assert after is None
    assert store.attention(Attention.NEEDS_REAUTH, limit=10) == (
        [AttentionEntry("e", Attention.NEEDS_REAUTH, None, "needs_reauth", NOW + 5)], None)
    assert store.attention(Attention.KEPT_ASIDE, limit=10) == ([], None)


def test_attention_pages_by_limit_and_start(db: Any, store: TokenStore) -> None:
    for number in range(5):
        _attention_row(db, f"conn#c{number}", "kept_aside", NOW + number)
    seen = []
    pages = 0
    start = None
    while True:
        entries, start = store.attention(Attention.KEPT_ASIDE, limit=2, start=start)
        pages += 1
        assert len(entries) <= 2
        seen += [entry.connection_id for entry in entries]
        if start is None:
            break
        assert start["pk"] == {"S": f"conn#{seen[-1]}"}
    assert seen == ["c4", "c3", "c2", "c1", "c0"]
    assert pages >= 3
    assert [e.connection_id for e in store.attention(Attention.KEPT_ASIDE, limit=2, start={})[0]] == ["c4", "c3"]


# ---------------------------------------------------------------- rescues
@pytest.mark.parametrize(
    ("sealed", "ciphertexts"),
    [
        (SealedTokens(access=b"acc", refresh=b"ref"),
         {"access_ciphertext": {"B": b"acc"}, "refresh_ciphertext": {"B": b"ref"}}),
        (SealedTokens(pair=b"pair"), {"token_ciphertext": {"B": b"pair"}}),
    ],
)
def test_put_rescue_writes_the_row_in_both_indexes_and_get_reads_it_back(db: Any, store: TokenStore,
                                                                         sealed: SealedTokens,
                                                                         ciphertexts: dict[str, Any]) -> None:
    rescue = Rescue("conn-9", sealed, 4, NOW + 3600, NOW, "commit failed", lifetime=90)
    store.put_rescue(rescue)
    assert _all(db) == [{
        "pk": {"S": "rescue#conn-9"},
        "connection_id": {"S": "conn-9"},
        **ciphertexts,
        "base_version": {"N": "4"},
        "expires_at": {"N": str(NOW + 3600)},
        "token_lifetime": {"N": "90"},
        "rescued_at": {"N": str(NOW)},
        "reason": {"S": "commit failed"},
        "due_shard": {"N": str(_shard("conn-9"))},
        "refresh_at": {"N": str(NOW)},
        "attention": {"S": "kept_aside"},
        "updated_at": {"N": str(NOW)},
    }]
    assert store.get_rescue("conn-9") == rescue
    assert store.get_rescue("conn-1") is None
    assert list(store.due(_shard("conn-9"), NOW)) == [([DueKey("conn-9", True, NOW)], 1)]
    assert store.attention(Attention.KEPT_ASIDE, limit=5) == (
        [AttentionEntry("conn-9", Attention.KEPT_ASIDE, "commit failed", None, NOW)], None)


@pytest.mark.parametrize("lifetime", [None, {"N": "0"}])
def test_get_rescue_of_a_row_without_a_lifetime_is_one_hour(db: Any, store: TokenStore, lifetime: Any) -> None:
    item = {"pk": {"S": "rescue#conn-9"}, "connection_id": {"S": "conn-9"}, "token_ciphertext": {"B": b"p"},
            "base_version": {"N": "4"}, "expires_at": {"N": "5"}, "rescued_at": {"N": "6"}, "reason": {"S": "r"}}
    if lifetime:
        item["token_lifetime"] = lifetime
    db.put_item(TableName=TABLE, Item=item)
    assert store.get_rescue("conn-9") == Rescue("conn-9", SealedTokens(pair=b"p"), 4, 5, 6, "r", 3600)


def test_get_rescue_reads_only_rescue_rows(db: Any, store: TokenStore) -> None:
    db.put_item(TableName=TABLE, Item=_full_connection_item("conn-9", base_version={"N": "1"},
                                                            rescued_at={"N": "1"}, reason={"S": "r"}))
    assert store.get_rescue("conn-9") is None


def test_delete_rescue_removes_only_the_same_rescue(db: Any, store: TokenStore) -> None:
    rescue = Rescue("conn-9", SealedTokens(access=b"a", refresh=b"r"), 4, NOW + 3600, NOW, "commit failed")
    store.put_rescue(rescue)
    store.put_rescue(Rescue("conn-8", SealedTokens(access=b"a", refresh=b"r"), 4, NOW + 3600, NOW, "x"))
    before = _all(db)
    store.delete_rescue(dataclasses.replace(rescue, rescued_at=NOW + 1))  # a newer one replaced it: kept
    store.delete_rescue(dataclasses.replace(rescue, base_version=5))
    store.delete_rescue(dataclasses.replace(rescue, connection_id="conn-7"))  # none: nothing happens
    assert _all(db) == before
    store.delete_rescue(rescue)
    assert [item["pk"]["S"] for item in _all(db)] == ["rescue#conn-8"]


# ---------------------------------------------------------------- due-index
def _due_row(db: Any, pk: str, shard: int, refresh_at: int) -> None:
    db.put_item(TableName=TABLE, Item={"pk": {"S": pk}, "due_shard": {"N": str(shard)},
                                        "refresh_at": {"N": str(refresh_at)}, "connection_id": {"S": "x"}})


def test_due_reads_only_what_is_due_on_the_shard_in_order(db: Any, store: TokenStore) -> None:
    _due_row(db, "conn#late", 3, NOW + 11)
    _due_row(db, "conn#b#1", 3, NOW + 10)  # exactly at the bound: due
    _due_row(db, "rescue#r#2", 3, NOW - 5)
    _due_row(db, "conn#a", 3, NOW)
    _due_row(db, "conn#other-shard", 4, NOW)
    db.put_item(TableName=TABLE, Item={"pk": {"S": "conn#unscheduled"}, "due_shard": {"N": "3"}})
    assert list(store.due(3, NOW + 10)) == [(
        [DueKey("r#2", True, NOW - 5), DueKey("a", False, NOW), DueKey("b#1", False, NOW + 10)], 3)]
    assert list(store.due(4, NOW + 10)) == [([DueKey("other-shard", False, NOW)], 1)]
    assert list(store.due(5, NOW + 10)) == [([], 0)]


def test_due_pages_by_page_size(db: Any, store: TokenStore) -> None:
    for number in range(5):
        _due_row(db, f"conn#c{number}", 0, NOW + number)
    _due_row(db, "conn#later", 0, NOW + 99)
    pages = list(store.due(0, NOW + 10, page_size=2))
    assert [keys for keys, _ in pages][:3] == [
        [DueKey("c0", False, NOW), DueKey("c1", False, NOW + 1)],
        [DueKey("c2", False, NOW + 2), DueKey("c3", False, NOW + 3)],
        [DueKey("c4", False, NOW + 4)],
    ]
    assert all(keys == [] for keys, _ in pages[3:])
    assert [count for _, count in pages][:3] == [2, 2, 1]
    assert [len(keys) for keys, _ in store.due(0, NOW + 10)] == [5]


# ---------------------------------------------------------------- the operator's listing
class _PagedScans:
    """A client whose scans return two items a page, to walk the pages."""

    def __init__(self) -> None:
        self._client = boto3.client("dynamodb")
        self.scans: list[dict[str, Any]] = []

    def scan(self, **kwargs: Any) -> Any:
        self.scans.append(dict(kwargs))
        return self._client.scan(Limit=2, **kwargs)


def test_list_connections_walks_every_page_and_only_connections(db: Any) -> None:
    for number in range(4):
        db.put_item(TableName=TABLE, Item=_full_connection_item(f"conn-{number}"))
    db.put_item(TableName=TABLE, Item={"pk": {"S": "state#x"}, "connection_id": {"S": "conn-x"}})
    db.put_item(TableName=TABLE, Item={"pk": {"S": "link#conn#y"}, "connection_id": {"S": "conn-y"}})
    client = _PagedScans()
    store = TokenStore(TABLE, client_factory=lambda: client)
    listed = sorted(store.list_connections(), key=lambda c: c.connection_id)
    assert listed == [dataclasses.replace(FULL, connection_id=f"conn-{number}") for number in range(4)]
    assert len(client.scans) >= 3
    assert "ExclusiveStartKey" not in client.scans[0]
    assert all("ExclusiveStartKey" in scan for scan in client.scans[1:])
    assert list(TokenStore(TABLE, client_factory=lambda: boto3.client("dynamodb")).list_connections()) == [
        dataclasses.replace(FULL, connection_id=c.connection_id) for c in
        TokenStore(TABLE, client_factory=lambda: boto3.client("dynamodb")).list_connections()]


class _RecordingReads:
    """A client that records the arguments of each get_item (moto's reads are
    always consistent, so only the request shows which were asked for)."""

    def __init__(self) -> None:
        self._client = boto3.client("dynamodb")
        self.reads: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def get_item(self, **kwargs: Any) -> Any:
        self.reads.append(dict(kwargs))
        return self._client.get_item(**kwargs)

    def query(self, **kwargs: Any) -> Any:
        self.reads.append(dict(kwargs))
        return self._client.query(**kwargs)


def test_reads_that_decide_are_strongly_consistent(db: Any) -> None:
    client = _RecordingReads()
    store = TokenStore(TABLE, client_factory=lambda: client)
    store.is_link_used("linkhash1")
    store.get_rescue("conn-1")
    store.get_connection("conn-1")
    store.get_connection_state("conn-1")
    store.get_connection("conn-1", consistent=False)
    assert [read.get("ConsistentRead") for read in client.reads] == [True, True, True, True, False]
    assert [read["Key"] for read in client.reads] == [
        {"pk": {"S": "link#linkhash1"}}, {"pk": {"S": "rescue#conn-1"}}, *[{"pk": {"S": "conn#conn-1"}}] * 3]


def test_due_reads_pages_of_500_by_default(db: Any) -> None:
    client = _RecordingReads()
    assert list(TokenStore(TABLE, client_factory=lambda: client).due(2, NOW)) == [([], 0)]
    assert [(read["IndexName"], read["Limit"]) for read in client.reads] == [("due-index", 500)]
