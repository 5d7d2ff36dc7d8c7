"""`bench sweep` end to end: local and real-sshd devices, faults, resume after SIGKILL, injection.

A 2-block DeiT-T at 64x64 (timm kwargs) keeps exports and timings fast; the code
paths are the ones a full DeiT sweep takes.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import config as harness_config
from helpers import local_device, run_cli, ssh_device, tiny_sweep_toml
from harness.runner import SweepRequest, run_sweep
from results.store import Store

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")  # shared: each test after the first reuses the exports


def write_config(tmp: Path, artifacts: Path, devices: str, iterations: int = 5, min_seconds: float = 0.0,
                 timeout: float = 120, grace: float = 30, cold_start: bool = False) -> Path:
    path = tmp / "bench.toml"
    path.write_text(tiny_sweep_toml(tmp, artifacts, devices, iterations=iterations, min_seconds=min_seconds,
                                    timeout=timeout, grace=grace, cold_start=cold_start))
    return path


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([PY, "-m", "bench", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_local_sweep_cli_prints_speedup_table(tmp_path, artifacts, capsys, monkeypatch):
    hooks = f'pre = ["echo pre >> {tmp_path}/hooks.log"]\npost = ["echo post >> {tmp_path}/hooks.log"]\n'
    cfg = write_config(tmp_path, artifacts, local_device("local", tmp_path / "dev") + hooks, cold_start=True)
    r = bench("sweep", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    # the closing table is `bench table --efficiency`: speedups with their intervals, both formats
    assert re.search(r"\| \+ L2 \| l2:embed=0.25,ffn=0.5,qk=0.5,v=0.5 \|.*· [0-9.]+× \([0-9.]+–[0-9.]+\)", r.stdout)
    assert "local (.onnx)" in r.stdout and "local (.pt)" in r.stdout
    monkeypatch.chdir(tmp_path)  # the reading commands run in this process (`run_cli`): no torch import each
    code, table, _ = run_cli(["table", "--config", str(cfg), "--efficiency"], capsys)
    assert code == 0 and table in r.stdout
    rows = Store(tmp_path / "bench.sqlite").records()
    assert len(rows) == 4 and all(r["status"] == "ok" and r["n"] >= 5 for r in rows)
    assert {r["variant"] for r in rows} == {"original", "l2:embed=0.25,ffn=0.5,qk=0.5,v=0.5"}
    assert all(len(r["samples_ns"]) == r["n"] and r["macs"] and r["env"]["cpu"] for r in rows)
    # each format's original and pruned model were timed together, in 10 interleaved rounds, after a cold start
    assert all(r["rounds"] == 10 and sorted(set(r["sample_rounds"])) == list(range(10)) for r in rows)
    assert all(r["load_s"] > 0 and r["first_inference_ms"] > 0 and r["peak_rss_mb"] > 0 for r in rows)
    groups = {fmt: {r["group_key"] for r in rows if r["format"] == fmt} for fmt in ("onnx", "torchscript")}
    assert all(len(keys) == 1 for keys in groups.values()) and groups["onnx"] != groups["torchscript"]
    assert (tmp_path / "hooks.log").read_text() == "pre\npost\n"  # the device's pre/post commands ran once each

    code, _, err = run_cli(["results", "--config", str(cfg), "export", "--format", "csv", "--out",
                            str(tmp_path / "x.csv")], capsys)
    assert code == 0 and "wrote 4 records" in err


def test_named_sweep_selection_and_flags_over_it(tmp_path, artifacts, capsys, monkeypatch):
    cfg = write_config(tmp_path, artifacts, local_device("local", tmp_path / "dev")
                       + '\n[sweeps.small]\nmodels = ["tiny"]\nformats = ["onnx", "torchscript"]\n')
    r = bench("sweep", "--config", str(cfg), "--sweep", "small", "--formats", "onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = Store(tmp_path / "bench.sqlite").records()
    assert [(row["model"], row["variant"], row["format"]) for row in rows] == [
        ("deit_tiny_patch16_224", "original", "onnx")]
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["sweep", "--config", str(cfg), "--sweep", "nope"], capsys)
    assert code == 2 and err.splitlines()[1:] == [  # after the line saying which config
        f"error: {cfg} has no [sweeps.nope]; known sweeps: paper, small"], err


def test_ssh_sweep_same_fields_as_local_and_second_sweep_uploads_nothing(tmp_path, artifacts, sshd_server):
    devices = local_device("here", tmp_path / "here") + ssh_device("remote", sshd_server, tmp_path / "remote")
    cfg = harness_config.load(write_config(tmp_path, artifacts, devices))
    store = Store(cfg.store)
    first = run_sweep(cfg, store, SweepRequest())
    assert not first.errors, first.errors
    assert first.uploaded["remote"] > 0  # agent + 4 artifacts went over SFTP
    here = [r for r in first.records if r["device"] == "here"]
    remote = [r for r in first.records if r["device"] == "remote"]
    assert len(here) == len(remote) == 4
    for a, b in zip(sorted(here, key=lambda r: r["job_key"]), sorted(remote, key=lambda r: r["job_key"])):
        assert set(a) == set(b)
        assert [k for k, v in a.items() if v is None] == [k for k, v in b.items() if v is None]
        assert a["artifact_sha256"] == b["artifact_sha256"] and b["extra"]["transport"]["name"] == "remote"

    second = run_sweep(cfg, store, SweepRequest())
    assert not second.errors and second.run_id != first.run_id
    assert second.uploaded == {"here": 0, "remote": 0}


def test_faults_leave_error_records_and_other_devices_finish(tmp_path, artifacts, sshd_server, sshd_factory):
    other = sshd_factory()  # a real server whose key is NOT the one we claim to know
    wrong_keys = tmp_path / "wrong_known_hosts"
    wrong_keys.write_text(other.host_key_line().replace(other.known_hosts_name, sshd_server.known_hosts_name))
    hang = tmp_path / "hang.sh"  # an "agent" that never answers: the transport must kill it
    hang.write_text("#!/bin/sh\nexec sleep 600\n")
    hang.chmod(0o755)
    killer = tmp_path / "dies.sh"  # the agent is SIGKILLed 1.5 s into its run
    killer.write_text(f"#!/bin/sh\nexec timeout -s KILL 1.5 {PY} \"$@\"\n")
    killer.chmod(0o755)
    closed = sshd_factory()
    closed.kill()  # nothing listens on its port any more
    devices = (local_device("good", tmp_path / "good")
               + ssh_device("unreachable", closed, tmp_path / "u")
               + ssh_device("badkey", sshd_server, tmp_path / "b", known_hosts=wrong_keys)
               + local_device("hangs", tmp_path / "h", python=str(hang))
               + local_device("killed", tmp_path / "k", python=str(killer)))
    cfg = harness_config.load(write_config(tmp_path, artifacts, devices, iterations=5, min_seconds=0.0))
    outcome = run_sweep(cfg, Store(cfg.store), SweepRequest(devices=["good", "unreachable", "badkey"]))
    by_device: dict[str, list[dict]] = {}
    for r in outcome.records:
        by_device.setdefault(r["device"], []).append(r)
    assert all(len(rows) == 4 for rows in by_device.values()) and len(by_device) == 3
    assert all(r["status"] == "ok" for r in by_device["good"])
    assert all(r["error_stage"] == "connect" for r in by_device["unreachable"])
    assert all(r["error_stage"] == "connect" and "host key" in r["error_message"].lower() for r in by_device["badkey"])

    # "hangs" shares this host with "good", so the two never overlap anyway: it gets its own sweep with a short
    # timeout, which a real agent importing torch on a loaded CI machine could not meet (CI failed on that once).
    cfg.measure.timeout_s, cfg.measure.grace_s = 3.0, 2.0
    outcome = run_sweep(cfg, Store(cfg.store), SweepRequest(devices=["hangs"]))
    assert len(outcome.records) == 4 and all(r["error_stage"] == "timeout" for r in outcome.records)

    cfg.measure.iterations, cfg.measure.min_seconds, cfg.measure.timeout_s = 100000, 30.0, 60.0
    outcome = run_sweep(cfg, Store(cfg.store), SweepRequest(devices=["killed"], formats=["onnx"]))
    assert len(outcome.records) == 2
    assert all(r["error_stage"] == "transport" and "SIGKILL" in r["error_message"] for r in outcome.records)


def test_sigkill_mid_sweep_then_resume_runs_every_job_exactly_once(tmp_path, artifacts):
    cfg_path = write_config(tmp_path, artifacts, local_device("local", tmp_path / "dev"), iterations=5,
                            min_seconds=1.5)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([PY, "-m", "bench", "sweep", "--config", str(cfg_path)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    db = tmp_path / "bench.sqlite"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if db.exists():
            try:
                with sqlite3.connect(db) as conn:
                    if conn.execute("select count(*) from records").fetchone()[0] >= 1:
                        break
            except sqlite3.OperationalError:
                pass
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    store = Store(db)
    run_id = store.latest_run()["run_id"]
    partial = store.records(run_id)
    assert 1 <= len(partial) < 4

    r = bench("sweep", "--config", str(cfg_path), "--resume", run_id, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"run {run_id}: 4 jobs on 1 device(s), {4 - len(partial)} to do" in r.stderr
    rows = store.records(run_id)
    assert len(rows) == 4 and len({row["job_key"] for row in rows}) == 4 and all(row["status"] == "ok" for row in rows)
    assert {(p["job_key"], p["median_ms"]) for p in partial} <= {(row["job_key"], row["median_ms"]) for row in rows}


def test_hostile_names_and_workdirs_never_execute(tmp_path, artifacts, sshd_server):
    evil = "x'; touch pwned; echo \"$(touch pwned2)\" `touch pwned3`"
    workdir = tmp_path / evil
    devices = ssh_device("remote", sshd_server, workdir, runtimes="{ onnxruntime = { threads = 1 } }")
    cfg_path = write_config(tmp_path, artifacts, devices)
    text = cfg_path.read_text().replace("[models.tiny_snp]", f"[models.\"{evil.replace(chr(34), '')}\"]\nbase = \"tiny\"\n"
                                        "ratios = { qk = 0.25 }\ncriterion = \"l2\"\n\n[models.tiny_snp]")
    cfg_path.write_text(text)
    cfg = harness_config.load(cfg_path)
    mine = ["tiny", evil.replace(chr(34), ""), "tiny_snp"]  # the file's models (cfg.models also holds the catalog)
    outcome = run_sweep(cfg, Store(cfg.store), SweepRequest(models=mine, formats=["onnx"]))
    assert len(outcome.records) == 3 and not outcome.errors, outcome.errors
    assert (workdir / "blobs").is_dir()  # the odd name was used literally
    home = Path(os.path.expanduser("~"))
    for where in (tmp_path, home, Path.cwd(), Path("/tmp"), workdir):
        for name in ("pwned", "pwned2", "pwned3"):
            assert not (where / name).exists(), where / name


def test_two_namespaced_devices_run_in_parallel(tmp_path, artifacts, netns_devices):
    lab = netns_devices
    devices = ""
    for name, server in (("dev-a", lab.dev_a), ("dev-b", lab.dev_b)):  # dev-b only via ProxyJump dev-a
        devices += f"""
