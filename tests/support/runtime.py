"""The package's composition root (invoiced_connect.runtime) set up for one test."""

from __future__ import annotations

from typing import Any

import pytest


def use_parts(monkeypatch: pytest.MonkeyPatch, **parts: Any) -> Any:
    """A fresh process runtime with these parts in place of what it would build
    (``reader=fake, settings=...``); the test's own runtime is put back after it."""
    from invoiced_connect import runtime

    fresh = runtime.Runtime()
    fresh.override(**parts)
    monkeypatch.setattr(runtime, "_current", fresh)
    return fresh
