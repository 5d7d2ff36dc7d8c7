"""bench.toml: the shipped file, its commented device examples, and one-line errors."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import run_cli

from harness import config as harness_config

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_bench_toml_defines_local_and_paper_examples(tmp_path):
    cfg = harness_config.load(ROOT / "bench.toml")
    assert list(cfg.devices) == ["local"] and cfg.devices["local"].kind == "local"
    # uncomment every example device: they must be valid device tables
    text = (ROOT / "bench.toml").read_text()
    uncommented = re.sub(r"^# (\[[a-z]|[a-z_]+ = )", r"\1", text, flags=re.M)
    (tmp_path / "all.toml").write_text(uncommented)
    devices = harness_config.load(tmp_path / "all.toml").devices
    assert set(devices) == {"local", "pi", "jetson", "xeon", "rtx3090"}
    assert devices["pi"].runtimes == {"onnxruntime": {"threads": 4}} and devices["pi"].kind == "ssh"
    assert devices["jetson"].formats_for("tensorrt") == ("trt",)
    assert devices["rtx3090"].runtimes["torch"]["device"] == "cuda"
    assert devices["jetson"].pre == ["sudo -n nvpmodel -m 0", "sudo -n jetson_clocks"]
    assert harness_config.load(tmp_path / "all.toml").sweep["formats"] == ["onnx", "torchscript", "trt"]


@pytest.mark.parametrize("flag, value, message", [
    ("--devices", "local,pi", "unknown device 'pi'; known devices: local"),
    ("--models", "deit_huge", "unknown model 'deit_huge'; known models: deit_tiny, deit_tiny_snp, deit_small, "
                              "deit_small_snp, deit_small_snp_1_3g, deit_base, deit_base_snp, deit_base_snp_head, "
                              "efficientformer_l1, efficientformer_l1_snp_0_6g, efficientformer_l1_snp_0_5g"),
    ("--formats", "tflite", "unknown format 'tflite'; known formats: onnx, torchscript, pt2, trt"),
])
def test_unknown_names_on_the_command_line(tmp_path, flag, value, message, capsys, monkeypatch):
    """In this process (`run_cli`); the first case also as ``python -m bench``, as a user would run it."""
    argv = ["sweep", "--config", str(ROOT / "bench.toml"), "--store", str(tmp_path / "s.sqlite"), flag, value]
    monkeypatch.chdir(tmp_path)
    if flag == "--devices":
        r = subprocess.run([sys.executable, "-m", "bench", *argv], cwd=tmp_path, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
        code, err = r.returncode, r.stderr
    else:
        code, _, err = run_cli(argv, capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and errors == [f"error: {message}"] and "Traceback" not in err, err


def test_top1_comes_from_the_fine_tuned_plan_folder(tmp_path):
    (tmp_path / "plan.json").write_text("{}")
    (tmp_path / "metrics.json").write_text('{"top1": 71.25, "top5": 90.0}')
    assert harness_config.ModelSpec("m", "deit_tiny_patch16_224", plan=str(tmp_path)).known_top1 == 71.25
    assert harness_config.ModelSpec("m", "deit_tiny_patch16_224", plan=str(tmp_path), top1=70.0).known_top1 == 70.0
    assert harness_config.ModelSpec("m", "deit_tiny_patch16_224").known_top1 is None


def test_embedded_catalog_covers_every_paper_row_with_a_matching_config():
    from snp_core import ratios as ratio_sources

    cfg = harness_config.load(Path(os.devnull))
    pruned = {name: spec for name, spec in cfg.models.items() if spec.base}
    assert {spec.ratios for spec in pruned.values()} >= {
        "paper", "deit_small", "deit_small_1.3g", "deit_base", "deit_base_head_3.5g",
        "efficientformer_l1_0.6g", "efficientformer_l1_0.5g"}
    for spec in pruned.values():
        name = ratio_sources.paper_config_for(spec.timm) if spec.ratios == "paper" else spec.ratios
        assert ratio_sources.load_config(name)["model"] == spec.timm
    assert cfg.sweeps["paper"]["models"] == list(cfg.models)


def test_partial_measure_quick_merges_over_the_builtin_quick_profile(tmp_path):
    """[measure.quick] with one key keeps the embedded quick profile's other values, never [measure]'s full ones;
    what the quick profile does not set (grace, isolation) still comes from [measure]."""
    (tmp_path / "bench.toml").write_text("[measure]\niterations = 5000\ntimeout_s = 7200\ngrace_s = 7\nisolate = true\n"
                                         "\n[measure.quick]\niterations = 30\n")
    cfg = harness_config.load(tmp_path / "bench.toml")
    builtin = harness_config.load(Path(os.devnull)).quick
    assert cfg.quick.iterations == 30
    assert (cfg.quick.warmup_iterations, cfg.quick.min_seconds, cfg.quick.timeout_s, cfg.quick.rounds,
            cfg.quick.rewarm_iterations) == (builtin.warmup_iterations, builtin.min_seconds, builtin.timeout_s,
                                             builtin.rounds, builtin.rewarm_iterations) == (20, 2.0, 600.0, 5, 5)
    assert (cfg.quick.grace_s, cfg.quick.isolate) == (7.0, True)
    assert (cfg.measure.iterations, cfg.measure.timeout_s, cfg.measure.warmup_iterations) == (5000, 7200.0, 200)


def test_nested_tables_merge_key_by_key(tmp_path):
    (tmp_path / "bench.toml").write_text('[sweeps.paper]\nformats = ["onnx"]\n\n[sweeps.mine]\nmodels = ["deit_tiny"]\n'
                                         '\n[paths]\nstore = "elsewhere.sqlite"\n')
    cfg = harness_config.load(tmp_path / "bench.toml")
    embedded = harness_config.load(Path(os.devnull))
    assert cfg.sweeps["paper"] == {**embedded.sweeps["paper"], "formats": ["onnx"]}
    assert cfg.sweeps["mine"] == {"models": ["deit_tiny"]}
    assert (cfg.store, cfg.artifacts) == (Path("elsewhere.sqlite"), embedded.artifacts)


@pytest.mark.parametrize("toml, message", [
    ('[devices."pi|4"]\nkind = "local"\n',
     '[devices."pi|4"]: name "pi|4" must be letters, digits, \'_\', \'-\' and \'.\', starting with a letter '
     'or digit'),
    ('[devices." pi"]\nkind = "local"\n', 'name " pi" must be letters, digits'),
    ('[models."a|b"]\ntimm = "deit_tiny_patch16_224"\n',
     '[models."a|b"]: name "a|b" must be non-empty, without \'|\''),
    ('[measure]\nquick = 3\n', "[measure] quick = 3: must be a table"),
])
def test_names_that_cannot_key_a_job_are_refused_at_load(tmp_path, toml, message):
    path = tmp_path / "bench.toml"
    path.write_text(toml)
    with pytest.raises(harness_config.ConfigError) as err:
        harness_config.load(path)
    assert str(err.value).startswith(f"{path} [") and message in str(err.value) and "\n" not in str(err.value)


def test_a_device_name_with_the_key_separator_is_one_error_line_and_no_run(tmp_path):
    (tmp_path / "bench.toml").write_text('[devices."lab|pi"]\nkind = "local"\n')
    r = subprocess.run([sys.executable, "-m", "bench", "sweep", "--config", str(tmp_path / "bench.toml"),
                        "--store", str(tmp_path / "s.sqlite")], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and 'name "lab|pi" must be letters' in errors[0], r.stderr
    assert not (tmp_path / "s.sqlite").exists()  # refused before the store opened: no run is left 'running'


def test_the_readme_real_weights_example_followed_literally_keeps_every_paper_row(tmp_path):
    """README (Configuration): redefine an original with real weights; every paper row stays runnable."""
    readme = (ROOT / "README.md").read_text()
    block = textwrap.dedent(re.search(r"```toml\n( *\[models\.deit_tiny\].*?) *```", readme, re.S).group(1))
    assert 'weights = "pretrained"' in block
    (tmp_path / "bench.toml").write_text(block)
    cfg = harness_config.load(tmp_path / "bench.toml")
    embedded = harness_config.load(Path(os.devnull))
    assert set(cfg.models) == set(embedded.models)
    assert cfg.models["deit_tiny"].weights == cfg.models["deit_tiny_snp"].weights == "pretrained"
    planned = [m.name for m in cfg.pick_models(cfg.sweeps["paper"]["models"])]
    assert planned == embedded.sweeps["paper"]["models"] and len(planned) == 11


def test_user_models_extend_the_catalog(tmp_path):
    (tmp_path / "bench.toml").write_text('[models.deit_tiny]\ntimm = "deit_tiny_patch16_224"\nweights = "pretrained"\n'
                                         '\n[models.my_vit]\ntimm = "vit_tiny_patch16_224"\n\n'
                                         '[models.my_vit_snp]\nbase = "my_vit"\nratios = { qk = 0.5, v = 0.5 }\n')
    cfg = harness_config.load(tmp_path / "bench.toml")
    embedded = harness_config.load(Path(os.devnull))
    assert set(cfg.models) == set(embedded.models) | {"my_vit", "my_vit_snp"}
    assert cfg.models["deit_tiny_snp"].weights == "pretrained"  # a pruned row takes its base's weights
    assert cfg.models["deit_tiny"].label == ""  # the same name replaces the built-in entry whole
    # without a [sweep] models of its own, a file that defines models sweeps them and the entries pruned from them
    assert cfg.sweep["models"] == ["deit_tiny", "my_vit", "my_vit_snp", "deit_tiny_snp"]


def test_builtin_models_false_starts_from_an_empty_catalog(tmp_path):
    (tmp_path / "bench.toml").write_text('builtin_models = false\n\n[models.mine]\ntimm = "vit_tiny_patch16_224"\n')
    cfg = harness_config.load(tmp_path / "bench.toml")
    assert list(cfg.models) == ["mine"] and cfg.sweep["models"] == ["mine"]
    (tmp_path / "bench.toml").write_text('builtin_models = false\n')
    with pytest.raises(harness_config.ConfigError, match=r"builtin_models = false needs at least one \[models.NAME\]"):
        harness_config.load(tmp_path / "bench.toml")


def test_outputs_live_under_one_root(tmp_path):
    (tmp_path / "bench.toml").write_text('[paths]\nroot = "out"\n')
    cfg = harness_config.load(tmp_path / "bench.toml")
    assert (cfg.root, cfg.store, cfg.artifacts) == (Path("out"), Path("out/bench.sqlite"), Path("out/artifacts"))
    assert cfg.devices["local"].workdir == str(Path("out/devices/local"))
    flag = harness_config.load(tmp_path / "bench.toml", root=tmp_path / "r")  # --root wins over [paths] root
    assert (flag.store, flag.devices["local"].workdir) == (tmp_path / "r/bench.sqlite", str(tmp_path / "r/devices/local"))
    assert flag.describe() == (f"config: {tmp_path / 'bench.toml'} over the embedded default; outputs under "
                               f"{tmp_path / 'r'}/; store {tmp_path / 'r/bench.sqlite'}")
    (tmp_path / "bench.toml").write_text('[paths]\nstore = "keep/results.sqlite"\n')  # explicit paths are kept
    assert harness_config.load(tmp_path / "bench.toml", root="x").store == Path("keep/results.sqlite")


def test_the_old_batch_key_still_works_with_a_warning(tmp_path, caplog):
    (tmp_path / "bench.toml").write_text('[sweep]\nbatch = [1, 8]\n')
    cfg = harness_config.load(tmp_path / "bench.toml")
    assert cfg.sweep["batch"] == [1, 8]
    assert f"{tmp_path / 'bench.toml'} [sweep]: batch is deprecated, call it batch_size" in caplog.text
    (tmp_path / "bench.toml").write_text('[sweep]\nbatch = [1]\nbatch_size = [8]\n')
    with pytest.raises(harness_config.ConfigError, match=r"\[sweep\] batch: is the old name of batch_size"):
        harness_config.load(tmp_path / "bench.toml")


def test_the_schemas_lists_of_names_match_the_library():
    """harness.schema keeps criterion and ratio-kind names so that reading bench.toml never imports torch."""
    import snp_core
    from harness import schema
    from snp_core.groups import KINDS

    assert set(schema.CRITERIA) == set(snp_core.CRITERIA) and schema.RATIO_KINDS == KINDS


def test_reading_the_config_imports_no_heavy_library():
    code = ("import sys; from harness import config; config.load(None); "
            "print(sorted(m for m in ('torch', 'timm', 'pandas', 'scipy', 'snp_core') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
