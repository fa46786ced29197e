"""EventBridge schedule rules (SAM ``Type: Schedule`` events), played on loopback.

moto keeps rules but never fires them. Here each ``Type: Schedule`` event of
a function becomes a rule in moto (so it is listed, and has a real ARN) and,
for ``rate(...)`` expressions, a thread that invokes the function with
EventBridge's Scheduled Event on that rate (or every ``every`` seconds, to
demonstrate faster than the template says). ``cron(...)`` expressions fire
only on demand (:meth:`ScheduleFirer.fire`). An event with ``Input`` delivers
that constant JSON instead of the Scheduled Event, as EventBridge does; one
that is disabled (``Enabled: false`` or ``State: DISABLED``) fires only on
demand.

EventBridge invokes its targets asynchronously: a failure is logged (the
exception's type and place, never its message) and the schedule goes on. A
tick that comes while the previous invocation still runs is skipped.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from local.lambda_api import log_failure
from local.lambda_runtime import Activity, LocalFunction
from local.template import ACCOUNT_ID, PARTITION, REGION, Resolver, TemplateError, physical_name, resources_of_type

logger = logging.getLogger(__name__)

_RATE = re.compile(r"rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


def parse_schedule(expression: str) -> float | None:
    """Seconds between runs of a ``rate(...)`` expression; ``None`` for ``cron(...)``.

    As EventBridge: the value is a positive whole number, the unit singular
    for 1 and plural otherwise. Anything else raises ``ValueError``.
    """
    expression = expression.strip()
    if re.fullmatch(r"cron\(.+\)", expression):
        return None
    match = _RATE.fullmatch(expression)
    if match is None:
        raise ValueError(f"{expression!r} is neither rate(N minute[s]|hour[s]|day[s]) nor cron(...)")
    value, unit = int(match.group(1)), match.group(2)
    if value < 1:
        raise ValueError(f"{expression!r}: the value must be at least 1")
    if (value == 1) != (not unit.endswith("s")):
        raise ValueError(f"{expression!r}: EventBridge wants the unit singular for 1 and plural otherwise")
    return float(value * _UNIT_SECONDS[unit.rstrip("s")])


def scheduled_event(rule_arn: str, *, region: str = REGION, account_id: str = ACCOUNT_ID,
                    now: datetime | None = None, event_id: str | None = None) -> dict[str, Any]:
    """EventBridge's Scheduled Event, as a schedule rule delivers it to Lambda."""
    now = now or datetime.now(UTC)
    return {
        "version": "0",
        "id": event_id or str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account_id,
        "time": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [rule_arn],
        "detail": {},
    }


@dataclass(frozen=True)
class ScheduleSpec:
    """One ``Type: Schedule`` event of a function, resolved."""

    function: str  # logical id
    event: str  # the event's name under Events
    expression: str
    rule_name: str
    enabled: bool = True
    input: str | None = None  # constant JSON delivered instead of the Scheduled Event
    description: str = ""

    @property
    def interval(self) -> float | None:
        """Seconds between runs by the template; ``None`` for cron."""
        return parse_schedule(self.expression)


def schedule_specs(template: Mapping[str, Any], resolver: Resolver, *, name_suffix: str = "") -> list[ScheduleSpec]:
    """Every ``Type: Schedule`` event of the template's functions, in template order.

    Rules are named as SAM names them (``<stack>-<Function><Event>``, plus
    ``name_suffix``) unless the event gives a ``Name``.
    """
    specs = []
    for logical_id, resource in resources_of_type(template, "AWS::Serverless::Function").items():
        for event_name, event in ((resource.get("Properties") or {}).get("Events") or {}).items():
            if event.get("Type") == "ScheduleV2":
                logger.warning("%s.%s: ScheduleV2 (EventBridge Scheduler) is not played locally", logical_id,
                               event_name)
            if event.get("Type") != "Schedule":
                continue
            props = resolver.resolve(event.get("Properties") or {})
            expression = props.get("Schedule")
            if not isinstance(expression, str):
                raise TemplateError(f"{logical_id}.{event_name}: Schedule must be a string, got {expression!r}")
            try:
                parse_schedule(expression)
            except ValueError as exc:
                raise TemplateError(f"{logical_id}.{event_name}: {exc}") from None
            state = str(props.get("State", "ENABLED")).upper()
            enabled = str(props.get("Enabled", True)).lower() != "false" and state == "ENABLED"
            name = props.get("Name") or (physical_name(resolver.stack_name, logical_id + event_name) + name_suffix)
            payload = props.get("Input")
            if payload is not None and not isinstance(payload, str):
                payload = json.dumps(payload)
            specs.append(ScheduleSpec(logical_id, event_name, expression, str(name)[-64:], enabled, payload,
                                      str(props.get("Description", ""))))
    return specs


