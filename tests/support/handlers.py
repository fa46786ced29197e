"""The six functions' handlers, run as Lambda runs them, with everything they
write captured: for the log-hygiene and metrics tests.

Each handler is a fresh import of ``functions/<name>/app.py`` (a cold start
of its own execution environment), invoked with a Lambda context and its
event and answer passed through JSON. Around each invocation the capture
collects stdout and stderr (the Powertools JSON lines and the EMF
documents) and every record that reaches the root logger, which is at DEBUG.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

from local.gateway import api_event
from local.lambda_runtime import import_handler

FUNCTIONS = {
    "connect": "ConnectFunction",
    "callback": "CallbackFunction",
    "scheduler": "SchedulerFunction",
    "worker": "RefreshWorkerFunction",
    "connections": "ConnectionsFunction",
    "list_invoices": "ListInvoicesFunction",
    "links": "LinksFunction",
    "tokens": "TokensFunction",
    "connection_state": "ConnectionStateFunction",
}
COOKIE_NAME = "__Host-invoiced-connect"
RESULT_COOKIE_NAME = "__Host-invoiced-connect-result"


# ---------------------------------------------------------------- what is written
class RecordCollector(logging.Handler):
    """Every record that reaches it, formatted with its logger's name and any exception."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception as exc:  # noqa: BLE001 - a record that cannot be formatted is still evidence
            text = f"{record.name} unformattable {record.msg!r} {record.args!r} ({exc!r})"
        self.lines.append(f"{text} {record.__dict__!r}")  # extras too, as a JSON formatter would show them

    def take(self) -> str:
        taken, self.lines = self.lines, []
        return "\n".join(taken)


@dataclass
class Written:
    """What one invocation (or the time between two) wrote."""

    label: str
    out: str
    err: str
    records: str

    @property
    def text(self) -> str:
        return "\n".join((self.out, self.err, self.records))

    def json_lines(self) -> list[dict[str, Any]]:
        """Every stdout line, parsed (a line that is not JSON fails here)."""
        parsed = []
        for line in self.out.splitlines():
            if line.strip():
                try:
                    parsed.append(json.loads(line))
                except ValueError:
                    raise AssertionError(f"{self.label}: a stdout line that is not JSON: {line[:200]!r}") from None
        return parsed

    def logs(self) -> list[dict[str, Any]]:
        return [line for line in self.json_lines() if "_aws" not in line]

    def emf(self) -> list[dict[str, Any]]:
        return [line for line in self.json_lines() if "_aws" in line]

    def metrics(self) -> list[Metric]:
        return emf_metrics(self.emf())


@dataclass(frozen=True)
class Metric:
    namespace: str
    name: str
    unit: str
    value: float
    dimensions: tuple[tuple[str, str], ...]

    @property
    def dims(self) -> dict[str, str]:
        return dict(self.dimensions)


def emf_metrics(documents: Sequence[Mapping[str, Any]]) -> list[Metric]:
    """Each metric value of each EMF document, with the dimensions it is published under."""
    found = []
    for document in documents:
        for directive in document["_aws"]["CloudWatchMetrics"]:
            dimension_sets = directive["Dimensions"]
            assert len(dimension_sets) == 1, f"one dimension set per metric: {dimension_sets}"
            dims = tuple(sorted((name, str(document[name])) for name in dimension_sets[0]))
            for definition in directive["Metrics"]:
                raw = document[definition["Name"]]
                for value in raw if isinstance(raw, list) else [raw]:
                    found.append(Metric(directive["Namespace"], definition["Name"], definition["Unit"], float(value),
                                        dims))
    return found


