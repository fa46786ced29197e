"""The app API's JSON Schemas (``contracts/app-api/v1``), loaded for tests.

``validator_for("tokens.answer").validate(answer)`` checks a handler's answer
against its contract, so the handlers cannot drift from what integrators are
told. Format checking is off: ``format`` is an annotation here, as it is for
most validators in other languages.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "contracts" / "app-api" / "v1"


def schema_names() -> list[str]:
    """Every schema's name (its file name without ``.json``), sorted."""
    return sorted(path.name.removesuffix(".json") for path in SCHEMA_DIR.glob("*.json"))


def load_schema(name: str) -> dict[str, Any]:
    """The schema called ``name`` (for example ``"links.request"``), freshly read."""
    path = SCHEMA_DIR / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"no app API schema {name!r} in {SCHEMA_DIR} (have: {', '.join(schema_names())})")
    return json.loads(path.read_text(encoding="utf-8"))


@functools.cache
def validator_for(name: str) -> Draft202012Validator:
    """A draft 2020-12 validator of the schema ``name``, checked once and cached; formats are not checked."""
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=None)
