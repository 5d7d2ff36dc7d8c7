"""Regression reports: the statistics on synthetic runs with known injected changes, the reports, the
``compare`` / ``nightly`` commands, the nightly workflow, and ``bench nightly`` end to end on this machine.

Synthetic samples are lognormal around a median (``cv`` = per-iteration coefficient of variation),
optionally AR(1)-correlated in time like a real device's bursts; every seed is fixed.
"""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml

from bench import cli
from harness import config as harness_config
from results import regression, report
from results.records import job_key_of, make_record
from results.store import Store, UnknownRunError

ROOT = Path(__file__).resolve().parents[2]
GIT_REV = "feedfacecafe"
SHA_A, SHA_B = "a" * 64, "b" * 64


# ----- synthetic runs ------------------------------------------------------------

def latencies_ms(rng: np.random.Generator, n: int, median_ms: float, cv: float, rho: float = 0.0) -> np.ndarray:
    """n iterations: lognormal around median_ms with coefficient of variation cv, AR(1) correlation rho."""
    sigma = math.sqrt(math.log1p(cv ** 2))
    e = rng.standard_normal(n)
    if rho:
        z = np.empty(n)
        z[0] = e[0]
        for i in range(1, n):
            z[i] = rho * z[i - 1] + math.sqrt(1 - rho ** 2) * e[i]
        e = z
    return median_ms * np.exp(sigma * e)


def job(batch: int = 1, device: str = "pi", variant: str = "snp:deit_tiny", sha: str = SHA_A) -> dict:
    j = {"model": "deit_tiny_patch16_224", "variant": variant, "device": device, "runtime": "onnxruntime",
         "runtime_options": {"threads": 4}, "batch_size": batch, "input_shape": [batch, 3, 224, 224],
         "artifact": {"sha256": sha, "format": "onnx", "macs": 638_000_000, "params": 3_000_000}}
    j["job_key"] = job_key_of(j)
    return j


def ok_result(samples_ms: np.ndarray, sha: str = SHA_A) -> dict:
    ns = [int(round(s * 1e6)) for s in samples_ms]
    a = np.asarray(ns, dtype=float)
    stats = {"n": len(ns), "min_ns": int(a.min()), "median_ns": float(np.median(a)), "mean_ns": float(a.mean()),
             "max_ns": int(a.max()), "p90_ns": float(np.percentile(a, 90)), "p99_ns": float(np.percentile(a, 99)),
             "std_ns": float(a.std(ddof=1)), "cv": float(a.std(ddof=1) / a.mean())}
    return {"status": "ok", "samples_ns": ns, "stats": stats, "artifact_sha256": sha,
            "env": {"hostname": "pi4", "cpu": {"model": "Cortex-A72"}, "runtimes": {"onnxruntime": "1.18.0"}}}


def error_result(message: str = "CUDA out of memory") -> dict:
    return {"status": "error", "error": {"stage": "load", "type": "RuntimeError", "message": message}}


def new_run(store: Store, records: list[tuple[dict, dict]]) -> str:
    run_id = store.new_run({"selection": {}}, GIT_REV)
    for j, result in records:
        store.add_record(make_record(run_id, j, result, GIT_REV))
    store.finish_run(run_id)
    return run_id


def one_pair(store: Store, base_ms: np.ndarray, cand_ms: np.ndarray, **kwargs) -> regression.Comparison:
    b = new_run(store, [(job(), ok_result(base_ms))])
    c = new_run(store, [(job(), ok_result(cand_ms))])
    return regression.compare_runs(store, b, c, **kwargs)


@pytest.fixture
def store(tmp_path) -> Store:
    with Store(tmp_path / "bench.sqlite") as s:
        yield s


# ----- the statistics -----------------------------------------------------------------

def test_ten_percent_slowdown_with_low_noise_is_flagged(store):
    rng = np.random.default_rng(1)
    cmp = one_pair(store, latencies_ms(rng, 1000, 80.0, 0.02), latencies_ms(rng, 1000, 88.0, 0.02))
    (p,) = cmp.pairs
    assert p.verdict == "regressed" and p.conclusive and cmp.regressed
    assert 0.09 < p.ci_low < p.change < p.ci_high < 0.11
    assert p.ci_high - p.ci_low < 0.01  # cv 2 %, 1000 samples: the interval is tight
    assert cmp.regressions == [p] and not p.artifact_changed and p.matched_by == "job_key"


def test_ten_percent_speedup_with_low_noise_is_an_improvement(store):
    rng = np.random.default_rng(2)
    cmp = one_pair(store, latencies_ms(rng, 1000, 88.0, 0.02), latencies_ms(rng, 1000, 80.0, 0.02))
    assert [p.verdict for p in cmp.pairs] == ["improved"] and not cmp.regressed


