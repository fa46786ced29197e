"""What `make build` ships: bytecode for the python3.13 runtime, a small
layer, and handlers that import from the artifacts alone, cheaply.

Builds once with the real SAM CLI (no Docker, no python3.13 on PATH, as the
template tests do), then runs ``scripts/compile-bytecode`` as ``make build``
does. Each handler is then imported in a fresh interpreter with the Lambda
runtime's paths and variables (see ``bench.coldstart``), so a module the
layer lacks, or a heavy import creeping into an API handler, fails here.
"""

from __future__ import annotations

import marshal
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import coldstart
from tests.support.template import sam_cli

ROOT = Path(__file__).resolve().parents[2]
COMPILE = ROOT / "scripts" / "compile-bytecode"
FIND_PYTHON = ROOT / "scripts" / "find-python"
TAG = "cpython-313"

pytestmark = pytest.mark.slow


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)


def runtime_python() -> str | None:
    found = run([str(FIND_PYTHON), "--runtime"], timeout=30)
    return found.stdout.strip() if found.returncode == 0 else None


def no_python313_env(tmp_path: Path) -> dict[str, str]:
    """PATH without any python3.13, and a HOME with no pyenv in it."""
    kept = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "python3.13").exists()]
    kept = [d for d in kept if not (Path(d) / "pyenv").exists()]
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {**os.environ, "PATH": os.pathsep.join(kept), "HOME": str(home), "PYENV_ROOT": str(home / "none")}


