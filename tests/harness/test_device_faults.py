"""Device-lab faults in `bench sweep`: every planned job ends as a record, Ctrl-C / SIGTERM clean up, one host at a time.

Real parts only: local devices, a real sshd (`sshd_server`), the real agent and
`python -m bench sweep` as a subprocess. The bad settings are real ones (a port
that is not a number, a ``~user`` workdir, a workdir that is a file); where the
loaded config could refuse one before the run (a check devices/config.py may
grow), the test sets it on the loaded `DeviceSpec`, as a hand-edited one would be.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from helpers import local_device, ssh_device, tiny_sweep_toml

from harness import config as harness_config
from harness.runner import SweepRequest, run_sweep
from results.store import Store

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")  # shared: each test after the first reuses the exports


def write_config(tmp: Path, artifacts: Path, devices: str, **measure: float) -> Path:
    path = tmp / "bench.toml"
    path.write_text(tiny_sweep_toml(tmp, artifacts, devices, **measure))
    return path


def bench_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def by_device(records: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for r in records:
        grouped.setdefault(r["device"], []).append(r)
    return grouped


def test_devices_that_cannot_be_opened_or_reached_end_every_job_as_a_record(tmp_path, artifacts, sshd_server):
    """SSH devices with a port that is not a number, one past 65535 and a ``~user`` workdir; local ones whose workdir
    is a file, or under the home of a user that does not exist (pathlib raises a RuntimeError as the transport
    opens: not a device error the harness knows, so stage "harness"): each job a record, the good device's ok."""
    not_a_dir = tmp_path / "a_file"
    not_a_dir.write_text("not a folder")
    devices = (local_device("good", tmp_path / "good") + local_device("filedir", not_a_dir)
               + local_device("nohome", tmp_path / "n")
               + ssh_device("tilde", sshd_server, tmp_path / "t") + ssh_device("badport", sshd_server, tmp_path / "p")
               + ssh_device("bigport", sshd_server, tmp_path / "o"))
    cfg = harness_config.load(write_config(tmp_path, artifacts, devices))
    cfg.devices["tilde"].workdir = "~nosuchuser_snpbench/x"
    cfg.devices["nohome"].workdir = "~nosuchuser_snpbench/x"
    cfg.devices["badport"].port = "twenty-two"  # type: ignore[assignment]  # as a TOML string would give it
    cfg.devices["bigport"].port = 99999999
    store = Store(cfg.store)
    outcome = run_sweep(cfg, store, SweepRequest(formats=["onnx"]))
    rows = by_device(outcome.records)
    assert sorted(rows) == ["badport", "bigport", "filedir", "good", "nohome", "tilde"]
    assert all(len(device_rows) == 2 for device_rows in rows.values())  # tiny + tiny_snp, .onnx
    assert all(r["status"] == "ok" for r in rows["good"])
    for name, stages, words in (("tilde", {"connect"}, ["~nosuchuser_snpbench"]),
                                ("badport", {"connect"}, ["twenty-two"]), ("filedir", {"connect"}, ["a_file"]),
                                ("bigport", {"connect", "harness"}, ["99999999", "65535"]),
                                ("nohome", {"connect", "harness"}, ["nosuchuser_snpbench", "home directory"])):
        for r in rows[name]:
            assert r["status"] == "error" and r["error_stage"] in stages, r
            assert any(w in r["error_message"] for w in words) and "\n" not in r["error_message"], r
    assert (outcome.planned, outcome.ok, outcome.not_ok) == (12, 2, 10)
    assert store.get_run(outcome.run_id)["status"] == "done"


