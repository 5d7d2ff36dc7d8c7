"""Device-lab faults: the agent cancelled through its stdin, crashing, probed runtime by runtime, and ARM CPUs.

Real parts: the agent runs as a subprocess (as on a device) with a real
onnxruntime timing a real tiny model; crashes are real signals (SIGSEGV from
``ctypes.string_at(0)``, SIGABRT from ``os.abort()``); the runtime whose
import segfaults is a real package on PYTHONPATH.  The /proc/cpuinfo texts in
``cpuinfo/`` are as the kernels print them (Raspberry Pi 4B on 64- and
32-bit Raspberry Pi OS, Jetson Nano, a 4-vCPU Xeon VM).
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from helpers import load_agent, onnx_job

ROOT = pathlib.Path(__file__).resolve().parents[2]
AGENT = ROOT / "devices" / "agent.py"
CPUINFO = pathlib.Path(__file__).with_name("cpuinfo")
if str(ROOT) not in sys.path:  # the repository may not be pip-installed
    sys.path.insert(0, str(ROOT))

from devices.check import DeviceCheck, check_device, probe_failure  # noqa: E402
from devices.config import parse_device  # noqa: E402
from devices.transport import LocalTransport, parse_agent_output, sha256_file  # noqa: E402

agent = load_agent("device_agent_faults_under_test")


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> pathlib.Path:
    """y = relu(x @ W + b), 16 -> 8, written with onnx.helper."""
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["z"]),
         helper.make_node("Relu", ["z"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        initializer=[numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "W"),
                     numpy_helper.from_array(rng.standard_normal((8,)).astype(np.float32), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def job_for(model: pathlib.Path, workdir: pathlib.Path, **overrides) -> dict:
    return onnx_job(str(model), sha256_file(model), [1, 16], **{"workdir": str(workdir), **overrides})


def endless(model: pathlib.Path, workdir: pathlib.Path, job_id: str, **overrides) -> dict:
    """A job that would measure for a minute: only a cancellation ends it early."""
    return job_for(model, workdir, job_id=job_id, measure={"iterations": 10 ** 9, "min_seconds": 60},
                   timeout_s=120, **overrides)


def start_agent(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(AGENT), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def wait_for_lock_holder(workdir: pathlib.Path, job_id: str, timeout: float = 60) -> dict:
    """What the agent writes into agent.lock once it holds the device lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            info = json.loads((workdir / "agent.lock").read_text())
            if info.get("job_id") == job_id:
                return info
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never took the device lock in {workdir}")


def wait_for_stderr_line(proc: subprocess.Popen, needle: bytes, timeout: float = 60) -> bytes:
    """Read the agent's stderr until a line contains `needle`; return what was read."""
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} never appeared on the agent's stderr:\n{seen.decode()}")


# ----- item 1: the stdin watchdog -------------------------------------------------

def test_closing_stdin_mid_measure_stops_the_agent_and_frees_the_lock(onnx_model, tmp_path):
    proc = start_agent()
    try:
        proc.stdin.write((json.dumps(endless(onnx_model, tmp_path, "cancelled", watch_stdin=True)) + "\n").encode())
        proc.stdin.flush()
        wait_for_lock_holder(tmp_path, "cancelled")
        log = wait_for_stderr_line(proc, b"stage measure member tiny round 0")
        proc.stdin.close()  # the transport gives up (or its connection died)
        proc.wait(timeout=15)  # the job alone would measure for a minute
        out, err = proc.stdout.read(), log + proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["status"] == "error" and result["job_id"] == "cancelled"
    assert result["error"]["message"].startswith("cancelled: stdin closed"), result["error"]
    assert result["error"]["stage"] == "measure"
    assert [m["status"] for m in result["members"]] == ["error"]
    assert "watch_stdin" not in result["settings"]
    assert b"cancelled: stdin closed" in err
    assert not agent.lock_is_held(str(tmp_path))
    # A second job takes the lock at once: it never waits for it.
    second = subprocess.run([sys.executable, str(AGENT)], input=json.dumps(job_for(onnx_model, tmp_path)),
                            capture_output=True, text=True, timeout=120)
    assert json.loads(second.stdout)["status"] == "ok", second.stderr
    assert "waiting for the device lock" not in second.stderr


