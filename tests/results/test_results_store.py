"""Tests of the results stage: records (results/records.py), the SQLite store, and exports.

Real parts only: real SQLite files in temporary folders and a real PostgreSQL server (tests/pg.py), real threads, real
processes (one of them SIGKILLed mid-sweep), and result documents from the
real device agent timing a tiny ONNX model through ``LocalTransport``.
Hand-built results start from the agent's own ``new_result()`` skeleton and
``summarize()`` so that they keep its exact shape.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import pathlib
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the repository may not be pip-installed
    sys.path.insert(0, str(ROOT))

from devices.transport import LocalTransport, error_result, sha256_file  # noqa: E402
from harness.jobs import member_result  # noqa: E402
from results import store as store_module  # noqa: E402
from results.export import SPEEDUP_COLUMNS, export  # noqa: E402
from results.records import RECORD_FIELDS, RecordError, job_key, job_key_of, make_record  # noqa: E402
from results.runs import is_sweep, pick_run  # noqa: E402
from results.store import DuplicateRecordError, SchemaTooNewError, Store, UnknownRunError  # noqa: E402

GIT_REV = "0123456789abcdef0123456789abcdef01234567"
SHA_A = "a" * 64
SHA_B = "b" * 64


def _load_agent():
    spec = importlib.util.spec_from_file_location("device_agent_for_results_test", ROOT / "devices" / "agent.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


agent = _load_agent()


# ----- building jobs and results ----------------------------------------------

def make_job(model: str = "deit_tiny_patch16_224", variant: str = "snp:deit_tiny", device: str = "pi",
             options: dict | None = None, batch_size: int = 1, sha: str = SHA_A, fmt: str = "onnx",
             runtime: str = "onnxruntime") -> dict:
    options = {"threads": 4} if options is None else options
    job = {"model": model, "variant": variant, "device": device, "runtime": runtime, "runtime_options": options,
           "batch_size": batch_size, "input_shape": [batch_size, 3, 224, 224],
           "artifact": {"sha256": sha, "format": fmt, "path": f"/artifacts/{model}.{fmt}", "macs": 638_000_000,
                        "params": 2_700_000, "opset": 17}}
    job["job_key"] = job_key_of(job)
    return job


def ok_result(samples: list[int], sha: str = SHA_A) -> dict:
    """An ok result shaped like devices/agent.py's run_job output (onnxruntime on a Pi)."""
    result = agent.new_result()
    snap = {"utc": "2026-11-24T12:15:31+00:00", "temperatures_c": {"cpu-thermal": 51.2},
            "cpufreq": {"governors": ["performance"]}, "pi_throttled": {"raw": "0x0", "flags": []},
            "loadavg": [0.1, 0.2, 0.3], "mem_available_kb": 3_000_000}
    result.update({
        "job_id": "job-1", "status": "ok", "runtime": "onnxruntime", "format": "onnx", "artifact_sha256": sha,
        "settings": {"options": {"threads": 4}, "input": {"shape": [1, 3, 224, 224], "dtype": "float32"}},
        "backend": {"providers": ["CPUExecutionProvider"], "provider_fallback": False},
        "providers": ["CPUExecutionProvider"], "provider_fallback": False, "timer": "perf_counter",
        "samples_ns": samples, "stats": agent.summarize(samples),
        "warmup": {"iterations": 200, "seconds": 1.2}, "measure": {"iterations": len(samples), "stop_reason": "done"},
        "timings_s": {"lock_wait": 0.0, "load": 0.4, "total": 12.0},
        "env": {"hostname": "pi4", "cpu": {"model": "Cortex-A72", "cores": 4}, "before": snap, "after": snap},
        "finished_utc": "2026-11-24T12:15:43+00:00", "warnings": ["high variation: cv=0.120 > 0.10"],
    })
    result["transport"] = {"name": "ssh", "returncode": 0, "wall_s": 13.5, "stderr_tail": "[agent] done\n"}
    return result


def samples_for(i: int, n: int = 50) -> list[int]:
    return [80_000_000 + 1_000 * ((i * 7 + k * 13) % 97) for k in range(n)]


def make_ok_record(run_id: str, i: int = 0, device: str = "pi", n: int = 50) -> dict:
    return make_record(run_id, make_job(device=device, batch_size=i + 1), ok_result(samples_for(i, n)), GIT_REV)


def make_error_record(run_id: str, i: int = 0, device: str = "pi") -> dict:
    job = make_job(device=device, batch_size=i + 1)
    result = error_result({"artifact": job["artifact"], "runtime": job["runtime"]}, "timeout",
                          "agent still running after 60 s; killed", b"Traceback ...\nMemoryError\n")
    return make_record(run_id, job, result, GIT_REV)


def without_row_ids(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("id", "inserted")} for r in records]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request, tmp_path) -> pathlib.Path | str:
    """Where a fresh store lives: a SQLite file, or an empty database of the session's real PostgreSQL server."""
    if request.param == "sqlite":
        return tmp_path / "runs" / "bench.sqlite"
    return request.getfixturevalue("pg_server").new_database()


@pytest.fixture
def store(store_location):
    s = Store(store_location)
    yield s
    s.close()


# ----- the real agent --------------------------------------------------------------