def test_cli_counts_planned_jobs_and_fails_when_one_has_no_ok_record(tmp_path, artifacts):
    not_a_dir = tmp_path / "a_file"
    not_a_dir.write_text("not a folder")
    cfg = write_config(tmp_path, artifacts, local_device("good", tmp_path / "good") + local_device("broken", not_a_dir))
    r = subprocess.run([PY, "-m", "bench", "sweep", "--config", str(cfg), "--formats", "onnx"], cwd=tmp_path,
                       env=bench_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 3, r.stdout + r.stderr  # exit_codes.JOB_FAILED
    summary = [line for line in r.stderr.splitlines() if line.startswith("run ") and " planned: " in line]
    assert len(summary) == 1 and ": 4 planned: 2 ok, 2 error(s); " in summary[0], r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: broken ")]
    assert len(errors) == 2 and all("[connect]" in line and "a_file" in line for line in errors), r.stderr
    assert "Traceback" not in r.stderr


def test_an_unexpected_error_during_the_run_marks_it_interrupted(tmp_path, artifacts):
    """A model timm does not know fails in the exports, after the run was created: it must not stay ``running``."""
    cfg_path = write_config(tmp_path, artifacts, local_device("local", tmp_path / "dev"))
    cfg_path.write_text(cfg_path.read_text().replace('timm = "deit_tiny_patch16_224"', 'timm = "no_such_vit_xyz"'))
    cfg = harness_config.load(cfg_path)
    store = Store(cfg.store)
    with pytest.raises(Exception, match="no_such_vit_xyz"):
        run_sweep(cfg, store, SweepRequest())
    run = store.latest_run()
    assert run is not None and run["status"] == "interrupted"


def test_devices_on_one_host_take_turns(tmp_path, artifacts, sshd_server, caplog):
    """Two local devices are one machine, and so are two SSH entries for one host and port (other workdirs):
    their measurement windows never overlap, and the sweep says so once per host."""
    devices = (local_device("a", tmp_path / "a") + local_device("b", tmp_path / "b")
               + ssh_device("r1", sshd_server, tmp_path / "r1", runtimes="{ onnxruntime = { threads = 1 } }")
               + ssh_device("r2", sshd_server, tmp_path / "r2", runtimes="{ onnxruntime = { threads = 1 } }"))
    cfg = harness_config.load(write_config(tmp_path, artifacts, devices, min_seconds=0.5))
    cfg.measure.cold_start = False  # fewer processes; the windows are what this test is about
    with caplog.at_level(logging.WARNING, logger="harness.runner"):
        outcome = run_sweep(cfg, Store(cfg.store), SweepRequest(formats=["onnx"]))
    assert not outcome.errors, outcome.errors
    rows = by_device(outcome.records)

    def window(name: str) -> tuple[datetime, datetime]:
        return (min(datetime.fromisoformat(r["started"]) for r in rows[name]),
                max(datetime.fromisoformat(r["finished"]) for r in rows[name]))

    for first, second in (("a", "b"), ("r1", "r2")):
        (s1, f1), (s2, f2) = window(first), window(second)
        assert f1 <= s2 or f2 <= s1, (first, window(first), second, window(second))
    shared = [rec.getMessage() for rec in caplog.records if "one host" in rec.getMessage()]
    assert len(shared) == 2 and any("a, b" in m and "this machine" in m for m in shared), shared
    assert any("r1, r2" in m and str(sshd_server.port) in m for m in shared), shared


def agent_pids(marker: str) -> list[int]:
    r = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


def lock_is_free(workdir: Path) -> bool:
    with open(workdir / "agent.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


@pytest.mark.parametrize("kind, signum", [("local", signal.SIGINT), ("local", signal.SIGTERM), ("ssh", signal.SIGINT)],
                         ids=["local-SIGINT", "local-SIGTERM", "ssh-SIGINT"])
def test_interrupt_stops_the_agents_frees_the_lock_and_records_the_jobs_in_flight(tmp_path, artifacts, kind, signum,
                                                                                  request):
    """Mid-measurement, Ctrl-C or SIGTERM: exit 128 + signal, no agent left, the device lock free, both jobs of
    the group in flight recorded as interrupted, the run interrupted; its resume then runs at once (local Ctrl-C)."""
    workdir = tmp_path / f"dev-{secrets.token_hex(6)}"  # unique: pgrep -f finds only this test's agents

    def device() -> str:
        if kind == "local":
            return local_device("dev", workdir)
        return ssh_device("dev", request.getfixturevalue("sshd_server"), workdir,
                          runtimes="{ onnxruntime = { threads = 1 } }")

    long_run = write_config(tmp_path, artifacts, device(), iterations=100000, min_seconds=60, timeout=300)
    proc = subprocess.Popen([PY, "-m", "bench", "sweep", "--config", str(long_run), "--formats", "onnx"],
                            cwd=tmp_path, env=bench_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (agent_pids(str(workdir)) and (workdir / "agent.lock").exists()
                                                   and not lock_is_free(workdir)):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        assert agent_pids(str(workdir)) and not lock_is_free(workdir), "the agent never started measuring"
        time.sleep(1.0)  # into the measurement
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + signum, out + err
    deadline = time.monotonic() + 20  # the agent stops once its stdin closes or its parent exits; give it a moment
    while agent_pids(str(workdir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert agent_pids(str(workdir)) == [], subprocess.run(["ps", "-ef"], capture_output=True, text=True).stdout
    assert lock_is_free(workdir)

    store = Store(tmp_path / "bench.sqlite")
    run = store.latest_run()
    assert run["status"] == "interrupted"
    rows = store.records(run["run_id"])
    name = signal.Signals(signum).name
    assert len(rows) == 2 and all(r["status"] == "error" and r["error_stage"] == "interrupted" for r in rows), rows
    assert all(f"interrupted by {name}" in r["error_message"] for r in rows)
    assert f"2 planned: 0 ok, 2 error(s); interrupted by {name}" in err and "--resume" in err, out + err

    if (kind, signum) != ("local", signal.SIGINT):
        return  # the lock is free (checked above); resuming after that is the same for every variant: run it once
    # the device is free again: a short sweep on the same workdir runs now (its 20 s budget includes the lock wait)
    short = write_config(tmp_path, artifacts, device(), iterations=5, min_seconds=0, timeout=20)
    r = subprocess.run([PY, "-m", "bench", "sweep", "--config", str(short), "--formats", "onnx", "--resume",
                        run["run_id"]], cwd=tmp_path, env=bench_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(row["status"] == "ok" for row in store.records(run["run_id"]))
    assert store.get_run(run["run_id"])["status"] == "done"