@pytest.fixture(scope="module")
def sources_only(tmp_path_factory) -> Path:
    """`sam build` output, before bytecode."""
    build_dir = tmp_path_factory.mktemp("sam") / "build"
    env = no_python313_env(tmp_path_factory.mktemp("env"))
    env.update(SAM_CLI_TELEMETRY="0", PYTHON=sys.executable)
    result = run(
        [str(sam_cli()), "build", "--template", str(ROOT / "template.yaml"), "--build-dir", str(build_dir),
         "--no-cached", "--no-use-container"],
        timeout=110, cwd=ROOT, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return build_dir


@pytest.fixture(scope="module")
def compiled(sources_only, tmp_path_factory) -> Path:
    """The same build after `scripts/compile-bytecode`, as `make build` leaves it."""
    if runtime_python() is None:
        if os.environ.get("CI"):
            pytest.fail("no Python 3.13 on the CI machine: the bytecode cannot be checked")
        pytest.skip("no Python 3.13 on this machine")
    build_dir = tmp_path_factory.mktemp("compiled") / "build"
    shutil.copytree(sources_only, build_dir)
    result = run([str(COMPILE), str(build_dir)], timeout=180, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compiled for Python 3.13" in result.stdout
    return build_dir


def python_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.py") if "__pycache__" not in p.parts]


def cached_file(source: Path) -> Path:
    return source.parent / "__pycache__" / f"{source.stem}.{TAG}.pyc"


def test_every_module_of_every_artifact_has_runtime_bytecode(compiled):
    artifacts = coldstart.find_artifacts(compiled)
    assert {a.name for a in artifacts if not a.is_layer} >= {"ConnectFunction", "CallbackFunction"}
    missing = [
        str(p.relative_to(compiled)) for a in artifacts for p in python_files(a.code_dir)
        if not cached_file(p).is_file()
    ]
    assert missing == []


def test_bytecode_is_never_checked_against_the_sources_and_names_the_lambda_paths(compiled):
    samples = {
        compiled / "ConnectFunction" / "app.py": "/var/task/app.py",
        compiled / "InvoicedConnectLayer" / "python" / "invoiced_connect" / "connect" / "flow.py":
            "/opt/python/invoiced_connect/connect/flow.py",
    }
    for source, lambda_path in samples.items():
        data = cached_file(source).read_bytes()
        # PEP 552 header: magic, flags (bit 0 hash-based, bit 1 check source), hash, code.
        assert int.from_bytes(data[4:8], "little") == 0b01, source
        assert marshal.loads(data[16:]).co_filename == lambda_path  # noqa: S302 (our own build output)


def test_without_python313_the_build_ships_sources_and_says_why(sources_only, tmp_path):
    build_dir = tmp_path / "build"
    shutil.copytree(sources_only, build_dir)
    result = run([str(COMPILE), str(build_dir)], timeout=60, cwd=ROOT, env=no_python313_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "no Python 3.13" in result.stderr and "shipping sources only" in result.stderr
    assert not list(build_dir.rglob("*.pyc"))


def test_compiling_a_missing_build_fails_clearly(tmp_path):
    result = run([str(COMPILE), str(tmp_path / "nothing")], timeout=30, cwd=ROOT)
    assert result.returncode != 0
    assert "run sam build first" in result.stderr


def test_the_layer_stays_under_10_mb_with_bytecode(compiled):
    layer = compiled / "InvoicedConnectLayer"
    size = coldstart.unzipped_size(layer)
    print(f"\nlayer unzipped with bytecode: {size / 1e6:.2f} MB")
    assert size < coldstart.LAYER_LIMIT_BYTES
    powertools = layer / "python" / "aws_lambda_powertools"
    assert (powertools / "tracing").is_dir() and (powertools / "event_handler" / "api_gateway.py").is_file()
    assert not (powertools / "utilities" / "parser").exists()
    assert not (powertools / "event_handler" / "openapi" / "swagger_ui").exists()


def test_the_layer_ships_the_package_and_no_operator_tooling(compiled):
    """The CLI and the deploy helpers (tools/invoiced_connect_tools) are installed
    with the project, never shipped to Lambda; the layer has the package by role."""
    python = compiled / "InvoicedConnectLayer" / "python"
    assert not (python / "invoiced_connect_tools").exists()
    shipped = {path.relative_to(python / "invoiced_connect").as_posix()
               for path in (python / "invoiced_connect").rglob("*.py")}
    assert not {name for name in shipped if name.rsplit("/", 1)[-1] in ("cli.py", "deployment.py")}
    assert {"runtime.py", "facade.py", "connect/flow.py", "sdk/tokens.py", "entry/web.py"} <= shipped


def imports(build_dir: Path) -> dict[str, dict[str, object]]:
    """Import every handler from the artifacts alone, as in Lambda."""
    artifacts = coldstart.find_artifacts(build_dir)
    layer = next(a for a in artifacts if a.is_layer)
    return {
        a.name: coldstart.probe("app", coldstart.lambda_environment(a, layer), build_dir)
        for a in artifacts if not a.is_layer
    }


def test_every_handler_imports_from_the_artifacts_and_api_handlers_stay_light(compiled):
    loaded = imports(compiled)
    assert set(loaded) == {
        "ConnectFunction", "CallbackFunction", "SchedulerFunction", "RefreshWorkerFunction",
        "ConnectionsFunction", "ListInvoicesFunction", "LinksFunction", "TokensFunction", "ConnectionStateFunction",
    }
    # The connect handler never needs requests; the callback loads it on its
    # first token request. Neither loads boto3 or the X-Ray SDK at import.
    for name in coldstart.API_FUNCTIONS:
        assert loaded[name]["requests"] is False, name
        assert loaded[name]["boto3"] is False, name
        assert loaded[name]["xray"] is False, name


def test_the_batch_processor_the_worker_imports_on_first_use_is_in_the_layer(compiled):
    """The worker imports Powertools' batch utility on its first batch, not
    with ``import app``: import it from the artifacts."""
    artifacts = {a.name: a for a in coldstart.find_artifacts(compiled)}
    env = coldstart.lambda_environment(artifacts["RefreshWorkerFunction"], artifacts["InvoicedConnectLayer"])
    coldstart.probe("aws_lambda_powertools.utilities.batch", env, compiled)


def test_handlers_import_from_sources_only_builds_too(sources_only):
    loaded = imports(sources_only)
    assert loaded["ConnectFunction"]["requests"] is False


def test_under_snapstart_the_api_handlers_import_what_their_first_request_needs(compiled):
    """Lambda sets AWS_LAMBDA_INITIALIZATION_TYPE=snap-start while it
    initializes a version for its snapshot: then boto3 (and, for the
    callback, requests) are imported at init, so they are in the snapshot."""
    artifacts = {a.name: a for a in coldstart.find_artifacts(compiled)}
    layer = artifacts["InvoicedConnectLayer"]
    for name, wanted in (("ConnectFunction", {"boto3"}), ("CallbackFunction", {"boto3", "requests"})):
        env = {**coldstart.lambda_environment(artifacts[name], layer), "AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start"}
        loaded = coldstart.probe("app", env, compiled)
        assert {module for module in ("boto3", "requests") if loaded[module]} == wanted, name


def unpack_like_lambda(archive: Path, into: Path) -> Path:
    """Extract keeping each entry's timestamp, as Lambda's unpacking does."""
    import time
    import zipfile

    with zipfile.ZipFile(archive) as zipped:
        for info in zipped.infolist():
            target = Path(zipped.extract(info, into))
            stamp = time.mktime((*info.date_time, 0, 0, -1))
            os.utime(target, (stamp, stamp))
    return into


def test_the_bytecode_is_used_after_sam_packages_it(compiled, tmp_path):
    """`sam deploy` zips each artifact with SAM's own zipper, which stamps
    every file 1980-01-01: .pyc files that recorded the sources' times would
    all be stale. The unchecked-hash ones are loaded as they are."""
    sam_python = sam_cli().parent / "python"
    unpacked = {}
    for name in ("ConnectFunction", "InvoicedConnectLayer"):
        zipped = run(
            [str(sam_python), "-c",
             "import sys; from samcli.lib.package.utils import make_zip; print(make_zip(sys.argv[1], sys.argv[2]))",
             str(tmp_path / name), str(compiled / name)],
            timeout=120,
        )
        assert zipped.returncode == 0, zipped.stderr
        unpacked[name] = unpack_like_lambda(Path(zipped.stdout.strip()), tmp_path / f"{name}-unpacked")
    assert (unpacked["ConnectFunction"] / "app.py").stat().st_mtime < 400_000_000  # 1980: SAM's stamp

    function = coldstart.Artifact("ConnectFunction", unpacked["ConnectFunction"], is_layer=False)
    layer = coldstart.Artifact("InvoicedConnectLayer", unpacked["InvoicedConnectLayer"], is_layer=True)
    verbose = run([sys.executable, "-v", "-c", "import app"], timeout=120, cwd=tmp_path,
                  env=coldstart.lambda_environment(function, layer))
    assert verbose.returncode == 0, verbose.stderr[-2000:]
    loaded_from_bytecode = {
        line.split("'")[1] for line in verbose.stderr.splitlines() if line.startswith("# code object from '")
    }
    # The handler, a module of the package and one of Powertools: all read from their .pyc.
    expected = {str(cached_file(p)) for p in (function.code_dir / "app.py",
                                               layer.code_dir / "invoiced_connect" / "connect" / "flow.py",
                                               layer.code_dir / "aws_lambda_powertools" / "logging" / "logger.py")}
    assert expected <= loaded_from_bytecode, sorted(expected - loaded_from_bytecode)
    assert "bytecode is stale" not in verbose.stderr
