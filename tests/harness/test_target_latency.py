"""`bench compress --target-latency`: the latency model (pure), the profile store, and the flow on real devices.

The flows run a 2-block DeiT-T at 64x64 (timm kwargs) with few iterations, on
`local` and on a real sshd on loopback; they check what is measured, stored and
reused, never how accurate a latency is (this machine is shared and noisy:
accuracy is `benchmarks/target_latency.py`'s job).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import snp_core
from harness import target_latency
from bench.cli import main
from harness.latency_model import Candidate, Curve, TargetLatencyError, choose, information_loss, parse_latency
from results.runs import pick_run
from helpers import local_device, ssh_device, tiny_vit
from results import store as store_module
from results.store import Store, StoreError
from snp_core.groups import Group

TINY = ["--model", "deit_tiny_patch16_224", "--model-kwargs", '{"img_size": 64, "depth": 2}', "--weights", "random",
        "--num-calib", "4", "--batch-size", "4", "--quiet"]


# ----- the latency model (pure) ------------------------------------------------------------------

@pytest.mark.parametrize("text, ms", [("30ms", 30.0), ("30 ms", 30.0), ("0.03s", 30.0), ("30000us", 30.0),
                                      ("30000µs", 30.0), ("30", 30.0), ("2.5", 2.5), (" 1e3us ", 1.0)])
def test_parse_latency_accepts_the_documented_forms(text, ms):
    assert parse_latency(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["", "fast", "30 min", "-5ms", "0", "30ms30", "ms"])
def test_parse_latency_refuses_anything_else_naming_the_forms(text):
    with pytest.raises(TargetLatencyError, match=r"is not a positive latency; write e\.g\. 30ms, '30 ms', 0\.03s"):
        parse_latency(text)


def test_curve_is_monotone_interpolates_and_inverts():
    curve = Curve.fit([(1000, 10.0), (400, 5.0), (700, 8.0), (200, 3.0), (700, 6.0)])  # equal MACs are averaged
    assert curve.macs == (200, 400, 700, 1000) and curve.ms == (3.0, 5.0, 7.0, 10.0)
    assert curve.predict(550) == pytest.approx(6.0) and curve.predict(1000) == 10.0
    assert curve.predict(1300) == pytest.approx(13.0) and curve.predict(100) == pytest.approx(2.0)  # end slopes
    assert curve.macs_for(6.0) == pytest.approx(550) and curve.macs_for(10.0) == 1000 and curve.macs_for(3.0) == 200
    for target in (3.5, 5.0, 6.9, 9.99):
        assert curve.predict(curve.macs_for(target)) == pytest.approx(target)
    assert curve.macs_for(2.9) is None and curve.macs_for(10.1) is None and curve.range_ms == (3.0, 10.0)


def test_noisy_points_are_pooled_and_the_inverse_takes_the_least_pruning():
    curve = Curve.fit([(100, 2.0), (200, 4.0), (300, 3.0), (400, 6.0)])  # 300 MACs measured faster than 200: noise
    assert curve.ms == (2.0, 3.5, 3.5, 6.0)
    assert all(a <= b for a, b in zip(curve.ms, curve.ms[1:]))
    assert curve.macs_for(3.5) == 300  # flat stretch: the most MACs that still meet the target
    with pytest.raises(TargetLatencyError, match="at least two MACs counts"):
        Curve.fit([(100, 2.0), (100, 2.5)])


def test_information_loss_is_the_share_of_score_mass_removed():
    groups = [Group("ffn", "ffn", 4), Group("qk", "qk", 3, heads=2, head_group="heads"), Group("heads", "heads", 2),
              Group("neg", "embed", 3), Group("flat", "v", 4)]
    scores = {"ffn": torch.tensor([4.0, 3.0, 2.0, 1.0]), "qk": torch.tensor([[1.0, 1.0, 2.0], [3.0, 0.0, 1.0]]),
              "heads": torch.tensor([1.0, 3.0]), "neg": torch.tensor([-1.0, 0.0, 1.0]), "flat": torch.zeros(4)}
    keep = {"ffn": [0, 1], "heads": [1], "qk": [[0, 2]], "neg": [1, 2], "flat": [0]}
    loss = information_loss(groups, scores, keep)
    assert loss["ffn"] == pytest.approx(1 - 7 / 10)
    assert loss["qk"] == pytest.approx(1 - 4 / 8)  # kept head 1's pairs 0 and 2; head 0 is gone entirely
    assert loss["heads"] == pytest.approx(1 - 3 / 4)
    assert loss["neg"] == pytest.approx(0.0)  # shifted to [0, 1, 2]: the removed one had none
    assert loss["flat"] == pytest.approx(0.75)  # no mass at all: the share of neurons removed


def test_choose_meets_the_target_with_least_loss():
    kinds = {"a": "qk", "b": "ffn"}
    light = Candidate("light", {}, {}, 10, 9.0, {"a": 0.1, "b": 0.1}, kinds)
    lossy = Candidate("lossy", {}, {}, 9, 8.0, {"a": 0.3, "b": 0.5}, kinds)
    slow = Candidate("slow", {}, {}, 12, 10.5, {"a": 0.0, "b": 0.0}, kinds)
    assert choose([lossy, slow, light], 10.0) is light
    assert lossy.mean_loss == pytest.approx(0.4) and lossy.kind_loss("qk") == pytest.approx(0.3)
    assert lossy.kind_loss("embed") is None
    with pytest.raises(TargetLatencyError, match="no ratio setting is predicted to meet 8.5 ms .closest: 10.5 ms"):
        choose([slow], 8.5)


def _synthetic_profiles(model, name: str, ms_per_gmac: dict[str, float]) -> tuple[list, object, dict]:
    """Two patterns of a tiny ViT with made-up linear latency curves (ms = slope * GMACs + 1)."""
    adapter = snp_core.adapter_for(model, name)
    groups = adapter.groups()
    base = snp_core.ratios.uniform(groups, qk=0.5, v=0.5, ffn=0.5, embed=0.2)
    pats = target_latency.patterns(base, "base", [], groups)
    full = adapter.macs({g.name: g.width for g in groups})
    profiles = [target_latency.Profile(i, p, [{"macs": f * full, "median_ms": ms_per_gmac[p.name] * f * full / 1e9 + 1}
                                              for f in (1.0, 0.5, 0.25)]) for i, p in enumerate(pats)]
    scores = snp_core.score_groups(model, adapter, snp_core.get_criterion("l2"))
    return profiles, adapter, scores


def test_search_picks_a_setting_that_meets_the_target_and_refuses_out_of_range():
    model = tiny_vit()
    profiles, adapter, scores = _synthetic_profiles(model, "", {"base": 1000.0, "uniform": 1000.0})
    assert [p.pattern.name for p in profiles] == ["base", "uniform"]
    assert profiles[1].pattern.ratios == {g.name: 0.0 if g.kind == "heads" else 0.5 for g in adapter.groups()}
    full_ms = max(p["median_ms"] for p in profiles[0].points)
    target = 1 + (full_ms - 1) * 0.6
    best, candidates = target_latency.search(target, profiles, adapter.groups(), adapter.macs, scores, None)
    assert {c.pattern for c in candidates} == {"base", "uniform"} and best in candidates
    assert all(c.predicted_ms <= target for c in candidates)
    assert all(c.predicted_ms == pytest.approx(target, rel=0.05) for c in candidates)
    assert best.mean_loss == min(c.mean_loss for c in candidates)
    with pytest.raises(TargetLatencyError, match="above the measured range .* the unpruned model already runs in"):
        target_latency.search(full_ms * 1.5, profiles, adapter.groups(), adapter.macs, scores, None)
    with pytest.raises(TargetLatencyError, match="below the measured range .* raise the target"):
        target_latency.search(0.5, profiles, adapter.groups(), adapter.macs, scores, None)


def test_patterns_hold_fixed_groups_and_drop_a_uniform_duplicate():
    groups = snp_core.adapter_for(tiny_vit()).groups()
    same = snp_core.ratios.uniform(groups, qk=0.5, v=0.5, ffn=0.5, embed=0.5)
    assert [p.name for p in target_latency.patterns(same, "mine", [], groups)] == ["mine"]
    held = [g.name for g in groups if g.kind == "qk"]
    base = snp_core.ratios.uniform(groups, qk=0.25, v=0.5, ffn=0.3, embed=0.1)
    uniform = target_latency.patterns(base, "mine", held, groups)[1]
    assert uniform.fixed == tuple(held)
    assert {n: r for n, r in uniform.ratios.items() if n in held} == {n: 0.25 for n in held}
    assert {r for n, r in uniform.ratios.items() if n not in held and not n.endswith(".heads")} == {0.5}


# ----- the store ------------------------------------------------------------------------------------

def _identity(**overrides) -> dict:
    ident = {"device": "pi", "runtime": "onnxruntime", "format": "onnx", "runtime_options": {"threads": 4},
             "model": "deit_tiny_patch16_224", "model_kwargs": {}, "input_shape": [1, 3, 224, 224],
             "pattern": {"ratios": {"blocks.0.qk": 0.5, "embed": 0.2}, "fixed": [], "round_to": 8}}
    return {**ident, **overrides}


def test_latency_profiles_are_stored_found_by_identity_and_extended(tmp_path):
    path = tmp_path / "bench.sqlite"
    with Store(path) as store:
        assert store.schema_version() == store_module.SCHEMA_VERSION >= 2
        run_id = store.new_run({}, "rev", note="latency-profile")
        points = [{"macs": 1.2e9, "median_ms": 130.0, "record_id": 1}, {"macs": 0.6e9, "median_ms": 75.0}]
        first = store.add_latency_profile({**_identity(), "name": "paper", "points": points, "run_id": run_id,
                                           "measure": {"iterations": 1000}, "git_rev": "rev"})
        newer = store.add_latency_profile({**_identity(), "name": "paper", "points": points[:1]})
        other = store.add_latency_profile({**_identity(runtime_options={"threads": 1}), "points": points})
        assert len({first, newer, other}) == 3
    with Store(path) as store:  # survives a reopen; key order and extra fields do not matter
        found = store.latency_profile({"extra": 1, **dict(reversed(list(_identity().items())))})
        assert found["id"] == newer and found["points"] == points[:1] and found["pattern"]["round_to"] == 8
        assert store.latency_profile(_identity(device="jetson")) is None
        assert store.latency_profile(_identity(runtime_options={"threads": 1}))["id"] == other
        store.add_latency_point(first, {"macs": 0.9e9, "median_ms": 100.0, "verified": True})
        row = next(p for p in store.latency_profiles("pi") if p["id"] == first)
        assert row["points"][-1] == {"macs": 0.9e9, "median_ms": 100.0, "verified": True} and row["updated"]
        assert row["run_id"] == run_id and row["measure"] == {"iterations": 1000} and row["name"] == "paper"
        assert [p["id"] for p in store.latency_profiles()] == [first, newer, other]
        assert store.latency_profiles("jetson") == []
        with pytest.raises(ValueError, match="lacks identity fields: device"):
            store.add_latency_profile({**_identity(), "device": None})
        with pytest.raises(ValueError, match="positive median_ms"):
            store.add_latency_profile({**_identity(), "points": [{"macs": 1, "median_ms": 0}]})
        with pytest.raises(store_module.StoreError, match="no latency profile 999"):
            store.add_latency_point(999, {"macs": 1, "median_ms": 1.0})


# ----- the command ------------------------------------------------------------------------------------

def write_config(tmp: Path, devices: str, artifacts: Path) -> Path:
    path = tmp / "bench.toml"
    path.write_text(f"""
