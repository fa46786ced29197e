"""``make mutate``: mutation testing, with mutmut, of the modules that carry the
security and lifecycle promises (``[tool.mutmut] only_mutate`` in pyproject.toml).

mutmut names a mutant's module after the file's path relative to where it
runs, and the package lives at ``layers/invoiced_connect/invoiced_connect``;
so this stages ``.mutation/`` (git-ignored), where ``invoiced_connect`` links
to the layer's package and every other top-level entry of the repository to
its original. mutmut copies from there into ``.mutation/mutants/``, mutates
the copy and runs the tests in the copy: nothing in the work tree is written.
(Do not run ``mutmut apply`` in ``.mutation/``: it writes the mutant into the
file the link points at, the real source.)

Then it reads mutmut's results and prints, per module, the mutants made,
killed, survived, timed out and reached by no test, and each survivor by
function and change, checked against ``tests/mutation/equivalent.md``. It
exits non-zero when a mutant survived, or no test reached it, and that file
does not explain it.

    .venv/bin/python tests/mutation/run.py                 # every module in scope
    .venv/bin/python tests/mutation/run.py links pages     # some modules only
    .venv/bin/python tests/mutation/run.py --report-only   # the last run's results again
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGE = ROOT / ".mutation"
PACKAGE = ROOT / "layers" / "invoiced_connect" / "invoiced_connect"
EQUIVALENTS = ROOT / "tests" / "mutation" / "equivalent.md"
PACKAGE_NAME = "invoiced_connect"
MAX_CHILDREN = 2  # the machine is shared: two workers at most

# mutmut's exit-code classes (mutmut.stats.status_by_exit_code), as reported here.
NEEDS_A_REASON = ("survived", "no tests", "suspicious", "segfault")

ENTRY = re.compile(r"^- `(?P<function>[^`]+)`: `(?P<before>.*?)` → `(?P<after>.*?)`:\s*(?P<why>\S.*)$")


@dataclass(frozen=True)
class Mutant:
    name: str  # mutmut's id, e.g. invoiced_connect.connect.links.x_make_link__mutmut_3
    module: str  # links
    function: str  # make_link, or Class.method
    status: str
    before: str  # the original lines the mutation changes, stripped, joined by " ⏎ "
    after: str  # what they become

    @property
    def description(self) -> str:
        return f"`{self.function}`: `{self.before}` → `{self.after}`"

    @property
    def key(self) -> tuple[str, str, str]:
        return (f"{self.module}.{self.function}", self.before, self.after)


def modules_in_scope() -> dict[str, str]:
    """Each module in scope by its short name (``links``), with its path in the stage
    (``invoiced_connect/connect/links.py``)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    return {Path(p).stem: p for p in config["only_mutate"]}


def dotted(path: str) -> str:
    """``invoiced_connect/connect/links.py`` -> ``invoiced_connect.connect.links``."""
    return path.removesuffix(".py").replace("/", ".")


def stage(debug: bool) -> None:
    """A fresh .mutation/: links to the repository's entries, the package at the
    top, and a copy of pyproject.toml (with mutmut's debug output if asked)."""
    if STAGE.exists():
        shutil.rmtree(STAGE)
    STAGE.mkdir()
    for entry in sorted(ROOT.iterdir()):
        if entry.name.startswith(".") or entry.name in ("mutants", PACKAGE_NAME, "pyproject.toml"):
            continue
        (STAGE / entry.name).symlink_to(Path("..") / entry.name)
    pyproject = (ROOT / "pyproject.toml").read_text()
    if debug:
        pyproject = pyproject.replace("[tool.mutmut]\n", "[tool.mutmut]\ndebug = true\n", 1)
    (STAGE / "pyproject.toml").write_text(pyproject)
    (STAGE / PACKAGE_NAME).symlink_to(Path("..") / PACKAGE.relative_to(ROOT))


def run_mutmut(modules: list[str], every_module: bool) -> float:
    mutmut = Path(sys.executable).with_name("mutmut")
    scope = modules_in_scope()
    names = [] if every_module else [f"{dotted(scope[module])}.*" for module in modules]
    command = [str(mutmut), "run", "--max-children", str(MAX_CHILDREN), *names]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MUTANT_UNDER_TEST")}
    print("$ cd .mutation && mutmut", " ".join(command[1:]), flush=True)
    started = time.monotonic()
    result = subprocess.run(command, cwd=STAGE, env=env, check=False)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"mutmut run exited {result.returncode}")
    return elapsed


def changed_lines(diff: str) -> tuple[str, str]:
    before, after = [], []
    for line in diff.splitlines():
        if line.startswith(("---", "+++", "@@")):
            continue
        if line.startswith("-"):
            before.append(line[1:].strip())
        elif line.startswith("+"):
            after.append(line[1:].strip())
    return " ⏎ ".join(before) or "∅", " ⏎ ".join(after) or "∅"


