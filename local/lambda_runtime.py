"""The local Lambda runtime: a template's functions, run in-process.

A function is loaded from its ``AWS::Serverless::Function`` definition in
template.yaml (handler file and name, memory, timeout: see
:func:`local.template.function_spec`) and invoked with an event and a
:class:`LambdaContext`, the event and the result going through JSON both
ways as in Lambda.

Lambda runs one request at a time per execution environment, and handler
modules keep per-request state at module level (Powertools' resolver holds
the current event on ``app``). So each function (:class:`LocalFunction`) has
a pool of environments, each a separately imported copy of its handler
module: an invocation takes an idle one or imports a new one (a cold start),
and concurrent invocations run concurrently, never sharing a module. What
the copies do share is the process: its environment variables and the
package's runtime (``invoiced_connect.runtime``: settings, boto3 clients,
secrets) behave like one warm environment.

Everything that invokes functions locally uses it: the API Gateway
(:mod:`local.gateway`), the Lambda Invoke API (:mod:`local.lambda_api`), the
SQS event sources (:mod:`local.queues`) and the schedules
(:mod:`local.schedule`), which share an :class:`Activity` to tell when
background invocations are done, all put together by :mod:`local.stack`.
Tests call handlers directly through :func:`load_handler` (from the
template) or :func:`import_handler` (from a file).
"""

from __future__ import annotations

import importlib.util
import io
import itertools
import json
import logging
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from local.template import FunctionSpec, Resolver, function_spec, load_template, resources_of_type

logger = logging.getLogger(__name__)


@dataclass
class LambdaContext:
    """The parts of Lambda's context object that handlers and Powertools read."""

    function_name: str
    memory_limit_in_mb: int
    invoked_function_arn: str
    aws_request_id: str
    timeout_s: float = 3.0
    function_version: str = "$LATEST"
    started: float = field(default_factory=time.monotonic)

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return f"{time.strftime('%Y/%m/%d')}/[$LATEST]local"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.started + self.timeout_s - time.monotonic()) * 1000))


_module_counter = itertools.count(1)
_import_lock = threading.Lock()


