"""Deterministic tests of the agent's round design (devices/agent.py, protocol 2); no timing involved.

A scripted backend is registered in the agent's BACKENDS for each test
(monkeypatch): its ``timed_run_ns`` returns latencies from a scripted "device
clock" shared by every member of the group, which drifts with the number of
runs done so far in the whole process.  That is the situation rounds exist
for: timed in one block each, the ratio of two members' medians measures the
drift; timed in interleaved rounds, it measures the models.

The jobs run in-process (``agent.run_job``), with the ``--cold`` child replaced
by a stub (a child process cannot see a backend registered in this one; the
real child is tested in test_agent.py).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import random
import subprocess
import time

import pytest
from helpers import load_agent
from results.intervals import speedup_interval, validity_details

ROOT = pathlib.Path(__file__).resolve().parents[2]
AGENT = ROOT / "devices" / "agent.py"


agent = load_agent("device_agent_rounds_under_test")

#: The members' true latencies: the speedup the group should measure is 1.6.
TRUE_NS = {"base": 1_600_000, "pruned": 1_000_000}
TRUE_SPEEDUP = TRUE_NS["base"] / TRUE_NS["pruned"]
STUB_COLD = {"load_s": 0.5, "build_s": 0.0, "first_inference_ns": 9_000_000, "peak_rss_bytes": 123 * 2 ** 20,
             "gpu_peak_bytes": None}


class DriftingClock:
    """The device's speed as a function of how many runs the process has done (all members together).

    ``factor`` multiplies every member's true latency: a linear ramp of +50 %
    over the job (the device heats up) and a step to 2x 40 % of the way in
    (the governor halves the clock).  The step is not at exactly half-way so
    that the median of a member's samples is not the point where the step is.
    """

    def __init__(self, total_runs: int, ramp: float = 0.5, step_at: float = 0.4, step: float = 2.0):
        self.total = total_runs
        self.ramp, self.step_at, self.step = ramp, step_at, step
        self.runs = 0
        self.log: list[tuple[str, int]] = []  # (member id, run index) of every run

    def factor_at(self, run: int) -> float:
        x = run / self.total
        return (1.0 + self.ramp * x) * (self.step if x >= self.step_at else 1.0)

    def factor(self) -> float:
        return self.factor_at(self.runs)

    def run(self, member_id: str, true_ns: int) -> int:
        ns = round(true_ns * self.factor())
        self.log.append((member_id, self.runs))
        self.runs += 1
        return ns


def total_runs(job: dict) -> int:
    """Runs the agent will do for this job (every member reaches its iteration target in every round)."""
    rounds = job["rounds"]
    per_block = -(-job["measure"]["iterations"] // rounds) + job["rewarm"]["iterations"]
    return len(job["members"]) * (job["warmup"]["iterations"] + rounds * per_block)


def install(monkeypatch, clock: DriftingClock, fail_after: dict | None = None, opened: list | None = None,
            true_ns: dict | None = None, sleep_s: float = 0.0) -> None:
    """Register the scripted backend as the agent's onnxruntime backend and stub the cold child.

    ``fail_after``: member id -> runs after which its backend raises; ``opened``
    collects every backend loaded; ``true_ns``: the members' true latencies.
    """
    latencies = true_ns or TRUE_NS

    class ScriptedBackend(agent.Backend):
        def load(self, progress):
            self.member_id = self.job["id"]
            self.true_ns = latencies[self.member_id]
            if opened is not None:
                opened.append(self)
            self.open = True

        def run_once(self):
            self.timed_run_ns()

        def timed_run_ns(self):
            assert self.open, "a closed backend was run"
            if fail_after and self.member_id in fail_after:
                fail_after[self.member_id] -= 1
                if fail_after[self.member_id] < 0:
                    raise RuntimeError(f"scripted failure of {self.member_id}")
            if sleep_s:
                time.sleep(sleep_s)
            return clock.run(self.member_id, self.true_ns)

        def info(self):
            return {"scripted": True}

        def close(self):
            self.open = False

    monkeypatch.setitem(agent.BACKENDS, "onnxruntime", ScriptedBackend)
    monkeypatch.setattr(agent, "measure_cold", lambda job, member, deadline: (dict(STUB_COLD), None))


@pytest.fixture
def artifacts(tmp_path):
    """Two small files standing in for the members' artifacts (the agent verifies their sha256)."""
    paths = {}
    for name in TRUE_NS:
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(name.encode() * 100)
        paths[name] = path
    return paths


