"""Issue 14's command-line conventions, end to end: lazy ``--help``, exit statuses, stdout vs stderr, ``-``,
``--quiet``, progress bars only on a terminal, checked numbers, deprecated aliases.

The timings themselves are `benchmarks/cli_help.py`'s job; here we check *what* ``--help``
imports. Exit statuses come from real runs: a real sweep with a broken device (3), and
``compare`` over a real SQLite store holding a slower candidate run (4).
"""

from __future__ import annotations

import argparse
import fcntl
import importlib
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import numpy as np
import pytest

from bench import cli, exit_codes, vocab
from helpers import local_device, tiny_sweep_toml
from results.records import job_key_of, make_record
from results.store import Store

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
HEAVY = ("torch", "timm", "pandas", "scipy", "matplotlib", "onnxruntime")
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def bench(*args: str, cwd: Path = ROOT, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "bench", *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=300, **kwargs)


# ----- lazy commands ------------------------------------------------------------------------------------------

#: ``python -m bench ARGS`` in a child (runpy runs it exactly as ``-m`` does), then the modules it imported.
MODULES_AFTER = ("import contextlib, io, json, runpy, sys\n"
                 "sys.argv = ['bench', *sys.argv[1:]]\n"
                 "with contextlib.redirect_stdout(io.StringIO()):\n"
                 "    try:\n"
                 "        runpy.run_module('bench', run_name='__main__', alter_sys=True)\n"
                 "    except SystemExit as done:\n"
                 "        assert done.code == 0, done.code\n"
                 "print(json.dumps(sorted(sys.modules)))\n")


