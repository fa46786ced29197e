"""Cold start to the first response of the two API handlers, measured in one run.

    make bench            # or: python -m bench.firstresponse [--trials N] [--explain-trials N] [--json]

A person waits on a cold ConnectFunction or CallbackFunction for more than
the import that bench/coldstart.py times: the first request also loads
boto3, creates the handler's clients and makes its calls. Here, against the
local stack (moto, the local Invoiced), each function as `make build` built
it (bytecode, the layer, the Lambda runtime's paths and variables, the
function's own resolved environment), in fresh interpreters, interleaved:

* **handler**: ``import app``, then one real request through ``app.handler``
  (``GET /connect`` with a fresh signed link; ``GET /callback`` with the
  code and state of a consent just given and the browser's cookie), until
  the response is returned;
* **baseline**: ``import boto3`` and the boto3 clients that request created
  (the same services, with the same botocore Config as
  ``invoiced_connect.cloud.aws``), nothing else;
* **phases** (another fresh process, same kind of request): the handler's
  import, ``import boto3``, the clients, ``import requests`` when the
  request uses it, and the request itself, timed one after the other, with
  the time spent inside AWS calls and inside HTTP calls to Invoiced.

Times are taken inside the process (interpreter start-up, the same for
both, is left out). Goal: each handler's first response at most 1.1x the
baseline, in wall-clock time and in the process's CPU time (which other
load on a shared machine disturbs much less; the wall time also holds the
waits on moto and the local Invoiced). Then (``--explain-trials``, 0 to
skip) where the excess goes: what each piece of the handler's import costs
when imported after ``import boto3`` and the clients, timed in the same
process (so net of what boto3 already loaded), and the modules the handler
loads that the baseline does not (``-X importtime``, self time by top-level
package).

On a shared machine read the ratios, not the milliseconds. The exit status
is 0 whether or not the goal is met: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.coldstart import ROOT, Artifact, find_artifacts, lambda_environment

FUNCTIONS = {"ConnectFunction": "/connect", "CallbackFunction": "/callback"}
GOAL = 1.1
_MARK = "FIRST-RESPONSE-PROBE "
#: The pieces of the handlers' imports whose marginal cost --explain measures.
PIECES = {
    "ConnectFunction": {
        "Powertools resolver (`aws_lambda_powertools.event_handler`)":
            "from aws_lambda_powertools.event_handler import APIGatewayHttpResolver",
        "its `asyncio` (imported by the package's AppSync resolver)": "import asyncio",
        "Powertools `Logger`, `Metrics`": "from aws_lambda_powertools import Logger, Metrics",
        "`invoiced_connect.connect.flow` (the package's part: flow, store, crypto, links, refresh policy, ...)":
            "import invoiced_connect.connect.flow",
        "the whole handler (`import app`)": "import app",
    },
    "CallbackFunction": {
        "the whole handler (`import app`)": "import app",
        "`requests` (the Invoiced client's first HTTP call)": "import requests",
    },
}

# Every probe imports json, sys, time and gc (built in) before its clock starts,
# nothing else, and times the garbage collector's passes.
_GC = """
import json, sys, time, gc as _gc
_gc_seconds, _gc_started = [0.0], [0.0]
def _gc_watch(phase, info):
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        _gc_seconds[0] += time.perf_counter() - _gc_started[0]
_gc.callbacks.append(_gc_watch)
"""
# A request needs a Lambda context: this one has what Powertools reads.
_CONTEXT = _GC + """
class _Context:
    function_name = {name!r}
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:" + {name!r}
    aws_request_id = "00000000-0000-4000-8000-000000000001"
    function_version = "$LATEST"
    log_group_name = "/aws/lambda/" + {name!r}
    log_stream_name = "bench"
    def get_remaining_time_in_millis(self):
        return 10000
with open({event_file!r}) as _f:
    _event = json.load(_f)
