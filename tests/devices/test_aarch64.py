"""The agent on an ARM board's software: an emulated Raspberry Pi 4B reached over real SSH.

The device is Debian's arm64 CPython with PyPI's aarch64 onnxruntime, run by
qemu user-mode emulation and given a Pi 4B /proc/cpuinfo (tests/aarch64.py);
the transport is the one a bench.toml ``kind = "ssh"`` device gets
(`devices.config.open_transport`), against a real sshd (tests/sshd.py). One
agent job times a tiny ViT exported by the project's own exporter; the tests
read its result. Skipped where qemu, arm64 apt lists or the registries are
missing - except on CI (``CI=true``), where that fails.
"""

from __future__ import annotations

import pathlib
import tomllib

import pytest
from aarch64 import PI4B_MODEL, WHEELS, Userland, require_userland
from helpers import onnx_job, ssh_device, tiny_vit
from sshd import SSHServer

import exporters
from devices.config import open_transport, parse_device

SHAPE = (1, 3, 32, 32)
#: Under emulation one forward of the tiny ViT takes ~0.1 s and loading onnxruntime ~5 s: few iterations
#: (ITERATIONS in all, split over ROUNDS), and timeouts with room for a loaded host.
WARMUP, REWARM, ITERATIONS, ROUNDS = 2, 2, 10, 2


@pytest.fixture(scope="session")
def pi4b() -> Userland:
    """The arm64 userland (built once, then cached across runs; see tests/aarch64.py)."""
    return require_userland()


@pytest.fixture(scope="module")
def pi4b_result(pi4b: Userland, sshd_server: SSHServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One agent job on the emulated Pi: a tiny ViT, exported here, shipped and timed over SSH.

    The cold start stays on (~5 s): it is the agent's child process, which only runs when the device's
    ``sys.executable`` is something the host can execute. The TorchScript-based exporter writes the same ops
    as the default one in 1 s instead of 6; which exporter wrote the graph is not under test here.
    """
    tmp = tmp_path_factory.mktemp("pi4b")
    art = exporters.export(tiny_vit(), "onnx", tmp / "artifacts", input_shape=SHAPE, source="tiny_vit",
                           onnx_exporter="torchscript")
    toml = ssh_device("pi4b", sshd_server, tmp / "device", python=str(pi4b.python),
                      runtimes="{ onnxruntime = { threads = 1 } }")
    spec = parse_device("pi4b", tomllib.loads(toml)["devices"]["pi4b"])
    transport = open_transport(spec)
    try:
        path = transport.ensure_blob(art.path, art.sha256)
        job = onnx_job(path, art.sha256, list(SHAPE), job_id="pi4b", warmup={"iterations": WARMUP},
                       rewarm={"iterations": REWARM}, measure={"iterations": ITERATIONS, "min_seconds": 0},
                       rounds=ROUNDS, timeout_s=240)
        result = transport.run_agent(job, timeout_s=300)
    finally:
        transport.close()
    result["artifact_sha256"] = art.sha256  # what the member must report back
    return result


def test_tiny_vit_is_timed_on_the_emulated_pi(pi4b_result: dict) -> None:
    assert pi4b_result["status"] == "ok", pi4b_result.get("error")
    member = pi4b_result["members"][0]
    assert member["status"] == "ok", member.get("error")
    assert member["artifact_sha256"] == pi4b_result["artifact_sha256"]
    assert len(member["samples_ns"]) >= ITERATIONS and member["stats"]["n"] == len(member["samples_ns"])
    assert sorted(set(member["sample_rounds"])) == list(range(ROUNDS))
    assert all(ns > 0 for ns in member["samples_ns"])
    cold = member["cold"]  # measured in a child process started as [sys.executable, agent.py, "--cold"]
    assert cold["load_s"] > 0 and cold["first_inference_ns"] > 0 and cold["peak_rss_bytes"] > 0


def test_environment_is_the_arm64_userland(pi4b_result: dict, pi4b: Userland) -> None:
    env = pi4b_result["env"]
    assert env["cpu"]["machine"] == "aarch64"
    assert env["python"]["executable"] == str(pi4b.python)  # the wrapper: what a cold-start child runs
    assert env["python"]["version"].startswith("3.11.")
    assert env["runtimes"]["onnxruntime"] == WHEELS["onnxruntime"]


def test_environment_reads_the_pi_cpuinfo(pi4b_result: dict) -> None:
    """The agent under qemu sees root/proc/cpuinfo, not the host's x86 text."""
    cpu = pi4b_result["env"]["cpu"]
    assert cpu["board_model"] == PI4B_MODEL
    assert cpu["hardware"] == "BCM2835"
    assert (cpu["cpuinfo"]["CPU implementer"], cpu["cpuinfo"]["CPU part"]) == ("0x41", "0xd08")


def test_environment_names_the_cpu(pi4b_result: dict) -> None:
    """Implementer 0x41 part 0xd08 is an Arm Cortex-A72: the record must say so, not "unknown"."""
    assert "Cortex-A72" in (pi4b_result["env"]["cpu"]["model"] or "")



def test_missing_qemu_skips_here_and_fails_on_ci(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: pathlib.Path) -> None:
    """Like a missing sshd (tests/sshd.py): a skip that names the fix, except under CI=true."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no qemu-aarch64-static (nor anything else) on it
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="qemu-aarch64-static not found .*qemu-user-static"):
        require_userland(tmp_path / "cache")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true requires the aarch64 device test"):
        require_userland(tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