[devices.{name}]
kind = "ssh"
host = "{name}"
ssh_config = "{lab.ssh_config}"
known_hosts = "{lab.known_hosts}"
identity_file = "{server.client_key}"
python = "{PY}"
workdir = "{tmp_path / name}"
runtimes = {{ onnxruntime = {{ threads = 1 }} }}
"""
    cfg = harness_config.load(write_config(tmp_path, artifacts, devices, iterations=5, min_seconds=1.0))
    started = time.monotonic()
    outcome = lab.run(lambda: run_sweep(cfg, Store(cfg.store), SweepRequest(formats=["onnx"])))
    elapsed = time.monotonic() - started
    assert not outcome.errors, outcome.errors
    assert sorted(r["device"] for r in outcome.records) == ["dev-a", "dev-a", "dev-b", "dev-b"]
    starts = {d: min(r["started"] for r in outcome.records if r["device"] == d) for d in ("dev-a", "dev-b")}
    ends = {d: max(r["finished"] for r in outcome.records if r["device"] == d) for d in ("dev-a", "dev-b")}
    assert starts["dev-a"] < ends["dev-b"] and starts["dev-b"] < ends["dev-a"]  # the two devices overlapped
    assert elapsed < 60


def test_bench_devices_checks_each_device(tmp_path, artifacts, sshd_server, sshd_factory, capsys, monkeypatch):
    stranger = sshd_factory()
    empty_known_hosts = tmp_path / "empty_known_hosts"
    empty_known_hosts.write_text("")
    devices = (local_device("here", tmp_path / "here") + ssh_device("remote", sshd_server, tmp_path / "r")
               + ssh_device("stranger", stranger, tmp_path / "s", known_hosts=empty_known_hosts))
    cfg = write_config(tmp_path, artifacts, devices)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["devices", "--config", str(cfg)], capsys)
    lines = {line.split()[0]: line for line in out.splitlines()[3:]}
    assert code == 3, out + err  # exit_codes.JOB_FAILED: a device is not usable
    assert lines["here"].split()[1] == "ok" and "onnxruntime 1." in lines["here"] and "torch 2." in lines["here"]
    assert lines["remote"].split()[1] == "ok" and f"python {sys.version.split()[0]}" in lines["remote"]
    assert "FAIL" in lines["stranger"] and "ssh-keyscan" in lines["stranger"] and "--trust-new-hosts" in lines["stranger"]
    assert empty_known_hosts.read_text() == ""  # nothing trusted silently


def test_sshd_killed_mid_sweep_then_resume_never_uses_a_partial_blob(tmp_path, artifacts, sshd_factory):
    server = sshd_factory()
    workdir = tmp_path / "remote"
    devices = local_device("here", tmp_path / "here") + ssh_device("remote", server, workdir)
    cfg = harness_config.load(write_config(tmp_path, artifacts, devices, iterations=5, min_seconds=0.5))
    store = Store(cfg.store)

    def kill_after_first_remote_record() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = [r for r in store.records(with_samples=False) if r["device"] == "remote"]
            if rows:
                server.kill()
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_first_remote_record)
    killer.start()
    outcome = run_sweep(cfg, store, SweepRequest())
    killer.join()
    remote = [r for r in outcome.records if r["device"] == "remote"]
    here = [r for r in outcome.records if r["device"] == "here"]
    assert len(remote) == 4 and len(here) == 4 and all(r["status"] == "ok" for r in here)  # the other device finished
    failed = [r for r in remote if r["status"] == "error"]
    assert failed and all(r["error_stage"] in ("transport", "connect") for r in failed)

    # a half-written upload, as a crash mid-transfer leaves it: never taken for the blob
    blobs = workdir / "blobs"
    missing = {r["artifact_sha256"] for r in failed} - {p.name for p in blobs.iterdir()}
    assert missing  # some artifact never arrived: the case this test is about
    for sha in missing:
        (blobs / f".tmp-{sha}-deadbeef").write_bytes(b"partial")
    sshd_factory(port=server.port, host_key=server.host_key, client_key=server.client_key)  # the device is back
    resumed = run_sweep(cfg, store, SweepRequest(resume=outcome.run_id))
    assert not resumed.errors and len(resumed.records) == 8
    assert all(sha in {p.name for p in blobs.iterdir()} for sha in missing)



def test_an_export_failure_becomes_error_records_and_the_rest_runs(tmp_path, artifacts, monkeypatch):
    """An ExportError (here: TorchScript refusing the model) ends its own jobs as records, not the sweep."""
    import exporters
    from harness import prepare

    real_export = exporters.export

    def export(model, fmt, *args, **kwargs):
        if fmt == "torchscript":
            raise exporters.ExportError("torchscript export of deit_tiny_patch16_224 failed: trace refused")
        return real_export(model, fmt, *args, **kwargs)

    monkeypatch.setattr(prepare.exporters, "export", export)
    cfg = harness_config.load(write_config(tmp_path, artifacts, local_device("local", tmp_path / "dev")))
    outcome = run_sweep(cfg, Store(cfg.store), SweepRequest())
    by_format = {(r["format"], r["variant"]): r for r in outcome.records}
    assert len(outcome.records) == 4 and {f for f, _ in by_format} == {"onnx", "torchscript"}
    for (fmt, _), r in by_format.items():
        if fmt == "onnx":
            assert r["status"] == "ok" and r["n"] >= 5
        else:
            assert (r["status"], r["error_stage"], r["error_type"]) == ("error", "export", "ExportError")
            assert "trace refused" in r["error_message"] and r["artifact_sha256"] == ""
            assert r["input_shape"] == [1, 3, 64, 64] and r["entry"] in ("tiny", "tiny_snp")
    assert Store(cfg.store).get_run(outcome.run_id)["status"] == "done"