def test_no_change_is_not_flagged_and_is_conclusive(store):
    rng = np.random.default_rng(3)
    cmp = one_pair(store, latencies_ms(rng, 1000, 80.0, 0.02), latencies_ms(rng, 1000, 80.0, 0.02))
    (p,) = cmp.pairs
    assert p.verdict == "unchanged" and p.conclusive and not cmp.regressed
    assert -0.05 < p.ci_low <= p.change <= p.ci_high < 0.05


def test_ten_percent_change_buried_in_30_percent_noise_is_not_flagged(store):
    """cv 30 % and 50 iterations: the data are as consistent with +1 % as with +20 %, so no verdict.

    The rule ("whole interval above +5 %") is a one-sided test of "slower by more than 5 %":
    over 200 such pairs it flags 15 (7.5 %), where "point estimate > 5 % and interval excludes 0" flags 44 (22 %).
    """
    rng = np.random.default_rng(4)
    cmp = one_pair(store, latencies_ms(rng, 50, 80.0, 0.30), latencies_ms(rng, 50, 88.0, 0.30))
    (p,) = cmp.pairs
    assert p.verdict == "unchanged" and not p.conclusive and not cmp.regressed  # "inconclusive" in the report
    assert p.ci_low < 0.05 < p.ci_high

    ours = alternative = 0
    for seed in range(200):
        rng = np.random.default_rng([40, seed])
        change = regression.relative_change(latencies_ms(rng, 50, 80.0, 0.30), latencies_ms(rng, 50, 88.0, 0.30),
                                            rng=rng, resamples=1000)
        ours += regression.classify(change.ci_low, change.ci_high, 0.05)[0] == "regressed"
        alternative += change.change > 0.05 and change.ci_low > 0
    assert ours / 200 <= 0.12 and alternative >= 2 * ours, (ours, alternative)


def test_false_positive_rate_on_100_same_distribution_pairs(store):
    """100 jobs, each measured twice from one distribution (cv 5 %, half of them AR(1)-correlated)."""
    rng = np.random.default_rng(5)
    runs = []
    for _ in range(2):
        runs.append(new_run(store, [(job(batch=i + 1), ok_result(latencies_ms(rng, 500, 20.0 + i, 0.05,
                                                                               rho=0.0 if i % 2 else 0.8)))
                                    for i in range(100)]))
    cmp = regression.compare_runs(store, *runs)
    assert len(cmp.pairs) == 100
    flagged = sum(p.verdict != "unchanged" for p in cmp.pairs)
    assert flagged / 100 <= 0.05, flagged
    # the interval itself is honest: as a bare significance test (threshold 0) it errs about 5 % of the time
    significant = sum(p.ci_low > 0 or p.ci_high < 0 for p in cmp.pairs)
    assert significant / 100 <= 0.12, significant
    assert max(p.block_baseline for p in cmp.pairs) > 3  # the correlated runs got blocks


