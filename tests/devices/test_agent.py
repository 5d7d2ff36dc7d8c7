"""Tests of the device agent (devices/agent.py, protocol 2), run as the devices run it.

The agent is started as a subprocess with a group job on stdin and real
runtimes (onnxruntime, torch CPU) timing a tiny real model exported here, in
interleaved rounds, with a real ``--cold`` child per member.  TensorRT and
CUDA cannot run on a CPU-only machine; their pure helper logic (engine cache
key, API selection) is tested directly, and the CUDA test skips.  The
deterministic round-design tests (drift, orders, cool-down) are in
test_agent_rounds.py.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from helpers import load_agent

ROOT = pathlib.Path(__file__).resolve().parents[2]
AGENT = ROOT / "devices" / "agent.py"


agent = load_agent("device_agent_under_test")


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny Linear+GELU model exported to ONNX, TorchScript (traced + frozen) and .pt2."""
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)).eval()
    x = torch.randn(1, 16)
    paths = {"onnx": folder / "tiny.onnx", "torchscript": folder / "tiny.ts", "pt2": folder / "tiny.pt2"}
    with warnings.catch_warnings():  # TorchScript and the legacy ONNX exporter warn that they are deprecated
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(paths["onnx"]), dynamo=False, input_names=["x"], output_names=["y"])
        with torch.no_grad():
            torch.jit.save(torch.jit.freeze(torch.jit.trace(model, (x,))), str(paths["torchscript"]))
        torch.export.save(torch.export.export(model, (x,)), str(paths["pt2"]))
    return paths


def member(path: pathlib.Path, fmt: str, member_id: str = "m0", shape=(1, 16)) -> dict:
    return {"id": member_id, "artifact": {"path": str(path), "sha256": sha256(path), "format": fmt},
            "input": {"shape": list(shape), "dtype": "float32"}}


def make_job(path: pathlib.Path | None, fmt: str, runtime: str, workdir: pathlib.Path, members=None,
             **overrides) -> dict:
    """A protocol-3 job; by default one member (id "m0") timing `path`, in 2 rounds of 10 iterations."""
    job = {
        "protocol": 3,
        "job_id": "test-job",
        "runtime": runtime,
        "options": {"threads": 1},
        "members": members if members is not None else [member(path, fmt)],
        "warmup": {"iterations": 3},
        "measure": {"iterations": 20, "min_seconds": 0},
        "rounds": 2,
        "seed": 0,
        "rewarm": {"iterations": 2},
        "isolate": False,
        "cooldown": None,
        "timeout_s": 60,
        "workdir": str(workdir),
    }
    job.update(overrides)
    return job