@pytest.fixture(scope="module")
def real_results(tmp_path_factory) -> dict:
    """One ok and one error result from the real agent timing a tiny ONNX model (about a second)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    tmp = tmp_path_factory.mktemp("agent")
    path = tmp / "tiny.onnx"
    onnx.save(model, str(path))
    sha = sha256_file(path)
    job = make_job(model="tiny_mlp", variant="original", device="local", options={"threads": 1}, batch_size=2,
                   sha=sha)
    job["input_shape"] = [2, 16]
    job["job_key"] = job_key_of(job)
    with LocalTransport(tmp / "device") as transport:
        blob = transport.ensure_blob(path, sha)
        member = {"artifact": {"path": blob, "sha256": sha, "format": "onnx"},
                  "input": {"shape": [2, 16], "dtype": "float32"}}
        group = {"protocol": 2, "job_id": "group-1", "runtime": "onnxruntime", "options": {"threads": 1},
                 "workdir": str(transport.workdir), "timeout_s": 60,
                 "members": [{"id": job["job_key"], **member},
                             {"id": "bad", **member, "artifact": {**member["artifact"], "sha256": "f" * 64}}],
                 "warmup": {"iterations": 2, "seconds": 0}, "rounds": 4, "seed": 0, "rewarm": {"iterations": 1},
                 "measure": {"iterations": 20, "min_seconds": 0, "max_iterations": 1000, "max_seconds": None},
                 "isolate": False, "cooldown": {"max_temp_c": None, "max_wait_s": 0}}
        result = transport.run_agent(group, timeout_s=90)
    ok, bad = member_result(result, job["job_key"]), member_result(result, "bad")
    assert ok["status"] == "ok", ok.get("error")
    return {"job": job, "ok": ok, "error": bad}


def test_record_from_the_real_agent(real_results):
    result = real_results["ok"]
    record = make_record("20261124-121530-ab12", real_results["job"], result, GIT_REV)
    assert tuple(record) == RECORD_FIELDS
    assert record["status"] == "ok" and record["error_stage"] is None
    assert record["job_key"] == "tiny_mlp|original|onnx|local|onnxruntime|threads=1|bs2"
    assert record["n"] == 20 and record["samples_ns"] == result["samples_ns"]
    assert all(isinstance(s, int) for s in record["samples_ns"])
    assert record["median_ms"] == result["stats"]["median_ns"] / 1e6
    assert record["min_ms"] <= record["median_ms"] <= record["p90_ms"] <= record["p99_ms"] <= record["max_ms"]
    assert record["cv"] == result["stats"]["cv"]
    assert record["providers"] == ["CPUExecutionProvider"] and record["provider_fallback"] is False
    assert {"before", "after", "hostname"} <= set(record["env"])
    assert record["agent_version"] == result["agent_version"] and record["git_rev"] == GIT_REV
    assert record["started"] and record["finished"] >= record["started"]
    assert record["macs"] == 638_000_000 and record["params"] == 2_700_000
    assert record["extra"]["transport"]["name"] == "local" and "stderr_tail" not in record["extra"]["transport"]
    assert record["extra"]["artifact_manifest"] == {"opset": 17}
    assert "timings_s" in record["extra"] and record["extra"]["timer"] == "perf_counter"
    # protocol 2: the rounds of the samples, the group, cold start and memory, throughput
    assert record["group_key"] == "group-1" and record["rounds"] == 4
    assert len(record["sample_rounds"]) == 20 and set(record["sample_rounds"]) == {0, 1, 2, 3}
    assert record["load_s"] > 0 and record["first_inference_ms"] > 0 and record["peak_rss_mb"] > 10
    assert record["gpu_peak_mb"] is None  # onnxruntime on the CPU reports none
    assert record["throughput_ips"] == pytest.approx(2 / (record["median_ms"] / 1e3))
    assert len(record["extra"]["round_orders"]) == 4 and record["extra"]["seed"] == 0
    # the cold child's peak RSS before loading has no column (the agent sizes groups with it)
    assert set(record["extra"]["cold"]) == {"base_rss_bytes"} and record["extra"]["cold"]["base_rss_bytes"] > 0
    assert "sample_rounds" not in record["extra"]
    json.dumps(record)  # a record is plain JSON


def test_error_record_from_the_real_agent(real_results):
    record = make_record("r", real_results["job"], real_results["error"], GIT_REV)
    assert record["status"] == "error" and record["error_stage"] == "verify"
    assert record["error_message"] and record["error_type"]
    assert "[agent" in record["stderr_tail"]  # the agent's log, from the transport
    assert record["n"] == 0 and record["median_ms"] is None and record["samples_ns"] == []
    assert record["extra"]["error_traceback"]
    assert record["throughput_ips"] is None and record["group_key"] == "group-1"


# ----- records ------------------------------------------------------------------------

def test_job_key_is_stable_and_readable():
    key = job_key("deit_tiny_patch16_224", "snp:deit_tiny", "onnx", "pi", "onnxruntime", {"threads": 4}, 1)
    assert key == "deit_tiny_patch16_224|snp:deit_tiny|onnx|pi|onnxruntime|threads=4|bs1"
    a = job_key("m", "original", "onnx", "jetson", "tensorrt", {"precision": "fp16", "workspace_mb": 1024}, 8)
    b = job_key("m", "original", "onnx", "jetson", "tensorrt", {"workspace_mb": 1024, "precision": "fp16"}, 8)
    assert a == b == "m|original|onnx|jetson|tensorrt|precision=fp16,workspace_mb=1024|bs8"
    assert job_key("m", "original", "pt2", "xeon", "torch", {}, 1).endswith("|torch|default|bs1")
    assert "providers=[\"CUDAExecutionProvider\"]" in job_key("m", "original", "onnx", "rtx", "onnxruntime",
                                                                {"providers": ["CUDAExecutionProvider"]}, 1)
    for bad in ({"device": "a|b"}, {"device": ""}, {"batch_size": 0}, {"batch_size": True}):
        args = {"model": "m", "variant": "v", "format": "onnx", "device": "d", "runtime": "r",
                "runtime_options": {}, "batch_size": 1, **bad}
        with pytest.raises(RecordError):
            job_key(**args)


def test_transport_and_inconsistent_results_become_error_records():
    timeout = make_error_record("r")
    assert timeout["status"] == "error" and timeout["error_stage"] == "timeout"
    assert timeout["error_type"] == "TransportError" and "killed" in timeout["error_message"]
    assert "MemoryError" in timeout["stderr_tail"] and timeout["agent_version"] is None
    assert timeout["n"] == 0 and timeout["median_ms"] is None and timeout["env"] is None

    no_samples = ok_result([])
    record = make_record("r", make_job(), no_samples, GIT_REV)
    assert record["status"] == "error" and record["error_stage"] == "record"
    assert record["stderr_tail"] == "[agent] done\n"

    other_artifact = make_record("r", make_job(), ok_result(samples_for(1), sha=SHA_B), GIT_REV)
    assert other_artifact["status"] == "error" and SHA_B in other_artifact["error_message"]
    assert other_artifact["samples_ns"] == samples_for(1)  # the evidence stays

    odd = make_record("r", make_job(), {"status": "weird"}, GIT_REV)
    assert odd["status"] == "error" and odd["error_stage"] == "unknown" and "weird" in odd["error_message"]

    mismatch = make_job(batch_size=4)
    mismatch["input_shape"] = [1, 3, 224, 224]
    assert any("batch_size" in w for w in make_record("r", mismatch, ok_result(samples_for(0)), GIT_REV)["warnings"])
    with pytest.raises(RecordError, match="sha256"):
        make_record("r", {**make_job(), "artifact": {"sha256": "xyz", "format": "onnx"}}, ok_result([1]), GIT_REV)


def test_ok_record_statistics_in_ms():
    samples = samples_for(3, n=101)
    record = make_ok_record("r", 3, n=101)
    stats = agent.summarize(samples)
    assert record["n"] == 101 and record["samples_ns"] == samples
    for field in ("min", "median", "mean", "max", "p90", "p99", "std"):
        assert record[f"{field}_ms"] == pytest.approx(stats[f"{field}_ns"] / 1e6, rel=1e-15)
    assert record["warnings"] == ["high variation: cv=0.120 > 0.10"]


# ----- the store ------------------------------------------------------------------------

def test_store_file_schema_and_pragmas(tmp_path):
    path = tmp_path / "deep" / "er" / "bench.sqlite"
    with Store(path) as s:
        assert path.is_file() and s.schema_version() == store_module.SCHEMA_VERSION
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"schema_version", "runs", "records"} <= tables
    columns = {r[1] for r in conn.execute("PRAGMA table_info(records)")}
    assert set(RECORD_FIELDS) <= columns
    conn.close()
    assert store_module.DEFAULT_PATH == pathlib.Path("runs/bench.sqlite")


def test_migrations_are_applied_once_and_newer_schemas_refused(store_location, monkeypatch):
    path = store_location
    Store(path).close()
    Store(path).close()  # reopening applies nothing twice
    extra = ("ALTER TABLE runs ADD COLUMN host TEXT",)
    monkeypatch.setattr(store_module, "MIGRATIONS", [*store_module.MIGRATIONS, extra])
    with Store(path) as s:
        assert s.schema_version() == len(store_module.MIGRATIONS)
        run_id = s.new_run({}, GIT_REV)
        assert "host" in s.get_run(run_id)
    monkeypatch.undo()
    with pytest.raises(SchemaTooNewError, match="newer"):
        Store(path)


def test_runs_lifecycle(store):
    first = store.new_run({"models": ["deit_tiny_patch16_224"], "out": pathlib.Path("x")}, GIT_REV, note="pi only")
    time.sleep(1.1)  # run ids have one-second resolution
    second = store.new_run({}, GIT_REV)
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{10}", first) and first < second  # 40 random bits
    run = store.get_run(first)
    assert run["status"] == "running" and run["note"] == "pi only" and run["git_rev"] == GIT_REV
    assert run["config"] == {"models": ["deit_tiny_patch16_224"], "out": "x"} and run["finished"] is None
    assert [r["run_id"] for r in store.runs()] == [first, second]
    assert store.latest_run()["run_id"] == second
    store.finish_run(first, "interrupted")
    assert store.get_run(first)["status"] == "interrupted" and store.get_run(first)["finished"]
    store.set_run_status(first, "running")  # --resume
    store.finish_run(first)
    assert store.get_run(first)["status"] == "done"
    with pytest.raises(ValueError):
        store.finish_run(first, "running")
    with pytest.raises(UnknownRunError):
        store.finish_run("nope")
    assert store.get_run("nope") is None


def test_baseline_is_the_last_marked_run(store):
    assert store.baseline() is None
    a, b = store.new_run({}, GIT_REV), store.new_run({}, GIT_REV)
    store.set_baseline(a)
    assert store.baseline()["run_id"] == a and store.get_run(a)["is_baseline"] is True
    store.set_baseline(b)
    assert store.baseline()["run_id"] == b
    store.set_baseline(a)  # re-marking makes it the latest baseline again
    assert store.baseline()["run_id"] == a
    store.clear_baseline(a)
    assert store.baseline()["run_id"] == b and store.get_run(a)["is_baseline"] is False
    with pytest.raises(UnknownRunError):
        store.set_baseline("nope")


# ----- report fields, run kinds, run selection, the schema 2 -> 3 migration ---------------------------

REPORT_FIELDS = ("entry", "base_entry", "label", "device_label", "top1")
#: The record columns schema 4 added (agent protocol 2: rounds, cold start, memory, throughput).
ROUND_FIELDS = ("group_key", "rounds", "sample_rounds", "load_s", "build_s", "first_inference_ms", "peak_rss_mb",
                "gpu_peak_mb", "throughput_ips")


def test_report_fields_are_columns_not_extra():
    job = {**make_job(), "entry": "deit_tiny_snp", "base": "deit_tiny", "label": "DeiT-T + SNP",
           "device_label": "Raspberry Pi 4B", "top1": 70, "planner_note": "kept"}
    record = make_record("r", job, ok_result(samples_for(0)), GIT_REV)
    assert {f: record[f] for f in REPORT_FIELDS} == {"entry": "deit_tiny_snp", "base_entry": "deit_tiny",
                                                     "label": "DeiT-T + SNP", "device_label": "Raspberry Pi 4B",
                                                     "top1": 70.0}
    assert isinstance(record["top1"], float)
    assert record["extra"]["job"] == {"planner_note": "kept"}  # unknown job keys are still kept
    bare = make_record("r", {**make_job(), "label": ""}, ok_result(samples_for(0)), GIT_REV)
    assert all(bare[f] is None for f in REPORT_FIELDS) and "job" not in bare["extra"]  # a missing `base` is None


def test_report_fields_survive_the_store(store):
    run_id = store.new_run({}, GIT_REV)
    job = {**make_job(), "entry": "e", "base": "b", "label": "L", "device_label": "D", "top1": 71.5}
    store.add_record(make_record(run_id, job, ok_result(samples_for(0)), GIT_REV))
    (got,) = store.records(run_id)
    assert {f: got[f] for f in REPORT_FIELDS} == {"entry": "e", "base_entry": "b", "label": "L",
                                                  "device_label": "D", "top1": 71.5}


def test_runs_carry_their_kind(store):
    sweep = store.new_run({}, GIT_REV)
    profile = store.new_run({"command": "x"}, GIT_REV, note="p", kind="latency-profile")
    verify = store.new_run({}, GIT_REV, kind="latency-verify")
    assert [store.get_run(r)["kind"] for r in (sweep, profile, verify)] == ["sweep", "latency-profile",
                                                                              "latency-verify"]
    assert [r["run_id"] for r in store.runs(kind="sweep")] == [sweep]
    assert [r["run_id"] for r in store.runs(kind="latency-profile")] == [profile]
    assert len(store.runs()) == 3 and store.latest_run()["run_id"] == verify
    assert store.latest_run(kind="sweep")["run_id"] == sweep and store.latest_run(kind="other") is None
    with pytest.raises(ValueError, match="run kind"):
        store.new_run({}, GIT_REV, kind="nightly")


def test_pick_run_latest_sweep_baseline_or_id(store):
    with pytest.raises(store_module.StoreError, match="no sweep runs") as info:
        pick_run(store, None)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    first = store.new_run({}, GIT_REV)
    second = store.new_run({}, GIT_REV)
    profile = store.new_run({}, GIT_REV, kind="latency-profile")  # never shadows the latest sweep
    assert pick_run(store, None)["run_id"] == pick_run(store, "latest")["run_id"] == second
    assert pick_run(store, profile)["run_id"] == profile and not is_sweep(pick_run(store, profile))
    assert is_sweep(store.get_run(first))
    with pytest.raises(store_module.StoreError, match="no baseline run"):
        pick_run(store, "baseline")
    store.set_baseline(first)
    assert pick_run(store, "baseline")["run_id"] == first
    with pytest.raises(store_module.StoreError) as info:
        pick_run(store, "nope", "candidate")
    message = str(info.value)
    assert message.startswith("unknown candidate run 'nope'") and "\n" not in message
    assert all(r in message for r in (first, second, profile))


def _old_store(path: pathlib.Path, version: int, runs: list[tuple[str, dict]], records: list[dict],
               missing: tuple[str, ...]) -> None:
    """A store as the code of schema `version` wrote it: its migrations only, records without the `missing` columns."""
    conn = sqlite3.connect(path)
    for statement in (s for migration in store_module.MIGRATIONS[:version] for s in migration):
        conn.execute(statement)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied TEXT NOT NULL)")
    conn.executemany("INSERT INTO schema_version VALUES (?, ?)", [(v, "2026") for v in range(1, version + 1)])
    for run_id, config in runs:
        conn.execute("INSERT INTO runs (run_id, created, git_rev, config) VALUES (?, ?, ?, ?)",
                     (run_id, run_id, GIT_REV, json.dumps(config)))
    old_fields = [f for f in RECORD_FIELDS if f not in missing]
    for record in records:
        values = [json.dumps(record[f]) if f in store_module.JSON_FIELDS else record[f] for f in old_fields]
        conn.execute(f"INSERT INTO records ({', '.join(old_fields)}, inserted) "
                     f"VALUES ({', '.join('?' for _ in old_fields)}, '2026')", values)
    conn.commit()
    conn.close()


def _schema2_store(path: pathlib.Path, runs: list[tuple[str, dict]], records: list[dict]) -> None:
    """A store as the code of schema version 2 wrote it: report fields inside extra.job, no run kind."""
    _old_store(path, 2, runs, records, REPORT_FIELDS + ROUND_FIELDS)


def _as_schema2(record: dict, job_fields: dict) -> dict:
    """A record as schema 2 kept it: no report columns, the job's fields in extra.job."""
    old = {k: v for k, v in record.items() if k not in REPORT_FIELDS}
    old["extra"] = {**record["extra"], "job": job_fields} if job_fields else dict(record["extra"])
    return old


