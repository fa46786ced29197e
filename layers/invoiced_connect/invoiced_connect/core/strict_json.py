"""Strict reading of JSON that comes from outside: a cookie, a signed link, Invoiced.

``json.loads`` accepts ``NaN``, ``Infinity`` and ``-Infinity`` (not JSON),
turns ``1e400`` into an infinite float (which ``int()`` overflows on), and
raises ``RecursionError`` on deep enough nesting. :func:`loads` refuses all
three with ``ValueError``, the one error a caller of a JSON parser expects.
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


def loads(data: str | bytes) -> Any:
    """Parse JSON; ``ValueError`` on anything that is not finite, plain JSON."""
    try:
        return json.loads(data, parse_constant=_no_constant, parse_float=_finite)
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
