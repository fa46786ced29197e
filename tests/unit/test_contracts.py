"""The app API's contract: the JSON Schemas in contracts/app-api/v1, the page
that documents them (docs/app-api.md) and the layer's error codes agree, and
the schemas refuse what the functions refuse."""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from local.contracts import SCHEMA_DIR, load_schema, schema_names, validator_for

DOC = Path(__file__).resolve().parents[2] / "docs" / "app-api.md"
SCHEMAS = (
    "connection-state.answer",
    "connection-state.request",
    "error",
    "links.answer",
    "links.request",
    "tokens.answer",
    "tokens.request",
)
REQUESTS = tuple(name for name in SCHEMAS if name.endswith(".request"))
ANSWERS = tuple(name for name in SCHEMAS if name.endswith(".answer"))

MARKER = re.compile(r"<!--\s*schema:")
EXAMPLE = re.compile(r"<!-- schema: (?P<name>[a-z.-]+) -->\n```json\n(?P<body>.*?)\n```\n", re.DOTALL)
ERROR_TABLE_HEADER = re.compile(r"^\|\s*code\s*\|")
BACKTICKED = re.compile(r"^`([^`]+)`$")


# ---------------------------------------------------------------- helpers
@functools.cache
def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def doc_examples() -> list[tuple[str, int, str]]:
    """Every ``<!-- schema: NAME -->`` example of the page: (name, line, JSON text)."""
    text = doc_text()
    return [(m["name"], text.count("\n", 0, m.start()) + 1, m["body"]) for m in EXAMPLE.finditer(text)]


def table_rows() -> list[list[str]]:
    """The cells of every table row of the page (separator rows left out)."""
    rows = []
    for line in doc_text().splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[\s|:-]*", line):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def documented_properties() -> set[str]:
    """Names that head a table row of the page, written as code."""
    return {m[1] for row in table_rows() if (m := BACKTICKED.match(row[0]))}


def error_table_codes() -> list[str]:
    """The codes of the page's error table (the table whose first column is ``code``)."""
    lines = doc_text().splitlines()
    headers = [i for i, line in enumerate(lines) if ERROR_TABLE_HEADER.match(line)]
    assert len(headers) == 1, f"docs/app-api.md must have exactly one table headed '| code |', has {len(headers)}"
    codes = []
    for line in lines[headers[0] + 2:]:
        if not line.startswith("|"):
            break
        first = line.strip().strip("|").split("|")[0].strip()
        m = BACKTICKED.match(first)
        assert m, f"error table row does not start with a `code`: {line!r}"
        codes.append(m[1])
    return codes


def subschemas(schema: Any) -> Iterator[dict[str, Any]]:
    """``schema`` and every schema inside it (properties, items, oneOf, allOf, if/then, ...)."""
    if isinstance(schema, dict):
        yield schema
        for key, value in schema.items():
            if key == "properties":
                for sub in value.values():
                    yield from subschemas(sub)
            elif key in ("items", "if", "then", "else", "not", "additionalProperties"):
                yield from subschemas(value)
            elif key in ("oneOf", "anyOf", "allOf", "prefixItems"):
                for sub in value:
                    yield from subschemas(sub)
            elif key == "$defs":
                for sub in value.values():
                    yield from subschemas(sub)


def object_schemas(name: str) -> list[dict[str, Any]]:
    """The subschemas of ``name`` that declare properties, leaving out if/then conditions."""
    schema = load_schema(name)
    in_conditions = [sub for s in subschemas(schema) if "if" in s for sub in subschemas(s["if"])]
    return [s for s in subschemas(schema) if "properties" in s and not any(s is c for c in in_conditions)]


def property_names(name: str) -> set[str]:
    return {prop for s in object_schemas(name) for prop in s["properties"]}


def branches(name: str) -> list[dict[str, Any]]:
    """The alternatives of a request or answer: its ``oneOf`` branches, or the schema itself."""
    schema = load_schema(name)
    return schema.get("oneOf", [schema])