def group_job(artifacts, workdir, names=("base", "pruned"), **overrides) -> dict:
    job = {
        "protocol": 2, "job_id": "group", "runtime": "onnxruntime", "options": {}, "workdir": str(workdir),
        "timeout_s": 600,
        "members": [{"id": n, "artifact": {"path": str(artifacts[n]),
                                           "sha256": hashlib.sha256(artifacts[n].read_bytes()).hexdigest(),
                                           "format": "onnx"},
                     "input": {"shape": [1, 16], "dtype": "float32"}} for n in names],
        "warmup": {"iterations": 20, "seconds": 0},
        "measure": {"iterations": 400, "min_seconds": 0},
        "rounds": 20, "seed": 0, "rewarm": {"iterations": 5}, "isolate": False, "cooldown": None,
    }
    job.update(overrides)
    return job


def run(job: dict) -> dict:
    result = agent.run_job(json.dumps(job))
    json.dumps(result, allow_nan=False)  # what main() writes must be valid JSON
    return result


def members(result: dict) -> dict:
    return {m["id"]: m for m in result["members"]}


def median_speedup(result: dict) -> float:
    m = members(result)
    return m["base"]["stats"]["median_ns"] / m["pruned"]["stats"]["median_ns"]


def seed_with_first_order(ids: list[str], wanted: list[str]) -> int:
    """A seed whose round 0 visits the members in `wanted` order (the agent's rule, computed here)."""
    for seed in range(1000):
        order = list(ids)
        random.Random(seed * 1000003 + 0).shuffle(order)
        if order == wanted:
            return seed
    raise AssertionError("no seed found")


# ----- the acceptance: drift -------------------------------------------------------

@pytest.mark.parametrize("order", [["base", "pruned"], ["pruned", "base"]])
def test_one_block_each_measures_the_drift(monkeypatch, artifacts, tmp_path, order):
    """Rounds = 1, members in a fixed order: the ratio of medians is the drift's, far from 1.6."""
    seed = seed_with_first_order(["base", "pruned"], order)
    job = group_job(artifacts, tmp_path, rounds=1, seed=seed)
    clock = DriftingClock(total_runs(job))
    install(monkeypatch, clock)
    result = run(job)
    assert result["status"] == "ok" and result["round_orders"] == [order]
    assert clock.runs == clock.total  # the scripted clock saw exactly the runs planned
    ratio = median_speedup(result)
    assert abs(ratio / TRUE_SPEEDUP - 1) > 0.20, ratio
    print(f"one block each, {order[0]} first: median speedup {ratio:.4f} (true {TRUE_SPEEDUP})")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_interleaved_rounds_measure_the_models(monkeypatch, artifacts, tmp_path, seed):
    """The same job and clock in 20 rounds: the ratio of medians is within 2 % of 1.6 (whatever the seed)."""
    job = group_job(artifacts, tmp_path, rounds=20, seed=seed)
    clock = DriftingClock(total_runs(job))
    install(monkeypatch, clock)
    result = run(job)
    assert result["status"] == "ok"
    assert clock.runs == clock.total
    for m in result["members"]:
        assert m["status"] == "ok" and m["stats"]["n"] == 400
        assert sorted(set(m["sample_rounds"])) == list(range(20))  # rounds were not dropped
        assert m["measure"]["round_iterations"] == [20] * 20
    # The members really alternate: the runs come in the warm-ups' order, then round by round in
    # the recorded orders (a member last in one round and first in the next runs twice in a row).
    assert visits(clock) == _collapse(["base", "pruned"] + [mid for order in result["round_orders"] for mid in order])
    ratio = median_speedup(result)
    assert abs(ratio / TRUE_SPEEDUP - 1) < 0.02, ratio
    # the interval the reports give this pair (paired bootstrap over the 20 rounds) covers the truth
    interval = speedup_interval(*(as_record(result, mid) for mid in ("base", "pruned")))
    assert interval.method == "paired-rounds" and interval.rounds == 20
    assert interval.low <= TRUE_SPEEDUP <= interval.high, interval
    # honest about it: the interval is wide (a resample with more rounds before the clock step than after
    # puts the pooled medians in the other regime) and the cell would be marked for the drift
    reasons = [k for k, _ in validity_details(*(as_record(result, mid) for mid in ("base", "pruned")), interval)]
    assert "drift" in reasons, reasons
    print(f"20 rounds, seed {seed}: median speedup {ratio:.4f} ({interval.low:.4f}-{interval.high:.4f}), "
          f"true {TRUE_SPEEDUP}")


