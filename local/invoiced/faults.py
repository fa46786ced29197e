"""Switches that make the local Invoiced misbehave the way the real one (or the
network in front of it) can. Tests flip them directly; the dev stack flips them
over `POST /_admin/faults`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar, overload

ErrorStyle = Literal["invoiced", "league"]
ERROR_STYLES: tuple[str, ...] = ("invoiced", "league")

T = TypeVar("T")


def _count(name: str, value: object) -> int:
    # bool is an int subclass; `faults.set(html_next=True)` is almost surely a typo.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


def _style(name: str, value: object) -> str:
    if value not in ERROR_STYLES:
        raise ValueError(f"{name} must be one of {', '.join(ERROR_STYLES)}, got {value!r}")
    return str(value)


class _Switch(Generic[T]):
    """A validated attribute stored in the owning Faults' locked dict."""

    def __init__(self, default: T, check: Callable[[str, object], T]) -> None:
        self.default = default
        self.check = check
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> _Switch[T]: ...
    @overload
    def __get__(self, obj: Faults, objtype: type | None = None) -> T: ...
    def __get__(self, obj: Faults | None, objtype: type | None = None) -> T | _Switch[T]:
        if obj is None:
            return self
        with obj._lock:
            return obj._values[self.name]  # type: ignore[no-any-return]

    def __set__(self, obj: Faults, value: T) -> None:
        obj.set(**{self.name: value})


class Faults:
    """Thread-safe fault switches.

    Set them as attributes (``faults.latency_ms = 200``), in bulk
    (``faults.set(commit_then_drop_next=1)``) or over HTTP; ``reset()``
    restores the defaults. Each ``*_next`` switch is a counter: every matching
    request consumes one and misbehaves, so ``server_error_next=2`` breaks the
    next two token requests and then stops.

    Unless noted, a switch applies to ``POST /oauth/access_token``:

    - ``latency_ms``: delay before answering, on every route of both hosts
      (except ``/_admin``).
    - ``error_style``: ``"invoiced"`` (Invoiced's wrapper: 400 + ``type``/``message``)
      or ``"league"`` (stock league/oauth2-server 8.x bodies and statuses);
      also changes the shape of the deny redirect.
    - ``server_error_next``: 500 ``api_error``; the grant is not processed.
    - ``rate_limit_next``: 429 ``rate_limit_error``; the grant is not processed.
    - ``timeout_next``: hold the request ``timeout_seconds`` then answer 504;
      the grant is not processed.
    - ``html_next``: a 502 HTML page from "the load balancer"; not processed.
    - ``truncate_next``: process and commit the grant, then send a 200 whose
      JSON body is cut in half.
    - ``commit_then_drop_next``: process and commit the grant, then close the
      connection without any response.
    - ``commit_then_hold_next``: process and commit the grant, then hold the
      answer ``timeout_seconds`` (a client with a shorter timeout gives up
      after Invoiced acted).
    - ``revoke_error_next``: a 503 on ``POST /oauth/revoke``; nothing revoked.
    - ``api_server_error_next``: a 500 ``api_error`` on the REST API host
      (for an authenticated request).
    - ``api_gateway_error_next``: a 502 HTML page from the load balancer in
      front of the REST API host, before any authentication.
    """

    __slots__ = ("_lock", "_values")

    latency_ms = _Switch[float](0.0, _seconds)
    error_style = _Switch[str]("invoiced", _style)
    timeout_seconds = _Switch[float](30.0, _seconds)
    server_error_next = _Switch[int](0, _count)
    rate_limit_next = _Switch[int](0, _count)
    timeout_next = _Switch[int](0, _count)
    truncate_next = _Switch[int](0, _count)
    html_next = _Switch[int](0, _count)
    commit_then_drop_next = _Switch[int](0, _count)
    commit_then_hold_next = _Switch[int](0, _count)
    revoke_error_next = _Switch[int](0, _count)
    api_server_error_next = _Switch[int](0, _count)
    api_gateway_error_next = _Switch[int](0, _count)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {}
        self.reset()

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every switch name, in declaration order."""
        return tuple(name for name, value in vars(cls).items() if isinstance(value, _Switch))

    def set(self, **changes: Any) -> None:
        """Change several switches at once; all are validated before any applies.

        Raises ValueError for an unknown name or a bad value.
        """
        switches = vars(type(self))
        checked = {}
        for name, value in changes.items():
            switch = switches.get(name)
            if not isinstance(switch, _Switch):
                raise ValueError(f"unknown fault switch {name!r}; known: {', '.join(self.names())}")
            checked[name] = switch.check(name, value)
        with self._lock:
            self._values.update(checked)

    def reset(self) -> None:
        """Restore every switch to its default (no faults)."""
        defaults = {name: vars(type(self))[name].default for name in self.names()}
        with self._lock:
            self._values = defaults

    def consume(self, name: str) -> bool:
        """Take one from counter ``name`` if it is positive; True if one was taken."""
        with self._lock:
            if self._values[name] > 0:
                self._values[name] -= 1
                return True
            return False

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of all switches (what `GET /_admin/faults` returns)."""
        with self._lock:
            return dict(self._values)

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.snapshot().items() if v != vars(type(self))[k].default}
        return f"Faults({', '.join(f'{k}={v!r}' for k, v in changed.items())})"