"""

_HANDLER = _CONTEXT + """
_before = set(sys.modules)
_start, _cpu_start = time.perf_counter(), time.process_time()
import app
_imported = time.perf_counter()
_mid = set(sys.modules)
_response = app.handler(_event, _Context())
_done, _cpu_done = time.perf_counter(), time.process_time()
_lazy = sorted({{name.split(".")[0] for name in set(sys.modules) - _mid}})
print({mark!r} + json.dumps({{"import": _imported - _start, "request": _done - _imported, "total": _done - _start,
                              "cpu": _cpu_done - _cpu_start, "gc": _gc_seconds[0],
                              "status": _response.get("statusCode"), "lazy_imports": _lazy,
                              "modules": len(set(sys.modules) - _before)}}))
"""

_PHASES = _CONTEXT + """
_start = time.perf_counter()
import app
_t_import = time.perf_counter()
import boto3
_t_boto3 = time.perf_counter()
from invoiced_connect import runtime as _runtime
_services, _calls, _inside, _open = [], [], {{"aws": 0.0, "http": 0.0}}, []
_real_client = _runtime.Runtime.client
def _before_call(model, **_):
    _calls.append(model.service_model.service_name + ":" + model.name)
    _open.append(time.perf_counter())
def _after_call(**_):
    _inside["aws"] += time.perf_counter() - _open.pop()
def _client(self, service):
    made = _real_client(self, service)
    if service not in _services:
        _services.append(service)
        made.meta.events.register("before-call", _before_call)
        made.meta.events.register("after-call", _after_call)
    return made
_runtime.Runtime.client = _client
for _service in {services!r}:
    _runtime.current().client(_service)
