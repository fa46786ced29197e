"""Strict reading of JSON that comes from outside: a cookie, a signed link, Invoiced.

``json.loads`` accepts ``NaN``, ``Infinity`` and ``-Infinity`` (not JSON),
turns ``1e400`` into an infinite float (which ``int()`` overflows on), and
raises ``RecursionError`` on deep enough nesting; with ``unique_keys`` the
last of repeated keys wins silently. :func:`loads` refuses all of these with
``ValueError``, the one error a caller of a JSON parser expects.
:func:`integer` and :func:`string` then take a value only when it is of the
kind meant: no bools for integers, no floats, no strings of digits.
"""

from __future__ import annotations

import json
import math
from typing import Any


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is out of range")
    return number


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("a key is repeated")
    return found


def loads(data: str | bytes, *, unique_keys: bool = False) -> Any:
    """Parse JSON; ``ValueError`` on anything that is not finite, plain JSON
    (and, with ``unique_keys``, on an object that repeats a key)."""
    hook = _unique if unique_keys else None
    try:
        return json.loads(data, parse_constant=_no_constant, parse_float=_finite, object_pairs_hook=hook)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def integer(value: object) -> int:
    """``value`` if it is an ``int`` (and not a ``bool``); else ``ValueError``."""
    if type(value) is not int:
        raise ValueError("not an integer")
    return value


def string(value: object) -> str:
    """``value`` if it is a ``str``; else ``ValueError``."""
    if not isinstance(value, str):
        raise ValueError("not a string")
    return value
