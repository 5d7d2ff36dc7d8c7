"""Tests of devices/transport.py: the content-addressed store and LocalTransport.

Real parts only: a real ONNX model built with onnx.helper, the real agent in a
real subprocess, real signals.  Failures of the agent process must come back
as error results, never as exceptions.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import pathlib
import shutil
import signal
import sys
import time

import pytest
from helpers import onnx_job

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the repository may not be pip-installed
    sys.path.insert(0, str(ROOT))

from devices.transport import AGENT_SOURCE, LocalTransport, Transport, sha256_file  # noqa: E402


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> pathlib.Path:
    """y = relu(x @ W + b), 16 -> 8, written with onnx.helper (no torch import needed here)."""
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal((8,)).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["z"]),
         helper.make_node("Relu", ["z"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture
def transport(tmp_path):
    t = LocalTransport(tmp_path / "device")
    yield t
    t.close()


def make_job(transport: LocalTransport, model: pathlib.Path, **overrides) -> dict:
    """A one-member protocol-2 job (devices/agent.py) for the tiny model."""
    sha = sha256_file(model)
    return onnx_job(transport.ensure_blob(model, sha), sha, [1, 16],
                    **{"job_id": "transport-test", "workdir": str(transport.workdir), **overrides})


# ----- content-addressed store ------------------------------------------------

def test_sha256_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 1_000_000)
    assert sha256_file(path) == hashlib.sha256(b"abc" * 1_000_000).hexdigest()


def test_ensure_blob_uploads_once(transport, onnx_model):
    assert isinstance(transport, Transport) and transport.name == "local"
    sha = sha256_file(onnx_model)
    path = transport.ensure_blob(onnx_model, sha)
    assert path == str(transport.workdir / "blobs" / sha)
    assert pathlib.Path(path).read_bytes() == onnx_model.read_bytes()
    assert not pathlib.Path(path).is_symlink()
    # same disk: a hard link, not a second copy of every artifact; nothing was copied
    assert pathlib.Path(path).stat().st_ino == onnx_model.stat().st_ino and transport.bytes_uploaded == 0
    assert transport.ensure_blob(onnx_model, sha.upper()) == path
    assert transport.bytes_uploaded == 0  # cached: nothing sent again


def test_ensure_blob_copies_when_it_cannot_link(transport, tmp_path):
    """Another file system (here: /dev/shm when it is one) gets a real copy, counted as uploaded."""
    shm = pathlib.Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second file system to copy from")
    src = shm / f"snp-bench-test-{os.getpid()}.bin"
    src.write_bytes(b"xyz" * 1000)
    try:
        path = transport.ensure_blob(src, sha256_file(src))
        assert pathlib.Path(path).read_bytes() == src.read_bytes() and transport.bytes_uploaded == 3000
        assert pathlib.Path(path).stat().st_ino != src.stat().st_ino
    finally:
        src.unlink()


def test_ensure_blob_rejects_a_wrong_hash(transport, tmp_path):
    src = tmp_path / "data.bin"
    src.write_bytes(b"payload")
    with pytest.raises(ValueError, match="expected"):
        transport.ensure_blob(src, "0" * 64)
    assert list((transport.workdir / "blobs").iterdir()) == []  # no blob, no temp file left
    assert transport.bytes_uploaded == 0
    for bad in ("../../etc/passwd", "abc", "g" * 64):
        with pytest.raises(ValueError, match="sha256"):
            transport.ensure_blob(src, bad)


def test_ensure_agent_is_content_addressed(transport):
    path = transport.ensure_agent()
    assert pathlib.Path(path).name == sha256_file(AGENT_SOURCE)
    assert pathlib.Path(path).read_bytes() == AGENT_SOURCE.read_bytes()
    assert pathlib.Path(path).stat().st_ino != AGENT_SOURCE.stat().st_ino  # copied: agent.py may be edited in place
    uploaded = transport.bytes_uploaded
    assert LocalTransport(transport.workdir).ensure_agent() == path
    assert transport.ensure_agent() == path and transport.bytes_uploaded == uploaded


# ----- running the agent -------------------------------------------------------

def test_run_agent_ok(transport, onnx_model):
    result = transport.run_agent(make_job(transport, onnx_model), timeout_s=90)
    assert result["status"] == "ok", result.get("error")
    member = result["members"][0]
    assert member["status"] == "ok", member.get("error")
    assert len(member["samples_ns"]) == 10 and member["stats"]["n"] == 10
    assert member["sample_rounds"] == [0] * 5 + [1] * 5
    assert member["providers"] == ["CPUExecutionProvider"]
    assert result["transport"]["name"] == "local" and result["transport"]["returncode"] == 0
    assert result["transport"]["wall_s"] > 0


def test_agent_error_document_passes_through(transport, onnx_model):
    job = make_job(transport, onnx_model)
    job["members"][0]["artifact"]["sha256"] = "f" * 64
    result = transport.run_agent(job, timeout_s=60)
    member = result["members"][0]
    assert member["status"] == "error" and member["error"]["stage"] == "verify"


def _wait_for_lock_holder(workdir: pathlib.Path, job_id: str, timeout: float = 30) -> int:
    """The agent writes its pid into agent.lock once it holds the device lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            info = json.loads((workdir / "agent.lock").read_text())
            if info.get("job_id") == job_id:
                return int(info["pid"])
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError("the agent never took the device lock")


