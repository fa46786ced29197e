"""Property-based checks of what reads values from strangers: the outcome
cookie, the callback's query and Invoiced's answers. None of them ever
raises past its own errors (a 5xx), and nothing read is reflected unescaped."""

from __future__ import annotations

import contextlib
import json
from html.parser import HTMLParser

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from invoiced_connect.connect import outcome_cookie as codec
from invoiced_connect.connect.flow import RESULT_COOKIE_NAME, parse_cookies, parse_query
from invoiced_connect.connect.outcome_cookie import ELLIPSIS, decode_outcome, json_size, outcome_cookie
from invoiced_connect.connect.pages import HttpResult, OutcomePage
from invoiced_connect.core import b64url
from invoiced_connect.invoiced.client import (
    InvalidTokenResponseError,
    InvoicedClient,
    InvoicedError,
    classify_token_error,
    parse_token_response,
)
from tests.support import http_response, token_body
from tests.unit import test_flow_rules as fakes

#: Any code point, lone surrogates included (JSON escapes them; a browser may send anything).
any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=300)
long_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=3000)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | any_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=12,
)
#: JSON text with the spellings json.loads accepts but JSON does not.
odd_numbers = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e309", "-0", "1.0", "true"])
#: Text that would become markup if a page placed it unescaped.
hostile = st.sampled_from(["<script>alert(1)</script>", '"><b id=x>', "<img src=x onerror=y>", "&lt;i&gt;", "<!--"])
reflected = any_text | hostile | st.builds(lambda a, b, c: a + b + c, any_text, hostile, any_text)
shown_statuses = st.sampled_from(sorted(codec._SHOWN_STATUSES))


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, tuple]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, tuple(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, tuple(attrs)))


def markup(body: str) -> list[tuple[str, tuple]]:
    """The elements and attributes of a page, in order (its text left out)."""
    parser = _Tags()
    parser.feed(body)
    parser.close()
    return parser.tags


def assert_escaped(outcome: OutcomePage) -> HttpResult:
    """The rendered outcome has exactly the markup of the same page with plain texts: nothing
    it carries became an element or an attribute."""
    page = outcome.render()
    plain = OutcomePage(outcome.status, "T", "M", "R", None if outcome.company is None else "C", outcome.connected)
    assert page.status == outcome.status or outcome.connected
    assert markup(page.body) == markup(plain.render().body)
    return page


# ------------------------------------------------------------------ the outcome cookie
@given(st.binary(max_size=2300))
def test_any_bytes_as_an_outcome_cookie_decode_without_raising(data):
    outcome = decode_outcome(b64url.encode(data))
    if outcome is not None:
        assert_escaped(outcome)


@given(st.text(max_size=3100))
def test_any_text_as_an_outcome_cookie_decodes_without_raising(value):
    assert decode_outcome(value) is None or isinstance(decode_outcome(value), OutcomePage)


@settings(max_examples=300)
@given(st.fixed_dictionaries(
    {"s": st.integers(100, 599) | shown_statuses | json_values, "t": reflected | json_values, "m": reflected,
     "r": reflected, "c": st.none() | reflected | json_values, "ok": st.booleans() | json_values},
    optional={"x": json_values},
))
def test_any_json_as_an_outcome_cookie_decodes_without_raising_and_renders_escaped(payload):
    outcome = decode_outcome(b64url.encode(json.dumps(payload).encode()))
    if outcome is not None:
        assert outcome.status in codec._SHOWN_STATUSES
        assert_escaped(outcome)


@given(st.sampled_from(["s", "t", "m", "r", "c", "ok"]), odd_numbers)
def test_odd_numbers_anywhere_in_an_outcome_cookie_are_no_outcome_or_read_exactly(key, number):
    fields = {"s": "400", "t": '"T"', "m": '"M"', "r": '"R"', "c": "null", "ok": "false", key: number}
    text = "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"
    outcome = decode_outcome(b64url.encode(text.encode()))
    # only "ok": true is of the kind meant (-0 is the integer 0: no shown status)
    assert outcome is None or (key, number) == ("ok", "true")


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(shown_statuses, long_text, long_text | reflected, reflected, st.none() | long_text | reflected, st.booleans())
def test_the_outcome_page_always_shows_a_clipped_message(status, title, message, reference, company, connected):
    connected = connected and status == 200  # the flow says connected only with a 200
    page = OutcomePage(status, title, message, reference, company=company, connected=connected)
    value = outcome_cookie(page).split(";", 1)[0].split("=", 1)[1]
    assert len(value) <= codec.MAX_VALUE_LENGTH
    decoded = decode_outcome(value)
    assert decoded is not None
    for original, shown, budget in ((message, decoded.message, codec.MESSAGE_BUDGET),
                                    (title, decoded.title, codec.TITLE_BUDGET),
                                    (company, decoded.company, codec.COMPANY_BUDGET)):
        if original is None:
            assert shown is None
        elif shown != original:
            assert shown.endswith(ELLIPSIS) and original.startswith(shown[:-1])
            assert json_size(original) > budget >= json_size(shown)
            # nothing more of the original would have fitted
            assert json_size(original[: len(shown)]) + json_size(ELLIPSIS) > budget
    assert (decoded.status, decoded.connected) == (status, connected)
    assert_escaped(decoded)