def errors(name: str, document: Any) -> list[str]:
    return [e.message for e in validator_for(name).iter_errors(document)]


def changed(document: dict[str, Any], path: tuple[str | int, ...] = (), **changes: Any) -> dict[str, Any]:
    """A deep copy of ``document`` with ``changes`` applied at ``path``; a value of ``DROP`` removes the key."""
    result = copy.deepcopy(document)
    target: Any = result
    for step in path:
        target = target[step]
    for key, value in changes.items():
        if value is DROP:
            del target[key]
        else:
            target[key] = value
    return result


DROP = object()

# Valid documents (the design's examples), which the negative cases below break one way each.
LINKS_REQUEST = {"connection_id": "acme-7", "return_to": "https://app.example.com/settings/invoiced", "ttl_seconds": 3600}
LINKS_ANSWER = {"api_version": 1, "connection_id": "acme-7", "url": "https://x.example/connect?link=v1.a.b", "expires_at": 1767225600}
TOKENS_REQUEST = {"connection_id": "acme-7", "min_validity_seconds": 300}
TOKENS_ANSWER = {
    "api_version": 1, "connection_id": "acme-7", "access_token": "eyJ.x.y", "token_type": "Bearer",
    "expires_at": 1767225600, "api_url": "https://api.sandbox.invoiced.com", "tenant_id": "167", "version": 4,
}
GET_REQUEST = {"action": "get", "connection_id": "acme-7"}
LIST_REQUEST = {"action": "list_attention", "limit": 100, "next_token": "opaque"}
GET_ANSWER = {"api_version": 1, "connection": {
    "connection_id": "acme-7", "status": "active", "tenant_id": "167", "company_name": "Acme",
    "issuer": "https://sandbox.invoiced.com", "api_url": "https://api.sandbox.invoiced.com",
    "expires_at": 1767225600, "refreshed_at": 1767222000, "created_at": 1767000000, "updated_at": 1767222000,
    "version": 4, "attention": None, "reason": None, "failure_count": 0, "retry_at": None,
}}
LIST_ANSWER = {"api_version": 1, "next_token": None, "connections": [
    {"connection_id": "acme-7", "attention": "needs_reauth", "reason": "invalid_grant", "status": "needs_reauth", "since": 1767222000},
]}
ERROR = {"error": "unavailable", "message": "no valid token right now", "retry_at": 1767222300}

VALID = [
    ("links.request", LINKS_REQUEST),
    ("links.request", {"connection_id": "a"}),
    ("links.request", {"connection_id": "A" * 128, "ttl_seconds": 60, "api_version": 1}),
    ("links.request", {"connection_id": "user@example.com:42_x.y-z", "ttl_seconds": 2592000}),
    ("links.answer", LINKS_ANSWER),
    ("tokens.request", TOKENS_REQUEST),
    ("tokens.request", {"connection_id": "acme-7", "min_validity_seconds": 0}),
    ("tokens.request", {"connection_id": "acme-7", "rejected_version": 0}),
    ("tokens.request", {"connection_id": "acme-7", "min_validity_seconds": 1800, "api_version": 1}),
    ("tokens.answer", TOKENS_ANSWER),
    ("connection-state.request", GET_REQUEST),
    ("connection-state.request", LIST_REQUEST),
    ("connection-state.request", {"action": "list_attention"}),
    ("connection-state.request", {"action": "list_attention", "limit": 1, "api_version": 1}),
    ("connection-state.request", {"action": "list_attention", "limit": 500}),
    ("connection-state.answer", GET_ANSWER),
    ("connection-state.answer", changed(GET_ANSWER, ("connection",), status="needs_reauth", attention="needs_reauth",
                                        reason="invalid_grant", company_name=None, api_url=None)),
    ("connection-state.answer", changed(GET_ANSWER, ("connection",), attention="failing", failure_count=3, retry_at=1767222600)),
    ("connection-state.answer", LIST_ANSWER),
    ("connection-state.answer", {"api_version": 1, "connections": [], "next_token": "opaque"}),
    ("error", ERROR),
    ("error", {"error": "not_found", "message": "no connection 'acme-7'"}),
    ("error", {"error": "token_rejected", "message": "already replaced", "retry_at": 1767222300}),
]