def test_rounds_under_a_ramp_alone_give_a_narrow_interval_around_the_truth(monkeypatch, artifacts, tmp_path):
    """Without the clock step (the +50 % ramp only) the pooled medians are stable: the interval covers 1.6 and
    is narrow (under 5 % of the speedup), so the width above is the step's, not the method's."""
    job = group_job(artifacts, tmp_path, rounds=20, seed=0)
    clock = DriftingClock(total_runs(job), step=1.0)
    install(monkeypatch, clock)
    result = run(job)
    interval = speedup_interval(*(as_record(result, mid) for mid in ("base", "pruned")))
    assert abs(interval.point / TRUE_SPEEDUP - 1) < 0.02, interval
    assert interval.low <= TRUE_SPEEDUP <= interval.high and (interval.high - interval.low) / interval.point < 0.05, \
        interval
    print(f"20 rounds, ramp only: median speedup {interval.point:.4f} ({interval.low:.4f}-{interval.high:.4f})")


def as_record(result: dict, member_id: str) -> dict:
    """The fields of a member's record that ``results.intervals`` reads (harness.jobs.member_result's)."""
    m = members(result)[member_id]
    return {"samples_ns": m["samples_ns"], "sample_rounds": m["sample_rounds"], "group_key": "g",
            "median_ms": m["stats"]["median_ns"] / 1e6}


def visits(clock: DriftingClock) -> list[str]:
    """The members in the order the clock saw them, consecutive runs of one member as one visit."""
    return _collapse([mid for mid, _ in clock.log])


def _collapse(ids):
    return [x for i, x in enumerate(ids) if i == 0 or ids[i - 1] != x]


# ----- round orders and sample rounds ------------------------------------------------

def test_round_orders_are_recorded_used_and_reproducible(monkeypatch, artifacts, tmp_path):
    artifacts["third"] = artifacts["base"]
    three = dict(TRUE_NS, third=1_300_000)
    names = ("base", "pruned", "third")
    job = group_job(artifacts, tmp_path, names=names, rounds=8, seed=42, warmup={"iterations": 0},
                    rewarm={"iterations": 0}, measure={"iterations": 24, "min_seconds": 0})
    clock = DriftingClock(total_runs(job))
    install(monkeypatch, clock, true_ns=three)
    first = run(job)
    expected = []
    for r in range(8):
        order = list(names)
        random.Random(42 * 1000003 + r).shuffle(order)
        expected.append(order)
    assert first["round_orders"] == expected == agent.round_orders(list(names), 42, 8)
    assert len({tuple(o) for o in expected}) > 1  # the orders do vary between rounds
    # The recorded orders are the orders used: each round's blocks ran in that order.
    assert visits(clock) == _collapse([mid for order in expected for mid in order])
    install(monkeypatch, DriftingClock(total_runs(job)), true_ns=three)
    again = run(job)
    assert again["round_orders"] == first["round_orders"]
    assert [s for m in again["members"] for s in m["samples_ns"]] == \
        [s for m in first["members"] for s in m["samples_ns"]]  # same seed, same clock: same samples
    install(monkeypatch, DriftingClock(total_runs(job)), true_ns=three)
    other = run(dict(job, seed=43))
    assert other["round_orders"] != first["round_orders"] and other["seed"] == 43


def test_every_sample_has_its_round(monkeypatch, artifacts, tmp_path):
    job = group_job(artifacts, tmp_path, rounds=5, measure={"iterations": 23, "min_seconds": 0},
                    rewarm={"iterations": 1}, warmup={"iterations": 2})
    clock = DriftingClock(total_runs(job))
    install(monkeypatch, clock)
    result = run(job)
    for m in result["members"]:
        assert len(m["sample_rounds"]) == len(m["samples_ns"]) == 25  # ceil(23 / 5) = 5 per round
        assert m["sample_rounds"] == [r for r in range(5) for _ in range(5)]
        assert m["measure"]["round_iterations"] == [5] * 5 and m["measure"]["rewarm_iterations"] == 5
        assert m["warnings"] == [] or all("high variation" in w for w in m["warnings"])
    # Each sample is the clock's value at the run that produced it: the timed runs of the member's
    # block in that round (after 2 warm-up runs; each block is 1 re-warm run + 5 timed runs).
    for m in result["members"]:
        own = [k for mid, k in clock.log if mid == m["id"]][2:]
        timed = [own[r * 6 + 1:(r + 1) * 6] for r in range(5)]
        assert m["samples_ns"] == [round(TRUE_NS[m["id"]] * clock.factor_at(k)) for block in timed for k in block]