[paths]
store = "{tmp}/bench.sqlite"
artifacts = "{artifacts}"

[measure]
warmup_iterations = 3
iterations = 20
min_seconds = 0.0
timeout_s = 120
grace_s = 30
""" + devices)
    return path


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")  # shared: later tests reuse the exports


@pytest.fixture
def few_fractions(monkeypatch):
    monkeypatch.setattr(target_latency, "PROFILE_FRACTIONS", (1.0, 0.6, 0.3))  # fewer exports and timings


def compress(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["compress", *TINY, *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("args, message", [
    (["--target-latency", "fast", "--device", "local"], "--target-latency 'fast' is not a positive latency; write"),
    (["--target-latency", "30ms"], "--target-latency needs --device NAME"),
    (["--target-latency", "30ms", "--device", "pi"], "unknown device 'pi'; known devices: local"),
    (["--target-latency", "30ms", "--device", "local", "--runtime", "tensorrt"],
     "device 'local' has no runtime 'tensorrt'; its runtimes: onnxruntime, torch"),
    (["--target-latency", "30ms", "--device", "local", "--target-gmacs", "0.5"], "are exclusive"),
    (["--device", "local"], "--device: only used with --target-latency"),
])
def test_bad_requests_are_one_line_errors_before_any_work(tmp_path, artifacts, capsys, args, message):
    cfg = write_config(tmp_path, local_device("local", tmp_path / "dev"), artifacts)
    code, out, err = compress(capsys, "--config", str(cfg), "--out", str(tmp_path / "out"), *args)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "bench.sqlite").exists() and not (tmp_path / "out").exists()


def _profile_then_target(capsys, tmp_path: Path, cfg: Path, device: str) -> tuple[float, list[dict]]:
    """Profile `device` by asking for an unreachable target (an out-of-range error, profile stored), then return a
    target in the middle of the measured range and the stored profiles."""
    code, _, err = compress(capsys, "--config", str(cfg), "--target-latency", "1000s", "--device", device,
                            "--out", str(tmp_path / "out"))
    assert code == 2 and "is above the measured range" in err and "nothing to prune for latency" in err, err
    profiles = Store(tmp_path / "bench.sqlite").latency_profiles(device)
    medians = [p["median_ms"] for prof in profiles for p in prof["points"]]
    return (min(medians) + max(medians)) / 2, profiles


def _check_flow(capsys, caplog, tmp_path: Path, cfg: Path, device: str) -> list[dict]:
    """Profile once, prune to a target in range reusing the profile, and check what was stored; the records."""
    target, profiles = _profile_then_target(capsys, tmp_path, cfg, device)
    store = Store(tmp_path / "bench.sqlite")
    assert [p["name"] for p in profiles] == ["default pattern", "uniform"]
    profile_runs = {p["run_id"] for p in profiles}
    assert len(profile_runs) == 1 and store.get_run(profile_runs.pop())["note"].startswith("latency-profile")
    profiled = store.records()
    assert len(profiled) == 5 and all(r["status"] == "ok" and r["device"] == device for r in profiled)
    assert {r["variant"] for r in profiled} == {"original", *(f"latency-profile {p} @{f}" for p in
                                                              ("default pattern", "uniform") for f in ("0.60", "0.30"))}
    by_id = {r["id"]: r for r in profiled}
    for prof in profiles:
        assert [p["fraction"] for p in prof["points"]] == [1.0, 0.6, 0.3]
        assert all(by_id[p["record_id"]]["median_ms"] == p["median_ms"] for p in prof["points"])
        assert prof["runtime_options"] == {"threads": 1} and prof["input_shape"] == [1, 3, 64, 64]

    out = tmp_path / "out"
    caplog.clear()
    code, stdout, err = compress(capsys, "--config", str(cfg), "--target-latency", f"{target}ms", "--device", device,
                                 "--out", str(out))
    assert code == 0, err
    assert sum("reused (3 points" in m for m in caplog.messages) == 2  # both profiles came from the store
    assert f"target {target:.4g} ms, predicted" in stdout and "measured" in stdout and "<- chosen" in stdout
    verified = [r for r in store.records() if r["id"] not in by_id]
    assert 1 <= len(verified) <= 2 and all(r["status"] == "ok" for r in verified)  # 2: a miss was corrected once
    assert all(store.get_run(r["run_id"])["note"].startswith("target-latency verify") for r in verified)

    report = json.loads((out / "latency.json").read_text())
    assert report["target_ms"] == pytest.approx(target) and report["device"] == device
    assert report["measured_ms"] == verified[-1]["median_ms"] and report["predicted_ms"] <= target * (1 + 1e-9)
    assert math.isclose(report["error_vs_target"], report["measured_ms"] / target - 1)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["macs"]["pruned"] == report["macs"] and plan["model_kwargs"] == {"img_size": 64, "depth": 2}
    assert plan["criterion"]["name"] == "snp" and plan["calibration"]["num_images"] == 4
    assert snp_core.count_macs(snp_core.load(out), (3, 64, 64)) == report["macs"]
    chosen = next(p for p in store.latency_profiles(device) if p["name"] == report["pattern"])
    assert chosen["points"][-1]["verified"] and chosen["points"][-1]["record_id"] == verified[-1]["id"]
    return store.records()


def test_local_flow_profiles_once_then_reuses_and_verifies(tmp_path, artifacts, capsys, caplog, few_fractions):
    caplog.set_level("INFO")
    cfg = write_config(tmp_path, local_device("local", tmp_path / "dev"), artifacts)
    _check_flow(capsys, caplog, tmp_path, cfg, "local")

    caplog.clear()  # verified points stay in the stored profile but are not fitted again
    assert compress(capsys, "--config", str(cfg), "--target-latency", "1000s", "--device", "local")[0] == 2
    assert sum("reused (3 points" in m for m in caplog.messages) == 2

    before = len(Store(tmp_path / "bench.sqlite").records())
    code, _, err = compress(capsys, "--config", str(cfg), "--target-latency", "0.001ms", "--device", "local",
                            "--reprofile", "--out", str(tmp_path / "out"))
    assert code == 2 and "is below the measured range" in err and "raise the target" in err
    store = Store(tmp_path / "bench.sqlite")
    assert len(store.records()) == before + 5 and len(store.latency_profiles("local")) == 4  # measured anew

    profile_run = store.latency_profiles("local")[-1]["run_id"]
    assert main(["sweep", "--config", str(cfg), "--resume", profile_run]) == 2
    assert capsys.readouterr().err.splitlines()[1:] == [  # after the line saying which config
        f"error: run {profile_run} is not a sweep (latency-profile deit_tiny_patch16_224"
        " on local (onnxruntime threads=1, .onnx)); only sweeps resume"]
    with pytest.raises(StoreError, match="no sweep runs"):  # `bench table` etc. never pick a profile run
        pick_run(store, "latest")


def test_ssh_flow_gives_records_with_the_same_fields(tmp_path, artifacts, capsys, caplog, few_fractions,
                                                    sshd_server):
    caplog.set_level("INFO")
    remote = ssh_device("remote", sshd_server, tmp_path / "remote", runtimes="{ onnxruntime = { threads = 1 } }")
    here = local_device("here", tmp_path / "here")
    cfg = write_config(tmp_path, remote + here, artifacts)
    records = _check_flow(capsys, caplog, tmp_path, cfg, "remote")
    assert all(r["extra"]["transport"]["name"] == "remote" for r in records)

    (tmp_path / "l").mkdir()
    local_cfg = write_config(tmp_path / "l", here, artifacts)
    code, _, err = compress(capsys, "--config", str(local_cfg), "--target-latency", "1000s", "--device", "here",
                            "--out", str(tmp_path / "l" / "out"))
    local = Store(tmp_path / "l" / "bench.sqlite").records()
    assert code == 2 and len(local) == 5
    for a, b in zip(sorted(local, key=lambda r: r["job_key"]), sorted(records[:5], key=lambda r: r["job_key"])):
        assert set(a) == set(b) and a["artifact_sha256"] == b["artifact_sha256"]
        assert [k for k, v in a.items() if v is None] == [k for k, v in b.items() if v is None]
