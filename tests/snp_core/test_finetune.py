"""Fine-tuning after pruning: real torch, real timm factories, real torchrun (2 CPU processes, gloo)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import snp_core
from snp_core import finetune as ft
from bench.cli import main

NAME = "deit_tiny_patch16_224"
KWARGS = {"img_size": 32, "depth": 2, "num_classes": 3}
TRAIN_PER_CLASS, VAL_PER_CLASS = 8, 5
COLOURS = ((220, 40, 40), (40, 200, 40), (40, 60, 220))


def _write_images(root: Path, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for c, colour in enumerate(COLOURS):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            noise = rng.integers(-60, 60, size=(32, 32, 3))
            img = np.clip(np.array(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("finetune")
    data = base / "data"
    _write_images(data / "train", TRAIN_PER_CLASS, 0)
    _write_images(data / "val", VAL_PER_CLASS, 1)
    model = snp_core.create(NAME, "random", **KWARGS)
    adapter = snp_core.adapter_for(model, NAME)
    criterion = snp_core.get_criterion("l2")
    ratios = snp_core.ratios.uniform(adapter.groups(), qk=0.5, v=0.25, ffn=0.5, embed=0.25)
    plan = snp_core.make_plan(model, NAME, ratios, criterion, model_kwargs=KWARGS)
    snp_core.save(base / "pruned", snp_core.prune(model, plan), plan)
    teacher_plan = snp_core.make_plan(model, NAME, {}, criterion, model_kwargs=KWARGS)
    snp_core.save(base / "teacher", snp_core.prune(model, teacher_plan), teacher_plan)
    return {"base": base, "data": data, "pruned": base / "pruned", "teacher": base / "teacher"}


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _args(setup: dict, out: Path, *extra: str) -> list[str]:
    return ["finetune", "--model", str(setup["pruned"]), "--data", str(setup["data"]), "--out", str(out),
            "--batch-size", "8", "--workers", "0", "--no-augment", "--lr", "2e-3", *extra]


@pytest.fixture(scope="module")
def ddp_run(setup: dict) -> Path:
    """2 epochs under torchrun with 2 processes (gloo on CPU)."""
    out = setup["base"] / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "bench",
                           *_args(setup, out, "--epochs", "2")],
                          capture_output=True, text=True, env=env, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("best top-1") == 1  # only rank 0 prints
    return out


def test_torchrun_two_processes_reduce_metrics_and_checkpoint(ddp_run: Path, setup: dict) -> None:
    rows = _rows(ddp_run)
    start, epochs = rows[0], [r for r in rows if "top1" in r]
    assert start["event"] == "start" and start["world_size"] == 2 and start["global_batch"] == 16
    assert start["lr"] == pytest.approx(2e-3 * 16 / 512)  # DeiT's linear scaling
    assert [r["epoch"] for r in epochs] == [0, 1]
    for r in epochs:
        assert r["world_size"] == 2
        assert r["val_samples"] == 3 * VAL_PER_CLASS  # summed over both ranks, each image once
        assert r["train_samples"] == 3 * TRAIN_PER_CLASS  # 12 per rank x 2
        assert 0.0 <= r["top1"] <= 100.0 and r["top1"] <= r["top5"]
    ckpt = torch.load(ddp_run / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and set(ckpt) >= {"model", "optimizer", "scheduler", "best"}
    assert ft.optimizer_steps_from_state(ckpt["optimizer"]) == epochs[-1]["optimizer_steps"] == 4  # 2 batches x 2
    best = json.loads((ddp_run / "best" / "metrics.json").read_text())
    assert best["top1"] == max(r["top1"] for r in epochs) and best["dataset"] == str(setup["data"])
    assert best["epochs"] == 2 and best["epoch"] in (0, 1)
    assert snp_core.load(ddp_run / "best").num_classes == 3  # plan folder, no pickles


def test_resume_continues_at_epoch_two_with_optimizer_state(ddp_run: Path, setup: dict, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    assert main(_args(setup, out, "--epochs", "3", "--resume", str(ddp_run / "last.pth"))) == 0
    rows = _rows(out)
    assert rows[0]["event"] == "resume" and rows[0]["epoch"] == 2
    assert rows[0]["optimizer_steps"] == 4  # AdamW state restored, not restarted
    assert rows[0]["scheduler_restored"] is False  # --epochs 2 -> 3: cosine rebuilt for 3 epochs
    base = 2e-3 * 8 / 512  # one process now: global batch 8
    assert rows[-1]["lr"] == pytest.approx(1e-5 + 0.5 * (base - 1e-5) * (1 + math.cos(math.pi * 2 / 3)))
    assert [r["epoch"] for r in rows if "top1" in r] == [2]
    assert rows[-1]["optimizer_steps"] == 4 + 3  # one process now: 24 images / 8 per batch
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 2


def test_resume_same_length_restores_the_schedule(ddp_run: Path, setup: dict, tmp_path: Path) -> None:
    """As after a crash following epoch 0: the saved cosine (and its base lr) carries on unchanged."""
    ckpt = torch.load(ddp_run / "last.pth", map_location="cpu", weights_only=True)
    ckpt["epoch"] = 0
    torch.save(ckpt, tmp_path / "crashed.pth")
    out = tmp_path / "same"
    assert main(_args(setup, out, "--epochs", "2", "--resume", str(tmp_path / "crashed.pth"))) == 0
    rows = _rows(out)
    assert rows[0]["event"] == "resume" and rows[0]["epoch"] == 1 and rows[0]["scheduler_restored"] is True
    ddp_epoch1 = [r for r in _rows(ddp_run) if r.get("epoch") == 1 and "lr" in r and "top1" in r][0]
    assert rows[-1]["epoch"] == 1 and rows[-1]["lr"] == pytest.approx(ddp_epoch1["lr"])


def test_evaluate_matches_best_checkpoint(ddp_run: Path, setup: dict, capsys: pytest.CaptureFixture) -> None:
    best = json.loads((ddp_run / "best" / "metrics.json").read_text())
    assert main(["evaluate", "--model", str(ddp_run / "best"), "--data", str(setup["data"] / "val"),
                 "--workers", "0", "--batch-size", "4"]) == 0
    m = re.search(r"top-1 ([\d.]+)% top-5 ([\d.]+)% \((\d+) images", capsys.readouterr().out)
    assert m, "evaluate printed no top-1"
    assert float(m.group(1)) == pytest.approx(best["top1"], abs=1e-4)
    assert float(m.group(2)) == pytest.approx(best["top5"], abs=1e-4)
    assert int(m.group(3)) == 3 * VAL_PER_CLASS


def test_soft_distillation_one_epoch(setup: dict, tmp_path: Path) -> None:
    out = tmp_path / "kd"
    assert main(_args(setup, out, "--epochs", "1", "--distill", "soft", "--teacher", str(setup["teacher"]),
                      "--model-ema")) == 0
    rows = _rows(out)
    assert rows[0]["task"] == "LogitDistillationTask"
    assert torch.load(out / "last.pth", weights_only=True)["ema"] is not None  # timm ModelEmaV3 state
    assert [r["epoch"] for r in rows if "top1" in r] == [0]


def test_augmented_hard_distillation_one_epoch(setup: dict, tmp_path: Path) -> None:
    """The full recipe's data path (RandAugment, erasing, Mixup/CutMix, soft targets) with DeiT's hard KD."""
    out = tmp_path / "hard"
    args = [a for a in _args(setup, out, "--epochs", "1", "--distill", "hard", "--teacher", str(setup["teacher"]))
            if a != "--no-augment"]
    assert main(args) == 0
    rows = _rows(out)
    assert rows[0]["task"] == "HardDistillationTask" and rows[0]["mixup"] == "Mixup"
    assert rows[0]["loss"] == "SoftTargetCrossEntropy"
    assert rows[-1]["train_samples"] == 24 and rows[-1]["val_samples"] == 3 * VAL_PER_CLASS


def test_randaugment_posterize_to_zero_bits_works(setup: dict) -> None:
    """timm's inc1 posterize keeps 0 bits at magnitude 10; recent Pillow refuses 0 bits."""
    from timm.data.auto_augment import AugmentOp

    model, _, _ = ft.load_model(setup["pruned"], num_classes=3)
    ft.build_transforms(model, ft.Recipe())
    op = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)
    out = op(Image.new("RGB", (8, 8), (200, 100, 50)))
    assert np.array(out).max() == 0  # black, as timm got from Pillow before it raised on 0 bits
    out = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=5)(Image.new("RGB", (8, 8), (200, 100, 50)))
    assert np.array(out).max() > 0


