"""Cold start and size of what `make build` produced, measured in one run.

    make bench            # or: python -m bench.coldstart [--build-dir DIR] [--trials N]

For every function in the build, in fresh interpreters with the Lambda
runtime's environment (the function's folder, then the layer, then boto3 as
the runtime provides it, and the variables that make Powertools behave as in
Lambda):

* the time to import the handler module, with the shipped bytecode and with
  none (what happens when no Python 3.13 was found at build time: every
  module compiled at each cold start), each as a ratio to ``import boto3``
  alone, measured in the same run;
* how many modules the import loads, and whether it loads requests, boto3
  or the X-Ray SDK;
* the unzipped size of each function and of the layer.

Trials are interleaved and the median is kept; on a shared machine read the
ratios, not the milliseconds. Targets: each API handler's import at most
1.3x ``import boto3``, the layer under 10 MB unzipped. Exits 1 when a target
is missed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Functions behind API Gateway: a person waits for their cold start.
API_FUNCTIONS = ("ConnectFunction", "CallbackFunction")
API_IMPORT_TARGET = 1.3
LAYER_LIMIT_BYTES = 10_000_000
RUNTIME = (3, 13)

_PROBE = """
import json, sys, time
before = set(sys.modules)
start = time.perf_counter()
import {module}
seconds = time.perf_counter() - start
loaded = set(sys.modules) - before
print(json.dumps({{
    "seconds": seconds,
    "modules": len(loaded),
    "requests": "requests" in loaded,
    "boto3": "boto3" in loaded,
    "xray": "aws_xray_sdk" in loaded,
}}))
"""


@dataclass
class Artifact:
    name: str
    path: Path
    is_layer: bool

    @property
    def code_dir(self) -> Path:
        return self.path / "python" if self.is_layer else self.path


@dataclass
class Samples:
    seconds: list[float] = field(default_factory=list)
    last: dict[str, object] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def find_artifacts(build_dir: Path) -> list[Artifact]:
    found = []
    for path in sorted(p for p in build_dir.iterdir() if p.is_dir()):
        if (path / "python").is_dir():
            found.append(Artifact(path.name, path, is_layer=True))
        elif (path / "app.py").is_file():
            found.append(Artifact(path.name, path, is_layer=False))
    return found


def unzipped_size(path: Path, *, bytecode: bool = True) -> int:
    """Bytes of every file under ``path`` (what Lambda counts once unzipped)."""
    return sum(
        f.stat().st_size
        for f in path.rglob("*")
        if f.is_file() and (bytecode or "__pycache__" not in f.parts)
    )


def has_bytecode(path: Path) -> bool:
    tag = f"cpython-{RUNTIME[0]}{RUNTIME[1]}"
    return any(path.rglob(f"*.{tag}.pyc"))


def without_bytecode(artifacts: list[Artifact], into: Path) -> list[Artifact]:
    """Copies of the artifacts with every .pyc removed."""
    copies = []
    for artifact in artifacts:
        target = into / artifact.name
        shutil.copytree(artifact.path, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        copies.append(Artifact(artifact.name, target, artifact.is_layer))
    return copies


def lambda_environment(function: Artifact, layer: Artifact | None) -> dict[str, str]:
    """What the runtime sets that changes what a handler does at import."""
    path = [str(function.code_dir)] + ([str(layer.code_dir)] if layer else [])
    env = {
        key: value for key, value in os.environ.items()
        if key in ("PATH", "HOME", "LANG", "SYSTEMROOT")
    }
    env.update({
        "PYTHONPATH": os.pathsep.join(path),
        "PYTHONDONTWRITEBYTECODE": "1",  # /var/task and /opt are read-only in Lambda
        "LAMBDA_TASK_ROOT": str(function.code_dir),
        "AWS_LAMBDA_FUNCTION_NAME": f"bench-{function.name}",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": "invoiced-connect",
        "POWERTOOLS_METRICS_NAMESPACE": "InvoicedConnect",
        "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "false",
    })
    return env


def probe(module: str, env: dict[str, str], cwd: Path) -> dict[str, object]:
    done = subprocess.run(  # noqa: S603 (this interpreter, a fixed probe)
        [sys.executable, "-c", _PROBE.format(module=module)],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"importing {module} failed in {cwd}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(build_dir: Path, trials: int) -> dict[str, object]:
    artifacts = find_artifacts(build_dir)
    layers = [a for a in artifacts if a.is_layer]
    functions = [a for a in artifacts if not a.is_layer]
    if not functions:
        raise SystemExit(f"no built functions in {build_dir}: run make build first")
    layer = layers[0] if layers else None
    runtime_python = sys.version_info[:2] == RUNTIME
    shipped_bytecode = all(has_bytecode(a.code_dir) for a in artifacts)

    with tempfile.TemporaryDirectory(prefix="coldstart-") as scratch:
        bare = without_bytecode(artifacts, Path(scratch))
        bare_layer = next((a for a in bare if a.is_layer), None)
        bare_functions = {a.name: a for a in bare if not a.is_layer}
        neutral = Path(scratch)

        baseline = Samples()
        with_pyc = {f.name: Samples() for f in functions}
        no_pyc = {f.name: Samples() for f in functions}
        base_env = lambda_environment(functions[0], None)
        base_env.pop("PYTHONPATH")
        for _ in range(trials):
            result = probe("boto3", base_env, neutral)
            baseline.seconds.append(float(result["seconds"]))
            for function in functions:
                if shipped_bytecode and runtime_python:
                    result = probe("app", lambda_environment(function, layer), neutral)
                    with_pyc[function.name].seconds.append(float(result["seconds"]))
                    with_pyc[function.name].last = result
                bare_function = bare_functions[function.name]
                result = probe("app", lambda_environment(bare_function, bare_layer), neutral)
                no_pyc[function.name].seconds.append(float(result["seconds"]))
                no_pyc[function.name].last = result

    rows = []
    for function in functions:
        plain, compiled = no_pyc[function.name], with_pyc[function.name]
        facts = compiled.last or plain.last
        rows.append({
            "function": function.name,
            "api": function.name in API_FUNCTIONS,
            "no_bytecode_ms": plain.median * 1000,
            "no_bytecode_ratio": plain.median / baseline.median,
            "bytecode_ms": compiled.median * 1000 if compiled.seconds else None,
            "bytecode_ratio": compiled.median / baseline.median if compiled.seconds else None,
            "modules": facts["modules"],
            "requests": facts["requests"],
            "boto3": facts["boto3"],
            "xray": facts["xray"],
            "size": unzipped_size(function.path),
        })
    layer_row = None
    if layer:
        layer_row = {
            "name": layer.name,
            "size": unzipped_size(layer.path),
            "size_sources_only": unzipped_size(layer.path, bytecode=False),
        }
    return {
        "boto3_ms": baseline.median * 1000,
        "trials": trials,
        "runtime_python": runtime_python,
        "shipped_bytecode": shipped_bytecode,
        "functions": rows,
        "layer": layer_row,
    }


def targets_met(results: dict[str, object]) -> list[str]:
    """The targets missed (empty when all are met)."""
    missed = []
    for row in results["functions"]:  # type: ignore[union-attr]
        if not row["api"]:
            continue
        ratio = row["bytecode_ratio"] if row["bytecode_ratio"] is not None else row["no_bytecode_ratio"]
        if ratio > API_IMPORT_TARGET:
            missed.append(f"{row['function']} imports in {ratio:.2f}x boto3 (target {API_IMPORT_TARGET}x)")
        if row["function"] == "ConnectFunction" and row["requests"]:
            missed.append("ConnectFunction imports requests")
    layer = results["layer"]
    if layer and layer["size"] >= LAYER_LIMIT_BYTES:  # type: ignore[index]
        missed.append(f"layer is {layer['size'] / 1e6:.2f} MB unzipped (limit 10 MB)")  # type: ignore[index]
    return missed


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


def _ratio(ms: float | None, ratio: float | None) -> str:
    return "n/a" if ms is None or ratio is None else f"{ms:.0f} ms ({ratio:.2f}x)"


def render(results: dict[str, object]) -> str:
    yes = {True: "yes", False: "no"}
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; median of {results['trials']} interleaved cold imports; "
        f"`import boto3` alone: {results['boto3_ms']:.0f} ms (1.00x).",
        "",
        "| Function | API | Import, bytecode | Import, no bytecode | Modules | requests | boto3 | X-Ray SDK "
        "| Unzipped |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["functions"]:  # type: ignore[union-attr]
        lines.append(
            f"| {row['function']} | {yes[row['api']]} | {_ratio(row['bytecode_ms'], row['bytecode_ratio'])} "
            f"| {_ratio(row['no_bytecode_ms'], row['no_bytecode_ratio'])} | {row['modules']} "
            f"| {yes[row['requests']]} | {yes[row['boto3']]} | {yes[row['xray']]} | {row['size'] / 1e3:.1f} kB |"
        )
    layer = results["layer"]
    if layer:
        lines.append(
            f"| {layer['name']} (layer) | | | | | | | | {_mb(layer['size'])} "  # type: ignore[index]
            f"({_mb(layer['size_sources_only'])} without bytecode) |"  # type: ignore[index]
        )
    if not results["shipped_bytecode"]:
        lines += ["", "The build has no Python 3.13 bytecode (no python3.13 was found at build time)."]
    elif not results["runtime_python"]:
        lines += ["", "This interpreter is not Python 3.13, so the shipped bytecode could not be timed."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.coldstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", type=Path, default=ROOT / ".aws-sam" / "build")
    parser.add_argument("--trials", type=int, default=9)
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON")
    args = parser.parse_args(argv)
    if not args.build_dir.is_dir():
        parser.error(f"{args.build_dir} does not exist: run make build first")
    results = measure(args.build_dir, max(1, args.trials))
    print(json.dumps(results, indent=2) if args.json else render(results))
    missed = targets_met(results)
    for line in missed:
        print(f"target missed: {line}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