def test_migration_from_schema_2_backfills_columns_and_kinds(tmp_path):
    path = tmp_path / "old.sqlite"
    sweep, profile, verify, other = "20260101-000000-aaaa", "20260102-000000-bbbb", "20260103-000000-cccc", \
        "20260104-000000-dddd"
    runs = [(sweep, {"selection": {}}),
            (profile, {"command": "compress --target-latency (latency profile)", "model": "m"}),
            (verify, {"command": "compress --target-latency (verification)"}),
            (other, {"command": "something else"})]
    full = make_record(sweep, make_job(variant="original"), ok_result(samples_for(0)), GIT_REV)
    labelled = make_record(sweep, make_job(batch_size=2), ok_result(samples_for(1)), GIT_REV)
    bare = make_record(profile, make_job(batch_size=3), ok_result(samples_for(2)), GIT_REV)
    records = [_as_schema2(full, {"entry": "deit_tiny", "label": "DeiT-T", "device_label": "Raspberry Pi 4B",
                                  "top1": 72.2, "planner_note": "kept"}),
               _as_schema2(labelled, {"entry": "deit_tiny_snp", "label": "", "device_label": "Pi", "top1": 70}),
               _as_schema2(bare, {})]
    _schema2_store(path, runs, records)

    with Store(path) as s:
        assert s.schema_version() == store_module.SCHEMA_VERSION == 5
        got = {r["job_key"]: r for r in s.records()}
        a, b, c = got[full["job_key"]], got[labelled["job_key"]], got[bare["job_key"]]
        assert {f: a[f] for f in REPORT_FIELDS} == {"entry": "deit_tiny", "base_entry": None, "label": "DeiT-T",
                                                    "device_label": "Raspberry Pi 4B", "top1": 72.2}
        assert a["extra"]["job"] == {"planner_note": "kept"}  # moved out of extra; the rest stays
        assert {f: b[f] for f in REPORT_FIELDS} == {"entry": "deit_tiny_snp", "base_entry": None, "label": None,
                                                    "device_label": "Pi", "top1": 70.0}
        assert b["extra"] == labelled["extra"]  # extra.job held only report fields: it is gone
        assert all(c[f] is None for f in REPORT_FIELDS) and "job" not in c["extra"]
        assert a["samples_ns"] == full["samples_ns"] and a["median_ms"] == full["median_ms"]  # nothing else moved
        assert {r["run_id"]: r["kind"] for r in s.runs()} == {sweep: "sweep", profile: "latency-profile",
                                                              verify: "latency-verify", other: "other"}
        assert pick_run(s, "latest")["run_id"] == sweep  # the old profile runs do not shadow the sweep
        # the migrated store takes new records and runs as a new one does
        run_id = s.new_run({}, GIT_REV, kind="latency-profile")
        s.add_record(make_record(run_id, {**make_job(), "entry": "e", "base": "b"}, ok_result(samples_for(3)),
                                 GIT_REV))
        assert s.records(run_id)[0]["base_entry"] == "b"
    with Store(path) as s:  # reopening migrates nothing twice
        assert s.schema_version() == 5 and len(s.records()) == 4