def test_agent_killed_mid_run_gives_an_error_result(transport, onnx_model):
    job = make_job(transport, onnx_model, job_id="to-be-killed", measure={"iterations": 10 ** 9, "min_seconds": 60})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(transport.run_agent, job, 120)
        pid = _wait_for_lock_holder(transport.workdir, "to-be-killed")
        time.sleep(0.5)  # let it get into warm-up / measurement
        os.kill(pid, signal.SIGKILL)
        result = future.result(timeout=60)
    assert result["status"] == "error"
    assert result["error"]["stage"] == "transport"
    assert "SIGKILL" in result["error"]["message"]
    assert result["job_id"] == "to-be-killed"
    assert result["transport"]["returncode"] == -signal.SIGKILL


def test_agent_past_its_timeout_is_killed(transport, onnx_model):
    job = make_job(transport, onnx_model, job_id="too-slow", measure={"iterations": 10 ** 9, "min_seconds": 60})
    t0 = time.monotonic()
    result = transport.run_agent(job, timeout_s=3)
    assert time.monotonic() - t0 < 15
    assert result["status"] == "error"
    assert result["error"]["stage"] == "timeout"
    assert "killed" in result["error"]["message"]
    assert result["job_id"] == "too-slow"
    # The whole process group is gone: the device lock is free again.
    agent = _load_agent()
    deadline = time.monotonic() + 5
    while agent.lock_is_held(str(transport.workdir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not agent.lock_is_held(str(transport.workdir))


def _load_agent():
    import importlib.util

    spec = importlib.util.spec_from_file_location("device_agent_for_transport_test", AGENT_SOURCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("program,needle", [("echo", "not a result document"), ("false", "exited with code 1")])
def test_garbled_or_missing_output_is_a_transport_error(tmp_path, onnx_model, program, needle):
    """A "python" that is not one (echo prints the agent path, false prints nothing)."""
    exe = shutil.which(program)
    if exe is None:
        pytest.skip(f"no {program} here")
    t = LocalTransport(tmp_path / "device", python=exe)
    result = t.run_agent(make_job(t, onnx_model), timeout_s=30)
    assert result["status"] == "error" and result["error"]["stage"] == "transport"
    assert needle in result["error"]["message"]


def test_missing_interpreter_is_a_transport_error(tmp_path, onnx_model):
    t = LocalTransport(tmp_path / "device", python=str(tmp_path / "no-such-python"))
    result = t.run_agent(make_job(t, onnx_model), timeout_s=30)
    assert result["status"] == "error" and result["error"]["stage"] == "transport"
    assert "could not start" in result["error"]["message"]


def test_probe(transport):
    doc = transport.probe()
    assert doc["status"] == "ok", doc
    assert doc["busy"] is False
    assert doc["runtimes"]["onnxruntime"]["importable"] is True
    assert doc["env"]["hostname"]


# ----- cancellation: the agent's watch_stdin ------------------------------------------

import _thread  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402


def _endless(transport: LocalTransport, model: pathlib.Path, job_id: str) -> dict:
    """A job that would measure for a minute: only a timeout or a cancellation ends it early."""
    return make_job(transport, model, job_id=job_id, measure={"iterations": 10 ** 9, "min_seconds": 60},
                    timeout_s=300)


def test_timeout_closes_stdin_first_so_the_agent_reports_and_unlocks(transport, onnx_model):
    result = transport.run_agent(_endless(transport, onnx_model, "stopped"), timeout_s=5)
    assert result["status"] == "error" and result["error"]["stage"] == "timeout"
    assert "stdin closed, so it stopped and reported" in result["error"]["message"], result["error"]
    # The agent's own last words: it saw EOF, stopped as on SIGTERM, then exited.
    assert "cancelled: stdin closed" in result["error"]["stderr_tail"]
    assert result["transport"]["returncode"] == 0
    assert not _load_agent().lock_is_held(str(transport.workdir))


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's reaper may take its time)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


HOST_SCRIPT = """
import json, pathlib, sys
sys.path.insert(0, sys.argv[1])
from devices.transport import LocalTransport
LocalTransport(pathlib.Path(sys.argv[2])).run_agent(json.loads(sys.argv[3]), 300)
"""


def test_an_agent_whose_harness_died_stops_and_unlocks(transport, onnx_model):
    """SIGKILL the host process: the kernel closes the agent's stdin with it, and the agent stops."""
    job = _endless(transport, onnx_model, "orphan")
    host = subprocess.Popen([sys.executable, "-c", HOST_SCRIPT, str(ROOT), str(transport.workdir), json.dumps(job)])
    try:
        pid = _wait_for_lock_holder(transport.workdir, "orphan")
        time.sleep(0.5)
    finally:
        host.kill()
        host.wait()
    agent = _load_agent()
    deadline = time.monotonic() + 30  # the job alone would hold the lock for more than a minute
    while (_running(pid) or agent.lock_is_held(str(transport.workdir))) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _running(pid)
    if alive:  # a failure must not leave the orphan measuring (and loading the machine) for minutes
        os.kill(pid, signal.SIGKILL)
    assert not alive
    assert not agent.lock_is_held(str(transport.workdir))


def test_a_cancelled_run_agent_stops_its_agent_before_raising(transport, onnx_model):
    """Ctrl-C while run_agent waits: the agent is stopped (and the lock free) by the time the exception is seen."""
    job = _endless(transport, onnx_model, "interrupted")

    def interrupt_when_measuring() -> None:
        _wait_for_lock_holder(transport.workdir, "interrupted")
        time.sleep(0.5)
        _thread.interrupt_main()

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a worker may ignore SIGINT
    try:
        threading.Thread(target=interrupt_when_measuring, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            transport.run_agent(job, 300)
    finally:
        signal.signal(signal.SIGINT, previous)
    pid = json.loads((transport.workdir / "agent.lock").read_text())["pid"]
    assert not _running(pid)
    assert not _load_agent().lock_is_held(str(transport.workdir))


def test_run_agent_sends_one_watched_line(tmp_path):
    """What the agent receives from run_agent: the job as one line with watch_stdin, and stdin still open."""
    recorder = tmp_path / "recorder"
    recorder.write_text("#!/bin/sh\nhead -n 1 > \"$(dirname \"$0\")/got\"\n"
                        "if timeout 1 cat > /dev/null; then echo closed; else echo open; fi\n")
    recorder.chmod(0o755)
    t = LocalTransport(tmp_path / "device", python=str(recorder))
    job = {"protocol": 2, "job_id": "line\nbreak", "workdir": str(t.workdir)}
    result = t.run_agent(job, timeout_s=30)
    assert (tmp_path / "got").read_text().count("\n") == 1
    assert json.loads((tmp_path / "got").read_text()) == {**job, "watch_stdin": True}
    assert "'open" in result["error"]["message"]  # stdin was still open a second after the job line


def test_close_stops_a_running_agent_and_its_caller_gets_the_cancelled_result(transport, onnx_model):
    """What an interrupted sweep does: `close()` from another thread while `run_agent` waits."""
    job = _endless(transport, onnx_model, "closed")
    results: list[dict] = []
    waiter = threading.Thread(target=lambda: results.append(transport.run_agent(job, timeout_s=300)))
    waiter.start()
    pid = _wait_for_lock_holder(transport.workdir, "closed")
    started = time.monotonic()
    transport.close()
    waiter.join(timeout=30)
    assert not waiter.is_alive() and time.monotonic() - started < 15
    assert not _running(pid) and not _load_agent().lock_is_held(str(transport.workdir))
    (result,) = results
    assert result["status"] == "error" and "cancelled: stdin closed" in json.dumps(result)