def test_timm_names_and_other_families_save_and_load(tmp_path: Path) -> None:
    model, plan, info = ft.load_model(NAME, "random", num_classes=3)
    assert plan is not None and plan.ratios and not any(plan.ratios.values())  # identity plan: nothing pruned
    model, plan, info = ft.load_model("resnet10t", "random", num_classes=3)  # no SNP adapter: model.json instead
    assert plan is None
    ft.save_model(tmp_path / "r", model, plan, info, {"top1": 50.0})
    again, _, info2 = ft.load_model(tmp_path / "r", num_classes=3)
    assert info2 == info and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                                    again.state_dict().values()))
    with pytest.raises(ft.DataError, match="3 classes"):
        ft.load_model(tmp_path / "r", num_classes=5)


def test_recipe_uses_timm_factories(setup: dict) -> None:
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    recipe = ft.Recipe()
    model, plan, _ = ft.load_model(setup["pruned"], num_classes=3, drop_path_rate=recipe.drop_path)
    # timm's linear stochastic-depth rule: the last block gets the full 0.1
    assert plan is not None and model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    opt = ft.build_optimizer(model, recipe, global_batch=2048)
    ref = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05, eps=1e-8)
    assert type(opt) is type(ref) and isinstance(opt, torch.optim.AdamW)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3] * len(opt.param_groups))  # 2.5e-4 x 2048/512
    assert [(g["weight_decay"], len(g["params"])) for g in opt.param_groups] == \
        [(g["weight_decay"], len(g["params"])) for g in ref.param_groups]
    assert opt.defaults["eps"] == 1e-8
    sched = ft.build_scheduler(opt, recipe, updates_per_epoch=10)
    assert isinstance(sched, CosineLRScheduler) and sched.lr_min == 1e-5 and sched.t_initial == 300
    mixup = ft.build_mixup(recipe, 3)
    assert type(mixup) is Mixup and mixup.mixup_alpha == 0.8 and mixup.cutmix_alpha == 1.0
    assert mixup.label_smoothing == 0.1
    assert isinstance(ft.build_loss(recipe, mixup), SoftTargetCrossEntropy)
    train_tf, eval_tf = ft.build_transforms(model, recipe)
    text = repr(train_tf)
    assert "RandAugment" in text and "RandomErasing" in text and "bicubic" in text.lower()
    assert "CenterCrop" in repr(eval_tf)
    task = ft.build_task(model, ft.build_loss(recipe, mixup), recipe, None, torch.device("cpu"))
    assert type(task).__name__ == "ClassificationTask"


def test_bad_inputs_are_one_line_errors(setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["finetune", "--model", str(setup["pruned"]), "--data", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(_args(setup, tmp_path / "o", "--distill", "hard")) == 2
    assert "--teacher" in capsys.readouterr().err
    odd = [a for a in _args(setup, tmp_path / "o", "--batch-size", "7") if a != "--no-augment"]
    assert main(odd) == 2
    assert "must be even" in capsys.readouterr().err
