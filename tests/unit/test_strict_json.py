"""core/strict_json.py: JSON from outside is read strictly, and every refusal is a ValueError."""

from __future__ import annotations

import pytest

from invoiced_connect.core import strict_json


def test_plain_json_is_read_as_json_reads_it():
    assert strict_json.loads('{"a":[1,-2.5,"x",true,null]}') == {"a": [1, -2.5, "x", True, None]}
    assert strict_json.loads(b'{"a":1e308}') == {"a": 1e308}
    assert strict_json.loads("[" * 900 + "]" * 900) is not None


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", '{"a":NaN}', "[1e400]", "-1e400", "1e309"])
def test_non_finite_numbers_are_refused(text):
    with pytest.raises(ValueError, match="is not JSON|is out of range"):
        strict_json.loads(text)


def test_nesting_past_the_parsers_depth_is_a_value_error():
    with pytest.raises(ValueError, match="^JSON nested too deeply$"):
        strict_json.loads("[" * 100_000 + "]" * 100_000)


@pytest.mark.parametrize("text", ["", "x", "{", '{"a":1} 2', b"\xff\xfe\xfa"])
def test_what_is_not_json_is_a_value_error(text):
    with pytest.raises(ValueError):
        strict_json.loads(text)


def test_integer_takes_only_an_int():
    assert strict_json.integer(0) == 0 and strict_json.integer(-7) == -7
    for value in (True, False, 1.0, "1", None, [1], float("inf")):
        with pytest.raises(ValueError, match="^not an integer$"):
            strict_json.integer(value)


def test_string_takes_only_a_str():
    assert strict_json.string("") == "" and strict_json.string("x") == "x"
    for value in (1, None, b"x", ["x"], True):
        with pytest.raises(ValueError, match="^not a string$"):
            strict_json.string(value)


def test_repeated_keys_are_refused_only_when_asked():
    assert strict_json.loads('{"a":1,"a":2}') == {"a": 2}
    with pytest.raises(ValueError, match="^a key is repeated$"):
        strict_json.loads('{"a":1,"b":{"c":1,"c":2}}', unique_keys=True)
    assert strict_json.loads('{"a":1,"b":{"c":2}}', unique_keys=True) == {"a": 1, "b": {"c": 2}}