def run_agent(job, python: str = sys.executable, timeout: float = 120, args=()) -> dict:
    """Run the agent; check it printed exactly one JSON document and exited 0."""
    text = job if isinstance(job, str) else json.dumps(job)
    proc = subprocess.run([python, str(AGENT), *args], input=text, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"expected one JSON line on stdout, got {proc.stdout!r}"
    return json.loads(lines[0])


def only(result: dict) -> dict:
    """The one member of a one-member group."""
    assert len(result["members"]) == 1, result["members"]
    return result["members"][0]


def by_id(result: dict) -> dict:
    return {m["id"]: m for m in result["members"]}


def assert_ok(result: dict) -> None:
    assert result["status"] == "ok", json.dumps(result.get("error"), indent=1)
    for m in result["members"]:
        assert m["status"] == "ok", json.dumps(m.get("error"), indent=1)


GROUP_KEYS = {"protocol", "agent_version", "job_id", "status", "runtime", "settings", "env", "rounds", "seed", "isolated",
              "round_orders", "cooldown", "warnings", "error", "timings_s", "started_utc", "finished_utc", "members"}
MEMBER_KEYS = {"id", "status", "format", "artifact_sha256", "backend", "providers", "provider_fallback", "timer",
               "samples_ns", "sample_rounds", "stats", "warmup", "measure", "cold", "options", "warnings", "error"}
COLD_KEYS = {"load_s", "build_s", "first_inference_ns", "peak_rss_bytes", "base_rss_bytes", "gpu_peak_bytes"}


def check_samples_and_stats(m: dict, expected_n: int, rounds: int | None = None) -> None:
    samples = m["samples_ns"]
    assert len(samples) == expected_n
    assert all(isinstance(s, int) and s > 0 for s in samples)
    assert len(m["sample_rounds"]) == expected_n  # every sample keeps its round
    assert m["sample_rounds"] == sorted(m["sample_rounds"])  # one block per round, rounds in order
    if rounds is not None:
        assert set(m["sample_rounds"]) <= set(range(rounds))
        counts = [m["sample_rounds"].count(r) for r in range(rounds)]
        assert counts == m["measure"]["round_iterations"]
    stats = m["stats"]
    assert stats["n"] == expected_n
    assert stats["median_ns"] == pytest.approx(statistics.median(samples))
    assert stats["mean_ns"] == pytest.approx(statistics.fmean(samples))
    assert stats["min_ns"] == min(samples) and stats["max_ns"] == max(samples)
    assert stats["p90_ns"] == pytest.approx(float(np.percentile(samples, 90)))
    assert stats["p99_ns"] == pytest.approx(float(np.percentile(samples, 99)))
    assert stats["std_ns"] == pytest.approx(statistics.stdev(samples))
    assert stats["cv"] == pytest.approx(stats["std_ns"] / stats["mean_ns"])
    assert stats["min_ns"] <= stats["median_ns"] <= stats["p90_ns"] <= stats["p99_ns"] <= stats["max_ns"]


def check_cold(cold: dict) -> None:
    assert set(cold) == COLD_KEYS
    assert cold["load_s"] > 0 and cold["build_s"] == 0.0
    assert isinstance(cold["first_inference_ns"], int) and cold["first_inference_ns"] > 0
    # A Python with onnxruntime or torch imported is well above 10 MB and below 16 GB.
    assert isinstance(cold["peak_rss_bytes"], int) and 10 * 2 ** 20 < cold["peak_rss_bytes"] < 16 * 2 ** 30


# ----- real runs -------------------------------------------------------------

def test_onnxruntime_cpu_result_document(models, tmp_path):
    import onnxruntime

    job = make_job(None, "onnx", "onnxruntime", tmp_path, rounds=4, seed=7,
                   members=[member(models["onnx"], "onnx", "a"), member(models["onnx"], "onnx", "b")])
    result = run_agent(job)
    assert_ok(result)
    assert set(result) == GROUP_KEYS
    assert result["job_id"] == "test-job" and result["protocol"] == 3 == agent.PROTOCOL
    assert result["agent_version"] == agent.AGENT_VERSION == "3.0.0"
    assert result["runtime"] == "onnxruntime" and result["error"] is None
    assert result["rounds"] == 4 and result["seed"] == 7
    assert result["round_orders"] == agent.round_orders(["a", "b"], 7, 4)
    assert all(sorted(order) == ["a", "b"] for order in result["round_orders"])
    assert result["cooldown"] == [] and not any("cool-down" in w for w in result["warnings"])
    assert result["settings"]["rounds"] == 4 and result["settings"]["rewarm"] == {"iterations": 2}
    assert result["settings"]["isolate"] is False and result["settings"]["cooldown"] is None
    for phase in agent.TIMING_PHASES + ("total",):
        assert result["timings_s"][phase] >= 0, phase
    assert result["timings_s"]["cold"] > 0
    assert result["started_utc"] <= result["finished_utc"]

    assert [m["id"] for m in result["members"]] == ["a", "b"]
    for m in result["members"]:
        assert set(m) == MEMBER_KEYS
        assert m["format"] == "onnx" and m["artifact_sha256"] == sha256(models["onnx"])
        assert m["timer"] == "perf_counter"
        check_samples_and_stats(m, 20, rounds=4)
        assert m["measure"]["round_iterations"] == [5, 5, 5, 5]  # ceil(20 / 4) per round
        assert m["measure"]["stop_reason"] == "target" and m["measure"]["rounds"] == 4
        assert m["measure"]["rewarm_iterations"] == 4 * 2 and m["measure"]["loads"] == 1
        assert m["warmup"]["iterations"] == 3
        assert m["providers"] == ["CPUExecutionProvider"] and m["provider_fallback"] is False
        assert m["backend"]["threads"] == 1 and m["backend"]["graph_optimization"] == "all"
        assert m["error"] is None
        assert all(w.startswith("high variation") for w in m["warnings"]), m["warnings"]  # tiny model, shared CPU
        check_cold(m["cold"])
        assert m["cold"]["gpu_peak_bytes"] is None  # onnxruntime does not tell it

    env = result["env"]
    assert env["hostname"]
    assert env["cpu"]["logical_cores"] >= 1 and env["cpu"]["model"]
    assert env["os"]["system"] == "Linux"
    assert env["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert env["runtimes"]["onnxruntime"] == onnxruntime.__version__
    assert set(env["gpu"]) >= {"name", "driver"}
    for when in ("before", "after"):
        snap = env[when]
        assert isinstance(snap["temperatures_c"], dict) and isinstance(snap["cpufreq"], dict)
        assert "pi_throttled" in snap and "jetson_nvpmodel" in snap and "nvidia_smi" in snap
    assert env["before"]["utc"] <= env["after"]["utc"]


def test_isolate_mode_gives_the_same_shapes(models, tmp_path):
    members = [member(models["onnx"], "onnx", "a"), member(models["onnx"], "onnx", "b")]
    shared = make_job(None, "onnx", "onnxruntime", tmp_path, rounds=3, members=members,
                      measure={"iterations": 9, "min_seconds": 0})
    isolated = dict(shared, isolate=True)
    a, b = run_agent(shared), run_agent(isolated)
    assert_ok(a)
    assert_ok(b)
    assert set(a) == set(b) == GROUP_KEYS
    assert b["settings"]["isolate"] is True
    assert a["round_orders"] == b["round_orders"]  # same seed, same orders
    for ma, mb in zip(a["members"], b["members"]):
        assert set(ma) == set(mb) == MEMBER_KEYS
        assert set(ma["measure"]) == set(mb["measure"]) and set(ma["warmup"]) == set(mb["warmup"])
        assert set(ma["backend"]) == set(mb["backend"]) and set(ma["stats"]) == set(mb["stats"])
        check_samples_and_stats(mb, 9, rounds=3)
        assert ma["measure"]["loads"] == 1 and mb["measure"]["loads"] == 3  # isolate: one load per block
        assert mb["warmup"]["iterations"] == 3  # the full warm-up once, in the member's first block
        assert mb["measure"]["rewarm_iterations"] == 3 * 2
        check_cold(mb["cold"])


def test_cold_child_reports_load_first_inference_and_peak_rss(models, tmp_path):
    """`agent.py --cold` on a one-member job: its own small document with the cold-start figures."""
    job = make_job(models["onnx"], "onnx", "onnxruntime", tmp_path)
    doc = run_agent(job, args=["--cold"])
    assert doc["status"] == "ok" and doc["error"] is None and doc["id"] == "m0"
    assert doc["protocol"] == 3 and doc["agent_version"] == agent.AGENT_VERSION
    check_cold(doc["cold"])
    assert doc["cold"]["gpu_peak_bytes"] is None
    assert not (tmp_path / "agent.lock").exists()  # the child runs under its parent's lock, takes none
    two = make_job(None, "onnx", "onnxruntime", tmp_path,
                   members=[member(models["onnx"], "onnx", "a"), member(models["onnx"], "onnx", "b")])
    refused = run_agent(two, args=["--cold"])
    assert refused["status"] == "error" and refused["error"]["stage"] == "parse"
    assert "exactly one member" in refused["error"]["message"]


def test_measures_until_both_iterations_and_min_seconds(models, tmp_path):
    job = make_job(models["onnx"], "onnx", "onnxruntime", tmp_path,
                   warmup={"iterations": 0, "seconds": 0.1}, measure={"iterations": 5, "min_seconds": 0.3})
    result = run_agent(job)
    assert_ok(result)
    m = only(result)
    assert m["warmup"]["seconds"] >= 0.1
    assert len(m["samples_ns"]) > 5  # a tiny model runs far more than 5 times in 0.3 s
    assert m["measure"]["seconds"] >= 0.3
    assert all(s >= 0.15 for s in m["measure"]["round_seconds"])  # min_seconds / R per round
    check_samples_and_stats(m, len(m["samples_ns"]), rounds=2)


def test_max_iterations_caps_the_measurement(models, tmp_path):
    job = make_job(models["onnx"], "onnx", "onnxruntime", tmp_path,
                   measure={"iterations": 5, "min_seconds": 30, "max_iterations": 7})
    result = run_agent(job)
    assert_ok(result)
    m = only(result)
    assert len(m["samples_ns"]) == 7 and m["measure"]["stop_reason"] == "max_iterations"
    assert m["measure"]["round_iterations"] == [4, 3]  # the share of what is left, rounded up
    assert any("less than min_seconds" in w for w in m["warnings"])


def test_provider_fallback_is_flagged(models, tmp_path):
    job = make_job(models["onnx"], "onnx", "onnxruntime", tmp_path,
                   options={"execution_provider": "CUDAExecutionProvider"})
    result = run_agent(job)
    assert_ok(result)  # onnxruntime falls back to CPU: the run works, the flag says so
    m = only(result)
    assert m["provider_fallback"] is True
    assert m["providers"] == ["CPUExecutionProvider"]
    assert m["backend"]["requested_providers"] == ["CUDAExecutionProvider"]
    fallback = [w for w in m["warnings"] if "provider fallback" in w]
    assert len(fallback) == 1 and "CUDAExecutionProvider" in fallback[0]


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_torch_cpu(models, tmp_path, fmt):
    result = run_agent(make_job(models[fmt], fmt, "torch", tmp_path, options={"threads": 1, "device": "cpu"}))
    assert_ok(result)
    m = only(result)
    check_samples_and_stats(m, 20, rounds=2)
    assert m["backend"]["device"] == "cpu" and m["backend"]["threads"] == 1
    assert m["providers"] is None and m["timer"] == "perf_counter"
    check_cold(m["cold"])
    assert m["cold"]["gpu_peak_bytes"] is None  # CPU: no GPU memory
    assert result["env"]["runtimes"]["torch"].split("+")[0] == __import__("torch").__version__.split("+")[0]


def test_torch_cuda_on_a_cpu_machine_is_a_load_error(models, tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    job = make_job(models["torchscript"], "torchscript", "torch", tmp_path, options={"device": "cuda"})
    result = run_agent(job)
    assert result["status"] == "ok" and result["error"] is None  # the group ran; its member failed
    m = only(result)
    assert m["status"] == "error"
    assert m["error"]["stage"] == "load" and "cuda" in m["error"]["message"]
    assert m["cold"] is None and any(w.startswith("cold start not measured") for w in m["warnings"])
    assert m["samples_ns"] == [] and m["sample_rounds"] == []


def test_torch_cuda_gpu_peak_memory(models, tmp_path):
    """On a CUDA machine: CUDA-event timing and the cold child's torch.cuda.max_memory_allocated."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA here")
    job = make_job(models["torchscript"], "torchscript", "torch", tmp_path, options={"device": "cuda"})
    result = run_agent(job)
    assert_ok(result)
    m = only(result)
    assert m["timer"] == "cuda_events"
    check_samples_and_stats(m, 20, rounds=2)
    assert isinstance(m["cold"]["gpu_peak_bytes"], int) and m["cold"]["gpu_peak_bytes"] > 0


# ----- failures become error documents ------------------------------------------

def test_one_bad_member_is_an_error_member_the_other_is_timed(models, tmp_path):
    bad = member(models["onnx"], "onnx", "bad")
    bad["artifact"]["sha256"] = "0" * 64
    job = make_job(None, "onnx", "onnxruntime", tmp_path, rounds=3,
                   members=[bad, member(models["onnx"], "onnx", "good")])
    result = run_agent(job)
    assert result["status"] == "ok" and result["error"] is None
    assert [m["id"] for m in result["members"]] == ["bad", "good"]
    assert all(set(m) == MEMBER_KEYS for m in result["members"])
    members = by_id(result)
    err = members["bad"]
    assert err["status"] == "error" and err["error"]["stage"] == "verify"
    assert "sha256 mismatch" in err["error"]["message"]
    assert err["samples_ns"] == [] and err["sample_rounds"] == [] and err["stats"]["n"] == 0
    assert err["cold"] is None and err["artifact_sha256"] == "0" * 64
    good = members["good"]
    assert good["status"] == "ok"
    check_samples_and_stats(good, 21, rounds=3)  # ceil(20 / 3) = 7 per round
    check_cold(good["cold"])
    assert all(sorted(o) == ["bad", "good"] for o in result["round_orders"])  # the orders name every member
    assert result["env"]["python"]["version"]


def test_missing_artifact_is_a_verify_error(tmp_path):
    job = {"protocol": 3, "job_id": 7, "runtime": "onnxruntime", "workdir": str(tmp_path),
           "members": [{"id": "x", "input": {"shape": [1, 4]},
                        "artifact": {"path": str(tmp_path / "absent.onnx"), "sha256": "a" * 64, "format": "onnx"}}]}
    result = run_agent(job)
    m = only(result)
    assert m["error"]["stage"] == "verify" and "not found" in m["error"]["message"]
    assert result["job_id"] == 7 and result["rounds"] == agent.DEFAULT_ROUNDS


def test_protocol_1_job_is_refused(models, tmp_path):
    """A protocol-1 job (one artifact at the top) is never half-understood: parse error naming protocols 3 and 2."""
    job = {"protocol": 1, "job_id": "old", "artifact": {"path": str(models["onnx"]), "sha256": sha256(models["onnx"]),
                                                         "format": "onnx"},
           "runtime": "onnxruntime", "input": {"shape": [1, 16]}, "workdir": str(tmp_path)}
    result = run_agent(job)
    assert result["status"] == "error" and result["error"]["stage"] == "parse"
    message = result["error"]["message"]
    assert "speaks protocol 3 (and 2, without per-member options) only" in message
    assert "job.protocol is 1" in message and "\n" not in message
    assert result["members"] == [] and result["protocol"] == 3
    assert not (tmp_path / "agent.lock").exists()  # refused before taking the device
    for protocol in (None, 4, "3", True):
        result = run_agent(dict(job, protocol=protocol))
        assert result["error"]["stage"] == "parse" and "speaks protocol 3" in result["error"]["message"]


def _malformed(job: dict, edit) -> str:
    job = json.loads(json.dumps(job))
    edit(job)
    return json.dumps(job)


def _m0(job: dict) -> dict:
    return job["members"][0]


MALFORMED = [
    (lambda j: _m0(j)["artifact"].pop("sha256"), "job.members[0].artifact.sha256"),
    (lambda j: _m0(j)["artifact"].update(sha256="xyz"), "job.members[0].artifact.sha256"),
    (lambda j: j.pop("job_id"), "job.job_id"),
    (lambda j: j.update(protocol=1), "job.protocol"),
    (lambda j: j.update(runtime="tflite"), "job.runtime"),
    (lambda j: j.update(runtime="torch"), "job.members[0].artifact.format"),
    (lambda j: _m0(j)["input"].update(shape=[1, "16"]), "job.members[0].input.shape"),
    (lambda j: _m0(j)["input"].update(dtype="int8"), "job.members[0].input.dtype"),
    (lambda j: _m0(j).pop("id"), "job.members[0].id"),
    (lambda j: j["members"].append(dict(_m0(j))), "job.members[1].id"),
    (lambda j: j.update(members=[]), "job.members"),
    (lambda j: j.pop("members"), "job.members"),
    (lambda j: j["measure"].update(iterations="ten"), "job.measure.iterations"),
    (lambda j: j["measure"].update(iterations=True), "job.measure.iterations"),
    (lambda j: j["warmup"].update(seconds=-1), "job.warmup.seconds"),
    (lambda j: j.update(rounds=0), "job.rounds"),
    (lambda j: j.update(seed=1.5), "job.seed"),
    (lambda j: j.update(isolate="yes"), "job.isolate"),
    (lambda j: j["rewarm"].update(iterations=-1), "job.rewarm.iterations"),
    (lambda j: j.update(cooldown={"max_temp_c": "hot"}), "job.cooldown.max_temp_c"),
    (lambda j: j.update(cooldown={"max_temp_c": 60, "max_wait_s": -1}), "job.cooldown.max_wait_s"),
    (lambda j: j.update(timeout_s=0), "job.timeout_s"),
    (lambda j: j["options"].update(threads=0), "job.options.threads"),
    (lambda j: j["options"].update(providers=[3]), "job.options.providers"),
    (lambda j: j["options"].update(allow_spinning="no"), "job.options.allow_spinning must be boolean"),
    (lambda j: j["options"].update(allow_spinning=1), "job.options.allow_spinning must be boolean"),
    (lambda j: j["options"].update(execution_mode="async"), "job.options.execution_mode must be sequential|parallel"),
    (lambda j: j["options"].update(inter_op_threads=0), "job.options.inter_op_threads must be >= 1"),
    (lambda j: j["options"].update(inter_op_threads=True), "job.options.inter_op_threads must be integer"),
    (lambda j: _m0(j).update(options=[1]), "job.members[0].options must be object"),
    (lambda j: _m0(j).update(options={"threads": 0}), "job.members[0].options.threads must be >= 1"),
    (lambda j: _m0(j).update(options={"execution_mode": 2}), "job.members[0].options.execution_mode must be string"),
    (lambda j: (j.update(protocol=2), _m0(j).update(options={"threads": 2})),
     "job.members[0].options needs protocol 3, the job says protocol 2"),
    (lambda j: j.pop("workdir"), "job.workdir"),
]


@pytest.mark.parametrize("edit,field", MALFORMED, ids=[f for _, f in MALFORMED])
def test_malformed_job_names_the_field(tmp_path, edit, field):
    artifact = tmp_path / "m.onnx"
    artifact.write_bytes(b"x")  # never read: parsing fails first
    base = make_job(artifact, "onnx", "onnxruntime", tmp_path)
    result = run_agent(_malformed(base, edit))
    assert result["status"] == "error"
    assert result["error"]["stage"] == "parse"
    assert field in result["error"]["message"], result["error"]["message"]
    assert "\n" not in result["error"]["message"]
    # A group failure: every member the job names is described as an error member.
    for m in result["members"]:
        assert set(m) == MEMBER_KEYS and m["status"] == "error" and m["error"] == result["error"]


def test_parse_error_describes_the_members_it_can_read(tmp_path):
    artifact = tmp_path / "m.onnx"
    artifact.write_bytes(b"x")
    job = make_job(None, "onnx", "onnxruntime", tmp_path, rounds=0,
                   members=[member(artifact, "onnx", "a"), member(artifact, "onnx", "b")])
    result = run_agent(job)
    assert result["error"]["stage"] == "parse" and "job.rounds" in result["error"]["message"]
    assert [(m["id"], m["status"], m["format"], m["artifact_sha256"]) for m in result["members"]] == [
        ("a", "error", "onnx", sha256(artifact)), ("b", "error", "onnx", sha256(artifact))]


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]"])
def test_unparsable_job(text):
    result = run_agent(text)
    assert result["status"] == "error" and result["error"]["stage"] == "parse"
    assert "job" in result["error"]["message"] and result["members"] == []


def test_lock_contention_gives_a_lock_error(models, tmp_path):
    lock_path = tmp_path / "agent.lock"
    members = [member(models["onnx"], "onnx", "a"), member(models["onnx"], "onnx", "b")]
    with open(lock_path, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(json.dumps({"pid": os.getpid(), "job_id": "the-test", "since_utc": "now"}))
        held.flush()
        t0 = time.monotonic()
        result = run_agent(make_job(None, "onnx", "onnxruntime", tmp_path, members=members, timeout_s=1))
        waited = time.monotonic() - t0
    assert result["status"] == "error"
    assert result["error"]["stage"] == "lock"
    assert "busy" in result["error"]["message"] and "the-test" in result["error"]["message"]
    assert 0.8 <= waited < 10
    assert [m["id"] for m in result["members"]] == ["a", "b"]
    assert all(m["status"] == "error" and m["error"]["stage"] == "lock" for m in result["members"])
    # Once the lock is free the same job runs.
    assert_ok(run_agent(make_job(None, "onnx", "onnxruntime", tmp_path, members=members, timeout_s=30)))


def test_timeout_during_warmup_is_a_warmup_error(models, tmp_path):
    job = make_job(models["onnx"], "onnx", "onnxruntime", tmp_path, timeout_s=3,
                   warmup={"iterations": 0, "seconds": 60})
    result = run_agent(job)
    assert result["status"] == "ok"
    m = only(result)
    assert m["status"] == "error" and m["error"]["stage"] == "warmup"
    assert "timeout" in m["error"]["message"]


def test_timeout_during_measurement_keeps_the_samples(models, tmp_path):
    job = make_job(models["onnx"], "onnx", "onnxruntime", tmp_path, timeout_s=4,
                   measure={"iterations": 10 ** 9, "min_seconds": 60, "max_iterations": 10 ** 9})
    t0 = time.monotonic()
    result = run_agent(job)
    assert time.monotonic() - t0 < 12
    assert_ok(result)
    m = only(result)
    assert m["measure"]["stop_reason"] == "timeout"
    assert any(w.startswith("fewer samples than asked") for w in m["warnings"])
    check_samples_and_stats(m, len(m["samples_ns"]), rounds=2)


def test_sigterm_still_yields_a_result(models, tmp_path):
    job = make_job(None, "onnx", "onnxruntime", tmp_path, job_id="terminated",
                   members=[member(models["onnx"], "onnx", "a"), member(models["onnx"], "onnx", "b")],
                   measure={"iterations": 10 ** 9, "min_seconds": 60})
    proc = subprocess.Popen([sys.executable, str(AGENT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        proc.stdin.write(json.dumps(job))
        proc.stdin.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the agent names itself in the lock file once it holds it
            text = (tmp_path / "agent.lock").read_text() if (tmp_path / "agent.lock").exists() else ""
            if '"terminated"' in text:
                break
            time.sleep(0.05)
        time.sleep(3)
        proc.terminate()
        out = proc.stdout.read()
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    result = json.loads(out)
    assert result["status"] == "error" and result["job_id"] == "terminated"
    assert "terminated by signal" in result["error"]["message"]
    assert result["error"]["stage"] in ("load", "warmup", "measure")
    assert result["env"]["hostname"]
    # Terminated ends the group: no member is reported as a finished measurement.
    assert [m["status"] for m in result["members"]] == ["error", "error"]
    assert all(m["error"]["message"] == result["error"]["message"] for m in result["members"])


def test_new_onnxruntime_options_reach_the_session_and_protocol_2_still_runs(models, tmp_path):
    """allow_spinning, execution_mode and inter_op_threads are used (the backend reports them); inter_op_threads
    without the parallel mode is a warning; a protocol-2 job (no member options) still runs."""
    options = {"threads": 1, "allow_spinning": False, "execution_mode": "parallel", "inter_op_threads": 2}
    result = run_agent(make_job(models["onnx"], "onnx", "onnxruntime", tmp_path, options=options))
    assert_ok(result)
    backend = only(result)["backend"]
    assert (backend["allow_spinning"], backend["execution_mode"], backend["inter_op_threads"]) == (False, "parallel", 2)
    assert only(result)["options"]["execution_mode"] == "parallel" and "unknown" not in only(result)["options"]
    old = run_agent(make_job(models["onnx"], "onnx", "onnxruntime", tmp_path, protocol=2,
                             options={"threads": 1, "inter_op_threads": 2}))
    assert_ok(old)
    assert only(old)["backend"]["execution_mode"] == "sequential" and only(old)["backend"]["allow_spinning"] is None
    assert any("inter_op_threads=2 has no effect with execution_mode sequential" in w for w in old["warnings"])


@pytest.mark.parametrize("fmt, runtime", [("onnx", "onnxruntime"), ("torchscript", "torch")])
def test_each_member_runs_with_its_own_options(models, tmp_path, fmt, runtime):
    """Members' own options override the group's: one member at 1 thread, one at 2, in the same rounds."""
    job = make_job(None, fmt, runtime, tmp_path, options={"threads": 1}, cold_start=False,
                   members=[member(models[fmt], fmt, "one"), dict(member(models[fmt], fmt, "two"),
                                                                  options={"threads": 2})])
    result = run_agent(job)
    assert_ok(result)
    got = by_id(result)
    assert got["one"]["options"]["threads"] == 1 and got["two"]["options"]["threads"] == 2
    assert got["one"]["backend"]["threads"] == 1 and got["two"]["backend"]["threads"] == 2
    assert [m["options"]["threads"] for m in result["settings"]["members"]] == [1, 2]
    assert result["settings"]["options"]["threads"] == 1  # the group's own stays as given


def test_torch_thread_count_is_set_before_each_members_block(models, tmp_path):
    """torch has one thread count per process: each member's is set again when its block starts (in-process)."""
    import torch

    def loaded(threads: int):
        job = agent.parse_job(json.dumps(make_job(models["torchscript"], "torchscript", "torch", tmp_path,
                                                  options={"threads": threads})))
        backend = agent.TorchBackend(agent.member_job(job, job["members"][0]), [])
        backend.load(None)
        return backend

    before = torch.get_num_threads()
    try:
        one, two = loaded(1), loaded(2)
        for backend, n in [(one, 1), (two, 2), (one, 1)]:
            with backend.running():
                assert torch.get_num_threads() == n
                backend.run_once()
    finally:
        torch.set_num_threads(before)


def test_unknown_option_is_a_warning(models, tmp_path):
    job = make_job(models["onnx"], "onnx", "onnxruntime", tmp_path, options={"thread": 2})
    result = run_agent(job)
    assert_ok(result)
    assert any("unknown option 'thread'" in w for w in result["warnings"])


def test_probe_and_version():
    proc = subprocess.run([sys.executable, str(AGENT), "--probe"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "ok" and doc["busy"] is False and doc["protocol"] == 3
    assert doc["runtimes"]["onnxruntime"]["importable"] is True
    assert "CPUExecutionProvider" in doc["runtimes"]["onnxruntime"]["providers"]
    assert doc["runtimes"]["tensorrt"]["importable"] in (True, False)
    assert doc["env"]["hostname"] and doc["env"]["cpu"]["logical_cores"] >= 1
    version = subprocess.run([sys.executable, str(AGENT), "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == agent.AGENT_VERSION


def test_probe_does_not_import_runtimes_while_busy(tmp_path):
    with open(tmp_path / "agent.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = subprocess.run([sys.executable, str(AGENT), "--probe", "--workdir", str(tmp_path)],
                              capture_output=True, text=True, timeout=60)
    doc = json.loads(proc.stdout)
    assert doc["busy"] is True
    assert doc["runtimes"]["onnxruntime"]["importable"] is True
    assert "providers" not in doc["runtimes"]["onnxruntime"]  # found, not imported


# ----- Python 3.6 ----------------------------------------------------------------

def test_agent_source_is_python36_compatible():
    vermin = shutil.which("vermin") or str(pathlib.Path(sys.executable).with_name("vermin"))
    if not os.path.exists(vermin):
        if os.environ.get("CI") == "true":
            pytest.fail("vermin is not installed; CI must check the agent's Python 3.6 compatibility")
        pytest.skip("vermin is not installed")
    proc = subprocess.run([vermin, "-q", "--no-tips", "--violations", "-t=3.6-", str(AGENT)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


def _python36():
    """A working Python 3.6 interpreter, or None (a pyenv shim may exist but refuse to run)."""
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.6*/bin/python"))) + [shutil.which("python3.6")]
    for candidate in candidates:
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        try:
            proc = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                                  capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if proc.returncode == 0 and proc.stdout.strip() == "(3, 6)":
            return candidate
    return None


def test_agent_runs_on_a_real_python36(tmp_path):
    """Where a Python 3.6 interpreter exists (pyenv), run the stdlib-only paths on it."""
    python = _python36()
    if python is None:
        pytest.skip("no Python 3.6 interpreter here")
    blob = tmp_path / "blob.onnx"
    blob.write_bytes(b"not a model")
    job = make_job(blob, "onnx", "onnxruntime", tmp_path)
    job["members"][0]["artifact"]["sha256"] = "1" * 64
    result = run_agent(job, python=python)
    assert only(result)["error"]["stage"] == "verify"
    assert run_agent("{}", python=python)["error"]["stage"] == "parse"
    proc = subprocess.run([python, str(AGENT), "--probe", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    doc = json.loads(proc.stdout)
    assert doc["status"] == "ok" and doc["env"]["python"]["version"].startswith("3.6")


# ----- pure helpers (no TensorRT needed) -------------------------------------------

def test_engine_cache_key():
    base = dict(onnx_sha256="ab" * 32, trt_version="8.2.1.8", gpu_name="NVIDIA Tegra X1", precision="fp16",
                input_shape=[1, 3, 224, 224])
    key, fields = agent.engine_cache_key(**base)
    assert len(key) == 64 and all(c in "0123456789abcdef" for c in key)
    assert fields["tensorrt"] == "8.2.1.8" and fields["input_shape"] == [1, 3, 224, 224]
    assert agent.engine_cache_key(**base)[0] == key  # deterministic
    # Whitespace and case noise in the inputs do not change the key.
    assert agent.engine_cache_key(**dict(base, onnx_sha256="AB" * 32, gpu_name="NVIDIA  Tegra X1 "))[0] == key
    for field, other in [("onnx_sha256", "cd" * 32), ("trt_version", "10.0.1.6"), ("gpu_name", "NVIDIA A100"),
                         ("precision", "fp32"), ("input_shape", [8, 3, 224, 224])]:
        assert agent.engine_cache_key(**dict(base, **{field: other}))[0] != key, field
    assert agent.engine_cache_path("/w", key) == os.path.join("/w", "engines", key + ".engine")


def test_trt_api_selection():
    v2 = agent.TRT_V2_ATTRS
    v3 = agent.TRT_V3_ATTRS
    assert agent.select_trt_api("8.2.1.8", v2) == "v2"          # Jetson Nano, JetPack 4.6
    assert agent.select_trt_api("8.6.1", v2 + v3) == "v3"       # both APIs: prefer named tensors
    assert agent.select_trt_api("8.4.3", v2 + v3) == "v2"       # before 8.5 the bindings API is the real one
    assert agent.select_trt_api("10.0.1.6", v3) == "v3"         # TensorRT 10 has no bindings
    assert agent.select_trt_api("10.3", v3 + ("num_bindings",)) == "v3"
    assert agent.select_trt_api("", v3) == "v3"                 # unknown version: what is there decides
    with pytest.raises(RuntimeError, match="neither"):
        agent.select_trt_api("7.1", ("num_bindings",))
    assert agent.trt_needs_explicit_batch_flag("8.2.1.8") is True
    assert agent.trt_needs_explicit_batch_flag("10.0.1") is False
    assert agent.parse_version("8.2.1.8") == (8, 2, 1, 8)
    assert agent.parse_version("10.13.0.35") == (10, 13, 0, 35)
    assert agent.trt_dtype_name("DataType.HALF") == "float16"
    assert agent.trt_dtype_name("FLOAT") == "float32"


def test_stats_helpers_match_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 10, 101):
        samples = [int(v) for v in rng.integers(1_000, 1_000_000, size=n)]
        stats = agent.summarize(samples)
        for q in (50, 90, 99):
            assert agent.percentile(sorted(samples), q) == pytest.approx(float(np.percentile(samples, q)))
        assert stats["median_ns"] == pytest.approx(float(np.median(samples)))
        assert stats["std_ns"] == pytest.approx(float(np.std(samples, ddof=1)) if n > 1 else 0.0)
    assert agent.summarize([])["n"] == 0 and agent.summarize([])["median_ns"] is None


def test_pi_throttle_decoding_and_warnings():
    decoded = agent.decode_pi_throttled("throttled=0x50005")
    assert decoded["flags"] == ["under_voltage_now", "throttled_now", "under_voltage_occurred",
                                "throttled_occurred"]
    assert agent.decode_pi_throttled("garbage") is None
    before = {"pi_throttled": agent.decode_pi_throttled("throttled=0x0"), "cpufreq": {"governors": ["performance"]}}
    after = {"pi_throttled": agent.decode_pi_throttled("throttled=0x40000"),
             "cpufreq": {"governors": ["performance"]}}
    warnings = agent.environment_warnings(before, after)
    assert len(warnings) == 1 and "throttled_occurred" in warnings[0]
    assert agent.environment_warnings(before, before) == []
    ondemand = {"cpufreq": {"governors": ["ondemand"]}}
    assert "ondemand" in agent.environment_warnings(ondemand, ondemand)[0]


# ----- the stdin watchdog (watch_stdin) on every Python the agent supports ----------------

@pytest.mark.parametrize("which", ["this python", "python 3.6"])
def test_closing_a_watched_stdin_ends_a_lock_wait(tmp_path, which):
    """A job waiting for a held device lock stops as soon as its transport closes stdin (stage "lock")."""
    python = sys.executable if which == "this python" else _python36()
    if python is None:
        pytest.skip("no Python 3.6 interpreter here")
    blob = tmp_path / "blob.onnx"
    blob.write_bytes(b"never verified: the lock comes first")
    job = make_job(blob, "onnx", "onnxruntime", tmp_path, job_id="waiting", timeout_s=120, watch_stdin=True)
    with open(tmp_path / "agent.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = subprocess.Popen([python, str(AGENT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            proc.stdin.write((json.dumps(job) + "\n").encode())
            proc.stdin.flush()
            seen = b""
            while b"waiting for the device lock" not in seen:
                line = proc.stderr.readline()
                assert line, seen.decode()
                seen += line
            proc.stdin.close()
            proc.wait(timeout=30)  # the job would wait for the lock for up to 120 s
            result = json.loads(proc.stdout.read())
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert result["error"]["stage"] == "lock" and result["error"]["message"].startswith("cancelled: stdin closed")
    assert only(result)["status"] == "error"
