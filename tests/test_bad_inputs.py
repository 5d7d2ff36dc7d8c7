"""Bad input, everywhere a user can give it: one line naming the bad value and what is accepted, never a traceback.

Three tables: ``bench.toml`` (each case through the command line, exit status
2), the subcommands' flags and arguments (exit 2), and the Python API (an
`snp_core.SNPError` whose message is one line). The command line runs in this
process (``bench.cli.main``): an unexpected exception would escape as one here
and fail the test, which is what "never a traceback" means.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import snp_core
from helpers import run_cli, tiny_vit
from snp_core.adapters import VitAdapter

ROOT = Path(__file__).resolve().parents[1]

#: (bench.toml text, what the one error line must contain)
BAD_TOML = [
    ('[measur]\niterations = 5\n', "[measur]: unknown table; known tables here: paths, models"),
    ('[measure]\niterations = "1000"\n', '[measure] iterations = "1000": must be an integer >= 1'),
    ('[measure]\niterations = 0\n', "[measure] iterations = 0: must be an integer >= 1"),
    ('[measure]\nmin_seconds = -1\n', "[measure] min_seconds = -1: must be a number >= 0"),
    ('[measure]\nisolate = "yes"\n', '[measure] isolate = "yes": must be true or false'),
    ('[measure]\nrounds = 2.5\n', "[measure] rounds = 2.5: must be an integer >= 1"),
    ('[measure]\nwarmup = 10\n', "[measure] warmup: unknown key; known keys: warmup_iterations, iterations"),
    ('[measure.quick]\niterations = 0\n', "[measure.quick] iterations = 0: must be an integer >= 1"),
    ('[measure.slow]\niterations = 3\n', "[measure.slow]: unknown table; known tables here: quick"),
    ('[measure]\ntimeout_s = true\n', "[measure] timeout_s = true: must be a number >= 1"),
    ('[sweep]\nformats = ["tflite"]\n', '[sweep] formats = ["tflite"]: must be a non-empty list, each one of: "onnx"'),
    ('[sweep]\nbatch_size = [0]\n', "[sweep] batch_size = [0]: must be a non-empty list, each an integer >= 1"),
    ('[sweep]\nmodels = "deit_tiny"\n', '[sweep] models = "deit_tiny": must be a non-empty list'),
    ('[sweep]\nmodels = ["deit_huge"]\n', "[sweep] models: 'deit_huge' is not a model entry; known: deit_tiny"),
    ('[sweep]\ndevices = ["pi"]\n', "[sweep] devices: 'pi' is not a device; known: local"),
    ('[sweep]\nbatch = [1]\nbatch_size = [2]\n', "[sweep] batch: is the old name of batch_size; give only batch_size"),
    ('[sweeps.paper]\nquick = 1\n', "[sweeps.paper] quick = 1: must be true or false"),
    ('[sweeps.nightly]\nthreshold = -0.1\n', "[sweeps.nightly] threshold = -0.1: must be a number > 0"),
    ('[sweeps."my sweep"]\nquick = true\n', '[sweeps."my sweep"]: name "my sweep" must be letters, digits'),
    ('[models.x]\nbase = "nope"\n', "[models.x] base = 'nope': must name an unpruned model entry; known: deit_tiny"),
    ('[models.x]\ntimm = "deit_tiny_patch16_224"\nratios = "paper"\n',
     "[models.x] ratios: only a pruned entry (one with base = ...) takes it"),
    ('[models.x]\nbase = "deit_tiny"\nweights = "pretrained"\n',
     "[models.x] weights: a pruned entry takes it from its base [models.deit_tiny]; set it there"),
    ('[models.x]\nbase = "deit_tiny"\nratios = "deit_tinyy"\n',
     "[models.x] ratios = 'deit_tinyy': must be \"paper\", a shipped config (deit_base"),
    ('[models.x]\nbase = "deit_tiny"\nratios = { qk = 1.5 }\n', "[models.x] ratios.qk = 1.5: must be a number from 0 to 1"),
    ('[models.x]\nbase = "deit_tiny"\nratios = { mlp = 0.5 }\n', "[models.x] ratios.mlp: unknown key; known keys: qk, v"),
    ('[models.x]\nbase = "deit_tiny"\ncriterion = "magnitude"\n',
     '[models.x] criterion = "magnitude": must be one of: "snp", "l2", "random", "reverse"'),
    ('[models.x]\nbase = "deit_tiny"\nplan = "p"\nratios = "paper"\n', "[models.x]: give ratios or plan, not both"),
    ('[models.x]\nweights = "random"\n', '[models.x]: needs timm = "<timm model name>"'),
    ('[models.x]\ntimm = "deit_tiny_patch16_224"\nnum_calib = 0\n', "[models.x] num_calib = 0: must be an integer >= 1"),
    ('[models.x]\ntimm = 5\n', "[models.x] timm = 5: must be a non-empty string"),
    ('[models.x]\ntimm = "deit_tiny_patch16_224"\ntop1 = 172\n', "[models.x] top1 = 172: must be a number from 0 to 100"),
    ('[devices.pi]\nkind = "serial"\n', '[devices.pi] kind = "serial": must be one of: "local", "ssh"'),
    ('[devices.pi]\nkind = "ssh"\n', '[devices.pi]: an ssh device needs host = "name or ~/.ssh/config alias"'),
    ('[devices.pi]\nruntimes = { openvino = {} }\n', "runtimes.openvino]: unknown table; known tables here: onnxruntime"),
    ('[devices.pi]\nruntimes = { onnxruntime = { threads = 0 } }\n',
     "[devices.pi] runtimes.onnxruntime.threads = 0: must be an integer >= 1"),
    ('[devices.pi]\nruntimes = { onnxruntime = { thread = 4 } }\n',
     "[devices.pi] runtimes.onnxruntime.thread: unknown key; known keys: threads, providers"),
    ('[devices.pi]\nruntimes = { torch = { device = "gpu" } }\n',
     '[devices.pi] runtimes.torch.device = "gpu": must be "cpu", "cuda" or "cuda:N"'),
    ('[devices.pi]\nkind = "ssh"\nhost = "pi"\npassword = "x"\n', "[devices.pi] password: passwords are not accepted"),
    ('[devices.pi]\nport = 70000\n', "[devices.pi] port = 70000: must be an integer from 1 to 65535"),
    ('[devices.pi]\nkind = "ssh"\nhost = "pi"\nkeepalive_s = 0\n', "[devices.pi] keepalive_s = 0: must be a number > 0"),
    ('[devices."a|b"]\nkind = "local"\n', '[devices."a|b"]: name "a|b" must be letters, digits'),
    ('[paths]\nroot = ""\n', '[paths] root = "": must be a non-empty string'),
    ('[paths]\nstroe = "x"\n', "[paths] stroe: unknown key; known keys: root, store, artifacts"),
    ('builtin_models = "no"\n', 'builtin_models = "no": must be true or false'),
    ('builtin_models = false\n', "builtin_models = false needs at least one [models.NAME] of your own"),
    ('[measure\n', "is not valid TOML"),
]


def the_error_line(err: str) -> str:
    """The one ``error:`` line of stderr (any other stderr line is an informational one, e.g. the config in use)."""
    errors = [line for line in err.splitlines() if line.startswith("error:") or ": error:" in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.mark.parametrize("toml, message", BAD_TOML, ids=[f"toml{i}" for i in range(len(BAD_TOML))])
def test_bad_bench_toml_is_one_line_and_exit_2(tmp_path, capsys, toml, message):
    path = tmp_path / "bench.toml"
    path.write_text(toml)
    code, out, err = run_cli(["devices", "--no-check", "--config", str(path)], capsys)
    line = the_error_line(err)
    assert code == 2 and message in line and str(path) in line, err
    assert out == ""


# ----- the subcommands' flags and arguments ------------------------------------------------------------------------

SHIPPED = str(ROOT / "bench.toml")

#: (argv, what the one error line must contain); ``{tmp}`` is the test's folder, ``{store}`` an empty store in it.
BAD_FLAGS = [
    (["sweep", "--batch-size", "0"], "argument --batch-size: '0'"),
    (["sweep", "--config", SHIPPED, "--devices", "nope"], "unknown device 'nope'; known devices: local"),
    (["sweep", "--config", SHIPPED, "--formats", "tflite"], "unknown format 'tflite'"),
    (["sweep", "--config", SHIPPED, "--sweep", "nope"], "has no [sweeps.nope]; known sweeps:"),
    (["sweep", "--config", "{tmp}/missing.toml"], "config file '{tmp}/missing.toml' does not exist"),
    (["sweep", "--config", SHIPPED, "--store", "mysql://lab/bench"],
     "store 'mysql://lab/bench' (from --store): unknown URL scheme; accepted: a SQLite file path or a postgresql://"),
    (["tune", "--batch-size", "0"], "argument --batch-size: '0'"),
    (["tune", "--config", SHIPPED, "--store", "{tmp}/t.sqlite", "--devices", "nope"],
     "unknown device 'nope'; known devices: local"),
    (["tune", "--config", SHIPPED, "--store", "{tmp}/t.sqlite", "--models", "deit_tinyy"], "unknown model"),
    (["table", "--cv-threshold", "abc"], "argument --cv-threshold: 'abc'"),
    (["table", "--config", SHIPPED, "--store", "{tmp}/missing.sqlite"], "no results store at {tmp}/missing.sqlite"),
    (["table", "--store", "{store}", "--run", "20990101-000000-ffff"], "unknown run '20990101-000000-ffff' in"),
    (["compress", "--num-calib", "-3"], "argument --num-calib: '-3'"),
    (["compress", "--config", SHIPPED, "--model", "deit_tinyy", "--weights", "random"], "unknown model 'deit_tinyy'"),
    (["compress", "--config", SHIPPED, "--target-latency", "fast", "--device", "local", "--weights", "random"],
     "--target-latency 'fast' is not a positive latency"),
    (["compress", "--config", SHIPPED, "--device", "local", "--weights", "random"],
     "--device: only used with --target-latency"),
    (["compare", "nope", "latest", "--store", "{store}"], "unknown baseline run 'nope' in"),
    (["results", "--store", "{store}", "export", "--format", "xml"], "argument --format: invalid choice: 'xml'"),
    (["results", "--store", "{store}", "push", "--to", "postgresql://ann:secret@lab/bench"], "(from --to) contains a password"),
    (["figures", "--only", "bogus"], "argument --only: invalid choice: 'bogus'"),
    (["figures", "--store", "{store}", "--out", "-"], "argument --out: '-' (stdout) cannot be a folder"),
    (["nightly", "--config", SHIPPED, "--sweep", "nope"], "has no [sweeps.nope]"),
    (["inspect", "{tmp}/no_plan"], "plan file '{tmp}/no_plan' does not exist"),
    (["devices", "--config", SHIPPED, "--devices", "nope", "--no-check"], "unknown device 'nope'; known devices: local"),
    (["finetune", "--model", "m", "--data", "{tmp}", "--out", "{tmp}/o", "--epochs", "0"], "argument --epochs: '0'"),
    (["evaluate", "--model", "m", "--data", "{tmp}", "--batch-size", "x"], "argument --batch-size: 'x'"),
    (["ablation", "--seeds", "0"], "argument --seeds: '0'"),
    (["sweep", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
]


@pytest.mark.parametrize("argv, message", BAD_FLAGS, ids=[" ".join(a[:2]) + f"-{i}" for i, (a, _) in
                                                          enumerate(BAD_FLAGS)])
def test_bad_flags_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    from results.store import Store

    Store(tmp_path / "empty.sqlite").close()
    argv = [a.replace("{store}", str(tmp_path / "empty.sqlite")).replace("{tmp}", str(tmp_path)) for a in argv]
    code, out, err = run_cli(argv, capsys)
    line = the_error_line(err)
    assert code == 2 and message.replace("{tmp}", str(tmp_path)) in line, err
    assert out == ""


def test_the_bad_inputs_table_is_long_enough():
    assert len(BAD_TOML) + len(BAD_FLAGS) + len(BAD_API) >= 40 and len(BAD_FLAGS) >= 20


# ----- the Python API -----------------------------------------------------------------------------------------------

def _tiny():
    return snp_core.create(VitAdapter.tiny[0], **VitAdapter.tiny[1])


#: (call, what the one-line SNPError must contain)
BAD_API = [
    (lambda: snp_core.compress("deit_tiny_patch16", criterion="l2"), "unknown model 'deit_tiny_patch16'"),
    (lambda: snp_core.compress(_tiny(), "deit_tinyy", criterion="l2", model_kwargs=VitAdapter.tiny[1]),
     "unknown ratio config 'deit_tinyy'; known:"),
    (lambda: snp_core.compress(_tiny(), {"qk": 0.5}, criterion="magnitude", model_kwargs=VitAdapter.tiny[1]),
     "unknown criterion 'magnitude'"),
    (lambda: snp_core.compress(_tiny(), {"qk": 0.5}, criterion="l2", head_criterion="biggest",
                               model_kwargs=VitAdapter.tiny[1]), "unknown head criterion 'biggest'"),
    (lambda: snp_core.make_plan(tiny_vit(), "deit_tiny_patch16_224", ratios={}, criterion="l2"),
     "model name 'deit_tiny_patch16_224' does not match the model"),
    (lambda: snp_core.ratios.resolve("deit_small", "deit_tiny_patch16_224"),
     "were made for 'deit_small_patch16_224', not 'deit_tiny_patch16_224'"),
    (lambda: snp_core.create("deit_tiny_patch16_224", "weights/missing.pth"),
     "weights 'weights/missing.pth' is not 'random', 'pretrained' or an existing checkpoint file"),
    (lambda: snp_core.load("no/such/plan"), "no/such/plan"),
    (lambda: snp_core.make_plan(_tiny(), "deit_tiny_patch16_224", ratios={"blocks.0.qk": 1.5}, criterion="l2",
                                model_kwargs=VitAdapter.tiny[1]), "1.5"),
]


@pytest.mark.parametrize("call, message", BAD_API, ids=[f"api{i}" for i in range(len(BAD_API))])
def test_bad_python_api_input_is_one_line(call, message):
    with pytest.raises(snp_core.SNPError) as bad:
        call()
    assert "\n" not in str(bad.value) and message in str(bad.value), str(bad.value)


def test_a_tensor_of_the_wrong_shape_is_refused_by_name():
    with pytest.raises(snp_core.SNPError) as bad:
        snp_core.compress(_tiny(), {"qk": 0.5}, torch.randn(4, 32, 32), model_kwargs=VitAdapter.tiny[1])
    assert "\n" not in str(bad.value) and "[4, 32, 32]" in str(bad.value).replace("(", "[").replace(")", "]")