class _CurrentStream(io.TextIOBase):
    """Writes to whatever ``sys.<name>`` is at the time of writing.

    Handler modules keep the stream they saw at import (Powertools' Logger
    holds ``sys.stdout``). In Lambda stdout never changes; in a local
    process it does (pytest captures per test) while environments stay warm,
    so each import sees this stand-in and logs go where stdout is now.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name
        self.fallback: Any = getattr(sys, name)

    def _target(self) -> Any:
        current = getattr(sys, self._name)
        return self.fallback if current is self else current

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self._target().isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._target(), "encoding", "utf-8")


_STDOUT = _CurrentStream("stdout")
_STDERR = _CurrentStream("stderr")


def import_handler(handler_file: Path, handler_name: str, label: str) -> tuple[ModuleType, Callable[..., Any]]:
    """Import a fresh, private copy of a handler module (one execution environment)."""
    if not handler_file.is_file():
        raise FileNotFoundError(f"{label}: handler file {handler_file} does not exist")
    safe_label = re.sub(r"\W", "_", label)
    module_name = f"_local_lambda_{safe_label}_{next(_module_counter)}"
    spec = importlib.util.spec_from_file_location(module_name, handler_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and typing look modules up here
    with _import_lock:  # sys.stdout is process-wide: one import at a time swaps it
        _STDOUT.fallback, _STDERR.fallback = saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _STDOUT, _STDERR
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
        finally:
            sys.stdout, sys.stderr = saved
    handler = getattr(module, handler_name, None)
    if not callable(handler):
        raise AttributeError(f"{label}: {handler_file} has no function {handler_name}")
    return module, handler


class LocalFunction:
    """One function and its pool of execution environments."""

    def __init__(self, spec: FunctionSpec, *, function_name: str, arn: str) -> None:
        self.spec = spec
        self.function_name = function_name
        self.arn = arn
        self._idle: list[Callable[..., Any]] = []
        self._lock = threading.Lock()
        self.cold_starts = 0

    def context(self, request_id: str | None = None) -> LambdaContext:
        return LambdaContext(
            function_name=self.function_name,
            memory_limit_in_mb=self.spec.memory_mb,
            invoked_function_arn=self.arn,
            aws_request_id=request_id or str(uuid.uuid4()),
            timeout_s=self.spec.timeout_s,
        )

    def invoke(self, event: Mapping[str, Any], *, request_id: str | None = None) -> Any:
        """Run the handler in an idle environment (or a new one); return its JSON result.

        ``request_id`` becomes the context's ``aws_request_id`` (default: a new one).
        """
        with self._lock:
            handler = self._idle.pop() if self._idle else None
            if handler is None:
                self.cold_starts += 1
        if handler is None:
            _, handler = import_handler(self.spec.handler_file, self.spec.handler_name, self.spec.logical_id)
        try:
            context = self.context(request_id)
            # Through JSON both ways, as Lambda does: no shared objects, and a
            # result Lambda could not serialise fails here as it would there.
            result = json.loads(json.dumps(handler(json.loads(json.dumps(event)), context)))
            elapsed = time.monotonic() - context.started
            if elapsed > self.spec.timeout_s:
                logger.warning("%s ran %.1fs, longer than its %ss timeout", self.spec.logical_id, elapsed,
                               self.spec.timeout_s)
            return result
        finally:
            with self._lock:
                self._idle.append(handler)


class Activity:
    """Invocations in flight, shared by everything that invokes functions in the background.

    ``started`` only grows, so a caller can tell "nothing ran in between"
    from "something started and finished in between" (see
    :meth:`local.queues.QueuePollers.wait_drained`).
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self.in_flight = 0
        self.started = 0

    def begin(self) -> None:
        with self._condition:
            self.in_flight += 1
            self.started += 1

    def end(self) -> None:
        with self._condition:
            self.in_flight -= 1
            self._condition.notify_all()

    def snapshot(self) -> tuple[int, int]:
        """``(in_flight, started)`` at one instant."""
        with self._condition:
            return self.in_flight, self.started

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is in flight; ``False`` if ``timeout`` passed first."""
        with self._condition:
            return self._condition.wait_for(lambda: self.in_flight == 0, timeout)


def error_location(exc: BaseException) -> str:
    """Where ``exc`` was raised (``file:line in function``): loggable, unlike its message."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown location"
    frame = frames[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"


def load_handler(template_path: str | Path, logical_id: str) -> Callable[..., Any]:
    """A fresh environment of ``logical_id``'s handler: ``handler(event, context=None)``.

    For tests that call a handler directly; the process environment must
    already hold what the function needs. ``context`` defaults to a
    :class:`LambdaContext` for the function.
    """
    template_path = Path(template_path)
    template = load_template(template_path)
    resolver = Resolver(template, unchecked_patterns=set(template.get("Parameters") or {}))
    spec = function_spec(template, logical_id, template_path.parent, resolver)
    physical = resolver.resource(logical_id)
    function = LocalFunction(spec, function_name=physical.ref, arn=physical.attributes["Arn"])
    _, handler = import_handler(spec.handler_file, spec.handler_name, logical_id)

    def invoke(event: Mapping[str, Any], context: Any = None) -> Any:
        return handler(event, context if context is not None else function.context())

    return invoke


# ---------------------------------------------------------------- from a template
def local_functions(template: Mapping[str, Any], base_dir: Path, resolver: Resolver) -> dict[str, LocalFunction]:
    """Every ``AWS::Serverless::Function`` of the template, ready to invoke."""
    functions = {}
    for logical_id in resources_of_type(template, "AWS::Serverless::Function"):
        physical = resolver.resource(logical_id)
        functions[logical_id] = LocalFunction(
            function_spec(template, logical_id, base_dir, resolver),
            function_name=physical.ref,
            arn=physical.attributes["Arn"],
        )
    return functions