class ScheduleFirer:
    """Fires the schedules: on their rate in threads once :meth:`start`\\ed, or now with :meth:`fire`.

    ``every`` (seconds) replaces every rate-based schedule's interval (for
    demonstrations). ``events_client``: where to create the rules (a boto3
    EventBridge client); without it the rule ARNs are made up the same way.
    ``fires`` counts invocations per function, ``failures`` those that raised.
    """

    def __init__(
        self,
        specs: Sequence[ScheduleSpec],
        functions: Mapping[str, LocalFunction],
        *,
        region: str = REGION,
        account_id: str = ACCOUNT_ID,
        events_client: Any = None,
        every: float | None = None,
        activity: Activity | None = None,
    ) -> None:
        if every is not None and every <= 0:
            raise ValueError("every must be a positive number of seconds")
        missing = {spec.function for spec in specs} - set(functions)
        if missing:
            raise ValueError(f"schedules name functions that were not given: {', '.join(sorted(missing))}")
        self.specs = list(specs)
        self.functions = functions
        self.region, self.account_id = region, account_id
        self.events_client = events_client
        self.every = every
        self.activity = activity or Activity()
        self.rule_arns: dict[ScheduleSpec, str] = {}
        self.fires: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._created = False
        self.auto = False

    # ---------------------------------------------------------------- lifecycle
    def create_rules(self) -> ScheduleFirer:
        """Create each schedule's rule in EventBridge (moto), for its ARN; no targets."""
        if self._created:
            return self
        from botocore.exceptions import ClientError

        for spec in self.specs:
            arn = f"arn:{PARTITION}:events:{self.region}:{self.account_id}:rule/{spec.rule_name}"
            if self.events_client is not None:
                try:
                    arn = self.events_client.put_rule(
                        Name=spec.rule_name, ScheduleExpression=spec.expression,
                        State="ENABLED" if spec.enabled else "DISABLED", Description=spec.description,
                    )["RuleArn"]
                except ClientError as exc:
                    logger.debug("rule %s not created in moto: %s", spec.rule_name, exc)
            self.rule_arns[spec] = arn
        self._created = True
        return self

    def start(self, auto: bool = True) -> ScheduleFirer:
        """Create the rules; with ``auto``, fire each enabled rate schedule on its interval."""
        self.create_rules()
        self.auto = auto
        if not auto:
            return self
        self._stop.clear()
        for spec in self.specs:
            interval = self.interval_of(spec)
            if interval is None:
                why = "disabled" if not spec.enabled else f"{spec.expression} is not played"
                logger.info("%s: %s; it fires only on demand", spec.function, why)
                continue
            thread = threading.Thread(target=self._run, args=(spec, interval), daemon=True,
                                      name=f"schedule-{spec.function}.{spec.event}")
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop firing; wait up to ``timeout`` for invocations in progress."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):
            logger.warning("stopped with a scheduled invocation still running")
        self._threads = []

    def interval_of(self, spec: ScheduleSpec) -> float | None:
        """Seconds between automatic runs of ``spec``; ``None`` if it fires only on demand."""
        if not spec.enabled or spec.interval is None:
            return None
        return self.every if self.every is not None else spec.interval

    # ---------------------------------------------------------------- firing
    def event_for(self, spec: ScheduleSpec) -> Any:
        """What the rule delivers: its ``Input``, or a new Scheduled Event."""
        self.create_rules()
        if spec.input is not None:
            return json.loads(spec.input)
        return scheduled_event(self.rule_arns[spec], region=self.region, account_id=self.account_id)

    def fire(self, logical_id: str | None = None) -> dict[str, Any]:
        """Invoke the scheduled function(s) now, synchronously; their results by function logical id.

        ``logical_id``: one function (or ``Function.Event`` when a function
        has several schedules); ``None``: every schedule. A function error
        propagates. A function with several schedules is keyed
        ``Function.Event``.
        """
        chosen = [spec for spec in self.specs
                  if logical_id is None or logical_id in (spec.function, f"{spec.function}.{spec.event}")]
        if logical_id is not None and not chosen:
            raise KeyError(f"no Schedule event on {logical_id}")
        per_function: dict[str, int] = {}
        for spec in self.specs:
            per_function[spec.function] = per_function.get(spec.function, 0) + 1
        results = {}
        for spec in chosen:
            key = spec.function if per_function[spec.function] == 1 else f"{spec.function}.{spec.event}"
            results[key] = self._invoke(spec, raise_errors=True)
        return results

    def _invoke(self, spec: ScheduleSpec, *, raise_errors: bool) -> Any:
        function = self.functions[spec.function]
        request_id = str(uuid.uuid4())
        self.activity.begin()
        try:
            with self._lock:
                self.fires[spec.function] = self.fires.get(spec.function, 0) + 1
            return function.invoke(self.event_for(spec), request_id=request_id)
        except Exception as exc:
            with self._lock:
                self.failures[spec.function] = self.failures.get(spec.function, 0) + 1
            if raise_errors:
                raise
            log_failure(function, exc, request_id)
            return None
        finally:
            self.activity.end()

    def _run(self, spec: ScheduleSpec, interval: float) -> None:
        next_at = time.monotonic() + interval
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            self._invoke(spec, raise_errors=False)
            next_at += interval
            now = time.monotonic()
            if next_at <= now:  # ran longer than the interval: skip the ticks missed
                next_at += ((now - next_at) // interval + 1) * interval

    def describe(self) -> list[str]:
        """One line per schedule, for the banner."""
        lines = []
        for spec in self.specs:
            interval = self.interval_of(spec)
            if interval is None:
                when = "disabled: on demand only" if not spec.enabled else "on demand only (cron is not played)"
            elif not self.auto:
                when = "on demand only (not auto-firing)"
            elif self.every is not None:
                when = f"every {_seconds(interval)} (--schedule-every; the template says {spec.expression})"
            else:
                when = f"every {_seconds(interval)}"
            lines.append(f"{spec.function}: {spec.expression}, {when}")
        return lines


def _seconds(value: float) -> str:
    return f"{value:g} s"
