"""`bench tune` and the sweep's use of tuned settings (issue 15), with the real agent on the local device.

The winner rule is tested on synthetic per-round latencies (no timing); the
real runs check what is stored and where each option of a later sweep's
records came from, never which setting happened to be faster here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import cli, exit_codes
from harness import config as harness_config
from harness import tune as tuning
from harness.runner import SweepRequest, run_sweep
from helpers import tiny_sweep_toml
from results.store import Store

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")  # shared: each test after the first reuses the exports


def device(runtimes: str, workdir: Path) -> str:
    return f"""
[devices.here]
kind = "local"
python = "{sys.executable}"
workdir = {json.dumps(str(workdir))}
runtimes = {runtimes}
"""


def write_config(tmp_path: Path, artifacts: Path, runtimes: str) -> Path:
    path = tmp_path / "bench.toml"
    text = tiny_sweep_toml(tmp_path, artifacts, device(runtimes, tmp_path / "dev"), iterations=6)
    path.write_text(text.replace("[measure]\n", "[measure]\nrounds = 4\nrewarm_iterations = 2\n"))
    return path


# ----- the winner rule, the search space: pure functions -------------------------------------------------------

def test_a_consistent_gain_above_the_margin_wins_even_under_drift():
    reference = {r: 10.0 * (2.0 if r >= 5 else 1.0) for r in range(10)}  # the device slows down half-way
    candidate = {r: 0.95 * v for r, v in reference.items()}
    v = tuning.verdict(candidate, reference)
    assert v.wins and v.ratio == pytest.approx(0.95) and (v.faster_rounds, v.rounds) == (10, 10)


def test_a_gain_below_the_margin_does_not_win():
    reference = {r: 10.0 for r in range(10)}
    v = tuning.verdict({r: 9.9 for r in range(10)}, reference)
    assert not v.wins and v.ratio == pytest.approx(0.99) and v.faster_rounds == 10
    assert tuning.verdict({r: 9.9 for r in range(10)}, reference, min_gain=0.005).wins


def test_a_gain_in_too_few_rounds_does_not_win():
    reference = {r: 10.0 for r in range(10)}
    candidate = {r: 8.0 if r < 7 else 11.0 for r in range(10)}  # median ratio 0.8, but only 7 of 10 rounds faster
    v = tuning.verdict(candidate, reference)
    assert not v.wins and v.ratio == pytest.approx(0.8) and v.faster_rounds == 7
    assert tuning.verdict({**candidate, 7: 8.0}, reference).wins  # 8 of 10: the 80 % the rule asks for


def test_only_common_rounds_count_and_none_is_no_verdict():
    v = tuning.verdict({0: 1.0, 1: 1.0, 2: 1.0}, {1: 2.0, 2: 2.0, 3: 2.0})
    assert v.wins and v.rounds == 2 and v.ratio == pytest.approx(0.5)
    assert tuning.verdict({0: 1.0}, {1: 1.0}) == tuning.Verdict(None, 0, 0, False)


def test_round_medians_are_per_round_in_ms():
    assert tuning.round_medians([3_000_000, 1_000_000, 2_000_000, 8_000_000], [0, 0, 0, 1]) == {0: 2.0, 1: 8.0}


def test_the_search_space_leaves_out_what_bench_toml_fixes_and_caps_threads_at_the_cores():
    assert tuning.thread_choices(2) == (1, 2) and tuning.thread_choices(6) == (1, 2, 4)
    assert tuning.thread_choices(64) == (1, 2, 4, 8) and tuning.thread_choices(0) == (1,)
    assert [o for o, _ in tuning.search_space("onnxruntime", {}, 4)] == ["threads", "graph_optimization",
                                                                         "execution_mode", "allow_spinning"]
    space = dict(tuning.search_space("onnxruntime", {"threads": 1, "allow_spinning": True}, 4))
    assert set(space) == {"graph_optimization", "execution_mode"}
    assert tuning.search_space("torch", {}, 3) == [("threads", (1, 2))]
    assert tuning.search_space("torch", {"threads": 2}, 3) == [] and tuning.search_space("tensorrt", {}, 8) == []


# ----- real runs on the local device -------------------------------------------------------------------------------

def test_tune_stores_each_models_winner_keeps_config_options_and_the_sweep_uses_it(tmp_path, artifacts, capsys):
    """threads fixed in bench.toml: never a candidate; every other tunable option searched, the winner stored per
    model entry; the next sweep runs each member with its own winner, the record saying where each option came from."""
    cfg_path = write_config(tmp_path, artifacts, "{ onnxruntime = { threads = 1 } }")
    assert cli.main(["tune", "--config", str(cfg_path), "--formats", "onnx", "-q"]) == exit_codes.OK
    out = capsys.readouterr().out
    assert out.count("| here | tiny") == 2 and "| threads=1 |" in out  # one row per model entry, its fixed options

    store = Store(tmp_path / "bench.sqlite")
    rows = {r["entry"]: r for r in store.tuned_settings("here")}
    assert set(rows) == {"tiny", "tiny_snp"}
    (run,) = store.runs(kind="tune")
    for row in rows.values():
        assert row["config_options"] == {"threads": 1} and row["run_id"] == run["run_id"] and row["host"]
        assert "threads" not in row["settings"] and row["default_ms"] > 0 and row["best_ms"] > 0
        assert {c["option"] for c in row["candidates"]} == {"graph_optimization", "execution_mode", "allow_spinning"}
        assert all("threads" not in c["settings"] for c in row["candidates"])
        assert all(c["rounds"] == 4 and c["median_ms"] > 0 for c in row["candidates"])
        assert row["settings"] == ([c["settings"] for c in row["candidates"] if c["chosen"]][-1] if row["ratio"] < 1
                                   else {})
    assert rows["tiny"]["artifact_sha256"] != rows["tiny_snp"]["artifact_sha256"]  # each model tuned on its own

    cfg = harness_config.load(cfg_path)
    outcome = run_sweep(cfg, store, SweepRequest(formats=["onnx"]))
    assert outcome.ok == 2
    for record in outcome.records:
        row = rows[record["entry"]]
        job = record["extra"]["job"]
        assert record["runtime_options"] == {"threads": 1}  # what pairs original and pruned in the reports
        assert job["options"] == {**row["settings"], "threads": 1} and job["tuned_id"] == row["id"]
        assert job["options_from"] == {"threads": "config", "graph_optimization": "default",
                                       "execution_mode": "default", "allow_spinning": "default",
                                       **{k: "tuned" for k in row["settings"]}}
        used = record["extra"]["options"]  # what the agent ran the member with
        assert used["threads"] == 1
        assert used["graph_optimization"] == row["settings"].get("graph_optimization", "all")
        assert used["execution_mode"] == row["settings"].get("execution_mode", "sequential")
        assert used["allow_spinning"] == row["settings"].get("allow_spinning")
    assert len({r["group_key"] for r in outcome.records}) == 1  # still timed together, in the same rounds


def test_each_member_gets_its_tuned_threads_and_no_tuned_ignores_them(tmp_path, artifacts, capsys):
    """Stored winners (written here, not measured) reach the agent per member; --no-tuned runs the defaults."""
    cfg_path = write_config(tmp_path, artifacts, "{ onnxruntime = {} }")
    store = Store(tmp_path / "bench.sqlite")
    tune_run = store.new_run({"command": "tune"}, "test", kind="tune")
    ids = {entry: store.add_tuned({"device": "here", "runtime": "onnxruntime", "format": "onnx", "entry": entry,
                                   "batch_size": 1, "config_options": {}, "settings": {"threads": threads},
                                   "run_id": tune_run})
           for entry, threads in (("tiny", 1), ("tiny_snp", 2))}
    cfg = harness_config.load(cfg_path)
    tuned = {r["entry"]: r for r in run_sweep(cfg, store, SweepRequest(formats=["onnx"])).records}
    assert {e: (r["extra"]["options"]["threads"], r["extra"]["backend"]["threads"]) for e, r in tuned.items()} == {
        "tiny": (1, 1), "tiny_snp": (2, 2)}
    assert {e: r["extra"]["job"]["tuned_id"] for e, r in tuned.items()} == ids
    assert all(r["extra"]["job"]["options_from"]["threads"] == "tuned" for r in tuned.values())
    assert len({r["group_key"] for r in tuned.values()}) == 1 and all(r["status"] == "ok" for r in tuned.values())

    assert cli.main(["sweep", "--config", str(cfg_path), "--formats", "onnx", "--no-tuned", "-q"]) == exit_codes.OK
    capsys.readouterr()
    latest = store.latest_run(kind="sweep")
    assert latest["config"]["selection"]["tuned"] is False  # a --resume of it ignores them too
    plain = store.records(latest["run_id"])
    assert len(plain) == 2
    for record in plain:
        job = record["extra"]["job"]
        assert job["options"] == {} and job["tuned_id"] is None and record["extra"]["options"]["threads"] is None
        assert set(job["options_from"].values()) == {"default"}


def test_bad_tune_input_is_one_error_line(tmp_path, artifacts, capsys):
    cfg_path = write_config(tmp_path, artifacts, "{ onnxruntime = {} }")
    for argv, says in ((["--devices", "nope"], "unknown device 'nope'; known devices: here"),
                       (["--formats", "tflite"], "unknown format 'tflite'; known formats: onnx"),
                       (["--models", "vit_huge"], "unknown model 'vit_huge'")):
        assert cli.main(["tune", "--config", str(cfg_path), *argv]) == exit_codes.BAD_INPUT
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and says in errors[0], err
    with pytest.raises(SystemExit) as done:
        cli.main(["tune", "--batch-size", "0"])
    assert done.value.code == exit_codes.BAD_INPUT
    assert Store(tmp_path / "bench.sqlite").runs() == []  # nothing was started


def test_tune_help_imports_no_torch():
    code = ("import contextlib, io, json, runpy, sys\nsys.argv = ['bench', 'tune', '--help']\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n    try:\n"
            "        runpy.run_module('bench', run_name='__main__', alter_sys=True)\n"
            "    except SystemExit:\n        pass\n"
            "print(json.dumps([sorted(sys.modules), out.getvalue()]))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    modules, text = json.loads(r.stdout)
    assert not {m for m in modules if m.split(".")[0] in ("torch", "onnxruntime", "timm", "pandas")}
    assert "docs/tuning.md" in text and "--no-tuned" in text
