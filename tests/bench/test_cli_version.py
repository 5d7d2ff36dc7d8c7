"""``python -m bench --version``: the package version (one source with pyproject.toml) and the agent protocol."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import snp_core
from bench.cli import main
from devices.transport import PROTOCOL

ROOT = Path(__file__).resolve().parents[2]


def test_version_names_the_package_and_the_agent_protocol(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"snp-bench {snp_core.__version__} (device agent protocol {PROTOCOL})\n"


def test_the_package_version_is_the_one_pyproject_declares():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert snp_core.__version__ == declared