def test_migration_from_schema_3_adds_round_columns_and_old_records_still_tabulate(tmp_path):
    from results.table import build_tables, render_run

    path, run_id = tmp_path / "v3.sqlite", "20260101-000000-aaaa"
    orig = make_record(run_id, {**make_job(variant="original"), "entry": "orig"}, ok_result(samples_for(0, 200)),
                       GIT_REV)
    pruned = make_record(run_id, {**make_job(variant="snp:paper", sha=SHA_B), "entry": "pruned", "base": "orig"},
                         ok_result([s // 2 for s in samples_for(1, 200)], sha=SHA_B), GIT_REV)
    _old_store(path, 3, [(run_id, {"models": ["orig", "pruned"], "devices": ["pi"]})], [orig, pruned], ROUND_FIELDS)
    with Store(path) as s:
        assert s.schema_version() == store_module.SCHEMA_VERSION == 5
        columns = {r[1] for r in s._query("PRAGMA table_info(records)")}
        assert set(ROUND_FIELDS) <= columns
        got = s.records(run_id)
        assert all(r[f] is None for r in got for f in ROUND_FIELDS)  # old rows keep NULL
        assert [r["samples_ns"] for r in got] == [orig["samples_ns"], pruned["samples_ns"]]
        (table,) = build_tables(got, run_id)
        speedup = table.cells.dropna(subset=["speedup"]).iloc[0]
        assert speedup["speedup"] == pytest.approx(orig["median_ms"] / pruned["median_ms"])
        assert speedup["speedup_low"] < speedup["speedup"] < speedup["speedup_high"]  # block bootstrap fallback
        text = render_run(s, run_id, cold=True)
        assert "× (" in text and "load s" in text
        # and a new record, with rounds, goes into the migrated store
        new_run = s.new_run({}, GIT_REV)
        result = {**ok_result(samples_for(2, 20)), "sample_rounds": [k % 4 for k in range(20)], "rounds": 4,
                  "group_key": "g"}
        s.add_record(make_record(new_run, make_job(), result, GIT_REV))
        (back,) = s.records(new_run)
        assert back["sample_rounds"] == result["sample_rounds"] and back["rounds"] == 4
        assert "sample_rounds" not in s.records(new_run, with_samples=False)[0]


def tuned_row(run_id: str, **overrides) -> dict:
    """A `Store.add_tuned` row: tiny on pi, onnxruntime .onnx bs1 with threads fixed to 4 in bench.toml."""
    row = {"device": "pi", "host": "pi4", "runtime": "onnxruntime", "format": "onnx", "entry": "tiny",
           "batch_size": 1, "config_options": {"threads": 4}, "artifact_sha256": SHA_A,
           "settings": {"graph_optimization": "basic"}, "default_ms": 2.0, "best_ms": 1.5, "ratio": 0.75,
           "candidates": [{"stage": 0, "settings": {}, "median_ms": 2.0}], "rule": {"min_gain": 0.02},
           "run_id": run_id, "git_rev": GIT_REV}
    row.update(overrides)
    return row


def test_tuned_settings_newest_first_by_exact_identity(store):
    run_id = store.new_run({"command": "tune"}, GIT_REV, kind="tune")
    assert store.get_run(run_id)["kind"] == "tune" and store.tuned("pi", "onnxruntime", "onnx", "tiny") is None
    first = store.add_tuned(tuned_row(run_id))
    newer = store.add_tuned(tuned_row(run_id, settings={"threads": 2}, config_options={}))
    got = store.tuned("pi", "onnxruntime", "onnx", "tiny", 1, {"threads": 4})
    assert got["id"] == first and got["settings"] == {"graph_optimization": "basic"} and got["host"] == "pi4"
    assert got["candidates"] == [{"stage": 0, "settings": {}, "median_ms": 2.0}] and got["ratio"] == 0.75
    assert store.tuned("pi", "onnxruntime", "onnx", "tiny", 1)["id"] == newer  # other fixed options, other row
    again = store.add_tuned(tuned_row(run_id, settings={}))
    assert store.tuned("pi", "onnxruntime", "onnx", "tiny", 1, {"threads": 4})["id"] == again  # the newest wins
    assert store.tuned("pi", "onnxruntime", "onnx", "tiny", 8, {"threads": 4}) is None  # batch size is part of it
    assert store.tuned("pi", "torch", "onnx", "tiny", 1, {"threads": 4}) is None
    assert [r["id"] for r in store.tuned_settings("pi")] == [first, newer, again] and store.tuned_settings("x") == []
    with pytest.raises(ValueError, match="lack identity fields: entry"):
        store.add_tuned(tuned_row(run_id, entry=None))
    with pytest.raises(ValueError, match="must be an object"):
        store.add_tuned(tuned_row(run_id, settings=["threads", 2]))


def test_push_copies_the_tuned_settings_of_pushed_runs_once(store, tmp_path):
    with Store(tmp_path / "laptop.sqlite") as laptop:
        tuned_run = laptop.new_run({"command": "tune"}, GIT_REV, kind="tune")
        other_run = laptop.new_run({"command": "tune"}, GIT_REV, kind="tune")
        laptop.add_tuned(tuned_row(tuned_run))
        laptop.add_tuned(tuned_row(other_run, entry="other"))
        first = store_module.push(laptop, store, [tuned_run])
        again = store_module.push(laptop, store, [tuned_run])
        assert (first.tuned_copied, again.tuned_copied) == (1, 0) and "1 tuned setting(s) copied" in first.summary()
        (copied,) = store.tuned_settings()
        (original,) = [r for r in laptop.tuned_settings() if r["run_id"] == tuned_run]
        assert {k: v for k, v in copied.items() if k != "id"} == {k: v for k, v in original.items() if k != "id"}


def test_migration_from_schema_4_adds_tuned_settings_and_keeps_old_data(tmp_path):
    path, run_id = tmp_path / "v4.sqlite", "20260101-000000-aaaa"
    old = make_record(run_id, {**make_job(variant="original"), "entry": "orig"},
                      {**ok_result(samples_for(0, 20)), "sample_rounds": [k % 4 for k in range(20)], "rounds": 4,
                       "group_key": "g"}, GIT_REV)
    _old_store(path, 4, [(run_id, {"selection": {}})], [old], ())
    with Store(path) as s:
        assert s.schema_version() == store_module.SCHEMA_VERSION == 5
        (back,) = s.records(run_id)
        assert without_row_ids([back]) == [old] and s.get_run(run_id)["kind"] == "sweep"
        tune_run = s.new_run({"command": "tune"}, GIT_REV, kind="tune")
        row_id = s.add_tuned(tuned_row(tune_run))
        assert s.tuned("pi", "onnxruntime", "onnx", "tiny", 1, {"threads": 4})["id"] == row_id
    with Store(path) as s:
        assert s.schema_version() == 5 and len(s.tuned_settings()) == 1 and len(s.records()) == 1


def test_records_of_protocol_2_members(store_location):
    samples = samples_for(0, 12)
    result = {**ok_result(samples), "sample_rounds": [k % 3 for k in range(12)], "rounds": 3, "group_key": "grp",
              "round_orders": [["a", "b"], ["b", "a"], ["a", "b"]], "seed": 7, "cooldown": [],
              "cold": {"load_s": 0.25, "build_s": 0.0, "first_inference_ns": 12_500_000,
                       "peak_rss_bytes": 300 * 2 ** 20, "gpu_peak_bytes": None, "child_pid": 42}}
    record = make_record("r", make_job(batch_size=1), result, GIT_REV)
    assert record["status"] == "ok"
    assert (record["group_key"], record["rounds"], record["sample_rounds"]) == ("grp", 3, result["sample_rounds"])
    assert (record["load_s"], record["build_s"], record["first_inference_ms"], record["peak_rss_mb"],
            record["gpu_peak_mb"]) == (0.25, 0.0, 12.5, 300.0, None)
    assert record["throughput_ips"] == pytest.approx(1e3 / record["median_ms"])
    assert record["extra"]["round_orders"] == result["round_orders"] and record["extra"]["seed"] == 7
    assert record["extra"]["cooldown"] == [] and record["extra"]["cold"] == {"child_pid": 42}
    # the old agent shape: every new field None
    old = make_record("r", make_job(), ok_result(samples), GIT_REV)
    assert all(old[f] is None for f in ROUND_FIELDS if f != "throughput_ips") and old["throughput_ips"] > 0
    # rounds that do not match the samples: an error record at stage "record", samples kept
    for bad, says in (([0] * 11, "12 samples but 11 round indices"), ([0] * 11 + [3], "0..2"),
                      ([0] * 11 + [1.5], "0..2"), ("0,1", "not a list")):
        broken = make_record("r", make_job(), {**result, "sample_rounds": bad}, GIT_REV)
        assert (broken["status"], broken["error_stage"]) == ("error", "record"), bad
        assert says in broken["error_message"] and broken["samples_ns"] == samples
        assert broken["throughput_ips"] is None
    with Store(store_location) as s:  # the store keeps every new field as it is
        run_id = s.new_run({}, GIT_REV)
        record["run_id"] = run_id
        s.add_record(record)
        (back,) = s.records(run_id)
        assert {f: back[f] for f in ROUND_FIELDS} == {f: record[f] for f in ROUND_FIELDS}


def test_records_survive_reopening(store_location):
    path = store_location
    with Store(path) as s:
        run_id = s.new_run({"sweep": 1}, GIT_REV)
        added = [make_ok_record(run_id, 0), make_error_record(run_id, 1), make_ok_record(run_id, 2, device="jetson")]
        for record in added:
            s.add_record(record)
        before = s.records()
    with Store(path) as s:
        after = s.records()
        assert after == before
        assert without_row_ids(after) == added  # every field round-trips exactly, floats and samples included
        assert [r["status"] for r in s.records(run_id, status="error")] == ["error"]
        assert [r["device"] for r in s.records(device="jetson")] == ["jetson"]
        assert "samples_ns" not in s.records(run_id, with_samples=False)[0]
        assert s.count(run_id) == 3 and s.get_run(run_id)["config"] == {"sweep": 1}


def test_duplicates_ok_refused_error_replaced(store):
    run_id = store.new_run({}, GIT_REV)
    store.add_record(make_error_record(run_id, 0))
    store.add_record(make_error_record(run_id, 0))  # a retry that failed again
    assert store.count(run_id) == 1 and store.done_keys(run_id) == set()
    ok = make_ok_record(run_id, 0)
    store.add_record(ok)  # the retry that worked replaces the error
    [row] = store.records(run_id)
    assert row["status"] == "ok" and row["median_ms"] == ok["median_ms"]
    assert store.done_keys(run_id) == {ok["job_key"]}
    with pytest.raises(DuplicateRecordError):
        store.add_record(make_ok_record(run_id, 0))
    with pytest.raises(DuplicateRecordError):
        store.add_record(make_error_record(run_id, 0))
    assert store.records(run_id)[0]["id"] == row["id"]  # untouched
    other = store.new_run({}, GIT_REV)
    store.add_record(make_ok_record(other, 0))  # same key, other run: fine


def test_done_keys_only_ok_of_that_run(store):
    run_a, run_b = store.new_run({}, GIT_REV), store.new_run({}, GIT_REV)
    oks = [make_ok_record(run_a, i) for i in range(3)]
    for record in oks:
        store.add_record(record)
    store.add_record(make_error_record(run_a, 5))
    store.add_record(make_ok_record(run_b, 7))
    assert store.done_keys(run_a) == {r["job_key"] for r in oks}
    assert store.done_keys(run_b) == {make_ok_record(run_b, 7)["job_key"]}


def test_bad_records_are_refused(store):
    run_id = store.new_run({}, GIT_REV)
    with pytest.raises(UnknownRunError):
        store.add_record(make_ok_record("20000101-000000-dead"))
    with pytest.raises(ValueError, match="status"):
        store.add_record({**make_ok_record(run_id), "status": "fine"})
    with pytest.raises(ValueError, match="surprise"):
        store.add_record({**make_ok_record(run_id), "surprise": 1})
    assert store.integrity_error is (sqlite3.IntegrityError if store.backend == "sqlite" else
                                     importlib.import_module("psycopg").IntegrityError)
    with pytest.raises(store.integrity_error):  # an ok record must have statistics (a CHECK of the schema)
        store.add_record({**make_ok_record(run_id), "n": 0, "median_ms": None})
    assert store.count() == 0


def test_four_threads_writing_at_once(store):
    run_id = store.new_run({}, GIT_REV)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for i in range(25):
                record = make_ok_record(run_id, i, device=f"dev{t}") if i % 5 else make_error_record(run_id, i,
                                                                                                    f"dev{t}")
                store.add_record(record)
                store.done_keys(run_id)  # readers interleave with the writers
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.count(run_id) == 100
    assert len(store.done_keys(run_id)) == 80
    assert {r["device"] for r in store.records(run_id)} == {"dev0", "dev1", "dev2", "dev3"}
    assert len(store._connections) >= 4  # one connection per thread (plus the main thread's)


def _process_writer(target: Store | str, run_id: str, device: str, count: int) -> None:
    """Writes ``count`` records; given a Store it uses the one inherited through fork."""
    s = target if isinstance(target, Store) else Store(target)
    for i in range(count):
        s.add_record(make_ok_record(run_id, i, device=device))
    s.close()


def test_two_processes_writing_at_once(store):
    run_id = store.new_run({}, GIT_REV)
    store.records()  # the parent holds an open connection when it forks
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_process_writer, args=(store, run_id, "inherited", 25)),
             ctx.Process(target=_process_writer, args=(str(store.path), run_id, "own", 25))]
    for proc in procs:
        proc.start()
    for i in range(10):  # and the parent writes meanwhile
        store.add_record(make_ok_record(run_id, i, device="parent"))
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert store.count(run_id) == 60
    with Store(store.path) as fresh:
        assert len(fresh.done_keys(run_id)) == 60


_KILLED_WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    sys.path.insert(0, sys.argv[2])
    from results.store import Store
    from test_results_store import make_ok_record
    store = Store(sys.argv[3])
    run_id = sys.argv[4]
    i = 0
    while True:
        record = make_ok_record(run_id, i, n=20000)  # big rows: the kill may land inside a write
        store.add_record(record)
        print(record["job_key"], flush=True)  # printed only once committed
        i += 1
""")


def test_sigkilled_writer_loses_nothing_committed(store_location):
    path = store_location
    with Store(path) as s:
        run_id = s.new_run({}, GIT_REV)
    here = str(pathlib.Path(__file__).resolve().parent)  # where test_results_store is importable from
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(ROOT), here, str(path), run_id],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    printed = []
    try:
        while len(printed) < 15:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            printed.append(line.strip())
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    printed += rest.split()
    assert proc.returncode == -signal.SIGKILL
    with Store(path) as s:
        if s.backend == "sqlite":
            assert s._connection().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        keys = [r["job_key"] for r in s.records(run_id)]
        assert set(printed) <= set(keys)
        assert len(keys) <= len(printed) + 1  # at most the one committed before its key was printed
        assert all(r["n"] == 20000 for r in s.records(run_id))
        s.add_record(make_ok_record(run_id, 10_000))  # still writable


# ----- exports ---------------------------------------------------------------------------

@pytest.fixture
def filled_store(store):
    run_a = store.new_run({}, GIT_REV)
    for i in range(4):
        store.add_record(make_ok_record(run_a, i, device=("pi", "jetson")[i % 2]))
    store.add_record(make_error_record(run_a, 9))
    run_b = store.new_run({}, GIT_REV)
    store.add_record(make_ok_record(run_b, 0, device="xeon"))
    return store, run_a, run_b


def _medians(records: list[dict]) -> dict[str, float | None]:
    return {r["job_key"]: r["median_ms"] for r in records}


def test_export_csv(filled_store, tmp_path):
    pd = pytest.importorskip("pandas")
    store, run_a, _ = filled_store
    out = tmp_path / "out" / "a.csv"
    assert export(store, run_a, "csv", out) == 5
    frame = pd.read_csv(out)
    assert "samples_ns" not in frame.columns and "env" not in frame.columns
    stored = _medians(store.records(run_a))
    read = dict(zip(frame["job_key"], frame["median_ms"]))
    assert {k: v for k, v in read.items() if stored[k] is not None} == {k: v for k, v in stored.items() if v is not None}
    error_row = frame[frame["status"] == "error"].iloc[0]
    assert error_row["error_stage"] == "timeout" and pd.isna(error_row["median_ms"])
    assert json.loads(frame["runtime_options"][0]) == {"threads": 4}

    export(store, None, "CSV", out, include_samples=True)
    frame = pd.read_csv(out)
    assert len(frame) == 6
    by_key = {(r["run_id"], r["job_key"]): r["samples_ns"] for r in store.records()}
    for _, row in frame.iterrows():
        assert json.loads(row["samples_ns"]) == by_key[(row["run_id"], row["job_key"])]


def test_export_jsonl(filled_store, tmp_path):
    pd = pytest.importorskip("pandas")
    store, run_a, _ = filled_store
    out = tmp_path / "a.jsonl"
    assert export(store, run_a, "jsonl", out) == 5
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [{k: v for k, v in line.items() if k not in SPEEDUP_COLUMNS} for line in lines] == store.records(run_a)
    assert all(line[c] is None for line in lines for c in SPEEDUP_COLUMNS)  # no pruned record: no speedup
    frame = pd.read_json(out, lines=True)
    ok = frame[frame["status"] == "ok"]
    assert dict(zip(ok["job_key"], ok["median_ms"])) == {k: v for k, v in _medians(store.records(run_a)).items()
                                                         if v is not None}


def test_export_parquet(filled_store, tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    store, _, run_b = filled_store
    out = tmp_path / "all.parquet"
    assert export(store, None, "parquet", out) == 6
    frame = pd.read_parquet(out)
    records = store.records()
    assert list(frame["job_key"]) == [r["job_key"] for r in records]
    for (_, row), record in zip(frame.iterrows(), records):
        assert list(row["samples_ns"]) == record["samples_ns"]
        if record["status"] == "ok":
            assert row["median_ms"] == record["median_ms"] and row["n"] == record["n"]
        else:
            assert pd.isna(row["median_ms"])
        assert json.loads(row["runtime_options"]) == record["runtime_options"]
    assert export(store, run_b, "parquet", out) == 1 and len(pd.read_parquet(out)) == 1


def test_exports_carry_speedups_with_intervals_and_validity(store, tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    run_id = store.new_run({}, GIT_REV)
    rounds = {"sample_rounds": [k % 5 for k in range(50)], "rounds": 5, "group_key": "g"}
    original_job = make_job(variant="original")
    original_job["artifact"] = {**original_job["artifact"], "macs": 1_400_000_000}  # 2.19× the pruned MACs
    orig = make_record(run_id, {**original_job, "entry": "o"}, {**ok_result(samples_for(0)), **rounds}, GIT_REV)
    pruned_samples = [s // 2 for s in samples_for(1)]
    pruned = make_record(run_id, {**make_job(variant="snp:x", sha=SHA_B), "entry": "p", "base": "o"},
                         {**ok_result(pruned_samples, sha=SHA_B), **rounds}, GIT_REV)
    for record in (orig, pruned):
        store.add_record(record)
    speedup = orig["median_ms"] / pruned["median_ms"]
    for fmt in ("csv", "jsonl", "parquet"):
        out = tmp_path / f"x.{fmt}"
        export(store, run_id, fmt, out)
        frame = (pd.read_csv(out) if fmt == "csv" else pd.read_json(out, lines=True) if fmt == "jsonl"
                 else pd.read_parquet(out)).set_index("variant")
        assert pd.isna(frame.loc["original", "speedup"]) and pd.isna(frame.loc["original", "speedup_low"])
        row = frame.loc["snp:x"]
        assert row["speedup"] == pytest.approx(speedup)
        assert row["speedup_low"] <= row["speedup"] <= row["speedup_high"]
        validity = json.loads(row["validity"]) if fmt == "csv" else list(row["validity"])
        assert validity == [], validity  # 5 shared rounds, a tight interval, no warning
        assert ("sample_rounds" in frame.columns) == (fmt != "csv")


def test_export_rejects_unknown_formats_and_runs(filled_store, tmp_path):
    store, run_a, _ = filled_store
    with pytest.raises(ValueError) as info:
        export(store, run_a, "xlsx", tmp_path / "a.xlsx")
    message = str(info.value)
    assert "\n" not in message and all(name in message for name in ("csv", "parquet", "jsonl"))
    with pytest.raises(UnknownRunError):
        export(store, "nope", "csv", tmp_path / "a.csv")
    assert not (tmp_path / "a.xlsx").exists() and not (tmp_path / "a.csv").exists()
