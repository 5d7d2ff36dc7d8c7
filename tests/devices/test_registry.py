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


def test_tunable_options_are_runtime_options_and_bench_toml_checks_every_option() -> None:
    import pytest

    from devices import config

    for runtime in formats.RUNTIMES.values():
        assert set(runtime.tunable) <= set(runtime.options), runtime.name
        assert set(runtime.options) <= set(config._OPTION), runtime.name
    spec = config.parse_device("pi", {"runtimes": {"onnxruntime": {"allow_spinning": False, "execution_mode":
                                                                   "parallel", "inter_op_threads": 2}}})
    assert spec.runtimes["onnxruntime"] == {"allow_spinning": False, "execution_mode": "parallel",
                                            "inter_op_threads": 2}
    for options, message in (({"allow_spinning": "no"}, 'allow_spinning = "no": must be true or false'),
                             ({"execution_mode": "async"}, 'execution_mode = "async": must be one of: "sequential"'),
                             ({"inter_op_threads": 0}, "inter_op_threads = 0: must be an integer >= 1")):
        with pytest.raises(config.DeviceConfigError) as info:
            config.parse_device("pi", {"runtimes": {"onnxruntime": options}})
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