_t_clients = time.perf_counter()
if {with_requests!r}:
    import requests
    _real_send = requests.Session.send
    def _send(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return _real_send(self, *args, **kwargs)
        finally:
            _inside["http"] += time.perf_counter() - started
    requests.Session.send = _send
_t_requests = time.perf_counter()
_response = app.handler(_event, _Context())
_done = time.perf_counter()
print({mark!r} + json.dumps({{
    "import": _t_import - _start, "boto3": _t_boto3 - _t_import, "clients": _t_clients - _t_boto3,
    "requests": _t_requests - _t_clients, "request": _done - _t_requests, "total": _done - _start,
    "inside_aws": _inside["aws"], "inside_http": _inside["http"], "services": _services, "calls": _calls,
    "used_requests": "requests" in sys.modules, "status": _response.get("statusCode")}}))
"""

_BASELINE = _GC + """
_before = set(sys.modules)
_start, _cpu_start = time.perf_counter(), time.process_time()
import boto3
_imported = time.perf_counter()
from botocore.config import Config
_session = boto3.session.Session()
for _service in {services!r}:
    _session.client(_service, config=Config(connect_timeout=3, read_timeout=10,
                                            retries={{"mode": "standard", "max_attempts": 3}}))
_clients = time.perf_counter()
_cpu_clients = time.process_time()
{extra}
_done, _cpu_done = time.perf_counter(), time.process_time()
_loaded = sorted({{name.split(".")[0] for name in set(sys.modules) - _before}})
print({mark!r} + json.dumps({{"import": _imported - _start, "clients": _clients - _imported,
                              "extra": _done - _clients, "extra_cpu": _cpu_done - _cpu_clients,
                              "total": _clients - _start, "cpu": _cpu_clients - _cpu_start, "gc": _gc_seconds[0],
                              "loaded": _loaded}}))
"""


def run_probe(source: str, env: dict[str, str], cwd: Path, *, extra: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    done = subprocess.run(  # noqa: S603 (this interpreter, a fixed probe)
        [sys.executable, *extra, "-c", source], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=120, check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(_MARK)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"probe failed ({done.returncode}):\n{done.stderr[-3000:]}\n{done.stdout[-2000:]}")
    return json.loads(lines[-1][len(_MARK):]), done.stderr


class Requests:
    """Fresh, valid first requests for the two handlers, made against the running local stack."""

    def __init__(self, stack: Any, scratch: Path) -> None:
        self.stack = stack
        self.scratch = scratch
        self.number = 0

    def event(self, logical_id: str) -> dict[str, Any]:
        from local.gateway import api_event

        self.number += 1
        link_url = self.stack.make_link(f"first-response-{self.number}")  # the connect URL with ?link=...
        host = self.stack.gateway_url.split("//", 1)[1]
        if logical_id == "ConnectFunction":
            return api_event("GET", "/connect", query=link_url.split("?", 1)[1], domain_name=host)
        import requests

        started = requests.get(link_url, allow_redirects=False, timeout=10)
        if started.status_code != 302:
            raise RuntimeError(f"/connect answered {started.status_code}, not 302")
        cookie = started.headers["Set-Cookie"].split(";", 1)[0]
        back = self.stack.invoiced.consent(started.headers["Location"])
        return api_event("GET", "/callback", query=back.split("?", 1)[1], cookies=[cookie], domain_name=host)

    def file(self, logical_id: str) -> str:
        event = self.event(logical_id)
        path = self.scratch / f"event-{self.number}.json"
        path.write_text(json.dumps(event))
        return str(path)


def function_env(stack: Any, artifact: Artifact, layer: Artifact | None, scratch: Path) -> dict[str, str]:
    """The Lambda runtime's variables and paths, plus the function's own resolved environment."""
    env = lambda_environment(artifact, layer)
    env.update(stack.functions[artifact.name].spec.environment)
    env.update({
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        # Lambda has no ~/.aws files; none on this machine may change what boto3 does.
        "AWS_CONFIG_FILE": str(scratch / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(scratch / "no-aws-credentials"),
    })
    return env


def _median(samples: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(sample[key]) for sample in samples) * 1e3


def measure(stack: Any, build_dir: Path, trials: int, explain_trials: int) -> dict[str, Any]:
    artifacts = {artifact.name: artifact for artifact in find_artifacts(build_dir)}
    missing = [name for name in FUNCTIONS if name not in artifacts]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not in {build_dir}: run make build first")
    layer = next((artifact for artifact in artifacts.values() if artifact.is_layer), None)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="first-response-") as scratch_dir:
        scratch = Path(scratch_dir)
        requests = Requests(stack, scratch)
        envs = {name: function_env(stack, artifacts[name], layer, scratch) for name in FUNCTIONS}
        # The baseline as a plain boto3 program would run: no function code, no layer on the path.
        plain_env = dict(envs["ConnectFunction"])
        plain_env.pop("PYTHONPATH")

        # A first run of each: which clients its request makes, whether it uses requests (and that it works).
        found: dict[str, dict[str, Any]] = {}
        for name in FUNCTIONS:
            found[name], _ = run_probe(_PHASES.format(name=name, event_file=requests.file(name), services=[],
                                                      with_requests=False, mark=_MARK), envs[name], scratch)

        def baseline(name: str, extra: str = "") -> str:
            return _BASELINE.format(services=found[name]["services"], extra=extra, mark=_MARK)

        samples: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for _ in range(trials):
            for name in FUNCTIONS:
                env = envs[name]
                samples[name, "handler"].append(run_probe(
                    _HANDLER.format(name=name, event_file=requests.file(name), mark=_MARK), env, scratch)[0])
                samples[name, "baseline"].append(run_probe(baseline(name), plain_env, scratch)[0])
                samples[name, "phases"].append(run_probe(_PHASES.format(
                    name=name, event_file=requests.file(name), services=found[name]["services"],
                    with_requests=found[name]["used_requests"], mark=_MARK), env, scratch)[0])
        for _ in range(explain_trials):
            for name in FUNCTIONS:
                for label, statement in PIECES[name].items():
                    samples[name, label].append(run_probe(baseline(name, statement), envs[name], scratch)[0])

        for name in FUNCTIONS:
            handler, base, phases = (samples[name, kind] for kind in ("handler", "baseline", "phases"))
            baseline_modules = set(base[-1]["loaded"])
            row: dict[str, Any] = {
                "route": FUNCTIONS[name],
                "statuses": sorted({sample["status"] for sample in handler + phases}),
                "services": found[name]["services"],
                "lazy_imports_beyond_baseline": [module for module in handler[-1]["lazy_imports"]
                                                 if module not in baseline_modules],
                "handler_ms": _median(handler, "total"),
                "handler_import_ms": _median(handler, "import"),
                "handler_request_ms": _median(handler, "request"),
                "handler_cpu_ms": _median(handler, "cpu"),
                "baseline_ms": _median(base, "total"),
                "baseline_import_ms": _median(base, "import"),
                "baseline_clients_ms": _median(base, "clients"),
                "baseline_cpu_ms": _median(base, "cpu"),
                "handler_gc_ms": _median(handler, "gc"),
                "baseline_gc_ms": _median(base, "gc"),
                "ratio": _median(handler, "total") / _median(base, "total"),
                "cpu_ratio": _median(handler, "cpu") / _median(base, "cpu"),
                "fastest_ratio": min(sample["total"] for sample in handler) / min(sample["total"] for sample in base),
                "phases": {key: _median(phases, key) for key in ("import", "boto3", "clients", "requests", "request",
                                                                 "inside_aws", "inside_http", "total")},
                "calls": dict(sorted(_count(phases[-1]["calls"]).items())),
            }
            if explain_trials:
                row["marginal_ms"] = {label: (_median(samples[name, label], "extra"),
                                              _median(samples[name, label], "extra_cpu")) for label in PIECES[name]}
                row["extra_modules"] = extra_modules(name, envs[name], plain_env, scratch, requests, baseline(name))
            results[name] = row
    return results


def _count(items: list[str]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for item in items:
        counts[item] += 1
    return counts


def _importtime(stderr: str) -> dict[str, int]:
    """``-X importtime`` output -> self time (µs) by module."""
    found = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        parts = [part.strip() for part in line[len("import time:"):].split("|")]
        if len(parts) == 3 and parts[0].isdigit():
            found[parts[2]] = int(parts[0])
    return found


def extra_modules(name: str, env: dict[str, str], plain_env: dict[str, str], scratch: Path, requests: Requests,
                  baseline_source: str, runs: int = 3) -> dict[str, Any]:
    """What the first response loads that the baseline does not: count, and self time by top-level package
    (medians of ``runs`` runs of ``-X importtime``; its own overhead inflates them a little)."""
    handler_runs = [_importtime(run_probe(_HANDLER.format(name=name, event_file=requests.file(name), mark=_MARK),
                                          env, scratch, extra=("-X", "importtime"))[1]) for _ in range(runs)]
    base_runs = [_importtime(run_probe(baseline_source, plain_env, scratch, extra=("-X", "importtime"))[1])
                 for _ in range(runs)]
    base_modules = set().union(*base_runs)
    extra = set().union(*handler_runs) - base_modules
    by_package: dict[str, float] = defaultdict(float)
    for module in extra:
        by_package[module.split(".")[0]] += statistics.median(run.get(module, 0) for run in handler_runs) / 1e3
    return {"count": len(extra), "self_ms": sum(by_package.values()),
            "by_package_ms": dict(sorted(by_package.items(), key=lambda item: -item[1]))}


def render(results: dict[str, Any], trials: int, explain_trials: int, seconds: float) -> str:
    lines = [
        f"First response of a cold API handler against the local stack (moto, local Invoiced), "
        f"{datetime.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}: medians of {trials} interleaved fresh processes of each kind, "
        "timed inside the process (wall clock, and the process's CPU time, which other load on the machine "
        f"disturbs less; GC: time in the garbage collector's passes). Goal: at most {GOAL}x the baseline.",
        "",
        "| function (request -> status) | first response: import + one request | baseline: `import boto3` + the "
        "same clients | ratio, wall | ratio, CPU |",
        "|---|---|---|---|---|",
    ]
    for name, row in results.items():
        lines.append(
            f"| {name} (`GET {row['route']}` -> {', '.join(map(str, row['statuses']))}) "
            f"| {row['handler_ms']:.0f} ms (import {row['handler_import_ms']:.0f} + request "
            f"{row['handler_request_ms']:.0f}); CPU {row['handler_cpu_ms']:.0f} ms; GC {row['handler_gc_ms']:.0f} ms "
            f"| {row['baseline_ms']:.0f} ms (import {row['baseline_import_ms']:.0f} + {len(row['services'])} clients "
            f"{row['baseline_clients_ms']:.0f}: {', '.join(row['services'])}); CPU {row['baseline_cpu_ms']:.0f} ms; "
            f"GC {row['baseline_gc_ms']:.0f} ms "
            f"| **{row['ratio']:.2f}x** | **{row['cpu_ratio']:.2f}x** |"
        )
    lines += [
        "",
        "| phases, one after the other (wall) | handler import | `import boto3` | clients | `import requests` "
        "| the request | inside AWS calls | inside Invoiced HTTP | AWS calls in the request |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        phases = row["phases"]
        calls = ", ".join(f"{call.split(':')[1]} {count}" for call, count in row["calls"].items())
        lines.append(
            f"| {name} | {phases['import']:.0f} ms | {phases['boto3']:.0f} ms | {phases['clients']:.0f} ms "
            f"| {phases['requests']:.0f} ms | {phases['request']:.0f} ms | {phases['inside_aws']:.0f} ms "
            f"| {phases['inside_http']:.0f} ms | {sum(row['calls'].values())} ({calls}) |"
        )
    lines.append("")
    for name, row in results.items():
        verdict = "met" if max(row["ratio"], row["cpu_ratio"]) <= GOAL else "MISSED"
        lazy = ", ".join(row["lazy_imports_beyond_baseline"]) or "nothing"
        lines.append(f"- goal {verdict} for {name}: {row['ratio']:.2f}x wall, {row['cpu_ratio']:.2f}x CPU "
                     f"(goal {GOAL}x); imported during the request besides what the baseline loads: {lazy}")
    lines.append("- ratio of the fastest runs (a check on the noise): "
                 + ", ".join(f"{name} {row['fastest_ratio']:.2f}x" for name, row in results.items()))
    for name, row in results.items():
        if "marginal_ms" not in row:
            continue
        reference = row["baseline_ms"]
        lines += ["", f"{name}: what each piece of the handler adds when imported after `import boto3` and its "
                  f"clients, in the same process, with the function's paths (medians of {explain_trials}; the "
                  "pieces overlap, so they do not add up)", "",
                  "| piece | adds (wall) | adds (CPU) | of the baseline's median |", "|---|---|---|---|"]
        for label, (wall, cpu) in row["marginal_ms"].items():
            lines.append(f"| {label} | {wall:.0f} ms | {cpu:.0f} ms | {wall / reference:.2f}x |")
        extra = row["extra_modules"]
        top = ", ".join(f"{package} {ms:.0f}" for package, ms in list(extra["by_package_ms"].items())[:10])
        lines += ["", f"Modules the first response loads that the baseline does not: {extra['count']}, "
                  f"{extra['self_ms']:.0f} ms of self time (`-X importtime`, ms by package): {top}"]
    lines.append(f"\n(this part of make bench: {seconds:.0f} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.firstresponse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", type=Path, default=ROOT / ".aws-sam" / "build")
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--explain-trials", type=int, default=7,
                        help="trials of the marginal costs (0: skip them and the -X importtime comparison)")
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON")
    args = parser.parse_args(argv)
    if not args.build_dir.is_dir():
        parser.error(f"{args.build_dir} does not exist: run make build first")
    from local.stack import LocalStack

    started = time.perf_counter()
    logging.disable(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()), LocalStack(auto_schedule=False) as stack:
        results = measure(stack, args.build_dir, max(1, args.trials), max(0, args.explain_trials))
    seconds = time.perf_counter() - started
    print(json.dumps(results, indent=2) if args.json
          else render(results, max(1, args.trials), max(0, args.explain_trials), seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