class Capture:
    """stdout/stderr (pytest's ``capfd``) and the root logger at DEBUG, split per invocation."""

    def __init__(self, capfd: Any) -> None:
        self.capfd = capfd
        self.collector = RecordCollector()
        self.written: list[Written] = []

    @contextlib.contextmanager
    def active(self) -> Iterator[Capture]:
        root = logging.getLogger()
        saved = root.level
        # The handlers' own loggers: already made by earlier imports in this
        # process (Powertools keeps the first level), so set here.
        ours = [logging.getLogger(name) for name in ("invoiced-connect", "invoiced_connect")]
        saved_ours = [logger.level for logger in ours]
        root.addHandler(self.collector)
        root.setLevel(logging.DEBUG)
        for logger in ours:
            logger.setLevel(logging.DEBUG)
        try:
            self.take("before")
            yield self
        finally:
            self.take("after")
            root.removeHandler(self.collector)
            root.setLevel(saved)
            for logger, level in zip(ours, saved_ours, strict=True):
                logger.setLevel(level)

    def take(self, label: str) -> Written:
        out, err = self.capfd.readouterr()
        written = Written(label, out, err, self.collector.take())
        self.written.append(written)
        return written

    @property
    def everything(self) -> str:
        return "\n".join(written.text for written in self.written)


# ---------------------------------------------------------------- what must never be written
def _b64_forms(value: bytes) -> set[str]:
    """The parts of ``value``'s base64 that do not depend on where it sat in a longer text."""
    forms = set()
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * shift + value).decode("ascii").rstrip("=")
            start = (shift * 4 + 2) // 3 + 1  # skip the characters mixed with what came before
            middle = encoded[start:len(encoded) - 3]
            if len(middle) >= 16:
                forms.add(middle)
    return forms


#: A leak is this many consecutive characters of a secret (a truncated token
#: is still a leak): random characters, so no 24 of them turn up by chance.
WINDOW = 24


def _spellings(value: str) -> set[str]:
    return {value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1]} | _b64_forms(value.encode())


@dataclass
class Canaries:
    """Secret values, with the spellings a leak could take (raw, URL-encoded, JSON-escaped, base64)."""

    values: dict[str, str] = field(default_factory=dict)

    def add(self, label: str, value: str | None) -> None:
        if value:
            assert len(value) >= 16, f"{label}: too short to be a useful canary"
            self.values.setdefault(value, label)

    def forms(self) -> dict[str, tuple[str, bool]]:
        """Every spelling of every value: its label, and whether any WINDOW characters of it are a leak.

        A JWT's (or a connect link's) first two parts are base64 of JSON, whose
        structure and timestamps recur elsewhere: only their whole spellings
        count; any WINDOW characters of the random signature do.
        """
        forms: dict[str, tuple[str, bool]] = {}
        for value, label in self.values.items():
            parts = value.split(".")
            if len(parts) == 3 and all(parts):
                whole = _spellings(value) | {part for part in parts[:2] if len(part) >= WINDOW}
                random = _spellings(parts[2])
            else:
                whole, random = set(), _spellings(value)
            for spelling in whole:
                forms.setdefault(spelling, (label, False))
            for spelling in random:
                forms.setdefault(spelling, (label, True))
        return forms

    def found_in(self, text: str) -> list[str]:
        """The secrets ``text`` holds a spelling of (or, where random, any WINDOW characters of)."""
        grams: dict[str, str] = {}
        found: dict[str, str] = {}  # label -> where it was first seen
        for spelling, (label, by_window) in self.forms().items():
            if not by_window or len(spelling) < WINDOW:
                at = text.find(spelling)
                if at >= 0:
                    found.setdefault(label, text[max(0, at - 40):at + 40])
                continue
            for start in range(len(spelling) - WINDOW + 1):
                grams.setdefault(spelling[start:start + WINDOW], label)
        for start in range(len(text) - WINDOW + 1):
            label = grams.get(text[start:start + WINDOW])
            if label is not None:
                found.setdefault(label, text[max(0, start - 40):start + 40])
        return [f"{label} in ...{context!r}..." for label, context in sorted(found.items())]