def read_results(modules: list[str]) -> list[Mutant]:
    """Every mutant of ``modules``, with its status and what it changes."""
    os.chdir(STAGE)  # mutmut's own readers take paths relative to where it ran
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code
    from mutmut.utils.format_utils import orig_function_and_class_names_from_key

    mutants = []
    scope = modules_in_scope()
    for module in modules:
        path = Path(scope[module])
        meta = json.loads((Path("mutants") / f"{path}.meta").read_text())
        for name, exit_code in meta["exit_code_by_key"].items():
            status = status_by_exit_code[exit_code]
            function, class_name = orig_function_and_class_names_from_key(name)
            before, after = ("", "")
            if status != "killed":
                before, after = changed_lines(get_diff_for_mutant(name, path=path))
            qualified = f"{class_name}.{function}" if class_name else function
            mutants.append(Mutant(name, module, qualified, status, before, after))
    return mutants


def read_equivalents() -> tuple[dict[tuple[str, str, str], str], list[str]]:
    """The explained mutants, by (module.function, before, after), and lines that do not parse."""
    explained: dict[tuple[str, str, str], str] = {}
    malformed = []
    module = None
    for line in EQUIVALENTS.read_text().splitlines():
        if heading := re.match(r"^## `(\w+)\.py`", line):
            module = heading.group(1)
        elif line.startswith("- `"):
            entry = ENTRY.match(line)
            if entry is None or module is None:
                malformed.append(line)
                continue
            explained[(f"{module}.{entry['function']}", entry["before"], entry["after"])] = entry["why"]
    return explained, malformed


def report(mutants: list[Mutant], modules: list[str], elapsed: float | None) -> int:
    counts = {module: Counter(m.status for m in mutants if m.module == module) for module in modules}
    total = Counter(m.status for m in mutants)
    print()
    print(f"mutmut {mutmut_version()}, {dt.date.today().isoformat()}"
          + (f", {elapsed / 60:.1f} min for mutmut run" if elapsed is not None else ""))
    header = f"{'module':<14}{'mutants':>8}{'killed':>8}{'survived':>9}{'timeout':>8}{'no tests':>9}{'other':>6}{'killed %':>9}"
    print(header)
    for module, c in [*counts.items(), ("all", total)]:
        n = sum(c.values())
        other = n - c["killed"] - c["survived"] - c["timeout"] - c["no tests"]
        share = f"{100 * c['killed'] / n:.1f}" if n else "-"
        print(f"{module:<14}{n:>8}{c['killed']:>8}{c['survived']:>9}{c['timeout']:>8}{c['no tests']:>9}{other:>6}{share:>9}")

    explained, malformed = read_equivalents()
    unexplained = [m for m in mutants if m.status in NEEDS_A_REASON and m.key not in explained]
    listed = [m for m in mutants if m.status in NEEDS_A_REASON and m.key in explained]
    seen = {m.key for m in mutants if m.status in NEEDS_A_REASON}
    stale = [key for key in explained if key[0].split(".")[0] in modules and key not in seen]

    timeouts = [m for m in mutants if m.status == "timeout"]
    if timeouts:
        print("\ntimed out (the tests hung or ran far longer: counted as detected):")
        for m in timeouts:
            print(f"  {m.module}.py {m.description}  [{m.name}]")
    if listed:
        print(f"\n{len(listed)} survivor(s) explained in {EQUIVALENTS.relative_to(ROOT)}")
    for line in malformed:
        print(f"\nmalformed entry in {EQUIVALENTS.relative_to(ROOT)}: {line}")
    if stale:
        print(f"\nentries in {EQUIVALENTS.relative_to(ROOT)} that no surviving mutant matches (killed now, or the code changed):")
        for function, before, after in stale:
            print(f"  {function}: `{before}` → `{after}`")
    if unexplained:
        print(f"\n{len(unexplained)} unexplained (kill each with a test, or add it with its reason under its module's heading):")
        for m in unexplained:
            print(f"  [{m.status}] {m.module}.py {m.name}")
            print(f"    - {m.description}: WHY")
    return 1 if unexplained or malformed else 0


def mutmut_version() -> str:
    from importlib.metadata import version

    return version("mutmut")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="module names (links, flow, ...); default: every one in scope")
    parser.add_argument("--report-only", action="store_true", help="report the last run's results without running")
    parser.add_argument("--debug", action="store_true", help="mutmut's debug output (every pytest run's)")
    args = parser.parse_args()
    scope = list(modules_in_scope())
    unknown = sorted(set(args.modules) - set(scope))
    if unknown:
        parser.error(f"not in [tool.mutmut] only_mutate: {', '.join(unknown)} (in scope: {', '.join(scope)})")
    modules = [m for m in scope if m in args.modules] or scope
    elapsed = None
    if not args.report_only:
        stage(args.debug)
        elapsed = run_mutmut(modules, every_module=modules == scope)
    elif not (STAGE / "mutants").is_dir():
        sys.exit("no results yet: run make mutate first")
    return report(read_results(modules), modules, elapsed)


if __name__ == "__main__":
    sys.exit(main())