def imported_by(*args: str) -> set[str]:
    """Every module ``python -m bench ARGS`` imports."""
    r = subprocess.run([PY, "-c", MODULES_AFTER, *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return set(json.loads(r.stdout))


def test_help_imports_no_command_and_a_commands_help_only_that_command():
    command_modules = {target.split(":")[0] for _, target, _ in cli.COMMANDS}
    top = imported_by("--help")
    assert not top & command_modules and not {m for m in top if m.split(".")[0] in HEAVY}
    sweep = imported_by("sweep", "--help")
    assert "bench.sweep" in sweep and not {m for m in sweep if m.split(".")[0] in HEAVY}, sorted(sweep)
    assert "bench.compress" not in sweep and "bench.table_cmd" not in sweep  # the table is imported by run()


def test_every_commands_parser_builds_without_torch_pandas_or_scipy():
    code = ("import sys\nfrom bench import cli\nparser = cli.build_parser()\n"
            "for sub in parser._subparsers._group_actions[0].choices.values():\n    sub.format_help()\n"
            f"print(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))")
    r = subprocess.run([PY, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr


@pytest.mark.parametrize("name", sorted(vocab.SOURCES))
def test_help_constants_are_the_librarys(name):
    module, expression = vocab.SOURCES[name]
    assert getattr(vocab, name) == eval(expression, {**vars(vocab), "m": importlib.import_module(module)})


def test_every_help_constant_has_a_source_and_ratio_configs_match():
    from snp_core import ratios

    assert {n for n in vars(vocab) if n.isupper() and n != "SOURCES"} == set(vocab.SOURCES)
    assert vocab.ratio_configs() == ratios.config_names() and vocab.ratio_configs()


def test_user_errors_are_recognised_by_name():
    for module, name in cli.USER_ERRORS:
        assert issubclass(getattr(importlib.import_module(module), name), Exception), (module, name)
    from snp_core.errors import RatioError

    assert cli.is_user_error(RatioError("bad ratio")) and not cli.is_user_error(RuntimeError("a bug"))


# ----- parsers: exit table, checked numbers, --quiet, deprecated names -------------------------------------------

def all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and, recursively, every sub-command's."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += all_parsers(sub)
    return found


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_top_level_help_states_the_exit_statuses_and_conventions(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert done.value.code == 0
    assert " ".join(exit_codes.EPILOG.split()) in text and "'-' as an output file means stdout" in text
    assert [exit_codes.OK, exit_codes.CRASH, exit_codes.BAD_INPUT, exit_codes.JOB_FAILED, exit_codes.REGRESSION] \
        == [0, 1, 2, 3, 4]
    assert exit_codes.outcome(2, regressed=True) == 4 and exit_codes.outcome(2) == 3 and exit_codes.outcome(0) == 0


def test_no_numeric_flag_takes_a_bare_int_or_float():
    bare = [f"{p.prog} {a.option_strings}" for p in all_parsers(cli.build_parser()) for a in p._actions
            if a.type in (int, float)]
    assert not bare


@pytest.mark.parametrize("argv, flag, accepted", [
    (["finetune", "--model", "m", "--data", "d", "--out", "o", "--epochs", "0"], "--epochs", "a positive integer"),
    (["evaluate", "--model", "m", "--data", "d", "--workers", "-1"], "--workers", "an integer >= 0"),
    (["compress", "--num-calib", "many"], "--num-calib", "a positive integer"),
    (["compress", "--gamma", "1.5"], "--gamma", "a positive int nor a float in (0, 1]"),
    (["compress", "--target-gmacs", "inf"], "--target-gmacs", "a positive number"),
    (["compare", "a", "b", "--confidence", "1.5"], "--confidence", "a fraction in (0, 1)"),
    (["compare", "a", "b", "--resamples", "10"], "--resamples", "an integer >= 100"),
    (["nightly", "--threshold", "150%"], "--threshold", "below 1 (100 %)"),
    (["ablation", "--embed", "1"], "--embed", "a fraction in [0, 1)"),
    (["ablation", "--ratios", "0.3,x"], "--ratios", "fractions in [0, 1)"),
    (["sweep", "--batch-size", "1,0"], "--batch-size", "positive integers"),
    (["table", "--max-width", "nan"], "--max-width", "a positive number"),
])
def test_a_bad_number_is_one_error_line_naming_flag_value_and_what_is_accepted(argv, flag, accepted, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    err = capsys.readouterr().err
    assert done.value.code == exit_codes.BAD_INPUT and err.count("\n") == 1, err
    assert err.startswith(f"error: argument {flag}: ") and repr(argv[-1]) in err and accepted in err, err


def test_long_running_commands_take_quiet():
    commands = subcommands(cli.build_parser())
    for name in ("sweep", "nightly", "compress", "finetune", "evaluate", "ablation", "figures"):
        assert "--quiet" in commands[name]._option_string_actions, name


def test_deprecated_names_still_work_say_what_to_use_and_are_hidden(capsys):
    parser = cli.build_parser()
    assert parser.parse_args(["sweep", "--batch", "1,8"]).batch_size == [1, 8]
    assert parser.parse_args(["table", "--batch", "2"]).batch_size == [2]
    for command in (["finetune", "--out", "o"], ["evaluate"]):
        args = parser.parse_args([*command, "--model", "m", "--data", "d", "--device", "cpu"])
        assert args.torch_device == "cpu"
    assert capsys.readouterr().err.splitlines() == (["warning: --batch is deprecated; use --batch-size"] * 2
                                                    + ["warning: --device is deprecated; use --torch-device"] * 2)
    assert parser.parse_args(["sweep"]).batch_size is None  # the alias leaves the new flag's default alone
    commands = subcommands(parser)
    assert not re.search(r"--batch\b(?!-)", commands["sweep"].format_help())
    assert "--device" not in commands["finetune"].format_help().replace("--torch-device", "")


# ----- results on stdout, '-', exit 4 over a real store ------------------------------------------------------------

def record(run_id: str, median_ms: float, rng: np.random.Generator) -> dict:
    job = {"model": "deit_tiny_patch16_224", "variant": "original", "device": "pi", "runtime": "onnxruntime",
           "runtime_options": {"threads": 4}, "batch_size": 1, "input_shape": [1, 3, 224, 224],
           "artifact": {"sha256": "a" * 64, "format": "onnx", "macs": 1_254_000_000, "params": 5_700_000}}
    job["job_key"] = job_key_of(job)
    ns = [int(v * 1e6) for v in median_ms * np.exp(0.02 * rng.standard_normal(400))]
    a = np.asarray(ns, dtype=float)
    stats = {"n": len(ns), "min_ns": int(a.min()), "median_ns": float(np.median(a)), "mean_ns": float(a.mean()),
             "max_ns": int(a.max()), "p90_ns": float(np.percentile(a, 90)), "p99_ns": float(np.percentile(a, 99)),
             "std_ns": float(a.std(ddof=1)), "cv": float(a.std(ddof=1) / a.mean())}
    result = {"status": "ok", "samples_ns": ns, "stats": stats, "artifact_sha256": "a" * 64,
              "env": {"hostname": "pi4", "cpu": {"model": "Cortex-A72"}, "runtimes": {"onnxruntime": "1.18.0"}}}
    return make_record(run_id, job, result, "feedfacecafe")


@pytest.fixture
def two_runs(tmp_path, monkeypatch) -> tuple[Path, str, str]:
    """A store with a baseline run (10 ms) and a 20 % slower candidate; the cwd has no bench.toml."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(14)
    with Store(tmp_path / "bench.sqlite") as store:
        runs = []
        for median in (10.0, 12.0):
            run_id = store.new_run({"selection": {}}, "feedfacecafe")
            store.add_record(record(run_id, median, rng))
            store.finish_run(run_id)
            runs.append(run_id)
    return tmp_path / "bench.sqlite", runs[0], runs[1]


def test_compare_exits_4_on_a_regression_with_the_report_on_stdout(two_runs, tmp_path, capsys):
    store, base, cand = two_runs
    assert cli.main(["compare", base, "latest", "--store", str(store), "--root", str(tmp_path / "out")]) == 4
    out, err = capsys.readouterr()
    assert "**REGRESSION**" in out and "reports:" not in out
    assert f"reports: {tmp_path / 'out' / cand / 'report.md'}" in err  # default folder: under --root
    assert cli.main(["compare", base, base, "--store", str(store), "--out", str(tmp_path / "same")]) == 0
    assert "**No regression**" in capsys.readouterr().out


def test_dash_is_stdout_for_a_file_and_refused_for_a_folder(two_runs, tmp_path, capsys):
    store, _, cand = two_runs
    assert cli.main(["table", "--store", str(store)]) == 0
    table = capsys.readouterr().out
    assert cli.main(["table", "--store", str(store), "--out", "-"]) == 0
    assert capsys.readouterr().out == table and "12." in table and not (tmp_path / "-").exists()

    assert cli.main(["results", "--store", str(store), "export", "--format", "jsonl", "--run", "latest",
                     "--out", "-"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["run_id"] for line in out.splitlines()] == [cand]  # `latest` as in every command
    assert err == "wrote 1 records to stdout\n" and not (tmp_path / "-").exists()
    parquet = subprocess.run([PY, "-m", "bench", "results", "--store", str(store), "export", "--format", "parquet",
                              "--out", "-"], cwd=tmp_path, env=ENV, capture_output=True, timeout=120)
    assert parquet.returncode == 0 and parquet.stdout[:4] == b"PAR1" and parquet.stdout[-4:] == b"PAR1"

    with pytest.raises(SystemExit) as done:
        cli.main(["figures", "--store", str(store), "--out", "-"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and "'-' (stdout) cannot be a folder" in err


# ----- a real sweep: exit 3, table on stdout, bars only on a terminal, --quiet ----------------------------------

def run_on_a_terminal(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal (100 columns) and stdout on a pipe: status, stdout, what the terminal got."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(argv, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=300)
    reader.join(timeout=30)
    os.close(master)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")  # shared: the second sweep reuses the first one's export


def test_the_runner_tells_progress_about_each_export_and_upload(tmp_path, artifacts):
    from harness import config as harness_config
    from harness.runner import Progress, SweepRequest, run_sweep

    class Told(Progress):
        def __init__(self) -> None:
            self.events: list[tuple] = []

        def exported(self, done: int, total: int) -> None:
            self.events.append(("exported", done, total))

        def exporting(self, what: str) -> None:
            self.events.append(("exporting", what))

        def uploading(self, device: str, what: str, done: int, total: int) -> None:
            self.events.append(("uploading", device, what, done == total, total > 1000))

    cfg_path = tmp_path / "bench.toml"
    cfg_path.write_text(tiny_sweep_toml(tmp_path, artifacts, local_device("here", tmp_path / "here")))
    cfg = harness_config.load(cfg_path)
    told = Told()
    outcome = run_sweep(cfg, Store(cfg.store), SweepRequest(models=["tiny"], formats=["onnx"]), told)
    assert outcome.ok == 1 and told.events == [("exported", 0, 1), ("exporting", "tiny onnx bs1"), ("exported", 1, 1),
                                               ("uploading", "here", "tiny onnx bs1", True, True)]


BAR = r"(export|good|broken): +\d+%\|"
FAILED_JOB = "error: broken deit_tiny_patch16_224 original onnx bs1: [connect] NotADirectoryError"


def test_sweep_with_a_failed_job_exits_3_bars_only_on_a_terminal_and_quiet_leaves_only_errors(tmp_path, artifacts):
    not_a_dir = tmp_path / "a_file"
    not_a_dir.write_text("not a folder")
    cfg = tmp_path / "bench.toml"
    cfg.write_text(tiny_sweep_toml(tmp_path, artifacts,
                                   local_device("good", tmp_path / "good") + local_device("broken", not_a_dir)))
    sweep = [PY, "-m", "bench", "sweep", "--config", str(cfg), "--models", "tiny", "--formats", "onnx"]

    code, out, terminal = run_on_a_terminal([*sweep, "--root", str(tmp_path / "out")], tmp_path)
    assert code == exit_codes.JOB_FAILED, out + terminal
    assert "| " in out and not re.search(r"^(error|run|config)", out, re.M), out  # only the table on stdout
    assert re.search(r"\r(?!\n)", terminal) and re.search(BAR, terminal), terminal  # bars redrawn in place
    assert f"config: {cfg} over " in terminal and f"outputs under {tmp_path / 'out'}/" in terminal
    assert FAILED_JOB in terminal and "2 planned: 1 ok, 1 error(s)" in terminal

    again = bench(*sweep[3:], "--resume", "latest", cwd=tmp_path)  # stderr a pipe: notes, no bars
    assert again.returncode == exit_codes.JOB_FAILED and "\r" not in again.stderr and not re.search(BAR, again.stderr)
    assert re.search(r"^run \S+: 2 jobs on 1 device\(s\), 1 to do", again.stderr, re.M), again.stderr

    quiet = bench(*sweep[3:], "--resume", "latest", "--quiet", "--batch", "1", cwd=tmp_path)
    assert quiet.returncode == exit_codes.JOB_FAILED and "| " in quiet.stdout
    lines = quiet.stderr.splitlines()  # warnings and errors (the job's line, the logged device error) still print
    assert lines[0] == "warning: --batch is deprecated; use --batch-size", quiet.stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(FAILED_JOB), quiet.stderr
    assert len(lines) <= 3 and all(re.match(r"(error|ERROR): ", line) for line in lines[1:]), quiet.stderr


def test_an_old_python_gets_one_line_not_a_traceback():
    """`python -m bench` on Python 3.10 (simulated: sys.version_info replaced before bench is run)."""
    code = "import runpy, sys; sys.version_info = (3, 10, 12); runpy.run_module('bench', run_name='__main__')"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.startswith("error: snp-bench needs Python 3.11 or newer") and r.stderr.count("\n") == 1
