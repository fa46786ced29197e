"""Coverage-guided fuzzing (atheris, libFuzzer) of the decoders that read what a browser sends.

    .venv/bin/python tests/fuzz/fuzz_decoders.py TARGET [libFuzzer options and corpus directories]

Targets:

* ``links``: ``links.verify_link_token``. The first byte chooses how the rest
  is used: as a token as sent, or as the JSON payload of a token signed with
  the test key (so the parsing behind the signature check is reached too).
  Only ``LinkError`` may come out; a link that verifies signs back the same.
* ``outcome``: ``outcome_cookie.decode_outcome``. Never raises; an outcome it
  reads renders, and encodes again into a cookie that fits and decodes.
* ``cookies``: ``flow.parse_cookies`` over a Cookie header cut into parts.
  Never raises; every name and value is a piece of the input.

``make fuzz`` runs each for ``FUZZ_SECONDS``, with the seeds in
``tests/fuzz/corpus/TARGET`` and new inputs in ``.local/fuzz/TARGET``.
Anything found becomes a regression test in ``tests/unit``.
"""

from __future__ import annotations

import hashlib
import hmac
import sys

import atheris

with atheris.instrument_imports(include=["invoiced_connect"]):
    from invoiced_connect.connect.flow import parse_cookies
    from invoiced_connect.connect.links import LinkError, sign_link_token, verify_link_token
    from invoiced_connect.connect.outcome_cookie import MAX_VALUE_LENGTH, decode_outcome, outcome_cookie
    from invoiced_connect.core import b64url

KEY = "k" * 48
NOW = 1_800_000_000


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def fuzz_links(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 2, data[1:]
    if mode == 0:
        token = _text(rest)
    else:
        signed_part = f"v1.{b64url.encode(rest)}"
        mac = hmac.new(KEY.encode(), signed_part.encode(), hashlib.sha256).digest()
        token = f"{signed_part}.{b64url.encode(mac)}"
    try:
        claims = verify_link_token(token, [KEY], now=NOW)
    except LinkError:
        return
    again = verify_link_token(sign_link_token(claims, KEY), [KEY], now=NOW)
    if again != claims:
        raise AssertionError(f"a verified link does not sign back the same: {claims!r} != {again!r}")


def fuzz_outcome(data: bytes) -> None:
    value = _text(data)
    for candidate in (value, b64url.encode(data)):
        outcome = decode_outcome(candidate)
        if outcome is None:
            continue
        if outcome.render().status >= 600:
            raise AssertionError("not an HTTP status")
        cookie = outcome_cookie(outcome).split(";", 1)[0].split("=", 1)[1]
        if len(cookie) > MAX_VALUE_LENGTH or decode_outcome(cookie) is None:
            raise AssertionError(f"a decoded outcome does not fit its cookie again: {outcome!r}")


def fuzz_cookies(data: bytes) -> None:
    text = _text(data)
    jar = parse_cookies(text.split("\n"))
    for name, value in jar.items():
        if name not in text or value not in text or ";" in name or ";" in value:
            raise AssertionError(f"{name!r}={value!r} is not a piece of the input")


TARGETS = {"links": fuzz_links, "outcome": fuzz_outcome, "cookies": fuzz_cookies}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options] [corpus directories]")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