def test_an_agent_whose_stderr_leads_nowhere_still_stops_when_stdin_closes(onnx_model, tmp_path):
    """When the harness or sshd's session dies, the kernel closes the agent's stdin and its stderr's reader, in
    either order. The watchdog logs why it stops before it stops the job: that line must not kill it (EPIPE),
    or the orphan measures on with the lock held (seen in CI after a Ctrl-C'd SSH sweep)."""
    proc = start_agent()
    try:
        proc.stdin.write((json.dumps(endless(onnx_model, tmp_path, "deaf", watch_stdin=True)) + "\n").encode())
        proc.stdin.flush()
        wait_for_lock_holder(tmp_path, "deaf")
        wait_for_stderr_line(proc, b"stage measure member tiny round 0")
        proc.stderr.close()  # nobody reads the agent's stderr any more
        proc.stdin.close()
        proc.wait(timeout=15)  # the job alone would measure for a minute
        out = proc.stdout.read()
    finally:
        proc.kill()
        proc.wait()
    result = json.loads(out)
    assert result["status"] == "error" and result["error"]["message"].startswith("cancelled: stdin closed")
    assert not agent.lock_is_held(str(tmp_path))


def running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (a re-parented one's reaper may be slow)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_an_agent_whose_parent_dies_stops_though_its_stdin_stays_open(onnx_model, tmp_path):
    """The agent's parent (sshd's session, the harness) exits but something still holds the stdin pipe: the
    watchdog sees the agent re-parented within a poll or two and stops it as a closed stdin would."""
    stdin_r, stdin_w = os.pipe()
    out_path, err_path = tmp_path / "out.json", tmp_path / "err.log"
    # the parent starts the agent on the pipe, prints its pid and exits when its own stdin closes; the test
    # keeps the write end of the agent's stdin
    launcher = ("import subprocess, sys\n"
                "p = subprocess.Popen([sys.executable, sys.argv[1]], stdin=int(sys.argv[2]), pass_fds=[int(sys.argv[2])],"
                " stdout=open(sys.argv[3], 'wb'), stderr=open(sys.argv[4], 'wb'))\n"
                "print(p.pid, flush=True)\n"
                "sys.stdin.read()\n")
    parent = subprocess.Popen([sys.executable, "-c", launcher, str(AGENT), str(stdin_r), str(out_path),
                               str(err_path)], pass_fds=[stdin_r], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    os.close(stdin_r)
    pid = int(parent.stdout.readline())
    try:
        os.write(stdin_w, (json.dumps(endless(onnx_model, tmp_path, "orphan", watch_stdin=True)) + "\n").encode())
        wait_for_lock_holder(tmp_path, "orphan")
        deadline = time.monotonic() + 60  # into the measurement, as the closed-stdin test does
        while time.monotonic() < deadline and b"stage measure member tiny round 0" not in err_path.read_bytes():
            time.sleep(0.1)
        parent.stdin.close()  # the parent exits; the agent's stdin stays open
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30  # the job alone would measure for a minute
        while time.monotonic() < deadline and running(pid):
            time.sleep(0.1)
        assert not running(pid), err_path.read_text()
    finally:
        os.close(stdin_w)
        if running(pid):
            os.kill(pid, signal.SIGKILL)
    err = err_path.read_text()
    result = json.loads(out_path.read_text())
    assert result["status"] == "error" and result["job_id"] == "orphan"
    assert result["error"]["message"].startswith("cancelled: the process that started the agent is gone"), err
    assert "the process that started the agent is gone" in err
    assert not agent.lock_is_held(str(tmp_path))


def test_watched_stdin_left_open_does_not_disturb_the_job(onnx_model, tmp_path):
    """The job runs to its end, its --cold child (given its job and a closed stdin) measures, the agent exits."""
    proc = start_agent()
    try:
        proc.stdin.write((json.dumps(job_for(onnx_model, tmp_path, watch_stdin=True)) + "\n").encode())
        proc.stdin.flush()
        out = proc.stdout.read()  # EOF once the agent has exited: its stdin is still open here
        proc.wait(timeout=30)
        assert not proc.stdin.closed
    finally:
        proc.kill()
        proc.wait()
    result = json.loads(out)
    assert result["status"] == "ok", result["error"]
    member = result["members"][0]
    assert member["status"] == "ok" and len(member["samples_ns"]) == 10
    assert member["cold"] is not None and member["cold"]["load_s"] > 0, member["warnings"]


@pytest.mark.parametrize("layout", ["indented", "one line"])
def test_without_watch_stdin_the_job_is_read_to_eof_as_before(onnx_model, tmp_path, layout):
    """The old protocol: the job (any layout), then EOF, which cancels nothing."""
    job = job_for(onnx_model, tmp_path)
    text = json.dumps(job, indent=1) if layout == "indented" else json.dumps(job) + "\n"
    proc = subprocess.run([sys.executable, str(AGENT)], input=text, capture_output=True, text=True, timeout=120)
    result = json.loads(proc.stdout)
    assert result["status"] == "ok", result["error"]
    assert len(result["members"][0]["samples_ns"]) == 10
    assert "cancelled" not in proc.stderr


def test_watch_stdin_on_a_job_read_to_eof_is_a_parse_error(onnx_model, tmp_path):
    text = json.dumps(job_for(onnx_model, tmp_path, watch_stdin=True), indent=1)
    proc = subprocess.run([sys.executable, str(AGENT)], input=text, capture_output=True, text=True, timeout=60)
    result = json.loads(proc.stdout)
    assert result["error"]["stage"] == "parse"
    assert "job.watch_stdin" in result["error"]["message"] and "ONE line" in result["error"]["message"]


def test_a_malformed_watch_stdin_is_refused_without_waiting_for_eof(onnx_model, tmp_path):
    proc = start_agent()
    try:
        proc.stdin.write((json.dumps(job_for(onnx_model, tmp_path, watch_stdin="yes")) + "\n").encode())
        proc.stdin.flush()
        out = proc.stdout.read()  # stdin stays open: the agent must answer anyway
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    error = json.loads(out)["error"]
    assert error["stage"] == "parse"
    assert "job.watch_stdin must be boolean, got str 'yes'" in error["message"]


def test_parse_job_defaults_watch_stdin_to_false(onnx_model, tmp_path):
    job = job_for(onnx_model, tmp_path)
    assert agent.parse_job(json.dumps(job))["watch_stdin"] is False
    assert agent.parse_job(json.dumps({**job, "watch_stdin": True}))["watch_stdin"] is True


# ----- item 2: a crashed agent's stderr says where it died ------------------------

CRASHING_AGENT = """
import ctypes, importlib.util, os, resource, sys
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
spec = importlib.util.spec_from_file_location("agent", sys.argv[1])
agent = importlib.util.module_from_spec(spec)
spec.loader.exec_module(agent)
WHERE, HOW, AT_CALL = sys.argv[2], sys.argv[3], int(sys.argv[4])

def crash():
    if HOW == "abort":
        os.abort()
    ctypes.string_at(0)  # SIGSEGV

class CrashingBackend(agent.Backend):
    calls = 0
    def load(self, progress):
        if WHERE == "load":
            crash()
    def run_once(self):
        CrashingBackend.calls += 1
        if WHERE == "run" and CrashingBackend.calls == AT_CALL:
            crash()

agent.BACKENDS["onnxruntime"] = CrashingBackend
sys.exit(agent.main([]))
"""

# warm-up 2, then per round: re-warm 20 (the default) and 5 timed runs; call 2 + 25 + 20 + 1 is round 1's first.
CRASHES = [("load", "abort", 0, "stage load member tiny", "Fatal Python error: Aborted", signal.SIGABRT, "in load"),
           ("run", "segv", 48, "stage measure member tiny round 1", "Fatal Python error: Segmentation fault",
            signal.SIGSEGV, "in run_once")]


@pytest.mark.parametrize("where,how,at_call,stage,fatal,signum,frame", CRASHES,
                         ids=["abort-in-load", "segv-in-measure"])
def test_a_crash_leaves_the_stage_and_a_traceback_on_stderr(tmp_path, where, how, at_call, stage, fatal, signum,
                                                            frame):
    script = tmp_path / "crashing_agent.py"
    script.write_text(CRASHING_AGENT)
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"the crashing backend never reads it")
    job = job_for(artifact, tmp_path, cold_start=False)
    proc = subprocess.run([sys.executable, str(script), str(AGENT), where, how, str(at_call)], input=json.dumps(job),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signum, proc.stderr
    assert proc.stdout == ""
    result = parse_agent_output(job, proc.stdout, proc.stderr, proc.returncode)  # what a transport records
    assert result["error"]["message"] == f"agent killed by {signal.Signals(signum).name} before it wrote a result"
    tail = result["error"]["stderr_tail"]
    stage_lines = [line for line in tail.splitlines() if "] stage " in line]
    assert stage_lines[-1].endswith(stage), stage_lines
    assert fatal in tail and "most recent call first" in tail and frame in tail
    assert tail.index(stage_lines[-1]) < tail.index(fatal)


# ----- item 3: the probe, runtime by runtime, and busy ----------------------------

@pytest.fixture
def segfaulting_tensorrt(tmp_path, monkeypatch) -> pathlib.Path:
    """A `tensorrt` package whose import segfaults the interpreter (as a broken CUDA install can)."""
    site = tmp_path / "site"
    (site / "tensorrt").mkdir(parents=True)
    (site / "tensorrt" / "__init__.py").write_text("import ctypes\nctypes.string_at(0)\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    return site


def test_a_runtime_whose_import_crashes_costs_only_its_own_entry(tmp_path, segfaulting_tensorrt):
    with LocalTransport(tmp_path / "device") as transport:
        doc = transport.probe()
    assert doc["status"] == "ok", doc
    trt = doc["runtimes"]["tensorrt"]
    assert trt["importable"] is False and trt["error"] == "import crashed: killed by SIGSEGV"
    assert "Fatal Python error: Segmentation fault" in trt["stderr_tail"]
    assert doc["runtimes"]["onnxruntime"]["importable"] is True
    assert "CPUExecutionProvider" in doc["runtimes"]["onnxruntime"]["providers"]
    assert doc["runtimes"]["numpy"]["importable"] is True and doc["runtimes"]["numpy"]["version"]
    assert doc["env"]["python"]["version"] == ".".join(map(str, sys.version_info[:3]))

    spec = parse_device("here", {"kind": "local", "workdir": str(tmp_path / "device"),
                                 "runtimes": {"onnxruntime": {}, "tensorrt": {}}})
    check = check_device(spec)
    assert check.error is None and check.python == doc["env"]["python"]["version"]
    assert check.runtimes["onnxruntime"] == doc["runtimes"]["onnxruntime"]["version"]
    assert check.runtimes["tensorrt"] is None and not check.ok
    assert "tensorrt: import crashed: killed by SIGSEGV" in check.warnings


def test_probe_of_a_busy_device_names_the_job_holding_the_lock(onnx_model, tmp_path):
    workdir = tmp_path / "device"
    workdir.mkdir()
    proc = start_agent()
    try:
        proc.stdin.write(json.dumps(endless(onnx_model, workdir, "long-job")).encode())
        proc.stdin.close()
        holder = wait_for_lock_holder(workdir, "long-job")
        spec = parse_device("here", {"kind": "local", "workdir": str(workdir), "runtimes": ["onnxruntime"]})
        check = check_device(spec)
        doc = LocalTransport(workdir).probe()
    finally:
        proc.kill()
        proc.wait()
    assert holder["pid"] == proc.pid
    expected = f"busy: lock held by job long-job since {holder['since_utc']}, pid {proc.pid}"
    assert check.error == expected
    assert doc["busy"] is True and doc["busy_reason"] == expected
    assert doc["lock_holder"] == holder
    assert doc["runtimes"]["onnxruntime"]["note"] == f"not imported ({expected})"
    assert "providers" not in doc["runtimes"]["onnxruntime"]  # found, not imported


def test_lock_file_records_pid_job_and_since(tmp_path):
    with agent.DeviceLock(str(tmp_path), agent.Deadline(5), "g-7"):
        with open(tmp_path / "agent.lock") as f:
            info = json.loads(f.read())
        assert agent.lock_is_held(str(tmp_path))
    assert info["pid"] == os.getpid() and info["job_id"] == "g-7" and info["since_utc"].endswith("+00:00")
    assert agent.describe_lock_holder(info) == f"job g-7 since {info['since_utc']}, pid {os.getpid()}"
    assert agent.describe_lock_holder(None).startswith("another agent")


def fake_python(tmp_path: pathlib.Path, signum: int) -> str:
    """An "interpreter" that dies of `signum` at once, as an agent killed by the OOM killer does."""
    exe = tmp_path / f"python-{signum}"
    exe.write_text(f"#!/bin/sh\nkill -{signum} $$\n")
    exe.chmod(0o755)
    return str(exe)


@pytest.mark.parametrize("signum", [signal.SIGSEGV, signal.SIGKILL, signal.SIGHUP])
def test_check_names_the_signal_that_killed_a_local_probe(tmp_path, signum):
    spec = parse_device("here", {"kind": "local", "workdir": str(tmp_path / "device"),
                                 "python": fake_python(tmp_path, signum), "runtimes": ["onnxruntime"]})
    check = check_device(spec)
    assert check.error == f"transport: agent killed by {signal.Signals(signum).name} before it wrote a result"


def test_check_reads_an_ssh_minus_one_as_an_unknown_signal():
    """paramiko's -1 (sshd sent an exit signal): as a subprocess code it would read SIGHUP, which it is not."""
    as_passed_on = parse_agent_output({}, "", "Fatal Python error: Segmentation fault\n", -1)
    assert "SIGHUP" in as_passed_on["error"]["message"]  # what a -1 read as a subprocess code says
    annotated = {**as_passed_on, "transport": {"name": "pi", "returncode": -1, "stderr_tail": ""}}
    for doc in (as_passed_on, annotated):
        line = probe_failure(doc, "ssh")
        assert "SIGHUP" not in line
        assert line == ("transport: agent killed by a signal (exit status unknown; the OOM killer?) before it wrote a result "
                        "(Fatal Python error: Segmentation fault)")
    dash = {**parse_agent_output({}, "", "", 137), "transport": {"name": "pi", "returncode": 137}}
    assert probe_failure(dash, "ssh") == ("transport: agent exited with code 137 without a result document "
                                          "(128 + SIGKILL: killed by a signal?)")
    assert probe_failure(parse_agent_output({}, "", "", -1), "local").endswith("killed by SIGHUP before it wrote "
                                                                               "a result")


def test_check_shows_the_probe_warnings(tmp_path, monkeypatch):
    """A throttled Raspberry Pi: `vcgencmd` (the Pi firmware tool, which this machine lacks, hence a stand-in on
    PATH) reports under-voltage; the probe's warning reaches the check."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vcgencmd").write_text("#!/bin/sh\necho throttled=0x50005\n")
    (bin_dir / "vcgencmd").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    spec = parse_device("here", {"kind": "local", "workdir": str(tmp_path / "device"), "runtimes": ["onnxruntime"]})
    check = check_device(spec)
    assert isinstance(check, DeviceCheck) and check.error is None and check.ok
    assert "throttling seen (vcgencmd get_throttled 0x50005): under_voltage_now, throttled_now" in check.warnings


def test_probe_busy_lock_without_a_record_is_still_busy(tmp_path):
    with open(tmp_path / "agent.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = subprocess.run([sys.executable, str(AGENT), "--probe", "--workdir", str(tmp_path)],
                              capture_output=True, text=True, timeout=60)
    doc = json.loads(proc.stdout)
    assert doc["busy"] is True and doc["lock_holder"] is None
    assert doc["busy_reason"] == "busy: lock held by another agent (its lock file does not say which yet)"


# ----- item 4: ARM /proc/cpuinfo ------------------------------------------------

def cpuinfo(name: str) -> str:
    return (CPUINFO / name).read_text()


def test_raspberry_pi_4b_64bit_cpuinfo():
    info = agent.parse_cpuinfo(cpuinfo("raspberry_pi_4b_64bit.txt"))
    assert info["model"] == "Raspberry Pi 4 Model B Rev 1.1 (4 x Cortex-A72)"
    assert info["cores"] == "4 x Cortex-A72" and info["board_model"] == "Raspberry Pi 4 Model B Rev 1.1"
    assert info["hardware"] == "BCM2835" and info["cpuinfo"]["Revision"] == "c03111"
    assert info["cpuinfo"]["CPU implementer"] == "0x41" and info["cpuinfo"]["CPU part"] == "0xd08"


def test_raspberry_pi_4b_32bit_cpuinfo_ignores_the_generic_model_name():
    info = agent.parse_cpuinfo(cpuinfo("raspberry_pi_4b_32bit.txt"))
    assert info["cpuinfo"]["model name"] == "ARMv7 Processor rev 3 (v7l)"
    assert info["model"] == "Raspberry Pi 4 Model B Rev 1.1 (4 x Cortex-A72)" and info["hardware"] == "BCM2711"


def test_jetson_nano_cpuinfo():
    text = cpuinfo("jetson_nano.txt")
    assert "model name" not in text and "Model" not in text
    assert agent.parse_cpuinfo(text)["model"] == "4 x Cortex-A57"
    board = "NVIDIA Jetson Nano Developer Kit"  # /proc/device-tree/model
    info = agent.parse_cpuinfo(text, board)
    assert info["model"] == f"{board} (4 x Cortex-A57)" and info["board_model"] == board


def test_xeon_cpuinfo():
    info = agent.parse_cpuinfo(cpuinfo("xeon_platinum_8175m.txt"))
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8175M CPU @ 2.50GHz"
    assert info["cores"] is None and info["hardware"] is None


def test_mixed_and_unknown_arm_cores_are_counted_apart():
    """A Jetson TX2 (2 x Denver 2 + 4 x Cortex-A57), built from the Nano's text, and a core nobody named."""
    blocks = cpuinfo("jetson_nano.txt").strip().split("\n\n")
    denver = [b.replace("CPU implementer\t: 0x41", "CPU implementer\t: 0x4e").replace("0xd07", "0x003")
              for b in blocks[:2]]
    assert agent.parse_cpuinfo("\n\n".join(denver + blocks))["model"] == "2 x Denver 2 + 4 x Cortex-A57"
    odd = blocks[0].replace("CPU implementer\t: 0x41", "CPU implementer\t: 0x51").replace("0xd07", "0x805")
    assert agent.parse_cpuinfo(odd)["model"] == "1 x Qualcomm part 0x805"


@pytest.mark.parametrize("implementer,part,name", [
    (0x41, 0xd03, "Cortex-A53"), (0x41, 0xd05, "Cortex-A55"), (0x41, 0xd07, "Cortex-A57"),
    (0x41, 0xd08, "Cortex-A72"), (0x41, 0xd09, "Cortex-A73"), (0x41, 0xd0b, "Cortex-A76"),
    (0x41, 0xd0c, "Neoverse-N1"), (0x41, 0xd40, "Neoverse-V1"), (0x41, 0xd4f, "Neoverse-V2"),
    (0x4e, 0x003, "Denver 2"), (0x4e, 0x004, "Carmel"), (0x99, 0x001, "implementer 0x99 part 0x001")])
def test_arm_core_names(implementer, part, name):
    assert agent.arm_core_name(implementer, part) == name
