"""The outcome cookie (connect/outcome_cookie.py): what a callback ended in,
carried to the redirected page. Forged values are never a 5xx, and every
outcome the flow writes fits the decoder's limit, clipped, whatever its text."""

from __future__ import annotations

import json
from html import escape

import pytest

from invoiced_connect.connect import flow
from invoiced_connect.connect import outcome_cookie as codec
from invoiced_connect.connect.outcome_cookie import (
    CLEAR_RESULT_COOKIE,
    ELLIPSIS,
    RESULT_COOKIE_NAME,
    _clip,
    decode_outcome,
    json_size,
    outcome_cookie,
)
from invoiced_connect.connect.pages import OutcomePage
from invoiced_connect.core import b64url


def flow_fakes():
    """The connect flow's recording fakes (tests/unit/test_flow_rules.py)."""
    from tests.unit import test_flow_rules

    return test_flow_rules


def cookie_value(set_cookie: str, name: str) -> str:
    first = set_cookie.split(";", 1)[0]
    assert first.startswith(f"{name}=")
    return first.split("=", 1)[1]


def raw(json_text: str) -> str:
    return b64url.encode(json_text.encode())


def round_trip(page: OutcomePage) -> OutcomePage | None:
    return decode_outcome(cookie_value(outcome_cookie(page), RESULT_COOKIE_NAME))


# ------------------------------------------------------------------ regressions
@pytest.mark.parametrize("number", ["1e400", "-1e400", "Infinity", "-Infinity", "NaN"])
def test_a_non_finite_status_is_no_outcome_and_the_page_says_nothing_to_show(number):
    value = raw('{"s":NUMBER,"t":"T","m":"M","r":"R","c":null,"ok":false}'.replace("NUMBER", number))
    assert decode_outcome(value) is None
    connect = flow_fakes().make_flow().flow
    result = connect.callback({}, {RESULT_COOKIE_NAME: value}, "ref-n")
    assert (result.status, result.body) == (400, connect.callback({}, {}, "ref-n").body)


@pytest.mark.parametrize("text", ["\u4e2d" * 4096, "\U0001f600" * 4096, "\x01" * 4096, '"\\' * 2048])
def test_a_long_message_that_json_escapes_to_many_bytes_still_fits_and_is_shown(text):
    page = OutcomePage(400, "Not connected", "Invoiced reported: " + text, "ref-1")
    decoded = round_trip(page)
    assert decoded is not None
    assert decoded.message.endswith("\u2026") and page.message.startswith(decoded.message[:-1])


@pytest.mark.parametrize("name", ["\u00e9" * 1000, "\U0001f600" * 1000])
def test_a_long_non_ascii_company_name_still_fits_and_is_shown(name):
    decoded = round_trip(OutcomePage(200, "Connected", "", "ref-1", company=name, connected=True))
    assert decoded is not None and decoded.connected
    assert decoded.company.endswith("\u2026") and name.startswith(decoded.company[:-1])


def test_a_denial_with_a_long_non_ascii_description_shows_it_clipped_not_nothing_to_show():
    fakes = flow_fakes()
    t = fakes.make_flow()
    state, binding = fakes.started(t)
    description = "\u6a29\u9650\u304c\u3042\u308a\u307e\u305b\u3093" * 500
    finished = t.flow.callback({"state": [state], "error": ["invalid_scope"], "error_description": [description]},
                               {fakes.COOKIE_NAME: binding}, "ref-d")
    assert finished.status == 303
    value = cookie_value(finished.cookies[1], RESULT_COOKIE_NAME)
    outcome = decode_outcome(value)
    assert outcome is not None and outcome.status == 400
    assert description[:99] + ELLIPSIS in outcome.message  # Invoiced's words clipped, the next step kept
    assert outcome.message.endswith("Start again from your connect link.")
    shown = t.flow.callback({}, {RESULT_COOKIE_NAME: value}, "ref-d")
    assert shown.status == 400 and escape(outcome.message) in shown.body


# ------------------------------------------------------------------ the format
def encoded(payload) -> str:
    return b64url.encode(json.dumps(payload).encode())


GOOD = {"s": 400, "t": "T", "m": "M", "r": "R", "c": None, "ok": False}


def test_the_flow_uses_this_codec():
    assert (flow.outcome_cookie, flow.decode_outcome) == (outcome_cookie, decode_outcome)
    assert (flow.RESULT_COOKIE_NAME, flow.CLEAR_RESULT_COOKIE) == (RESULT_COOKIE_NAME, CLEAR_RESULT_COOKIE)


