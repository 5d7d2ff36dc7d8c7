"""The architecture, checked: stages import one way, the library neither parses arguments nor prints.

Reading the source (ast), not importing it, so the rules hold for every module
whether a test imports it or not:

* data flows one way: ``formats`` <- ``snp_core`` <- ``exporters`` <- ``devices`` <-
  ``results`` <- ``harness`` <- ``experiments`` / ``bench``; a package imports only
  packages before it (``formats`` and ``snp_core`` are independent of each other);
* only ``bench/`` (the command line) imports argparse or tqdm, and nothing in the
  library calls ``print``. The device agent (``devices/agent.py``) is the one
  exception: a standalone program that runs on the device, with its own command
  line and its result on stdout.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What each package may import from the project.
ALLOWED = {
    "formats": set(),
    "snp_core": set(),
    "exporters": {"formats", "snp_core"},
    "devices": {"formats"},
    "results": {"formats"},
    "harness": {"formats", "snp_core", "exporters", "devices", "results"},
    "experiments": {"formats", "snp_core", "exporters", "devices", "results", "harness"},
    "bench": {"formats", "snp_core", "exporters", "devices", "results", "harness", "experiments"},
}
LIBRARY = [p for p in ALLOWED if p != "bench"]
STANDALONE = {ROOT / "devices" / "agent.py"}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", list(ALLOWED))
def test_stages_import_one_way(package: str) -> None:
    wrong = {f"{path.relative_to(ROOT)} imports {name}"
             for path in _modules(package) for name in _imports(path)
             if name in ALLOWED and name != package and name not in ALLOWED[package]}
    assert not wrong, sorted(wrong)


@pytest.mark.parametrize("package", LIBRARY)
def test_only_the_command_line_parses_arguments_or_draws_bars(package: str) -> None:
    wrong = {f"{path.relative_to(ROOT)} imports {name}" for path in _modules(package) if path not in STANDALONE
             for name in _imports(path) & {"argparse", "tqdm"}}
    assert not wrong, sorted(wrong)


@pytest.mark.parametrize("package", LIBRARY)
def test_the_library_never_prints(package: str) -> None:
    calls = {f"{path.relative_to(ROOT)}:{node.lineno}" for path in _modules(package) if path not in STANDALONE
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"}
    assert not calls, sorted(calls)


def test_the_rules_see_every_package() -> None:
    """A new top-level package must be placed in the flow above before it can pass unchecked."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages == set(ALLOWED), packages ^ set(ALLOWED)