# ---------------------------------------------------------------- the handlers
@dataclass
class Started:
    """A /connect that sent the browser to Invoiced."""

    link: str
    location: str
    cookie: str

    @property
    def state(self) -> str:
        return parse_qs(urlsplit(self.location).query)["state"][0]


class Handlers:
    def __init__(self, stack: Any, capture: Capture | None = None) -> None:
        self.stack = stack
        self.capture = capture
        self.modules: dict[str, Any] = {}
        self._handlers: dict[str, Any] = {}
        for name, logical_id in FUNCTIONS.items():
            spec = stack.functions[logical_id].spec
            module, handler = import_handler(spec.handler_file, spec.handler_name, logical_id)
            self.modules[name], self._handlers[name] = module, handler
        self.last: Written | None = None
        self.last_request_id = ""

    # ------------------------------------------------------------ invoking
    def invoke(self, name: str, event: Any, *, request_id: str | None = None) -> Any:
        """Run ``name``'s handler; ``last_request_id``: API Gateway's request id for an API event, else Lambda's."""
        context = self.stack.functions[FUNCTIONS[name]].context(request_id)
        api_request = event.get("requestContext", {}).get("requestId") if isinstance(event, dict) else None
        self.last_request_id = api_request or context.aws_request_id
        if self.capture:
            self.capture.take("between")
        try:
            return json.loads(json.dumps(self._handlers[name](json.loads(json.dumps(event)), context)))
        finally:
            if self.capture:
                self.last = self.capture.take(f"{name} {context.aws_request_id}")

    def get(self, name: str, path: str, *, query: str | Mapping[str, str] = "",
            cookies: Mapping[str, str] | Sequence[str] = (), headers: Mapping[str, str] = (),
            request_id: str | None = None) -> dict[str, Any]:
        event = api_event("GET", path, query=query, cookies=cookies, headers=headers,
                          request_id=request_id or f"req-{uuid.uuid4().hex[:12]}")
        return self.invoke(name, event)

    # ------------------------------------------------------------ the connect flow
    def connect(self, link: str, **kwargs: Any) -> dict[str, Any]:
        return self.get("connect", "/connect", query={"link": link}, **kwargs)

    def start(self, connection_id: str, **kwargs: Any) -> Started:
        link = parse_qs(urlsplit(self.stack.make_link(connection_id)).query)["link"][0]
        response = self.connect(link, **kwargs)
        assert response["statusCode"] == 302, response
        (cookie,) = [c.split(";")[0].split("=", 1)[1] for c in response["cookies"] if c.startswith(COOKIE_NAME + "=")]
        return Started(link, response["headers"]["Location"], cookie)

    def callback(self, query: str, cookie: str | None, *, extra_cookies: Mapping[str, str] | None = None,
                 **kwargs: Any) -> dict[str, Any]:
        cookies = dict(extra_cookies or {})
        if cookie is not None:
            cookies[COOKIE_NAME] = cookie
        return self.get("callback", "/callback", query=query, cookies=cookies, **kwargs)

    def outcome_page(self, response: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Follow the callback's 303 to the page that shows the outcome."""
        (result,) = [c.split(";")[0] for c in response["cookies"] if c.startswith(RESULT_COOKIE_NAME + "=")]
        name, _, value = result.partition("=")
        return self.get("callback", "/callback", cookies={name: value}, **kwargs)

    # ------------------------------------------------------------ background events
    @staticmethod
    def sqs_record(body: str, message_id: str | None = None) -> dict[str, Any]:
        return {"messageId": message_id or str(uuid.uuid4()), "receiptHandle": uuid.uuid4().hex, "body": body,
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": str(int(time.time() * 1000))},
                "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:refresh", "awsRegion": "us-east-1"}

    @staticmethod
    def scheduled_event(event_id: str, detail: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {"version": "0", "id": event_id, "detail-type": "Scheduled Event", "source": "aws.events",
                "account": "123456789012", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "region": "us-east-1", "resources": ["arn:aws:events:us-east-1:123456789012:rule/refresh"],
                "detail": dict(detail or {})}