def with_rounds(result: dict, rounds: int, group: str = "g") -> dict:
    """The result of a protocol-2 member: its samples in `rounds` interleaved rounds (in time order)."""
    n = len(result["samples_ns"])
    return {**result, "rounds": rounds, "group_key": group, "sample_rounds": [k * rounds // n for k in range(n)]}


def round_latencies(rng: np.random.Generator, rounds: int, per_round: int, median_ms: float,
                    round_sd: float = 0.02, cv: float = 0.02) -> np.ndarray:
    """Samples whose rounds differ by `round_sd` (the device's state from round to round), in round order."""
    shift = np.exp(rng.normal(0.0, round_sd, rounds))
    return np.concatenate([latencies_ms(rng, per_round, median_ms * s, cv) for s in shift])


def test_records_with_rounds_resample_rounds(store):
    """Round-to-round variation (2 %) is what a run really has: resampling rounds sees it, blocks of samples do not.

    40 jobs measured twice from one distribution with round effects: at threshold 0 (a bare significance
    test) the rounds keep to the nominal error rate (0 of 40 here) where the block bootstrap of the same samples
    errs often (8 of 40). A 10 % slowdown is still flagged."""
    rng = np.random.default_rng(11)
    runs = [new_run(store, [(job(batch=i + 1), with_rounds(ok_result(round_latencies(rng, 10, 50, 20.0 + i)), 10,
                                                           group=f"{r}-{i}")) for i in range(40)]) for r in range(2)]
    cmp = regression.compare_runs(store, *runs, threshold=0.0)
    assert {p.method for p in cmp.pairs} == {"rounds"} and {p.rounds_baseline for p in cmp.pairs} == {10}
    assert all(p.block_baseline is None for p in cmp.pairs) and "resampled rounds (10/10)" in cmp.pairs[0].notes
    significant = sum(p.verdict != "unchanged" for p in cmp.pairs)
    assert significant / 40 <= 0.1, significant
    blocks = 0
    by_key = {r["job_key"]: r for r in store.records(runs[0])}
    for r in store.records(runs[1]):
        change = regression.relative_change(np.asarray(by_key[r["job_key"]]["samples_ns"]) / 1e6,
                                            np.asarray(r["samples_ns"]) / 1e6, rng=np.random.default_rng(0),
                                            resamples=500)
        blocks += change.ci_low > 0 or change.ci_high < 0
    assert blocks > 2 * significant, (blocks, significant)

    slow = [new_run(store, [(job(), with_rounds(ok_result(round_latencies(rng, 10, 100, m)), 10))])
            for m in (80.0, 88.0)]
    (p,) = regression.compare_runs(store, *slow).pairs
    assert p.method == "rounds" and p.verdict == "regressed" and p.ci_low < 0.1 < p.ci_high
    # one record with rounds, one without (an old baseline): the block bootstrap, as before
    old = new_run(store, [(job(), ok_result(round_latencies(rng, 10, 100, 80.0)))])
    (p,) = regression.compare_runs(store, old, slow[1]).pairs
    assert p.method == "blocks" and p.block_baseline is not None


def test_block_bootstrap_keeps_correlated_noise_honest():
    """AR(1) bursts (rho 0.9) fool an i.i.d. bootstrap into 'significant' differences; blocks do not."""
    iid = blocks = 0
    for seed in range(30):
        rng = np.random.default_rng([6, seed])
        b, c = latencies_ms(rng, 600, 10.0, 0.3, rho=0.9), latencies_ms(rng, 600, 10.0, 0.3, rho=0.9)
        for block, _ in ((1, "iid"), (None, "blocks")):
            ch = regression.relative_change(b, c, rng=np.random.default_rng(seed), resamples=1000, block=block)
            wrong = ch.ci_low > 0 or ch.ci_high < 0
            if block == 1:
                iid += wrong
            else:
                blocks += wrong
    assert blocks / 30 <= 0.2 and iid / 30 >= 0.4, (blocks, iid)
    assert regression.block_length(latencies_ms(np.random.default_rng(7), 1000, 1.0, 0.1)) <= 3
    assert regression.block_length(latencies_ms(np.random.default_rng(7), 1000, 1.0, 0.1, rho=0.95)) >= 15


def test_results_are_reproducible_and_independent_of_job_order(store):
    rng = np.random.default_rng(8)
    base = [(job(batch=i + 1), ok_result(latencies_ms(rng, 300, 10.0, 0.1))) for i in range(3)]
    cand = [(job(batch=i + 1), ok_result(latencies_ms(rng, 300, 10.5, 0.1))) for i in range(3)]
    b, c1, c2 = new_run(store, base), new_run(store, cand), new_run(store, cand[::-1])
    first = {p.job_key: (p.ci_low, p.ci_high) for p in regression.compare_runs(store, b, c1).pairs}
    again = {p.job_key: (p.ci_low, p.ci_high) for p in regression.compare_runs(store, b, c2).pairs}
    assert first == again


# ----- matching, errors, jobs of one run -------------------------------------------------

def test_ok_to_error_is_a_regression_and_other_transitions_are_listed(store):
    rng = np.random.default_rng(9)
    same = lambda: ok_result(latencies_ms(rng, 200, 10.0, 0.02))  # noqa: E731
    b = new_run(store, [(job(1), same()), (job(2), same()), (job(3), error_result("old")),
                        (job(4), error_result("old")), (job(5), same())])
    c = new_run(store, [(job(1), same()), (job(2), error_result("CUDA out of memory")), (job(3), same()),
                        (job(4), error_result("still")), (job(6), same())])
    cmp = regression.compare_runs(store, b, c)
    kinds = {s.batch_size: s.kind for s in cmp.status_changes}
    assert kinds == {2: "ok->error", 3: "error->ok", 4: "error->error"}
    assert cmp.regressed and [s.batch_size for s in cmp.new_errors] == [2] and not cmp.regressions
    assert [r["batch_size"] for r in cmp.only_baseline] == [5] and [r["batch_size"] for r in cmp.only_candidate] == [6]
    counts = cmp.counts()
    assert (counts["ok->error"], counts["error->ok"], counts["error->error"], counts["unchanged"]) == (1, 1, 1, 1)
    md = report.summary_markdown(cmp)
    assert "**REGRESSION**" in md and "1 job(s) ok in the baseline now fail" in md and "CUDA out of memory" in md
    paths = report.write_reports(cmp, store.path.parent / "report")
    full, page = paths["markdown"].read_text(), paths["html"].read_text()
    for text in (full, page):
        assert "Only in the baseline" in text and "Only in the candidate" in text and "still failing" in text
    assert "New errors" in page and "data:image/png;base64," in page


def test_changed_artifact_is_compared_and_reported_not_skipped(store):
    rng = np.random.default_rng(10)
    b = new_run(store, [(job(sha=SHA_A), ok_result(latencies_ms(rng, 500, 10.0, 0.02), SHA_A))])
    c = new_run(store, [(job(sha=SHA_B), ok_result(latencies_ms(rng, 500, 13.0, 0.02), SHA_B))])
    (p,) = regression.compare_runs(store, b, c).pairs
    assert p.artifact_changed and p.verdict == "regressed" and "artifact changed" in p.notes


def test_renamed_job_key_falls_back_to_identity_preferring_the_same_artifact():
    rng = np.random.default_rng(11)
    rec = lambda key, sha: {**make_record("r", {**job(sha=sha), "job_key": key},  # noqa: E731
                                          ok_result(latencies_ms(rng, 100, 10.0, 0.02), sha), GIT_REV)}
    base = [rec("old-name-1", SHA_A), rec("old-name-2", SHA_B)]
    pairs, only_b, only_c = regression.match_records(base, [rec("new-name", SHA_B)])
    assert [(b["job_key"], how) for b, _, how in pairs] == [("old-name-2", "identity")]
    assert [r["job_key"] for r in only_b] == ["old-name-1"] and not only_c


def test_unknown_run_raises(store):
    run = new_run(store, [])
    with pytest.raises(UnknownRunError, match="nope"):
        regression.compare_runs(store, run, "nope")


# ----- reports and the compare command ------------------------------------------------

def test_compare_command_writes_reports_prints_summary_and_exits_4_on_regression(store, tmp_path, capsys,
                                                                                 monkeypatch):
    rng = np.random.default_rng(12)
    b = new_run(store, [(job(1), ok_result(latencies_ms(rng, 800, 10.0, 0.02))),
                        (job(2), ok_result(latencies_ms(rng, 800, 20.0, 0.02)))])
    c = new_run(store, [(job(1), ok_result(latencies_ms(rng, 800, 12.0, 0.02))),
                        (job(2), ok_result(latencies_ms(rng, 800, 20.0, 0.02)))])
    monkeypatch.chdir(tmp_path)
    assert cli.main(["compare", b, c, "--store", str(store.path)]) == 4  # exit_codes.REGRESSION
    out = capsys.readouterr().out
    assert out.index("**REGRESSION**") < out.index("Worst regressions") and "+20.0 %" in out
    assert "All compared jobs" not in out  # the summary only; the full table is in the files
    folder = tmp_path / "runs" / c
    md, page = (folder / "report.md").read_text(), (folder / "report.html").read_text()
    assert md.index("Worst regressions") < md.index("## All compared jobs") and "| unchanged |" in md
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', page)) >= 1
    assert (folder / "regression.png").stat().st_size > 1000

    # the same run against itself: nothing regressed, exit 0; --threshold as a percentage; --out
    assert cli.main(["compare", b, b, "--store", str(store.path), "--threshold", "5%", "--out",
                     str(tmp_path / "same")]) == 0
    assert "**No regression**" in capsys.readouterr().out and (tmp_path / "same" / "report.html").is_file()


def test_compare_unknown_run_is_a_one_line_error(store, capsys):
    run = new_run(store, [])
    assert cli.main(["compare", run, "20990101-000000-dead", "--store", str(store.path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown candidate run '20990101-000000-dead'") and "\n" not in err
    assert cli.main(["compare", "baseline", run, "--store", str(store.path)]) == 2
    assert "no baseline run yet" in capsys.readouterr().err


# ----- the nightly workflow -------------------------------------------------------------------

def test_nightly_workflow_parses_and_runs_only_existing_commands():
    doc = yaml.safe_load((ROOT / ".github" / "workflows" / "nightly.yml").read_text())
    triggers = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as True
    assert triggers["schedule"][0]["cron"]
    (job_,) = doc["jobs"].values()
    assert job_["runs-on"] == ["self-hosted", "snp-lab"]
    steps = job_["steps"]
    assert steps[0]["uses"].startswith("actions/checkout@")
    runs = [s["run"] for s in steps if "run" in s]
    assert "make setup" in runs
    bench_commands = [shlex.split(line) for r in runs for line in r.splitlines() if "-m bench" in line]
    assert bench_commands and any("nightly" in c and "--promote" in c for c in bench_commands)
    parser = cli.build_parser()
    for argv in bench_commands:
        args = argv[argv.index("bench") + 1:]
        parser.parse_args(args)  # exits (SystemExit) on an unknown command or option
    upload = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert upload and upload[0]["if"] == "always()" and "runs/*/report.html" in upload[0]["with"]["path"]
    # the nightly step's exit status is what fails the workflow: nothing may swallow it
    assert not any(s.get("continue-on-error") for s in steps if "run" in s)


def test_shipped_bench_toml_has_a_nightly_sweep_of_local():
    cfg = harness_config.load(ROOT / "bench.toml")
    selection, threshold, _ = cfg.nightly_sweep(None)
    assert selection["devices"] == ["local"] and threshold == 0.05
    cfg.pick_devices(selection["devices"]), cfg.pick_models(selection["models"])


# ----- bench nightly end to end on this machine --------------------------------------------------

NIGHTLY_CONFIG = """
[paths]
store = "{tmp}/store/bench.sqlite"
artifacts = "{tmp}/artifacts"

[models.tiny]
timm = "deit_tiny_patch16_224"
weights = "random"
kwargs = {{ img_size = 64, depth = {depth} }}

[models.tiny_snp]
base = "tiny"
ratios = {{ qk = 0.5, v = 0.5, ffn = 0.5, embed = 0.25 }}
criterion = "l2"

[sweeps.nightly]
models = ["tiny", "tiny_snp"]
formats = ["onnx"]
# Two runs of identical code on a shared 2-core test machine were measured up to ~8 % apart, and
# +81 % (CI +59..+106 %) with another pytest worker busy on the second core: 5 % suits a quiet lab
# device, not this.  90 % passes that; the heavier model (6x the blocks) is several times slower.
threshold = 0.9

[measure]
warmup_iterations = 20
iterations = 200
min_seconds = 1.0
timeout_s = 120
cold_start = false  # not what the nightly is about: one process per model less

[devices.local]
kind = "local"
workdir = "{tmp}/device"
runtimes = {{ onnxruntime = {{ threads = 1 }} }}
"""


def test_nightly_twice_unchanged_passes_and_a_heavier_model_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "bench.toml"
    config.write_text(NIGHTLY_CONFIG.format(tmp=tmp_path, depth=2))

    # 1. no baseline yet: a report that says so, exit 0; --promote makes the run the baseline
    assert cli.main(["nightly", "--config", str(config), "--promote"]) == 0
    out, err = capsys.readouterr()
    assert "No baseline to compare with" in out and "is now the baseline" in err
    store = Store(tmp_path / "store" / "bench.sqlite")
    first = store.baseline()["run_id"]
    assert "data:image/png;base64," in (tmp_path / "runs" / first / "report.html").read_text()

    # 2. nothing changed: no regression, exit 0
    assert cli.main(["nightly", "--config", str(config)]) == 0, capsys.readouterr().out
    out, err = capsys.readouterr()
    second = store.latest_run()["run_id"]
    assert f"baseline: {first}" in err and "**No regression** (2 job(s) compared" in out
    assert store.baseline()["run_id"] == first  # not promoted without --promote

    # 3. the model got heavier (12 blocks instead of 2; same entry names, so the same jobs): regression, exit 4,
    #    and --promote refuses it
    config.write_text(NIGHTLY_CONFIG.format(tmp=tmp_path, depth=12))
    assert cli.main(["nightly", "--config", str(config), "--promote"]) == 4  # exit_codes.REGRESSION
    out, err = capsys.readouterr()
    third = store.latest_run()["run_id"]
    assert "**REGRESSION**: 2 job(s) slower by more than 90 %" in out and "not promoted" in err
    assert store.baseline()["run_id"] == first and third not in (first, second)
    md = (tmp_path / "runs" / third / "report.md").read_text()
    rows = [line for line in md.split("## All compared jobs")[1].splitlines() if line.startswith("| deit_tiny")]
    assert len(rows) == 2 and all("| regressed |" in r and "artifact changed" in r for r in rows)

    # an unknown --baseline is a one-line error before anything runs
    assert cli.main(["nightly", "--config", str(config), "--baseline", "nope"]) == 2
    assert "unknown baseline run 'nope'" in capsys.readouterr().err
    assert len(store.runs()) == 3
