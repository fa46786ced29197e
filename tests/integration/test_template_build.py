"""The tools on template.yaml: cfn-lint, and (marked ``slow``) the pinned
SAM CLI's ``sam validate`` and a real ``sam build`` into a temporary
directory, with no Docker and with every python3.13 removed from PATH.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.template import ROOT, TEMPLATE, cfn_lint_command, functions, load_template, run, sam_cli, tool_env

MAX_LAYER_BYTES = 10 * 1024 * 1024
ELF_MACHINE_AARCH64 = 183


@pytest.fixture(scope="module")
def source_template() -> dict[str, Any]:
    """template.yaml as written (short forms read as the local stack reads them)."""
    return load_template()


# ------------------------------------------------------------------ cfn-lint and sam validate
def test_cfn_lint_is_clean():
    result = run([*cfn_lint_command(), "--", str(TEMPLATE)], timeout=90, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_sam_validate_accepts_the_template():
    result = run(
        [str(sam_cli()), "validate", "--region", "us-east-1", "--template", str(TEMPLATE)],
        timeout=90, cwd=ROOT, env=tool_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------ sam build
def path_without_python313() -> str:
    """PATH minus every folder holding a python3.13: the build must not need one."""
    kept = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "python3.13").exists()]
    return os.pathsep.join(kept)


@pytest.fixture(scope="module")
def sam_build_dir(tmp_path_factory) -> Path:
    build_dir = tmp_path_factory.mktemp("sam") / "build"
    command = [
        str(sam_cli()), "build", "--template", str(TEMPLATE), "--build-dir", str(build_dir),
        "--no-cached", "--no-use-container",
    ]
    # The layer's pip runs under PYTHON (any Python with pip); make finds
    # python3 on PATH otherwise.
    env = tool_env(PATH=path_without_python313(), PYTHON=os.environ.get("PYTHON") or sys.executable)
    result = run(command, timeout=110, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return build_dir


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.mark.slow
def test_layer_holds_the_package_and_its_dependencies_only(sam_build_dir):
    python = sam_build_dir / "InvoicedConnectLayer" / "python"
    assert (python / "invoiced_connect" / "__init__.py").is_file()
    assert (python / "requests" / "__init__.py").is_file()
    assert (python / "aws_lambda_powertools" / "__init__.py").is_file()
    # The runtime's boto3 is used; shipping one would shadow it.
    assert not [n for n in ("boto3", "botocore", "s3transfer") if (python / n).exists()]
    files = tree(sam_build_dir / "InvoicedConnectLayer")
    assert all(f == "python" or f.startswith("python/") for f in files), "layer content outside python/"
    assert not [f for f in files if "__pycache__" in f or f.endswith((".pyc", ".pyo")) or ".egg-info" in f]
    sources = {p.relative_to(ROOT / "layers" / "invoiced_connect").as_posix()
               for p in (ROOT / "layers" / "invoiced_connect" / "invoiced_connect").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert sources <= {f.removeprefix("python/") for f in files}


@pytest.mark.slow
def test_layer_binaries_are_for_arm64(sam_build_dir):
    libraries = list((sam_build_dir / "InvoicedConnectLayer").rglob("*.so"))
    wrong = []
    for library in libraries:
        header = library.read_bytes()[:20]
        machine = int.from_bytes(header[18:20], "little")
        if header[:4] != b"\x7fELF" or machine != ELF_MACHINE_AARCH64:
            wrong.append(library.name)
    assert wrong == []


@pytest.mark.slow
def test_layer_size(sam_build_dir):
    size = sum(p.stat().st_size for p in (sam_build_dir / "InvoicedConnectLayer").rglob("*") if p.is_file())
    print(f"\nInvoicedConnectLayer unzipped: {size / 1024 / 1024:.2f} MiB ({size} bytes)")
    assert size < MAX_LAYER_BYTES


@pytest.mark.slow
def test_each_function_ships_only_its_own_handler(source_template, sam_build_dir):
    for name, fn in functions(source_template).items():
        source = ROOT / fn["Properties"]["CodeUri"]
        shipped = tree(sam_build_dir / name)
        assert "app.py" in shipped, name
        # Only the top-level modules of its own folder: no tests, no package
        # copy (that is the layer's), no other function's code.
        assert set(shipped) <= {p.name for p in source.glob("*.py")}, (name, shipped)
        assert (sam_build_dir / name / "app.py").read_bytes() == (source / "app.py").read_bytes()