def test_outcome_cookie_round_trips_with_exact_attributes():
    page = OutcomePage(502, "Could not connect", "Invoiced's answer could not be used.", "ref-1",
                       company="Acme", connected=False)
    cookie = outcome_cookie(page)
    name_value, attributes = cookie.split("; ", 1)
    assert name_value.startswith("__Host-invoiced-connect-result=")
    assert attributes == "Max-Age=60; Path=/; Secure; HttpOnly; SameSite=Lax"
    value = cookie_value(cookie, RESULT_COOKIE_NAME)
    assert b64url.decode(value) == (b'{"s":502,"t":"Could not connect","m":"Invoiced\'s answer could not be used.",'
                                    b'"r":"ref-1","c":"Acme","ok":false}')
    assert decode_outcome(value) == page
    assert CLEAR_RESULT_COOKIE == "__Host-invoiced-connect-result=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Lax"


def test_non_ascii_is_written_as_json_escapes():
    value = cookie_value(outcome_cookie(OutcomePage(200, "\u00e9", "\U0001f600", "r", company=None)), RESULT_COOKIE_NAME)
    assert b64url.decode(value) == b'{"s":200,"t":"\\u00e9","m":"\\ud83d\\ude00","r":"r","c":null,"ok":false}'


def test_decode_outcome_reads_exactly_what_the_encoder_writes():
    assert decode_outcome(encoded(GOOD)) == OutcomePage(400, "T", "M", "R", None, False)
    assert decode_outcome(encoded({**GOOD, "s": 200, "c": "Acme", "ok": True})) == OutcomePage(
        200, "T", "M", "R", "Acme", True)
    for status in (400, 403, 409, 502, 503):  # only a 200 says connected
        assert decode_outcome(encoded({**GOOD, "s": status, "c": "Acme", "ok": True})) is None
    assert decode_outcome(encoded({**GOOD, "c": ""})).company == ""
    for status in (200, 400, 403, 409, 502, 503):
        assert decode_outcome(encoded({**GOOD, "s": status})).status == status
    for status in (199, 201, 302, 401, 404, 410, 500, 501, 504):
        assert decode_outcome(encoded({**GOOD, "s": status})) is None


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({**GOOD, "s": "403"}, id="status a string of digits"),
        pytest.param({**GOOD, "s": 400.0}, id="status a float"),
        pytest.param({**GOOD, "s": True}, id="status a bool"),
        pytest.param({**GOOD, "s": None}, id="status null"),
        pytest.param({**GOOD, "s": "x"}, id="status a word"),
        pytest.param({**GOOD, "t": 5}, id="title a number"),
        pytest.param({**GOOD, "m": ["M"]}, id="message a list"),
        pytest.param({**GOOD, "r": None}, id="reference null"),
        pytest.param({**GOOD, "c": 7}, id="company a number"),
        pytest.param({**GOOD, "ok": 1}, id="connected a number"),
        pytest.param({**GOOD, "ok": "true"}, id="connected a string"),
        pytest.param({**GOOD, "ok": None}, id="connected null"),
        pytest.param({**GOOD, "x": 1}, id="an unknown key"),
        pytest.param([1], id="not an object"),
        pytest.param("text", id="a string"),
        pytest.param(None, id="null"),
    ]
    + [pytest.param({k: v for k, v in GOOD.items() if k != key}, id=f"no {key}") for key in GOOD],
)
def test_a_value_of_the_wrong_kind_or_shape_is_no_outcome(payload):
    assert decode_outcome(encoded(payload)) is None


@pytest.mark.parametrize("value", ["", "!!!", "\u00e9\u00e9\u00e9\u00e9", b64url.encode(b"not json"),
                                   b64url.encode(b"\xff\xfe\x00"), b64url.encode(b'{"s":400} x'),
                                   b64url.encode(b"[" * 2200)])
def test_a_value_that_is_not_base64_json_is_no_outcome(value):
    assert decode_outcome(value) is None


