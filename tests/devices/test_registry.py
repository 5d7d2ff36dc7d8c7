"""The agent's own runtime table agrees with the shared registry (`formats`).

The agent must stay one standard-library file, so it cannot import `formats`;
this test is what keeps its copy honest.
"""

from __future__ import annotations

from pathlib import Path

from helpers import load_agent

import formats

AGENT = Path(__file__).resolve().parents[2] / "devices" / "agent.py"


def _agent():
    return load_agent("agent_under_test")


def test_agent_takes_what_the_registry_ships_to_each_runtime() -> None:
    agent = _agent()
    assert set(agent.RUNTIME_FORMATS) == set(formats.RUNTIMES) == set(agent.BACKENDS)
    for name, runtime in formats.RUNTIMES.items():
        shipped = {formats.FORMATS[f].agent_format for f in runtime.formats}
        assert set(agent.RUNTIME_FORMATS[name]) == shipped, name
        assert tuple(agent.RUNTIME_OPTIONS[name]) == runtime.options, name


def test_every_format_is_taken_by_a_runtime() -> None:
    taken = {f for r in formats.RUNTIMES.values() for f in r.formats}
    assert taken == set(formats.FORMATS)
