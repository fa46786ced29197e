"""The architecture is enforced: the import contracts in pyproject.toml
([tool.importlinter]) hold, and each one fails when the code breaks it.

Breaking a contract is tried on a copy of the package (put first on the
path), never on the work tree.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "layers" / "invoiced_connect" / "invoiced_connect"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

CONTRACTS = {
    "layers": "entry -> facade -> runtime -> logic -> adapters -> core",
    "sdk": "The SDK never imports the connect flow",
    "layer-contents": "Nothing in the Lambda layer imports the local stack or the operator tooling",
    "acyclic": "No import cycles between the modules or packages of one package",
}


def lint_imports(copy_root: Path | None = None) -> subprocess.CompletedProcess[str]:
    """lint-imports with the project's contracts, on the package or on a copy under ``copy_root``
    (run from there, so the copy is the one found first)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (copy_root, ROOT) if p)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(ROOT / "pyproject.toml")],
                          cwd=copy_root or ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


def _status(text: str, name: str) -> str | None:
    at = text.find(name)
    if at < 0:
        return None
    rest = text[at + len(name):]
    kept, broken = rest.find("KEPT"), rest.find("BROKEN")
    candidates = [(i, word) for i, word in ((kept, "KEPT"), (broken, "BROKEN")) if i >= 0]
    return min(candidates)[1] if candidates else None


def test_every_contract_holds_on_the_code():
    result = lint_imports()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    for name in CONTRACTS.values():
        assert _status(" ".join(result.stdout.split()), name) == "KEPT", name


# Each breakage: a file of the copied package and the line added to it; the contracts it must break.
BREAKAGES = {
    "the SDK reaches for the connect flow": (
        "sdk/tokens.py", "from invoiced_connect.connect import flow as _flow  # noqa", {"sdk", "layers"}),
    "logic reaches up into the glue (the old flow -> refresh -> observability -> flow circle)": (
        "lifecycle/refresh.py", "from invoiced_connect.entry import observability as _obs  # noqa", {"layers"}),
    "logic reaches for the composition root instead of being given its parts": (
        "lifecycle/refresh.py", "from invoiced_connect import runtime as _runtime  # noqa", {"layers"}),
    "the SDK reaches into the token lifecycle (its sibling)": (
        "sdk/tokens.py", "from invoiced_connect.lifecycle import refresh as _refresh  # noqa", {"layers"}),
    "an adapter reaches up into the logic": (
        "storage/store.py", "from invoiced_connect.lifecycle import refresh as _refresh  # noqa", {"layers"}),
    "the layer imports the local stack": (
        "connect/pages.py", "import local.stack as _stack  # noqa", {"layer-contents"}),
    "the layer imports the operator tooling": (
        "entry/web.py", "from invoiced_connect_tools import cli as _cli  # noqa", {"layer-contents"}),
    "two modules of one package import each other": (
        "connect/pages.py", "from invoiced_connect.connect import flow as _flow  # noqa", {"acyclic"}),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_each_contract_fails_when_the_code_breaks_it(breakage, tmp_path):
    relative, line, expected = BREAKAGES[breakage]
    copy = tmp_path / "invoiced_connect"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / relative
    source = target.read_text()
    # After the module docstring and __future__ import: where a real import would go.
    anchor = "from __future__ import annotations\n"
    assert anchor in source, relative
    target.write_text(source.replace(anchor, anchor + line + "\n", 1))
    result = lint_imports(copy_root=tmp_path)
    assert result.returncode != 0, result.stdout[-3000:]
    text = " ".join(result.stdout.split())
    broken = {key for key, name in CONTRACTS.items() if _status(text, name) == "BROKEN"}
    assert expected <= broken, (breakage, broken, result.stdout[-3000:])


def test_handlers_call_only_the_glue():
    """functions/*/app.py import from the package only its entry glue: the
    logic stays out of handlers."""
    problems = []
    for handler in sorted((ROOT / "functions").glob("*/app.py")):
        for node in ast.walk(ast.parse(handler.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("invoiced_connect"):
                if not (node.module == "invoiced_connect.entry" or node.module.startswith("invoiced_connect.entry.")):
                    problems.append(f"{handler.relative_to(ROOT)}: from {node.module} import ...")
            elif isinstance(node, ast.Import):
                problems += [f"{handler.relative_to(ROOT)}: import {alias.name}" for alias in node.names
                             if alias.name.startswith("invoiced_connect")]
    assert problems == []


def test_no_module_outside_the_composition_root_keeps_a_built_object():
    """Module-level singletons live in invoiced_connect.runtime only: no other
    module of the package makes an instance of one of its classes at module
    level, caches a built object with functools.cache/lru_cache or assigns a
    ``global``."""
    modules = sorted(PACKAGE.rglob("*.py"))
    package_classes = {node.name for module in modules for node in ast.walk(ast.parse(module.read_text()))
                       if isinstance(node, ast.ClassDef)}
    problems = []
    for module in modules:
        if module.name == "runtime.py" and module.parent == PACKAGE:
            continue
        tree = ast.parse(module.read_text())
        for node in tree.body:
            value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
            if isinstance(value, ast.Call) and ast.unparse(value.func).split(".")[-1] in package_classes:
                problems.append(f"{module.relative_to(PACKAGE)}: {ast.unparse(node)[:80]}")
            if isinstance(node, ast.FunctionDef):
                for decorator in node.decorator_list:
                    name = ast.unparse(decorator)
                    if name.split("(")[0] in ("functools.cache", "functools.lru_cache", "cache", "lru_cache"):
                        problems.append(f"{module.relative_to(PACKAGE)}: @{name} {node.name}")
        problems += [f"{module.relative_to(PACKAGE)}: global {', '.join(node.names)}"
                     for node in ast.walk(tree) if isinstance(node, ast.Global)]
    assert problems == []


def _readme_layout() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## Layout\n"):]
    return section[section.index("```"):section.index("```", section.index("```") + 3)]


def test_the_readme_layout_names_every_module_and_only_modules_that_exist():
    layout = _readme_layout()
    packages = {"invoiced_connect": PACKAGE, "invoiced_connect_tools": ROOT / "tools" / "invoiced_connect_tools"}
    modules = [path for root in packages.values() for path in root.rglob("*.py") if path.name != "__init__.py"]
    modules += [path for path in (ROOT / "local").glob("*.py") if path.name != "__init__.py"]
    missing = sorted(str(path.relative_to(ROOT)) for path in modules if path.name not in layout)
    assert missing == [], "README's layout does not name these"
    for subpackage in (p for p in PACKAGE.iterdir() if (p / "__init__.py").exists()):
        assert f"{subpackage.name}/" in layout, subpackage.name
    named = set(re.findall(r"\b([a-z_]+\.py)\b", layout))
    existing = {path.name for path in ROOT.rglob("*.py") if ".venv" not in path.parts and "node_modules" not in path.parts}
    assert named - existing == set(), "README's layout names modules that do not exist"