def test_decode_outcome_length_limit_is_exactly_3000():
    filler = "x" * 2000
    value = encoded({**GOOD, "m": filler})
    while len(value) < 3000:
        filler += "x"
        value = encoded({**GOOD, "m": filler})
    assert len(value) == 3000 == codec.MAX_VALUE_LENGTH and decode_outcome(value) == OutcomePage(400, "T", filler, "R")
    # base64 decoding skips a stray character, so this reads the same outcome: only the length refuses it
    assert json.loads(b64url.decode(value + "*"))["m"] == filler
    assert decode_outcome(value + "*") is None


# ------------------------------------------------------------------ budgets and clipping
def test_json_size_counts_escapes_without_the_quotes():
    assert [json_size(t) for t in ("", "a", "ab", '"', "\\", "\n", "\x01", "\x7e", "\x7f", "\u00e9",
                                   "\ud800", "\U0001f600")] == [0, 1, 2, 2, 2, 2, 6, 1, 6, 6, 6, 12]


def test_the_budgets():
    assert (codec.TITLE_BUDGET, codec.MESSAGE_BUDGET, codec.REFERENCE_BUDGET, codec.COMPANY_BUDGET) == (
        150, 1350, 150, 450)
    assert ELLIPSIS == "\u2026" and codec.MAX_AGE_SECONDS == 60


@pytest.mark.parametrize("budget", [7, 8, 20])
def test_a_text_that_fits_its_budget_exactly_is_kept_and_one_byte_more_is_clipped(budget):
    assert _clip("a" * budget, budget) == "a" * budget
    # The ellipsis takes 6 bytes (\u2026): what is left is for the text.
    assert _clip("a" * (budget + 1), budget) == "a" * (budget - 6) + ELLIPSIS
    assert json_size(_clip("a" * (budget + 1), budget)) == budget


def test_clipping_stops_at_the_last_character_that_fits_whole():
    # 3 x 6 bytes, then 1: a budget of 16 leaves 10 for the text: one escaped character fits, not two
    assert _clip("\u00e9\u00e9\u00e9a", 16) == "\u00e9" + ELLIPSIS
    assert _clip("\u00e9\u00e9\u00e9a", 18) == "\u00e9\u00e9" + ELLIPSIS
    assert _clip("a\U0001f600b", 13) == "a" + ELLIPSIS  # 14 bytes; 7 left: the emoji (12) does not fit
    assert _clip("a\U0001f600" + "b" * 10, 19) == "a\U0001f600" + ELLIPSIS  # 13 left: 1 + 12 fit, not one more
    assert _clip("a\U0001f600" + "b" * 10, 18) == "a" + ELLIPSIS
    assert _clip("\U0001f600" * 3, 6) == ELLIPSIS
    assert _clip(None, 10) is None
    assert _clip("", 0) == ""


def test_each_text_is_clipped_to_its_own_budget():
    page = OutcomePage(200, "t" * 151, "m" * 1351, "r" * 151, company="c" * 451, connected=True)
    assert round_trip(page) == OutcomePage(200, "t" * 144 + ELLIPSIS, "m" * 1344 + ELLIPSIS, "r" * 144 + ELLIPSIS,
                                           company="c" * 444 + ELLIPSIS, connected=True)
    exact = OutcomePage(200, "t" * 150, "m" * 1350, "r" * 150, company="c" * 450, connected=True)
    assert round_trip(exact) == exact
    nameless = OutcomePage(400, "t", "m", "r")
    assert round_trip(nameless) == nameless


@pytest.mark.parametrize("char", ["a", '"', "\x01", "\u00e9", "\U0001f600", "\ud800"])
@pytest.mark.parametrize("status", sorted(codec._SHOWN_STATUSES))
def test_the_largest_outcome_of_every_status_fits_the_decoders_limit(char, status):
    page = OutcomePage(status, char * 2000, char * 5000, char * 2000, company=char * 3000, connected=status == 200)
    value = cookie_value(outcome_cookie(page), RESULT_COOKIE_NAME)
    assert len(value) <= codec.MAX_VALUE_LENGTH
    assert len(outcome_cookie(page)) < 4096
    decoded = decode_outcome(value)
    assert decoded is not None and decoded.status == status
    assert decoded.message.endswith(ELLIPSIS) and page.message.startswith(decoded.message[:-1])


def test_an_outcome_that_repeats_a_key_is_no_outcome():
    body = '{"s":200,"s":409,"t":"T","m":"M","r":"R","c":null,"ok":false}'
    assert decode_outcome(b64url.encode(body.encode())) is None
    assert decode_outcome(b64url.encode(body.replace('"s":200,', "").encode())).status == 409