def test_block_shares():
    totals = {"iterations": 1000, "min_seconds": 10.0, "max_iterations": 100000, "max_seconds": 50.0}
    spec = agent.block_spec(totals, 10, 0, 0)
    assert spec == {"iterations": 100, "min_seconds": 1.0, "max_iterations": 10000, "max_seconds": 5.0}
    assert agent.block_spec(dict(totals, iterations=1001), 10, 0, 0)["iterations"] == 101  # rounded up
    capped = dict(totals, max_iterations=7, max_seconds=None)
    assert agent.block_spec(capped, 2, 0, 0)["max_iterations"] == 4
    assert agent.block_spec(capped, 2, 1, 4)["max_iterations"] == 3  # never more than max_iterations in total
    assert agent.combine_stop_reasons(["target", "max_iterations", "timeout"]) == "timeout"
    assert agent.combine_stop_reasons(["target", "target"]) == "target"


# ----- isolate ------------------------------------------------------------------------

def test_isolate_loads_one_member_at_a_time(monkeypatch, artifacts, tmp_path):
    job = group_job(artifacts, tmp_path, rounds=4, measure={"iterations": 40, "min_seconds": 0})
    install(monkeypatch, DriftingClock(total_runs(job)))
    shared = run(job)
    opened: list = []
    install(monkeypatch, DriftingClock(total_runs(job)), opened=opened)
    isolated = run(dict(job, isolate=True))
    assert set(shared) == set(isolated)
    assert shared["round_orders"] == isolated["round_orders"]
    for a, b in zip(shared["members"], isolated["members"]):
        assert set(a) == set(b) and set(a["measure"]) == set(b["measure"])
        assert a["sample_rounds"] == b["sample_rounds"] and len(a["samples_ns"]) == len(b["samples_ns"])
        assert a["warmup"]["iterations"] == b["warmup"]["iterations"] == 20  # isolate: once, after the first load
        assert a["measure"]["loads"] == 1 and b["measure"]["loads"] == 4
        assert b["cold"] == STUB_COLD
    assert len(opened) == 2 * 4 and not any(backend.open for backend in opened)
    # One member in memory at a time: each backend was closed before the next one was loaded.
    # (The scripted backend asserts it is open whenever it runs.)


@pytest.mark.parametrize("available_mib, isolated", [(150, True), (10_000, False), (None, False)])
def test_members_that_do_not_fit_in_memory_are_isolated(monkeypatch, artifacts, tmp_path, available_mib, isolated):
    """Each member adds 100 MiB (its cold child's peak RSS less its RSS before loading): 200 MiB do not fit in
    80 % of 150 MiB, so the group is isolated with a warning giving both figures; 10 GiB, or a device that
    reports no MemAvailable, loads both at once."""
    job = group_job(artifacts, tmp_path, rounds=3, measure={"iterations": 30, "min_seconds": 0})
    install(monkeypatch, DriftingClock(total_runs(job)))
    cold = dict(STUB_COLD, peak_rss_bytes=160 * 2 ** 20, base_rss_bytes=60 * 2 ** 20)
    monkeypatch.setattr(agent, "measure_cold", lambda job, member, deadline: (dict(cold), None))
    monkeypatch.setattr(agent, "mem_available_bytes",
                        lambda: None if available_mib is None else available_mib * 2 ** 20)
    result = run(job)
    assert result["status"] == "ok" and result["isolated"] is isolated
    assert [m["measure"]["loads"] for m in result["members"]] == [3 if isolated else 1] * 2
    said = [w for w in result["warnings"] if w.startswith("loading one member at a time")]
    if isolated:
        assert said == ["loading one member at a time: the 2 members need about 200 MiB together, more than "
                        "80 % of the 150 MiB this device has available"]
    else:
        assert said == []