INVALID = [
    # links request
    ("links.request", changed(LINKS_REQUEST, connection_id=DROP), "without connection_id"),
    ("links.request", changed(LINKS_REQUEST, ttl_seconds=59), "ttl_seconds below 60"),
    ("links.request", changed(LINKS_REQUEST, ttl_seconds=2592001), "ttl_seconds above 30 days"),
    ("links.request", changed(LINKS_REQUEST, ttl_seconds=3600.5), "ttl_seconds not an integer"),
    ("links.request", changed(LINKS_REQUEST, ttl_seconds="3600"), "ttl_seconds a string"),
    ("links.request", changed(LINKS_REQUEST, colour="blue"), "an unknown property"),
    ("links.request", changed(LINKS_REQUEST, api_version=2), "api_version 2"),
    ("links.request", changed(LINKS_REQUEST, api_version="1"), "api_version a string"),
    ("links.request", changed(LINKS_REQUEST, api_version=True), "api_version a boolean"),
    ("links.request", changed(LINKS_REQUEST, return_to=None), "return_to null"),
    ("links.request", changed(LINKS_REQUEST, connection_id=""), "an empty connection_id"),
    ("links.request", changed(LINKS_REQUEST, connection_id="A" * 129), "a connection_id of 129 characters"),
    ("links.request", changed(LINKS_REQUEST, connection_id=".acme"), "a connection_id starting with a dot"),
    ("links.request", changed(LINKS_REQUEST, connection_id="acme 7"), "a connection_id with a space"),
    ("links.request", changed(LINKS_REQUEST, connection_id="acme/7"), "a connection_id with a slash"),
    ("links.request", ["acme-7"], "not an object"),
    # links answer
    ("links.answer", changed(LINKS_ANSWER, api_version=DROP), "an answer without api_version"),
    ("links.answer", changed(LINKS_ANSWER, url=DROP), "an answer without url"),
    ("links.answer", changed(LINKS_ANSWER, link_id="x"), "an answer with an unknown property"),
    # tokens request
    ("tokens.request", changed(TOKENS_REQUEST, min_validity_seconds=-1), "min_validity_seconds below 0"),
    ("tokens.request", changed(TOKENS_REQUEST, min_validity_seconds=1801), "min_validity_seconds above 1800"),
    ("tokens.request", {"connection_id": "acme-7", "rejected_version": -1}, "a negative rejected_version"),
    ("tokens.request", changed(TOKENS_REQUEST, rejected_version=1), "min_validity_seconds with rejected_version"),
    ("tokens.request", changed(TOKENS_REQUEST, ttl_seconds=3600), "a property of another call"),
    # tokens answer
    ("tokens.answer", changed(TOKENS_ANSWER, api_url=DROP), "a tokens answer without api_url"),
    ("tokens.answer", changed(TOKENS_ANSWER, api_url=None), "a tokens answer with a null api_url"),
    ("tokens.answer", changed(TOKENS_ANSWER, version=DROP), "a tokens answer without version"),
    ("tokens.answer", changed(TOKENS_ANSWER, token_type="bearer"), "a token type other than Bearer"),
    ("tokens.answer", changed(TOKENS_ANSWER, refresh_token="r"), "a tokens answer with a refresh token"),
    ("tokens.answer", changed(TOKENS_ANSWER, api_version=2), "a tokens answer of version 2"),
    # connection-state request
    ("connection-state.request", {"connection_id": "acme-7"}, "no action"),
    ("connection-state.request", changed(GET_REQUEST, action="delete"), "an unknown action"),
    ("connection-state.request", changed(GET_REQUEST, connection_id=DROP), "get without connection_id"),
    ("connection-state.request", changed(GET_REQUEST, limit=10), "get with list_attention's limit"),
    ("connection-state.request", changed(LIST_REQUEST, connection_id="acme-7"), "list_attention with a connection_id"),
    ("connection-state.request", changed(LIST_REQUEST, limit=0), "limit 0"),
    ("connection-state.request", changed(LIST_REQUEST, limit=501), "limit above 500"),
    ("connection-state.request", changed(LIST_REQUEST, api_version=2), "list_attention of version 2"),
    # connection-state answer
    ("connection-state.answer", changed(GET_ANSWER, api_version=DROP), "a get answer without api_version"),
    ("connection-state.answer", changed(GET_ANSWER, ("connection",), retry_at=DROP), "a connection without retry_at"),
    ("connection-state.answer", changed(GET_ANSWER, ("connection",), status="connected"), "an unknown status"),
    ("connection-state.answer", changed(GET_ANSWER, ("connection",), attention="broken"), "an unknown attention"),
    ("connection-state.answer", changed(GET_ANSWER, ("connection",), tenant_id=None), "a null tenant_id"),
    ("connection-state.answer", changed(GET_ANSWER, ("connection",), access_token="t"), "a connection with a token"),
    ("connection-state.answer", changed(GET_ANSWER, connections=[]), "a get answer that is also a list answer"),
    ("connection-state.answer", changed(LIST_ANSWER, next_token=DROP), "a list answer without next_token"),
    ("connection-state.answer", changed(LIST_ANSWER, ("connections", 0), attention=None), "a listed connection without attention"),
    ("connection-state.answer", changed(LIST_ANSWER, ("connections", 0), since=DROP), "a listed connection without since"),
    ("connection-state.answer", changed(LIST_ANSWER, ("connections", 0), version=4), "a listed connection with an unknown property"),
    # error
    ("error", changed(ERROR, error="teapot"), "an unknown error code"),
    ("error", changed(ERROR, message=DROP), "an error without message"),
    ("error", changed(ERROR, retry_at="soon"), "a retry_at that is not an integer"),
    ("error", changed(ERROR, request_id="r"), "an error with an unknown property"),
]


