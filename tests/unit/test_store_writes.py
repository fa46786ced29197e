"""TokenStore's connection writes and leases against an in-process DynamoDB
(moto, with template.yaml's TokensTable): the item after each write (exact
attributes, and which are removed), the conditions that refuse a write (and
leave the row as it was), the returned Connection and the index keys."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from botocore.exceptions import ClientError

from invoiced_connect.core.models import Attention, Connection, ConnectionStatus, TokenSet
from invoiced_connect.storage.crypto import SealedTokens
from invoiced_connect.storage.store import (
    CompanyMismatch,
    LeaseLost,
    TokenStore,
    _int,
    _n,
    _s,
    _sealed_values,
    connection_from_item,
    due_shard,
    sealed_from_item,
)
from tests.support.dynamodb import TABLE_NAME, db_fixture, moto_client_fixture, store_fixture

__all__ = ["db_fixture", "moto_client_fixture", "store_fixture"]  # fixtures: one moto per module, a new table per test


CID = "conn-1"
PK = {"pk": {"S": "conn#" + CID}}
NOW = 1_000_000
SHARD_OF_CID = 8  # due_shard("conn-1"), pinned below


def tokens(**overrides: Any) -> TokenSet:
    values: dict[str, Any] = {"access_token": "at", "refresh_token": "rt", "expires_at": NOW + 3600,
                              "tenant_id": "tenant-9", "scopes": ("read", "write"), "lifetime": 3600}
    values.update(overrides)
    return TokenSet(**values)


def sealed(tag: str = "1") -> SealedTokens:
    return SealedTokens(access=b"access-" + tag.encode(), refresh=b"refresh-" + tag.encode())


def item_of(db: Any) -> dict[str, Any] | None:
    return db.get_item(TableName=TABLE_NAME, Key=PK, ConsistentRead=True).get("Item")


def set_raw(db: Any, **attributes: dict[str, Any]) -> None:
    """Write attributes into the row directly (a state the store's writes lead to, or an old row's)."""
    names = {f"#k{i}": name for i, name in enumerate(attributes)}
    values = {f":v{i}": value for i, value in enumerate(attributes.values())}
    db.update_item(TableName=TABLE_NAME, Key=PK,
                   UpdateExpression="SET " + ", ".join(f"#k{i} = :v{i}" for i in range(len(attributes))),
                   ExpressionAttributeNames=names, ExpressionAttributeValues=values)


def save(store: TokenStore, **overrides: Any) -> Any:
    values: dict[str, Any] = {"connection_id": CID, "tokens": tokens(), "ciphertext": sealed(),
                              "company_name": "Acme", "issuer": "https://invoiced.example",
                              "now": NOW, "api_url": "https://api.invoiced.example"}
    values.update(overrides)
    return store.save_replacing(**values)


def expected_new_item() -> dict[str, Any]:
    return {
        "pk": {"S": "conn#conn-1"},
        "connection_id": {"S": CID},
        "tenant_id": {"S": "tenant-9"},
        "scopes": {"L": [{"S": "read"}, {"S": "write"}]},
        "issuer": {"S": "https://invoiced.example"},
        "status": {"S": "active"},
        "expires_at": {"N": str(NOW + 3600)},
        "token_lifetime": {"N": "3600"},
        "access_ciphertext": {"B": b"access-1"},
        "refresh_ciphertext": {"B": b"refresh-1"},
        "connected_at": {"N": str(NOW)},
        "refreshed_at": {"N": str(NOW)},
        "updated_at": {"N": str(NOW)},
        "due_shard": {"N": str(SHARD_OF_CID)},
        "refresh_at": {"N": str(NOW + 3600)},
        "active_until": {"N": "0"},
        "api_url": {"S": "https://api.invoiced.example"},
        "company_name": {"S": "Acme"},
        "created_at": {"N": str(NOW)},
        "version": {"N": "1"},
    }


def leased(store: TokenStore, db: Any, *, owner: str = "me", until: int = NOW + 60) -> dict[str, Any]:
    save(store)
    store.take_lease(CID, owner=owner, now=NOW, until=until)
    return item_of(db)


# ------------------------------------------------------------------ item helpers
def test_due_shard_is_the_first_four_bytes_of_the_sha256_big_endian_mod_16():
    assert due_shard(CID) == SHARD_OF_CID
    assert [due_shard(f"c{i}") for i in range(6)] == [
        int.from_bytes(hashlib.sha256(f"c{i}".encode()).digest()[:4], "big") % 16 for i in range(6)]
    assert {due_shard(f"c{i}") for i in range(400)} == set(range(16))
    assert due_shard("é") == int.from_bytes(hashlib.sha256("é".encode()).digest()[:4], "big") % 16


def test_pinned_shards():
    assert [due_shard(x) for x in ("a", "b", "conn-2", "x" * 50)] == [PINNED["a"], PINNED["b"], PINNED["conn-2"],
                                                                      PINNED["x" * 50]]


PINNED = {"a": 2, "b": 6, "conn-2": 4, "x" * 50: 6}


def test_attribute_value_helpers():
    assert _s("v") == {"S": "v"}
    assert _n(5) == {"N": "5"}
    assert _n(5.9) == {"N": "5"}
    assert _n(True) == {"N": "1"}
    assert _int({"a": {"N": "12"}}, "a") == 12
    assert _int({}, "a") == 0
    assert _sealed_values(sealed("z")) == {":access_blob": {"B": b"access-z"}, ":refresh_blob": {"B": b"refresh-z"}}
    with pytest.raises(ValueError, match="^new tokens are always written in the split format$"):
        _sealed_values(SealedTokens(pair=b"p"))


@pytest.mark.parametrize("case", ["split", "pair", "split wins", "access only", "refresh only", "none"])
def test_sealed_from_item(case):
    a, r, p = {"B": b"a"}, {"B": b"r"}, {"B": b"p"}
    item = {"split": {"access_ciphertext": a, "refresh_ciphertext": r},
            "pair": {"token_ciphertext": p},
            "split wins": {"access_ciphertext": a, "refresh_ciphertext": r, "token_ciphertext": p},
            "access only": {"access_ciphertext": a, "token_ciphertext": p},
            "refresh only": {"refresh_ciphertext": r, "token_ciphertext": p},
            "none": {"access_ciphertext": a}}[case]
    expected = {"split": SealedTokens(access=b"a", refresh=b"r"), "pair": SealedTokens(pair=b"p"),
                "split wins": SealedTokens(access=b"a", refresh=b"r"), "access only": SealedTokens(pair=b"p"),
                "refresh only": SealedTokens(pair=b"p"), "none": None}[case]
    got = sealed_from_item(item)
    assert got == expected
    if got is not None:
        assert (got.access, got.refresh, got.pair) == (expected.access, expected.refresh, expected.pair)


def test_connection_from_a_full_item():
    item = {
        "connection_id": {"S": "c"}, "tenant_id": {"S": "t"}, "company_name": {"S": "Co"},
        "scopes": {"L": [{"S": "a"}, {"S": "b"}]}, "issuer": {"S": "iss"}, "api_url": {"S": "api"},
        "status": {"S": "needs_reauth"}, "expires_at": {"N": "1"}, "version": {"N": "2"},
        "created_at": {"N": "3"}, "updated_at": {"N": "4"}, "refreshed_at": {"N": "5"}, "refresh_at": {"N": "6"},
        "active_until": {"N": "7"}, "lease_owner": {"S": "o"}, "lease_until": {"N": "8"},
        "failure_count": {"N": "9"}, "next_attempt_at": {"N": "10"}, "last_error": {"S": "err"},
        "outcome_unknown_at": {"N": "11"}, "status_reason": {"S": "why"}, "attention": {"S": "failing"},
        "rejected_refresh_at": {"N": "12"}, "rejected_notice_at": {"N": "13"}, "token_lifetime": {"N": "14"},
    }
    assert connection_from_item(item) == Connection(
        connection_id="c", tenant_id="t", company_name="Co", scopes=("a", "b"), issuer="iss", api_url="api",
        status=ConnectionStatus.NEEDS_REAUTH, expires_at=1, version=2, created_at=3, updated_at=4,
        refreshed_at=5, refresh_at=6, active_until=7, lease_owner="o", lease_until=8, failure_count=9,
        next_attempt_at=10, last_error="err", outcome_unknown_at=11, status_reason="why",
        attention=Attention.FAILING, rejected_refresh_at=12, rejected_notice_at=13, token_lifetime=14)


def test_connection_from_a_minimal_item():
    item = {"connection_id": {"S": "c"}, "tenant_id": {"S": "t"}, "issuer": {"S": "iss"},
            "status": {"S": "active"}, "expires_at": {"N": "1"}, "version": {"N": "2"},
            "created_at": {"N": "3"}, "updated_at": {"N": "4"}, "token_lifetime": {"N": "0"}}
    assert connection_from_item(item) == Connection(
        connection_id="c", tenant_id="t", company_name=None, scopes=(), issuer="iss", api_url=None,
        status=ConnectionStatus.ACTIVE, expires_at=1, version=2, created_at=3, updated_at=4,
        refreshed_at=0, refresh_at=None, active_until=0, lease_owner=None, lease_until=0, failure_count=0,
        next_attempt_at=0, last_error=None, outcome_unknown_at=0, status_reason=None, attention=None,
        rejected_refresh_at=0, rejected_notice_at=0, token_lifetime=3600)
    assert connection_from_item({**item, "refresh_at": {"N": "0"}}).refresh_at == 0


# ------------------------------------------------------------------ save_replacing / save_connection
def test_a_new_connection_is_written_whole(store, db):
    saved = save(store)
    assert item_of(db) == expected_new_item()
    assert saved.replaced is None
    assert saved.connection == connection_from_item(expected_new_item())
    assert saved.connection.version == 1 and saved.connection.created_at == NOW
    assert saved.connection.refresh_at == NOW + 3600


def test_save_connection_returns_the_saved_connection(store, db):
    connection = store.save_connection(
        connection_id=CID, tokens=tokens(), ciphertext=sealed(), company_name="Acme",
        issuer="https://invoiced.example", now=NOW, api_url="https://api.invoiced.example")
    assert connection == connection_from_item(expected_new_item())


def test_explicit_refresh_at_active_until_and_no_optional_fields(store, db):
    saved = save(store, company_name=None, api_url=None, refresh_at=NOW + 100, active_until=NOW + 50,
                 tokens=tokens(lifetime=90, scopes=()))
    expected = expected_new_item()
    del expected["company_name"], expected["api_url"]
    expected.update(refresh_at={"N": str(NOW + 100)}, active_until={"N": str(NOW + 50)},
                    token_lifetime={"N": "90"}, scopes={"L": []})
    assert item_of(db) == expected
    assert saved.connection == connection_from_item(expected)


def _seed_old_row(db: Any, status: str = "active", tenant: str = "tenant-9") -> None:
    """A connection row with every field, of the company ``tokens()`` is for unless ``tenant``."""
    db.put_item(TableName=TABLE_NAME, Item={
        **PK, "connection_id": {"S": CID}, "tenant_id": {"S": tenant}, "issuer": {"S": "old"},
        "status": {"S": status}, "expires_at": {"N": "5"}, "version": {"N": "4"}, "created_at": {"N": "77"},
        "updated_at": {"N": "78"}, "company_name": {"S": "Old Co"}, "api_url": {"S": "old-api"},
        "access_ciphertext": {"B": b"old-a"}, "refresh_ciphertext": {"B": b"old-r"},
        "token_ciphertext": {"B": b"old-pair"}, "lease_owner": {"S": "other"}, "lease_until": {"N": str(NOW + 99)},
        "failure_count": {"N": "3"}, "next_attempt_at": {"N": "9"}, "last_error": {"S": "e"},
        "outcome_unknown_at": {"N": "8"}, "attention": {"S": "failing"}, "status_reason": {"S": "r"},
        "revoked_at": {"N": "6"}, "rejected_refresh_at": {"N": "4"}, "rejected_notice_at": {"N": "3"},
        "kept": {"S": "unrelated attribute"},
    })


@pytest.mark.parametrize("optional", ["given", "absent"])
def test_a_reconnect_replaces_the_grant_and_clears_lease_failures_and_notes(store, db, optional):
    _seed_old_row(db)
    given = optional == "given"
    saved = save(store, company_name="Acme" if given else None,
                 api_url="https://api.invoiced.example" if given else None)
    expected = expected_new_item()
    expected.update(created_at={"N": "77"}, version={"N": "5"}, kept={"S": "unrelated attribute"})
    if not given:
        del expected["company_name"], expected["api_url"]
    assert item_of(db) == expected
    assert saved.connection == connection_from_item(expected)
    assert saved.replaced == SealedTokens(access=b"old-a", refresh=b"old-r")


def test_a_reconnect_returns_the_row_as_it_was(store, db):
    _seed_old_row(db, status="needs_reauth")
    before = item_of(db)
    assert save(store).previous == connection_from_item(before)


def test_a_first_connect_has_no_previous_row(store, db):
    assert save(store).previous is None


@pytest.mark.parametrize("status", ["active", "needs_reauth", "revoked"])
def test_a_reconnect_to_another_company_is_refused_and_nothing_is_written(store, db, status):
    _seed_old_row(db, status=status, tenant="tenant-other")
    before = item_of(db)
    with pytest.raises(CompanyMismatch) as refused:
        save(store)
    assert refused.value.stored == connection_from_item(before)
    assert refused.value.chosen_tenant_id == "tenant-9"
    assert str(refused.value) == f"{CID} belongs to another Invoiced company"
    assert item_of(db) == before


def test_a_reconnect_may_change_company_when_allowed(store, db):
    _seed_old_row(db, tenant="tenant-other")
    saved = save(store, allow_company_change=True)
    assert saved.connection.tenant_id == "tenant-9" and saved.connection.version == 5
    assert saved.previous is not None and saved.previous.tenant_id == "tenant-other"
    assert saved.previous.company_name == "Old Co"
    assert item_of(db)["tenant_id"] == {"S": "tenant-9"}


def test_an_allowed_company_change_to_the_same_company_is_a_plain_reconnect(store, db):
    _seed_old_row(db)
    saved = save(store, allow_company_change=True)
    assert (saved.connection.tenant_id, saved.previous.tenant_id) == ("tenant-9", "tenant-9")


def test_other_write_failures_are_not_a_company_mismatch(store, db, monkeypatch):
    error = ClientError({"Error": {"Code": "ConditionalCheckFailedException", "Message": "no"}}, "UpdateItem")

    def refuse(**kwargs):
        raise error

    monkeypatch.setattr(store._db, "update_item", refuse)
    with pytest.raises(ClientError) as raised:
        save(store)
    assert raised.value is error


def test_a_reconnect_of_a_pre_split_row_returns_its_pair(store, db):
    _seed_old_row(db)
    db.update_item(TableName=TABLE_NAME, Key=PK, UpdateExpression="REMOVE access_ciphertext")
    saved = save(store)
    assert saved.replaced == SealedTokens(pair=b"old-pair")
    assert "token_ciphertext" not in item_of(db)


def test_a_reconnect_of_a_revoked_row_replaces_no_live_grant(store, db):
    _seed_old_row(db, status="revoked")
    saved = save(store)
    assert saved.replaced is None
    assert saved.connection.status is ConnectionStatus.ACTIVE and saved.connection.version == 5
    assert item_of(db)["status"] == {"S": "active"}


@pytest.mark.parametrize("status", ["needs_reauth", "active"])
def test_a_reconnect_of_a_live_row_returns_its_grant(store, db, status):
    _seed_old_row(db, status=status)
    assert save(store).replaced == SealedTokens(access=b"old-a", refresh=b"old-r")


def test_a_pre_split_ciphertext_is_refused_and_nothing_written(store, db):
    with pytest.raises(ValueError, match="^new tokens are always written in the split format$"):
        save(store, ciphertext=SealedTokens(pair=b"p"))
    assert item_of(db) is None


def test_errors_other_than_a_failed_condition_are_raised(db):
    store = TokenStore("no-such-table", client_factory=lambda: db)
    calls = [
        lambda: store.set_company_name(CID, "x", version=1),
        lambda: store.take_lease(CID, owner="o", now=NOW, until=NOW + 1),
        lambda: store.release_lease(CID, owner="o"),
        lambda: store.note_rejection(CID, now=NOW, rotated_at=NOW),
    ]
    for call in calls:
        with pytest.raises(ClientError) as caught:
            call()
        assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"


# ------------------------------------------------------------------ set_company_name
def test_set_company_name_at_the_version(store, db):
    save(store)
    assert store.set_company_name(CID, "New Co", version=1) is True
    assert item_of(db) == {**expected_new_item(), "company_name": {"S": "New Co"}}


def test_set_company_name_refused_after_a_newer_write(store, db):
    save(store)
    save(store)
    before = item_of(db)
    assert store.set_company_name(CID, "New Co", version=1) is False
    assert item_of(db) == before


def test_set_company_name_of_an_unknown_connection_is_refused(store, db):
    assert store.set_company_name(CID, "New Co", version=1) is False
    assert item_of(db) is None


# ------------------------------------------------------------------ take_lease
def test_take_lease_sets_owner_and_until_and_returns_the_row(store, db):
    save(store)
    connection, ciphertexts = store.take_lease(CID, owner="me", now=NOW, until=NOW + 60)
    expected = {**expected_new_item(), "lease_owner": {"S": "me"}, "lease_until": {"N": str(NOW + 60)}}
    assert item_of(db) == expected
    assert connection == connection_from_item(expected)
    assert connection.lease_owner == "me" and connection.lease_until == NOW + 60
    assert ciphertexts == sealed()


def _refused(store: TokenStore, db: Any, **kwargs: Any) -> None:
    before = item_of(db)
    args: dict[str, Any] = {"owner": "me", "now": NOW, "until": NOW + 60}
    args.update(kwargs)
    with pytest.raises(LeaseLost, match=f"^{CID} changed or its lease is gone$"):
        store.take_lease(CID, **args)
    assert item_of(db) == before


def _taken(store: TokenStore, db: Any, **kwargs: Any) -> Connection:
    args: dict[str, Any] = {"owner": "me", "now": NOW, "until": NOW + 60}
    args.update(kwargs)
    connection, _ = store.take_lease(CID, **args)
    item = item_of(db)
    assert item["lease_owner"] == {"S": "me"} and item["lease_until"] == {"N": str(NOW + 60)}
    return connection


def test_take_lease_of_an_unknown_connection(store, db):
    _refused(store, db)


def test_take_lease_refused_while_another_holds_it(store, db):
    leased(store, db, owner="other", until=NOW + 1)
    _refused(store, db)
    _refused(store, db, version=1)


def test_take_lease_once_the_other_lease_has_ended(store, db):
    leased(store, db, owner="other", until=NOW)
    assert _taken(store, db).lease_owner == "me"


@pytest.mark.parametrize("statuses", [None, (ConnectionStatus.NEEDS_REAUTH,)])
def test_take_lease_refused_for_another_status(store, db, statuses):
    save(store)
    set_raw(db, status=_s("revoked" if statuses is None else "active"))
    _refused(store, db, **({} if statuses is None else {"statuses": statuses}))


@pytest.mark.parametrize("position", [0, 1, 2])
def test_take_lease_accepts_any_of_the_statuses(store, db, position):
    save(store)
    set_raw(db, status=_s("needs_reauth"))
    statuses = [ConnectionStatus.ACTIVE, ConnectionStatus.REVOKED]
    statuses.insert(position, ConnectionStatus.NEEDS_REAUTH)
    assert _taken(store, db, statuses=tuple(statuses)).status is ConnectionStatus.NEEDS_REAUTH


def test_take_lease_at_the_version(store, db):
    save(store)
    _refused(store, db, version=2)
    _refused(store, db, version=0)
    assert _taken(store, db, version=1).version == 1


def test_take_lease_without_a_version_waits_out_the_cooldown(store, db):
    save(store)
    set_raw(db, next_attempt_at=_n(NOW + 1))
    _refused(store, db)
    # with a version the caller checked the cooldown itself
    assert _taken(store, db, version=1).next_attempt_at == NOW + 1


def test_take_lease_when_the_cooldown_has_ended(store, db):
    save(store)
    set_raw(db, next_attempt_at=_n(NOW))
    assert _taken(store, db).next_attempt_at == NOW


def test_take_lease_due_by(store, db):
    save(store, refresh_at=NOW + 10)
    _refused(store, db, due_by=NOW + 9)
    assert _taken(store, db, due_by=NOW + 10).refresh_at == NOW + 10


def test_take_lease_stale_version(store, db):
    save(store)
    save(store)
    _refused(store, db, stale_version=1)
    assert _taken(store, db, stale_version=2).version == 2


def test_take_lease_expiring_before(store, db):
    save(store)
    _refused(store, db, expiring_before=NOW + 3600)
    assert _taken(store, db, expiring_before=NOW + 3601).expires_at == NOW + 3600


def test_take_lease_for_a_rejected_token_records_it(store, db):
    save(store)
    connection = _taken(store, db, rejected_since=NOW - 100)
    assert connection.rejected_refresh_at == NOW
    assert item_of(db)["rejected_refresh_at"] == {"N": str(NOW)}


def test_take_lease_for_a_rejected_token_once_per_rotation(store, db):
    save(store)
    set_raw(db, rejected_refresh_at=_n(NOW - 5))
    _refused(store, db, rejected_since=NOW - 6)
    assert _taken(store, db, rejected_since=NOW - 5).rejected_refresh_at == NOW


def test_take_lease_without_rejected_since_leaves_the_note(store, db):
    save(store)
    set_raw(db, rejected_refresh_at=_n(NOW + 5))
    assert _taken(store, db).rejected_refresh_at == NOW + 5
    assert item_of(db)["rejected_refresh_at"] == {"N": str(NOW + 5)}


def test_take_lease_returns_a_pre_split_pair(store, db):
    save(store)
    db.update_item(TableName=TABLE_NAME, Key=PK, UpdateExpression="SET token_ciphertext = :p "
                         "REMOVE access_ciphertext, refresh_ciphertext",
                         ExpressionAttributeValues={":p": {"B": b"pair"}})
    assert store.take_lease(CID, owner="me", now=NOW, until=NOW + 60)[1] == SealedTokens(pair=b"pair")


# ------------------------------------------------------------------ note_rejection
def test_note_rejection_first_since_the_rotation(store, db):
    save(store)
    assert store.note_rejection(CID, now=NOW, rotated_at=NOW - 10) is True
    assert item_of(db) == {**expected_new_item(), "rejected_notice_at": {"N": str(NOW)}}
    before = item_of(db)
    assert store.note_rejection(CID, now=NOW + 1, rotated_at=NOW - 10) is False
    assert store.note_rejection(CID, now=NOW + 1, rotated_at=NOW) is False  # noted at the rotation itself
    assert item_of(db) == before
    assert store.note_rejection(CID, now=NOW + 2, rotated_at=NOW + 1) is True
    assert item_of(db)["rejected_notice_at"] == {"N": str(NOW + 2)}


def test_note_rejection_of_a_connection_that_is_gone_writes_no_row(store, db):
    assert store.note_rejection(CID, now=NOW, rotated_at=NOW - 10) is False
    assert db.scan(TableName=TABLE_NAME)["Items"] == []


# ------------------------------------------------------------------ release_lease
def test_release_lease_removes_only_the_lease(store, db):
    leased(store, db)
    assert store.release_lease(CID, owner="me") is True
    assert item_of(db) == expected_new_item()


@pytest.mark.parametrize("holder", ["other", None])
def test_release_lease_of_a_lease_not_ours(store, db, holder):
    if holder:
        leased(store, db, owner=holder)
    else:
        save(store)
    before = item_of(db)
    assert store.release_lease(CID, owner="me") is False
    assert item_of(db) == before


def test_release_lease_of_an_unknown_connection(store, db):
    assert store.release_lease(CID, owner="me") is False
    assert item_of(db) is None


# ------------------------------------------------------------------ commit_tokens
def _commit(store: TokenStore, **overrides: Any) -> Connection:
    values: dict[str, Any] = {"owner": "me", "version": 1, "ciphertext": sealed("2"), "expires_at": NOW + 7200,
                              "now": NOW + 5, "refresh_at": NOW + 7000}
    values.update(overrides)
    return store.commit_tokens(CID, **values)


def _failure_marks() -> dict[str, Any]:
    return {"failure_count": _n(2), "next_attempt_at": _n(NOW - 1), "last_error": _s("e"),
            "outcome_unknown_at": _n(NOW - 2), "attention": _s("failing"), "status_reason": _s("r"),
            "token_ciphertext": {"B": b"pair"}}


def _committed_item(**changes: Any) -> dict[str, Any]:
    item = {**expected_new_item(), "access_ciphertext": {"B": b"access-2"}, "refresh_ciphertext": {"B": b"refresh-2"},
            "expires_at": _n(NOW + 7200), "token_lifetime": _n(3600), "refreshed_at": _n(NOW + 5),
            "updated_at": _n(NOW + 5), "refresh_at": _n(NOW + 7000), "version": _n(2)}
    item.update(changes)
    return item


def test_commit_tokens_stores_the_rotation_and_clears_lease_and_failures(store, db):
    leased(store, db)
    set_raw(db, **_failure_marks())
    connection = _commit(store)
    assert item_of(db) == _committed_item()
    assert connection == connection_from_item(_committed_item())


def test_commit_tokens_with_active_until_and_lifetime(store, db):
    leased(store, db)
    connection = _commit(store, active_until=NOW + 900, lifetime=90)
    expected = _committed_item(active_until=_n(NOW + 900), token_lifetime=_n(90))
    assert item_of(db) == expected
    assert connection.active_until == NOW + 900 and connection.token_lifetime == 90


def test_commit_tokens_puts_the_row_back_in_the_due_index_as_active(store, db):
    leased(store, db)
    db.update_item(TableName=TABLE_NAME, Key=PK, UpdateExpression="SET #s = :n REMOVE due_shard, refresh_at",
                         ExpressionAttributeNames={"#s": "status"}, ExpressionAttributeValues={":n": _s("needs_reauth")})
    connection = _commit(store)
    assert item_of(db) == _committed_item()
    assert connection.status is ConnectionStatus.ACTIVE


@pytest.mark.parametrize("kwargs", [{"owner": "other"}, {"version": 2}, {"version": 0}])
def test_commit_tokens_refused(store, db, kwargs):
    leased(store, db)
    before = item_of(db)
    with pytest.raises(LeaseLost, match=f"^{CID} changed or its lease is gone$"):
        _commit(store, **kwargs)
    assert item_of(db) == before


def test_commit_tokens_refused_without_a_lease(store, db):
    save(store)
    with pytest.raises(LeaseLost):
        _commit(store)
    assert item_of(db) == expected_new_item()


def test_commit_tokens_refuses_a_pre_split_ciphertext(store, db):
    before = leased(store, db)
    with pytest.raises(ValueError):
        _commit(store, ciphertext=SealedTokens(pair=b"p"))
    assert item_of(db) == before


# ------------------------------------------------------------------ record_failure
def _fail(store: TokenStore, **overrides: Any) -> Connection:
    values: dict[str, Any] = {"owner": "me", "version": 1, "now": NOW + 5, "reason": "boom",
                              "next_attempt_at": NOW + 60, "refresh_at": NOW + 120}
    values.update(overrides)
    return store.record_failure(CID, **values)


def _failed_item(**changes: Any) -> dict[str, Any]:
    item = {**expected_new_item(), "failure_count": _n(1), "next_attempt_at": _n(NOW + 60),
            "refresh_at": _n(NOW + 120), "last_error": _s("boom"), "updated_at": _n(NOW + 5)}
    item.update(changes)
    return {name: value for name, value in item.items() if value is not None}


def test_record_failure_counts_sets_the_cooldown_and_releases_the_lease(store, db):
    leased(store, db)
    connection = _fail(store)
    assert item_of(db) == _failed_item()
    assert connection == connection_from_item(_failed_item())


def test_record_failure_counts_on(store, db):
    leased(store, db)
    set_raw(db, failure_count=_n(2))
    assert _fail(store).failure_count == 3
    assert item_of(db)["failure_count"] == _n(3)


_MARKS = {"outcome_unknown_at": _n(NOW - 2), "attention": _s("failing")}


@pytest.mark.parametrize(("outcome_unknown", "failing", "changes"), [
    (None, False, dict(_MARKS)),
    (None, True, dict(_MARKS)),
    (True, False, {"outcome_unknown_at": _n(NOW + 5), "attention": _s("failing")}),
    (True, True, {"outcome_unknown_at": _n(NOW + 5), "attention": _s("failing")}),
    (False, False, {"outcome_unknown_at": None, "attention": None}),
    (False, True, {"outcome_unknown_at": None, "attention": _s("failing")}),
])
def test_record_failure_outcome_and_attention_marks(store, db, outcome_unknown, failing, changes):
    leased(store, db)
    set_raw(db, **_MARKS)
    connection = _fail(store, outcome_unknown=outcome_unknown, failing=failing)
    expected = _failed_item(**changes)
    assert item_of(db) == expected
    assert connection == connection_from_item(expected)


@pytest.mark.parametrize(("outcome_unknown", "failing", "attention"), [
    (None, False, None), (None, True, "failing"), (True, False, "failing"), (False, False, None),
    (False, True, "failing"),
])
def test_record_failure_marks_on_an_unmarked_row(store, db, outcome_unknown, failing, attention):
    leased(store, db)
    connection = _fail(store, outcome_unknown=outcome_unknown, failing=failing)
    item = item_of(db)
    assert item.get("attention") == (_s(attention) if attention else None)
    assert connection.attention == (Attention(attention) if attention else None)
    assert item.get("outcome_unknown_at") == (_n(NOW + 5) if outcome_unknown else None)


@pytest.mark.parametrize("kwargs", [{"owner": "other"}, {"version": 2}])
def test_record_failure_refused(store, db, kwargs):
    before = leased(store, db)
    with pytest.raises(LeaseLost, match=f"^{CID} changed or its lease is gone$"):
        _fail(store, failing=True, outcome_unknown=True, **kwargs)
    assert item_of(db) == before


# ------------------------------------------------------------------ mark_needs_reauth / mark_revoked
def test_mark_needs_reauth_leaves_the_due_index_and_keeps_tokens_and_history(store, db):
    leased(store, db)
    set_raw(db, **_failure_marks(), rejected_refresh_at=_n(4))
    connection = store.mark_needs_reauth(CID, owner="me", version=1, now=NOW + 5, reason="invalid_grant")
    expected = {**expected_new_item(), "failure_count": _n(2), "last_error": _s("e"),
                "token_ciphertext": {"B": b"pair"}, "rejected_refresh_at": _n(4),
                "status": _s("needs_reauth"), "status_reason": _s("invalid_grant"), "updated_at": _n(NOW + 5),
                "attention": _s("needs_reauth")}
    del expected["due_shard"], expected["refresh_at"]
    assert item_of(db) == expected
    assert connection == connection_from_item(expected)
    assert connection.status is ConnectionStatus.NEEDS_REAUTH and connection.attention is Attention.NEEDS_REAUTH


def test_mark_revoked_erases_the_tokens_and_leaves_the_indexes(store, db):
    leased(store, db)
    set_raw(db, **_failure_marks(), rejected_refresh_at=_n(4))
    connection = store.mark_revoked(CID, owner="me", version=1, now=NOW + 5, reason="disconnected")
    expected = {**expected_new_item(), "rejected_refresh_at": _n(4), "status": _s("revoked"),
                "status_reason": _s("disconnected"), "revoked_at": _n(NOW + 5), "updated_at": _n(NOW + 5),
                "version": _n(2)}
    for name in ("due_shard", "refresh_at", "access_ciphertext", "refresh_ciphertext"):
        del expected[name]
    assert item_of(db) == expected
    assert connection == connection_from_item(expected)
    assert connection.status is ConnectionStatus.REVOKED


@pytest.mark.parametrize("mark", ["mark_needs_reauth", "mark_revoked"])
@pytest.mark.parametrize("kwargs", [{"owner": "other"}, {"version": 2}])
def test_marks_refused(store, db, mark, kwargs):
    before = leased(store, db)
    args: dict[str, Any] = {"owner": "me", "version": 1, "now": NOW + 5, "reason": "x"}
    args.update(kwargs)
    with pytest.raises(LeaseLost, match=f"^{CID} changed or its lease is gone$"):
        getattr(store, mark)(CID, **args)
    assert item_of(db) == before


def test_a_store_without_a_client_factory_makes_one_dynamodb_client_on_first_use(monkeypatch):
    from invoiced_connect.cloud import aws

    made: list[str] = []
    monkeypatch.setattr(aws, "new_client", lambda service: made.append(service) or f"client:{service}")
    store = TokenStore("tokens")
    assert made == []
    assert (store._db, store._db, made) == ("client:dynamodb", "client:dynamodb", ["dynamodb"])