# ------------------------------------------------------------------ the callback's query
def _follow(flow, result: HttpResult) -> None:
    """A callback answer is never a 5xx, and what it carries to the outcome page renders escaped."""
    assert result.status < 500
    if result.status == 303 and result.headers["Location"] == fakes.REDIRECT_URI:
        jar = parse_cookies([c.split(";", 1)[0] for c in result.cookies])
        outcome = decode_outcome(jar[RESULT_COOKIE_NAME])
        assert outcome is not None
        assert_escaped(outcome)
        shown = flow.callback({}, {RESULT_COOKIE_NAME: jar[RESULT_COOKIE_NAME]}, "ref")
        assert shown.status == outcome.status
        assert markup(shown.body) == markup(assert_escaped(outcome).body)
    else:
        assert "Location" not in result.headers or result.headers["Location"].startswith(
            ("https://sandbox.invoiced.com/", "https://app.example.com/done?tab=x&"))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.booleans())
def test_any_query_string_into_the_callback_is_never_a_5xx(raw_query, with_cookie):
    t = fakes.make_flow()
    _, binding = fakes.started(t)
    cookies = {fakes.COOKIE_NAME: binding} if with_cookie else {}
    _follow(t.flow, t.flow.callback(parse_query(raw_query), cookies, "ref"))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["code", "error", "error_description", "iss", "x"]),
                       st.lists(reflected, min_size=1, max_size=2), max_size=4),
       st.sampled_from([None, fakes.RETURN_TO]))
def test_any_values_with_a_real_state_are_never_a_5xx_and_never_reflected_unescaped(params, return_to):
    t = fakes.make_flow()
    state, binding = fakes.started(t, return_to)
    # The parsed query as given (lone surrogates included, which no URL can carry):
    query = {"state": [state], **params}
    _follow(t.flow, t.flow.callback(query, {fakes.COOKIE_NAME: binding}, "ref"))


# ------------------------------------------------------------------ Invoiced's answers
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({}, optional={k: json_values for k in ("error", "message", "type", "error_description",
                                                                 "hint")}).map(lambda v: json.dumps(v).encode()),
    st.builds(lambda key, number: f'{{"{key}": {number}}}'.encode(),
              st.sampled_from(["error", "message", "type", "expires_in"]), odd_numbers),
)


@settings(max_examples=300)
@given(st.integers(100, 599), bodies, st.sampled_from(["authorization_code", "refresh_token"]))
def test_any_error_body_is_classified_as_one_of_the_clients_errors(status, body, grant):
    error = classify_token_error(http_response(status, body), grant)
    assert isinstance(error, InvoicedError)
    assert isinstance(error.reason, str) and error.status == status


@settings(max_examples=300)
@given(bodies | st.dictionaries(st.sampled_from(sorted(token_body())), json_values).map(
    lambda v: json.dumps(token_body() | v).encode()))
def test_any_token_response_parses_or_raises_only_invalid_token_response(body):
    try:
        tokens = parse_token_response(http_response(200, body), now=1_800_000_000)
    except InvalidTokenResponseError:
        return
    assert type(tokens.lifetime) is int and tokens.lifetime > 0


class _Answers:
    def __init__(self, response) -> None:
        self.response = response

    def get(self, url, **kwargs):
        return self.response

    post = get


@settings(max_examples=200)
@given(st.integers(100, 599), bodies | st.dictionaries(st.sampled_from(["id", "name"]), json_values).map(
    lambda v: json.dumps(v).encode()))
def test_any_company_answer_is_a_company_or_one_of_the_clients_errors(status, body):
    client = InvoicedClient(base_url="https://invoiced.test", api_url="https://api.invoiced.test", client_id="c",
                            session=_Answers(http_response(status, body)))
    try:
        company = client.current_company("at")
    except InvoicedError:
        return
    assert isinstance(company.id, str) and isinstance(company.name, str)


@pytest.mark.parametrize("status", [200, 400])
def test_a_token_request_answered_with_anything_raises_only_the_clients_errors(status):
    @settings(max_examples=150)
    @given(bodies)
    def check(body):
        client = InvoicedClient(base_url="https://invoiced.test", api_url="https://api.invoiced.test",
                                client_id="c", client_secret=lambda force: "s",
                                session=_Answers(http_response(status, body)))
        with contextlib.suppress(InvoicedError):
            client.exchange_code(code="c", redirect_uri="https://x.test/cb", code_verifier="v" * 43)

    check()