# ---------------------------------------------------------------- the schemas themselves
def test_the_schema_directory_holds_exactly_the_published_schemas():
    assert SCHEMA_DIR.is_dir()
    assert schema_names() == sorted(SCHEMAS)


@pytest.mark.parametrize("name", SCHEMAS)
def test_each_schema_is_a_valid_draft_2020_12_schema_with_its_own_urn(name):
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"urn:invoiced-connect:app-api:v1:{name}"
    assert schema.get("title") and schema.get("description")


def test_schema_ids_are_unique():
    ids = [load_schema(name)["$id"] for name in SCHEMAS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("name", SCHEMAS)
def test_every_object_is_closed_and_every_property_explained(name):
    for schema in object_schemas(name):
        assert schema.get("additionalProperties") is False, f"{name}: an object allowing unknown properties: {sorted(schema['properties'])}"
        for prop, sub in schema["properties"].items():
            assert sub.get("title") and sub.get("description"), f"{name}: property {prop!r} needs a title and a description"
            assert "type" in sub or "const" in sub, f"{name}: property {prop!r} has no type"


@pytest.mark.parametrize("name", REQUESTS)
def test_requests_may_name_version_1(name):
    for branch in branches(name):
        assert branch["properties"]["api_version"]["const"] == 1
        assert "api_version" not in branch.get("required", [])


@pytest.mark.parametrize("name", ANSWERS)
def test_answers_always_name_version_1(name):
    for branch in branches(name):
        assert branch["properties"]["api_version"]["const"] == 1
        assert "api_version" in branch["required"]


def test_connection_ids_follow_the_layers_rule():
    from invoiced_connect.core.models import _CONNECTION_ID

    found = 0
    for name in SCHEMAS:
        for schema in object_schemas(name):
            if "connection_id" in schema["properties"]:
                prop = schema["properties"]["connection_id"]
                assert prop["pattern"] == _CONNECTION_ID.pattern, name
                assert (prop["type"], prop["minLength"], prop["maxLength"]) == ("string", 1, 128), name
                found += 1
    assert found == 7  # links and tokens requests and answers, get, the connection, a listed connection


@pytest.mark.parametrize(("name", "document"), VALID, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VALID)])
def test_valid_documents_are_accepted(name, document):
    assert errors(name, document) == []