def test_footprint_without_a_cold_start_is_twice_the_artifact(artifacts, tmp_path):
    job = agent.parse_job(json.dumps(group_job(artifacts, tmp_path)))
    member = agent.Member(job["members"][0], job)
    assert agent.member_footprint(member) == 2 * artifacts["base"].stat().st_size
    member.cold = dict(STUB_COLD, peak_rss_bytes=300, base_rss_bytes=100)
    assert agent.member_footprint(member) == 200


def test_memory_figures_of_this_process():
    assert 10 * 2 ** 20 < agent.peak_rss_bytes() and agent.mem_available_bytes() > 0


# ----- cool-down -------------------------------------------------------------------

def test_isolate_does_not_load_once_the_deadline_is_reached(monkeypatch, artifacts, tmp_path):
    """The first block runs into the job timeout; the members after it are not loaded for nothing."""
    job = group_job(artifacts, tmp_path, rounds=3, timeout_s=1.5, isolate=True, warmup={"iterations": 0},
                    measure={"iterations": 10 ** 9, "min_seconds": 60, "max_iterations": 10 ** 9})
    opened: list = []
    install(monkeypatch, DriftingClock(10 ** 6), opened=opened, sleep_s=0.001)
    t0 = time.monotonic()
    result = run(job)
    assert time.monotonic() - t0 < 5
    first = result["round_orders"][0][0]
    m = members(result)
    assert m[first]["status"] == "ok" and m[first]["measure"]["stop_reason"] == "timeout"
    assert m[first]["measure"]["loads"] == 1 and set(m[first]["sample_rounds"]) == {0}
    assert any(w.startswith("fewer samples than asked") for w in m[first]["warnings"])
    other = next(mid for mid in m if mid != first)
    assert m[other]["status"] == "error" and "no iteration finished" in m[other]["error"]["message"]
    assert len(opened) == 1


def test_cooldown_without_a_temperature_source_warns_once_and_does_not_wait(monkeypatch, artifacts, tmp_path):
    monkeypatch.setattr(agent, "thermal_zones", dict)
    monkeypatch.setattr(agent, "nvidia_smi", lambda: None)
    job = group_job(artifacts, tmp_path, rounds=5, measure={"iterations": 10, "min_seconds": 0},
                    cooldown={"max_temp_c": 60, "max_wait_s": 30})
    install(monkeypatch, DriftingClock(total_runs(job)))
    result = run(job)
    assert result["status"] == "ok"
    cool = [w for w in result["warnings"] if "cool-down" in w]
    assert len(cool) == 1 and "no temperature" in cool[0]
    assert result["cooldown"] == [] and result["timings_s"]["cooldown"] == 0.0
    assert result["settings"]["cooldown"] == {"max_temp_c": 60.0, "max_wait_s": 30.0}


def test_cooldown_waits_below_max_temp_and_records_each_wait(monkeypatch, artifacts, tmp_path):
    # Before rounds 1..3: hot twice then cool; always cool; still hot after max_wait_s.
    readings = iter([50.0,                    # the check that a temperature source exists
                     75.0, 72.0, 55.0,        # round 1: waits two polls
                     40.0,                    # round 2: no wait
                     90.0] + [90.0] * 10000)  # round 3: gives up at max_wait_s
    monkeypatch.setattr(agent, "hottest_temperature", lambda: next(readings))
    monkeypatch.setattr(agent, "COOLDOWN_POLL_S", 0.01)
    job = group_job(artifacts, tmp_path, rounds=4, measure={"iterations": 8, "min_seconds": 0},
                    cooldown={"max_temp_c": 60, "max_wait_s": 0.2})
    install(monkeypatch, DriftingClock(total_runs(job)))
    result = run(job)
    entries = result["cooldown"]
    assert [e["round"] for e in entries] == [1, 2, 3]
    assert [e["temp_c"] for e in entries] == [55.0, 40.0, 90.0]
    assert entries[0]["waited_s"] >= 0.02 and entries[1]["waited_s"] < 0.05
    assert 0.2 <= entries[2]["waited_s"] < 5
    hot = [w for w in result["warnings"] if "cool-down" in w]
    assert len(hot) == 1 and "1 of 3 rounds" in hot[0]
    assert result["timings_s"]["cooldown"] == pytest.approx(sum(e["waited_s"] for e in entries))
    assert all(m["status"] == "ok" for m in result["members"])


# ----- failures --------------------------------------------------------------------

