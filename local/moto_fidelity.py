"""Make moto's DynamoDB behave like DynamoDB where the product relies on it.

DynamoDB applies each conditional write atomically: two conditional updates
of one item never both pass their condition. moto checks the condition and
then writes, without a lock, and its threaded server runs requests
concurrently, so two writers can both "win". The lease and the versioned
commit depend on that atomicity, so the local stack serializes moto's
DynamoDB operations (each item operation is then atomic, as in AWS).
"""

from __future__ import annotations

import functools
import threading
from typing import Any

_lock = threading.RLock()
_OPERATIONS = ("put_item", "update_item", "delete_item", "get_item", "query", "scan",
               "transact_write_items", "transact_get_items", "batch_write_item", "batch_get_item")
_applied = False


def make_dynamodb_item_operations_atomic() -> None:
    """Patch moto's DynamoDB backend once per process (idempotent)."""
    global _applied
    with _lock:
        if _applied:
            return
        from moto.dynamodb.models import DynamoDBBackend

        for name in _OPERATIONS:
            original = getattr(DynamoDBBackend, name, None)
            if original is not None:
                setattr(DynamoDBBackend, name, _serialized(original))
        _applied = True


def _serialized(method: Any) -> Any:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _lock:
            return method(*args, **kwargs)

    return wrapper
