"""`python -m bench compress` / `inspect` end to end, and one-line errors for bad input."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli
import torch
from PIL import Image

import snp_core

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_compress_deit_tiny_with_paper_ratios(tmp_path, capsys):
    calib = tmp_path / "calib" / "some_class"
    calib.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(calib / f"{i}.jpg")
    out = tmp_path / "out"
    r = bench("compress", "--model", "deit_tiny_patch16_224", "--ratios", "paper", "--weights", "random",
              "--calib", str(tmp_path / "calib"), "--num-calib", "6", "--batch-size", "3", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "params 5.72M -> 3.01M" in r.stdout and "GMACs 1.254 -> 0.638" in r.stdout
    assert "6 calibration images" in r.stdout and "calibrating" not in r.stderr  # stderr no terminal: no bar
    plan = json.loads((out / "plan.json").read_text())
    assert plan["calibration"]["num_images"] == 6 and plan["widths"]["embed"] == 153

    model = snp_core.load(out)
    assert snp_core.count_macs(model) == plan["macs"]["pruned"]
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)

    code, printed, _ = run_cli(["inspect", str(out)], capsys)  # in this process: no second torch import
    assert code == 0 and "rebuilt    ok, 3.01M params, 0.638 GMACs" in printed
    assert re.search(r"^blocks\.11\s+3\s+20\s+19\s+383$", printed, re.M)  # heads, qk/head, v/head, ffn


def test_compress_target_gmacs_and_round_to(tmp_path, capsys):
    code, printed, err = run_cli(["compress", "--weights", "random", "--criterion", "l2", "--target-gmacs", "0.8",
                                  "--round-to", "8", "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 0, err
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert abs(plan["macs"]["pruned"] / 0.8e9 - 1) <= 0.02
    assert plan["round_to"] == 8
    assert all(w % 8 == 0 for name, w in plan["widths"].items() if not name.endswith(".heads"))
    assert "no calibration (data-free)" in printed


@pytest.mark.parametrize("args, message", [
    (["--model", "deit_tiny_patch16"], "unknown model 'deit_tiny_patch16'"),
    (["--model", "resnet18"], "unsupported model family for 'resnet18'.*supported: vit"),
    (["--qk", "1.2"], "ratio 1.2 for --qk is outside \\[0, 1\\)"),
    (["--ffn", "0.9995"], "ratio 0.9995 for blocks.0.ffn removes all 768 neurons"),
    (["--calib", "{empty}"], "calibration folder '{empty}' has no images"),
    (["--ratios", "deit_huge"], "unknown ratio config 'deit_huge'"),
    (["--target-gmacs", "0.01"], "target 0.010 GMACs is out of reach"),
])
def test_bad_input_gives_one_line_error(tmp_path, args, message, capsys):
    """In this process (`run_cli`): an exception the command line did not turn into its one line fails the test.
    The first case also runs as ``python -m bench``, as a user would."""
    import re

    args = [a.replace("{empty}", str(tmp_path)) for a in args]
    argv = ["compress", "--weights", "random", "--quiet", "--out", str(tmp_path / "out"), *args]
    if args == ["--model", "deit_tiny_patch16"]:
        r = bench(*argv)
        code, err = r.returncode, r.stderr
    else:
        code, _, err = run_cli(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(message.replace("{empty}", re.escape(str(tmp_path))), lines[0]), lines[0]


def test_corrupt_plan_file_gives_one_line_error(tmp_path, capsys):
    (tmp_path / "plan.json").write_text('{"format": "snp-plan/1", "model": "deit_tiny_patch16_224", "keep": [')
    r = bench("inspect", str(tmp_path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert f"corrupt plan file '{tmp_path / 'plan.json'}'" in r.stderr
    good = {"format": "snp-plan/1", "model": "deit_tiny_patch16_224", "family": "vit", "widths": {}, "ratios": {},
            "criterion": {}, "keep": {"embed": [3, 1]}}
    (tmp_path / "plan.json").write_text(json.dumps(good))
    code, _, err = run_cli(["inspect", str(tmp_path)], capsys)
    assert code == 2 and err.count("\n") == 1 and "keep['embed'] indices are not strictly ascending" in err


def test_help_explains_ratios():
    r = bench("compress", "--help")
    assert r.returncode == 0 and "fractions of neurons REMOVED" in r.stdout and "--target-gmacs" in r.stdout