@pytest.mark.parametrize(("name", "document", "why"), INVALID, ids=[why for _, _, why in INVALID])
def test_invalid_documents_are_refused(name, document, why):
    assert errors(name, document), f"{name} accepted {why}: {json.dumps(document)}"


def test_validator_for_is_cached_and_does_not_check_formats():
    validator = validator_for("links.answer")
    assert validator_for("links.answer") is validator
    assert isinstance(validator, Draft202012Validator)
    assert validator.format_checker is None
    assert errors("links.answer", changed(LINKS_ANSWER, url="not a url")) == []


def test_an_unknown_schema_name_is_refused():
    with pytest.raises(KeyError, match="links.reply"):
        load_schema("links.reply")


# ---------------------------------------------------------------- the page that documents them
def test_every_example_marker_is_followed_by_a_json_block():
    markers = len(MARKER.findall(doc_text()))
    assert markers == len(doc_examples()), "a '<!-- schema: NAME -->' must be followed at once by a ```json block"
    unknown = {name for name, _, _ in doc_examples()} - set(SCHEMAS)
    assert not unknown, f"examples name unknown schemas: {sorted(unknown)}"


@pytest.mark.parametrize(
    ("name", "line", "body"), doc_examples(), ids=[f"{name}@line{line}" for name, line, _ in doc_examples()]
)
def test_each_example_in_the_docs_is_valid(name, line, body):
    try:
        document = json.loads(body)
    except json.JSONDecodeError as exc:
        pytest.fail(f"docs/app-api.md line {line}: the {name} example is not JSON: {exc}")
    assert errors(name, document) == [], f"docs/app-api.md line {line}: the {name} example"


def test_every_schema_has_an_example_in_the_docs():
    shown = {name for name, _, _ in doc_examples()}
    assert not set(SCHEMAS) - shown, f"schemas without an example in docs/app-api.md: {sorted(set(SCHEMAS) - shown)}"


def test_both_branches_of_connection_state_have_examples():
    actions = {json.loads(body)["action"] for name, _, body in doc_examples() if name == "connection-state.request"}
    assert actions == {"get", "list_attention"}
    shapes = {frozenset(json.loads(body)) - {"api_version"} for name, _, body in doc_examples() if name == "connection-state.answer"}
    assert shapes == {frozenset({"connection"}), frozenset({"connections", "next_token"})}


@pytest.mark.parametrize("name", SCHEMAS)
def test_every_property_is_in_a_docs_table(name):
    missing = property_names(name) - documented_properties()
    assert not missing, f"{name}: properties with no table row in docs/app-api.md: {sorted(missing)}"


# ---------------------------------------------------------------- error codes
def error_enum() -> list[str]:
    return load_schema("error")["properties"]["error"]["enum"]


def test_error_codes_are_unique_and_the_docs_table_lists_exactly_them():
    assert len(error_enum()) == len(set(error_enum()))
    assert len(error_table_codes()) == len(set(error_table_codes()))
    assert set(error_table_codes()) == set(error_enum())


def test_error_codes_are_the_layers():
    from invoiced_connect.app_api.service import ERROR_CODES

    assert isinstance(ERROR_CODES, tuple | frozenset)
    assert all(isinstance(code, str) for code in ERROR_CODES)
    assert set(ERROR_CODES) == set(error_enum())