def test_member_failing_mid_rounds_is_an_error_member_the_other_goes_on(monkeypatch, artifacts, tmp_path):
    job = group_job(artifacts, tmp_path, rounds=5, measure={"iterations": 50, "min_seconds": 0})
    # pruned's 20 warm-up runs pass, then it fails in its third round's block.
    install(monkeypatch, DriftingClock(total_runs(job)), fail_after={"pruned": 20 + 2 * 15 + 7})
    result = run(job)
    assert result["status"] == "ok" and result["error"] is None
    m = members(result)
    assert m["pruned"]["status"] == "error" and m["pruned"]["error"]["stage"] == "measure"
    assert "scripted failure" in m["pruned"]["error"]["message"]
    assert m["pruned"]["samples_ns"] == [] and m["pruned"]["sample_rounds"] == []
    assert m["base"]["status"] == "ok" and m["base"]["stats"]["n"] == 50
    assert sorted(set(m["base"]["sample_rounds"])) == list(range(5))


def test_failure_in_rewarm_is_a_warmup_error(monkeypatch, artifacts, tmp_path):
    job = group_job(artifacts, tmp_path, rounds=3, measure={"iterations": 30, "min_seconds": 0})
    install(monkeypatch, DriftingClock(total_runs(job)), fail_after={"base": 20 + 2})  # in round 0's re-warm
    result = run(job)
    m = members(result)
    assert m["base"]["status"] == "error" and m["base"]["error"]["stage"] == "warmup"
    assert m["pruned"]["status"] == "ok"


def test_cold_figures_land_in_each_member(monkeypatch, artifacts, tmp_path):
    job = group_job(artifacts, tmp_path, rounds=2, measure={"iterations": 4, "min_seconds": 0})
    install(monkeypatch, DriftingClock(total_runs(job)))
    result = run(job)
    assert all(m["cold"] == STUB_COLD for m in result["members"])


# ----- Python 3.6 ----------------------------------------------------------------------

DRIVER_36 = r'''
import json, sys, importlib.util
spec = importlib.util.spec_from_file_location("agent", sys.argv[1])
agent = importlib.util.module_from_spec(spec)
spec.loader.exec_module(agent)
runs = [0]
class Scripted(agent.Backend):
    def load(self, progress):
        self.ns = {"base": 1600000, "pruned": 1000000}[self.job["id"]]
    def run_once(self):
        pass
    def timed_run_ns(self):
        runs[0] += 1
        return self.ns * (2 if runs[0] > 200 else 1)
agent.BACKENDS["onnxruntime"] = Scripted
# the cold child, in-process: exercises run_cold and resource on this Python
agent.measure_cold = lambda job, member, deadline: (agent.run_cold(json.dumps(
    agent.cold_child_job(job, member, 60.0)))["cold"], None)
job = json.loads(sys.stdin.read())
result = agent.run_job(json.dumps(job))
print(json.dumps(result))
'''


def test_rounds_run_on_a_real_python36(artifacts, tmp_path):
    """The protocol-2 path (rounds, isolate, cool-down, cold start) on a real Python 3.6, where one exists."""
    python = _python36()
    if python is None:
        pytest.skip("no Python 3.6 interpreter here")
    job = group_job(artifacts, tmp_path, rounds=4, measure={"iterations": 100, "min_seconds": 0},
                    cooldown={"max_temp_c": 1000, "max_wait_s": 1})
    for isolate in (False, True):
        proc = subprocess.run([python, "-c", DRIVER_36, str(AGENT)], input=json.dumps(dict(job, isolate=isolate)),
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout.splitlines()[-1])
        assert result["status"] == "ok", result["error"]
        assert result["round_orders"] == agent.round_orders(["base", "pruned"], 0, 4)  # same on 3.6
        assert result["env"]["python"]["version"].startswith("3.6")
        for m in result["members"]:
            assert m["status"] == "ok", m["error"]
            assert m["sample_rounds"] == [r for r in range(4) for _ in range(25)]
            assert m["measure"]["loads"] == (4 if isolate else 1)
            assert m["cold"]["peak_rss_bytes"] > 2 ** 20 and m["cold"]["first_inference_ns"] >= 0


def _python36():
    import glob
    import os
    import shutil
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.6*/bin/python")))
    candidates.append(shutil.which("python3.6"))
    for candidate in candidates:
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        try:
            proc = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                                  capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            continue
        if proc.returncode == 0 and proc.stdout.strip() == "(3, 6)":
            return candidate
    return None
