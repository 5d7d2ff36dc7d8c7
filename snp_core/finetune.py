"""Fine-tuning after pruning, with the paper's recipe (docs/method.md §8) built from timm's own factories.

SNP's ``train.py`` is DeiT's training script with the distillation removed; the defaults in
`Recipe` are that script's settings as the SNP README runs it:

* AdamW (eps 1e-8, weight decay 0.05) from ``timm.optim.create_optimizer_v2`` (which also
  exempts biases, norms, ``pos_embed`` and ``cls_token`` from weight decay, as DeiT does);
* cosine schedule from ``timm.scheduler.create_scheduler_v2``: min-lr 1e-5, warmup-lr 1e-6,
  0 warmup epochs, stepped once per epoch, 300 epochs, no cooldown (the paper's loop stops at
  ``--epochs`` so timm's cooldown is never reached);
* learning rate scaled linearly with the global batch as DeiT does:
  ``lr = base_lr * global_batch / 512``. The base 2.5e-4 is the README's ``--lr 0.00025``,
  which at the paper's global batch 2048 (256 x 8 GPUs) is **1e-3 effective**;
* augmentation from ``timm.data.create_transform``: RandAugment ``rand-m9-mstd0.5-inc1``,
  colour jitter 0.3, random erasing 0.25 (pixel mode), bicubic; evaluation resizes to
  ``size / 0.875`` and centre-crops;
* ``timm.data.Mixup`` with mixup 0.8, cutmix 1.0, label smoothing 0.1, so the loss is
  ``timm.loss.SoftTargetCrossEntropy`` (``LabelSmoothingCrossEntropy(0.1)`` without mixup);
* drop-path 0.1 (set when the model is rebuilt for training; it does nothing at eval time);
* model EMA (``timm.utils.ModelEmaV3``, decay 0.99996) optional: the paper keeps one but
  evaluates and selects the best checkpoint on the raw model, and so does this module.

Not reproduced: repeated augmentation (the paper's RASampler); training shards use
``DistributedSampler`` as requested by the issue.

Distillation is off by default, as in the paper. ``soft`` uses timm's own
``timm.task.LogitDistillationTask`` (KL divergence on temperature-softened logits, DeiT's
``alpha=0.5, tau=1`` as ``task_loss_weight=0.5, temperature=1``; timm's KL is ``batchmean``,
DeiT's is divided by the number of logits, so ours weighs the KL term ``num_classes`` times
more strongly for the same alpha). timm has no hard (argmax) distillation, so ``hard`` is a
subclass of that task whose distillation term is DeiT's: cross-entropy against the teacher's
argmax. The teacher is frozen, never wrapped in DDP.

Distributed: under ``torchrun`` (``WORLD_SIZE`` set) the process group is started (nccl on
CUDA, gloo on CPU), the student wrapped in DistributedDataParallel, training shards come from a
``DistributedSampler`` (``set_epoch`` every epoch), evaluation shards are disjoint strided
slices (no padding, so every image is counted exactly once) and losses and correct counts are
summed with ``all_reduce``. Only rank 0 writes files. Without torchrun the same code runs in
one process.

Files under ``out/``: ``metrics.jsonl`` (one JSON object per line: a ``start`` event, or
``resume`` when resuming, then one line per epoch), ``last.pth`` (checkpoint after every epoch:
model, optimizer, scheduler, EMA, epoch, best; plain tensors and dicts, read back with
``torch.load(weights_only=True)``), ``best/`` (the best model as ``plan.json`` +
``model.safetensors`` + ``metrics.json`` = ``{"top1", "top5", "dataset", "epochs", "epoch", ...}``
with top-1/top-5 in percent, ``epochs`` the run's length and ``epoch`` the best epoch's index,
loadable with `snp_core.load` without pickles).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.task import ClassificationTask, LogitDistillationTask
from torch import nn

from . import models
from .errors import PlanError, SNPError, UnsupportedModelError
from .plan import PLAN_FILE, WEIGHTS_FILE, Plan

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
#: Saved beside model.safetensors for timm models no SNP adapter knows (no plan.json possible).
MODEL_FILE = "model.json"
#: DeiT's linear scaling rule: the learning rate given is the one for this global batch.
LR_REFERENCE_BATCH = 512


class DataError(SNPError):
    """A dataset folder is missing, empty or does not match the model."""


@dataclass
class Recipe:
    """docs/method.md §8 defaults (see the module docstring for where each comes from)."""

    epochs: int = 300
    batch_size: int = 256            # per process; the paper: 256 x 8 GPUs = 2048
    base_lr: float = 2.5e-4          # per 512 images: 1e-3 effective at global batch 2048
    opt: str = "adamw"
    opt_eps: float = 1e-8
    weight_decay: float = 0.05
    sched: str = "cosine"
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: int = 0
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.3
    re_prob: float = 0.25
    mixup: float = 0.8
    cutmix: float = 1.0
    smoothing: float = 0.1
    drop_path: float = 0.1
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    augment: bool = True             # False: eval transforms for training, no mixup (tiny tests)
    model_ema: bool = False
    model_ema_decay: float = 0.99996
    amp: bool = False                # bf16 autocast on CUDA
    distill: str = "none"            # none | soft | hard
    distill_alpha: float = 0.5       # DeiT: weight of the distillation term
    distill_tau: float = 1.0         # DeiT: temperature of soft distillation
    workers: int = 4
    seed: int = 0
    grad_clip: float | None = None

    def lr(self, global_batch: int) -> float:
        return self.base_lr * global_batch / LR_REFERENCE_BATCH


# ---------------------------------------------------------------- models

def load_model(spec: str | Path, weights: str = "pretrained", num_classes: int | None = None,
               **train_kwargs) -> tuple[nn.Module, Plan | None, dict]:
    """(model, plan, info) from a plan folder, a folder written by `save_model`, or a timm name.

    `train_kwargs` (e.g. ``drop_path_rate``) go to timm's constructor but not into the saved
    plan: they change training, not the architecture. A timm name the ViT adapter knows gets an
    identity plan (nothing pruned) so its best checkpoint is a plan folder like any other.
    """
    from .pruner import make_plan, prune
    from .importance import get_criterion

    path = Path(spec)
    if path.is_dir():
        if (path / PLAN_FILE).is_file():
            plan = Plan.read(path)
            model = models.create(plan.model, "random", **{**plan.model_kwargs, **train_kwargs})
            model = prune(model, plan, inplace=True)
            name, kwargs = plan.model, dict(plan.model_kwargs)
        elif (path / MODEL_FILE).is_file():
            doc = json.loads((path / MODEL_FILE).read_text())
            plan, name, kwargs = None, doc["model"], dict(doc.get("model_kwargs", {}))
            model = models.create(name, "random", **{**kwargs, **train_kwargs})
        else:
            raise PlanError(f"{str(path)!r} holds neither {PLAN_FILE} nor {MODEL_FILE}")
        _load_weights(model, path / WEIGHTS_FILE)
        if num_classes is not None and _num_classes(model) != num_classes:
            raise DataError(f"model {str(path)!r} has {_num_classes(model)} classes but the dataset has {num_classes}")
    else:
        name, kwargs = str(spec), ({"num_classes": num_classes} if num_classes is not None else {})
        model = models.create(name, weights, **{**kwargs, **train_kwargs})
        try:
            plan = make_plan(model, name, {}, get_criterion("l2"), model_kwargs=kwargs)
        except UnsupportedModelError:
            plan = None
    return model, plan, {"model": name, "model_kwargs": kwargs}


def _load_weights(model: nn.Module, file: Path) -> None:
    if not file.is_file():
        raise PlanError(f"weights file {str(file)!r} does not exist")
    try:
        model.load_state_dict(models.read_state_dict(file))
    except RuntimeError as exc:
        raise PlanError(f"weights {str(file)!r} do not fit the model: {str(exc).splitlines()[0]}") from None


def _num_classes(model: nn.Module) -> int:
    return int(getattr(model, "num_classes", 0) or 0)


def save_model(out_dir: Path, model: nn.Module, plan: Plan | None, info: dict, metrics: dict | None = None) -> Path:
    """`snp_core.save` when there is a plan, else weights + ``model.json``; ``metrics.json`` beside."""
    from .pruner import save

    out_dir = Path(out_dir)
    if plan is not None:
        save(out_dir, model, plan)
    else:
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / MODEL_FILE).write_text(json.dumps(info, indent=1) + "\n")
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out_dir / WEIGHTS_FILE))
    if metrics is not None:
        (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=1) + "\n")
    return out_dir


# ---------------------------------------------------------------- data

def data_config(model: nn.Module) -> dict:
    """timm's data config for `model` with the input size it was built for (``img_size=``)."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    cfg["input_size"] = models.input_size(model)
    return cfg


def _posterize_zero_bits_compat() -> None:
    """Let timm's RandAugment posterize to 0 bits on Pillow versions that refuse it.

    ``rand-m9-mstd0.5-inc1`` samples magnitudes up to 10, where timm's ``PosterizeIncreasing``
    keeps ``4 - int(10 / 10 * 4) = 0`` bits. Older Pillow turned that into a black image;
    recent Pillow (13.0 in this venv) raises "bits must be between or equal to 1 and 8",
    which kills a training run at a random step. This restores the old result (all channels
    0) for 0 bits only and leaves every other magnitude to timm/Pillow unchanged. Applied
    once, before transforms are built.
    """
    from PIL import Image, ImageOps
    from timm.data import auto_augment

    try:
        ImageOps.posterize(Image.new("RGB", (1, 1)), 0)
        return  # this Pillow accepts 0 bits
    except ValueError:
        pass
    original = auto_augment.posterize
    if getattr(original, "_snp_compat", False):
        return

    def posterize(img, bits_to_keep, **kwargs):
        if bits_to_keep <= 0:
            return Image.new(img.mode, img.size)  # what older Pillow returned: every bit masked off
        return original(img, bits_to_keep, **kwargs)

    posterize._snp_compat = True
    auto_augment.posterize = posterize
    for name, fn in list(auto_augment.NAME_TO_OP.items()):
        if fn is original:
            auto_augment.NAME_TO_OP[name] = posterize


def build_transforms(model: nn.Module, recipe: Recipe):
    """(train, eval) transforms from ``timm.data.create_transform``."""
    from timm.data import create_transform

    _posterize_zero_bits_compat()
    cfg = data_config(model)
    common = dict(input_size=cfg["input_size"], interpolation=recipe.interpolation, mean=cfg["mean"], std=cfg["std"])
    eval_tf = create_transform(is_training=False, crop_pct=recipe.crop_pct, **common)
    if not recipe.augment:
        return eval_tf, eval_tf
    train_tf = create_transform(is_training=True, auto_augment=recipe.auto_augment, color_jitter=recipe.color_jitter,
                                re_prob=recipe.re_prob, re_mode="pixel", re_count=1, **common)
    return train_tf, eval_tf


def image_folder(root: Path, transform):
    from torchvision.datasets import ImageFolder

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {str(root)!r} does not exist")
    try:
        return ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"{str(root)!r} is not an ImageFolder (ROOT/CLASS/IMAGE): {exc}") from None


def build_mixup(recipe: Recipe, num_classes: int):
    """``timm.data.Mixup`` when augmentation and mixup/cutmix are on, else None."""
    from timm.data import Mixup

    if not recipe.augment or (recipe.mixup <= 0 and recipe.cutmix <= 0):
        return None
    return Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=1.0, switch_prob=0.5, mode="batch",
                 label_smoothing=recipe.smoothing, num_classes=num_classes)


def build_loss(recipe: Recipe, mixup) -> nn.Module:
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup is not None:
        return SoftTargetCrossEntropy()  # mixup's soft targets carry the label smoothing
    if recipe.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=recipe.smoothing)
    return nn.CrossEntropyLoss()


def build_optimizer(model: nn.Module, recipe: Recipe, global_batch: int) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model, opt=recipe.opt, lr=recipe.lr(global_batch), weight_decay=recipe.weight_decay,
                               eps=recipe.opt_eps)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, updates_per_epoch: int):
    from timm.scheduler import create_scheduler_v2

    scheduler, _ = create_scheduler_v2(optimizer, sched=recipe.sched, num_epochs=recipe.epochs, min_lr=recipe.min_lr,
                                       warmup_lr=recipe.warmup_lr, warmup_epochs=recipe.warmup_epochs,
                                       cooldown_epochs=0, step_on_epochs=True, updates_per_epoch=updates_per_epoch)
    return scheduler


def build_task(model: nn.Module, loss: nn.Module, recipe: Recipe, teacher: nn.Module | None, device: torch.device):
    """timm's ClassificationTask, LogitDistillationTask (soft) or our HardDistillationTask."""
    if recipe.distill == "none":
        return ClassificationTask(model, criterion=loss, device=device, verbose=False)
    if teacher is None:
        raise SNPError(f"distillation {recipe.distill!r} needs a teacher")
    cls = {"soft": LogitDistillationTask, "hard": HardDistillationTask}.get(recipe.distill)
    if cls is None:
        raise SNPError(f"unknown distillation {recipe.distill!r}; use none, soft or hard")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return cls(model, teacher.eval(), criterion=loss, task_loss_weight=1.0 - recipe.distill_alpha,
               temperature=recipe.distill_tau, device=device, verbose=False)


class HardDistillationTask(LogitDistillationTask):
    """DeiT's hard distillation (timm has none): the distillation term is CE against the teacher's argmax.

    Teacher handling, input re-normalisation, loss weights and DDP wrapping are timm's
    `LogitDistillationTask`'s; only the distillation term differs.
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> dict:
        student_logits = self.trainable_module(input)
        task_loss = self.criterion(student_logits, target)
        with torch.no_grad():
            teacher_logits = self.teacher(self.teacher.normalize_input(input, self.student_mean, self.student_std))
        kd_loss = F.cross_entropy(student_logits, teacher_logits.argmax(dim=-1))
        loss = self.task_loss_weight * task_loss + self.distill_loss_weight * kd_loss
        return {"loss": loss, "output": student_logits, "task_loss": task_loss, "kd_loss": kd_loss}


# ---------------------------------------------------------------- distributed

@dataclass
class Dist:
    """This process's place: rank, world size, device; `init` starts torchrun's process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    started: bool = False

    @classmethod
    def init(cls, device: str | None = None) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
        dev = torch.device(f"cuda:{local}" if use_cuda else "cpu")
        if use_cuda:
            torch.cuda.set_device(dev)
        started = False
        if world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
            started = True
        return cls(rank, world, local, dev, started)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.started and dist.is_initialized():
            dist.destroy_process_group()


def _shard(dataset, d: Dist):
    """Disjoint strided slice of `dataset` for this rank: every image counted exactly once."""
    if d.world_size == 1:
        return dataset
    return torch.utils.data.Subset(dataset, list(range(d.rank, len(dataset), d.world_size)))


# ---------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate(model: nn.Module, loader, d: Dist, amp: bool = False) -> dict:
    """Top-1/top-5 (percent) and mean CE loss, summed over all ranks."""
    model.eval()
    correct1 = correct5 = loss_sum = count = 0.0
    for images, target in loader:
        images, target = images.to(d.device, non_blocking=True), target.to(d.device, non_blocking=True)
        with _autocast(d, amp):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        k = min(5, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices
        hits = top.eq(target[:, None])
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=-1).sum().item()
        count += target.numel()
    correct1, correct5, loss_sum, count = d.sum([correct1, correct5, loss_sum, count])
    n = max(count, 1.0)
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss_sum / n, "samples": int(count)}


def _autocast(d: Dist, amp: bool):
    if amp and d.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _loader(dataset, batch_size: int, workers: int, d: Dist, sampler=None, shuffle=False, drop_last=False):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                       shuffle=shuffle and sampler is None, num_workers=workers,
                                       pin_memory=d.device.type == "cuda", drop_last=drop_last,
                                       persistent_workers=workers > 0)


def evaluate_folder(spec: str | Path, folder: Path, weights: str = "pretrained", batch_size: int = 256,
                    workers: int = 4, crop_pct: float = 0.875, interpolation: str = "bicubic",
                    device: str | None = None) -> dict:
    """Top-1/top-5 of a plan folder or timm model on an ImageFolder (runs under torchrun too)."""
    d = Dist.init(device)
    try:
        classes = _classes(Path(folder))
        model, _, _ = load_model(spec, weights, num_classes=len(classes))
        recipe = Recipe(augment=False, crop_pct=crop_pct, interpolation=interpolation)
        _, eval_tf = build_transforms(model, recipe)
        data = image_folder(Path(folder), eval_tf)
        loader = _loader(_shard(data, d), batch_size, workers, d)
        result = evaluate(model.to(d.device), loader, d)
        result["world_size"] = d.world_size
        return result
    finally:
        d.close()


def _classes(root: Path) -> list[str]:
    if not root.is_dir():
        raise DataError(f"dataset folder {str(root)!r} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{str(root)!r} has no class folders (expected ROOT/CLASS/IMAGE)")
    return classes


# ---------------------------------------------------------------- training

def _json_safe(value):
    return json.loads(json.dumps(value, default=str))


def optimizer_steps(optimizer: torch.optim.Optimizer) -> int:
    """The optimizer's step count (AdamW keeps one per parameter; they are all equal)."""
    for state in optimizer.state.values():
        if "step" in state:
            return int(torch.as_tensor(state["step"]).item())
    return 0


def train_step(task: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, target: torch.Tensor,
               grad_clip: float | None = None, autocast=None, epoch: int | None = None) -> torch.Tensor:
    """One update of `task` (a timm training task from `build_task`): loss, backward, clip, step.

    The one training step of this module, public so that small experiments (e.g. the
    digits ablation) train with exactly the recipe's step instead of a copy. `autocast`
    (a context manager) wraps the forward pass only; a non-finite loss stops training
    before it reaches the weights (`epoch` only names where). Returns the detached loss.
    """
    with autocast if autocast is not None else nullcontext():
        loss = task(images, target)["loss"]
    if not math.isfinite(loss.item()):
        where = f" at epoch {epoch}" if epoch is not None else ""
        raise RuntimeError(f"loss is {loss.item()}{where}; stopping")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(task.trainable_module.parameters(), grad_clip)
    optimizer.step()
    return loss.detach()


def finetune(model_spec: str | Path, data_root: Path, out: Path, recipe: Recipe | None = None,
             weights: str = "pretrained", teacher: str | Path | None = None, teacher_weights: str = "pretrained",
             resume: Path | None = None, device: str | None = None) -> dict:
    """Fine-tune `model_spec` on ``data_root/train``, evaluating on ``data_root/val`` each epoch.

    Returns the best metrics (on every rank). See the module docstring for the files written.
    """
    recipe = recipe or Recipe()
    data_root, out = Path(data_root), Path(out)
    if recipe.distill not in ("none", "soft", "hard"):
        raise SNPError(f"unknown distillation {recipe.distill!r}; use none, soft or hard")
    if recipe.distill != "none" and teacher is None:
        raise SNPError(f"--distill {recipe.distill} needs --teacher NAME_OR_DIR")
    train_classes, val_classes = _classes(data_root / "train"), _classes(data_root / "val")
    if train_classes != val_classes:
        raise DataError(f"{data_root}/train and {data_root}/val have different classes")
    ckpt = _read_checkpoint(resume) if resume is not None else None

    d = Dist.init(device)
    try:
        return _finetune(d, model_spec, data_root, out, recipe, weights, teacher, teacher_weights, ckpt,
                         len(train_classes))
    finally:
        d.close()


def _read_checkpoint(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "last.pth"
    if not path.is_file():
        raise PlanError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PlanError(f"cannot read checkpoint {str(path)!r}: {str(exc).splitlines()[0]}") from None


def _finetune(d: Dist, model_spec, data_root: Path, out: Path, recipe: Recipe, weights: str, teacher_spec,
              teacher_weights: str, ckpt: dict | None, num_classes: int) -> dict:
    from timm.utils import ModelEmaV3, unwrap_model

    torch.manual_seed(recipe.seed + d.rank)
    model, plan, info = load_model(model_spec, weights, num_classes=num_classes, drop_path_rate=recipe.drop_path)
    model.to(d.device)
    teacher = None
    if recipe.distill != "none":
        teacher, _, _ = load_model(teacher_spec, teacher_weights, num_classes=num_classes)
        teacher.to(d.device)

    train_tf, eval_tf = build_transforms(model, recipe)
    train_set = image_folder(data_root / "train", train_tf)
    val_set = image_folder(data_root / "val", eval_tf)
    mixup = build_mixup(recipe, num_classes)
    if mixup is not None and recipe.batch_size % 2:
        raise DataError(f"--batch-size {recipe.batch_size} must be even with mixup/cutmix (timm's Mixup pairs images)")
    sampler = (torch.utils.data.distributed.DistributedSampler(train_set, num_replicas=d.world_size, rank=d.rank,
                                                               shuffle=True, seed=recipe.seed)
               if d.world_size > 1 else None)
    train_loader = _loader(train_set, recipe.batch_size, recipe.workers, d, sampler=sampler, shuffle=True,
                           drop_last=mixup is not None)  # Mixup needs even batches, as in DeiT
    if len(train_loader) == 0:
        raise DataError(f"{data_root}/train has fewer images per process than --batch-size {recipe.batch_size}")
    val_loader = _loader(_shard(val_set, d), recipe.batch_size, recipe.workers, d)

    global_batch = recipe.batch_size * d.world_size
    optimizer = build_optimizer(model, recipe, global_batch)
    scheduler = build_scheduler(optimizer, recipe, len(train_loader))
    loss_fn = build_loss(recipe, mixup)

    start_epoch, best, scheduler_restored = 0, {"top1": -1.0, "top5": 0.0, "epoch": -1}, False
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        # Same run length: the saved schedule (its base lr included). A longer or shorter --epochs:
        # the cosine is rebuilt for the new length and entered at the resumed epoch.
        scheduler_restored = ckpt.get("recipe", {}).get("epochs") == recipe.epochs
        if scheduler_restored:
            scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, best = int(ckpt["epoch"]) + 1, dict(ckpt["best"])
        scheduler.step(start_epoch)
    ema = ModelEmaV3(model, decay=recipe.model_ema_decay) if recipe.model_ema else None  # from the resumed weights
    if ema is not None and ckpt is not None and ckpt.get("ema") is not None:
        ema.load_state_dict(ckpt["ema"])

    task = build_task(model, loss_fn, recipe, teacher, d.device)
    if d.world_size > 1:
        task.prepare_distributed(device_ids=[d.local_rank] if d.device.type == "cuda" else None)

    metrics_file = out / "metrics.jsonl"
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        event = {"event": "resume" if ckpt is not None else "start", "epoch": start_epoch,
                 "world_size": d.world_size, "global_batch": global_batch, "lr": recipe.lr(global_batch),
                 "optimizer_steps": optimizer_steps(optimizer), "scheduler_restored": scheduler_restored,
                 "train_images": len(train_set),
                 "val_images": len(val_set), "model": str(model_spec), "device": str(d.device),
                 "optimizer": type(optimizer).__name__, "mixup": type(mixup).__name__ if mixup else None,
                 "loss": type(loss_fn).__name__, "task": type(task).__name__, "recipe": asdict(recipe)}
        _append(metrics_file, event)
        log.info("fine-tuning %s on %s: %d processes, global batch %d, lr %.3g, epochs %d..%d",
                 model_spec, data_root, d.world_size, global_batch, recipe.lr(global_batch), start_epoch,
                 recipe.epochs - 1)

    student = unwrap_model(model)
    for epoch in range(start_epoch, recipe.epochs):
        started = time.perf_counter()
        if sampler is not None:
            sampler.set_epoch(epoch)
        task.train()
        loss_sum = seen = 0.0
        for images, target in train_loader:
            images, target = images.to(d.device, non_blocking=True), target.to(d.device, non_blocking=True)
            if mixup is not None:
                images, target = mixup(images, target)
            loss = train_step(task, optimizer, images, target, recipe.grad_clip, _autocast(d, recipe.amp), epoch)
            if ema is not None:
                ema.update(student)
            loss_sum += loss.item() * images.shape[0]
            seen += images.shape[0]
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step(epoch + 1)
        loss_sum, seen = d.sum([loss_sum, seen])
        ev = evaluate(student, val_loader, d, recipe.amp)
        is_best = ev["top1"] > best["top1"]
        if is_best:
            best = {"top1": ev["top1"], "top5": ev["top5"], "epoch": epoch}
        row = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1.0), "train_samples": int(seen), "lr": lr,
               "top1": ev["top1"], "top5": ev["top5"], "val_loss": ev["loss"], "val_samples": ev["samples"],
               "best_top1": best["top1"], "best_epoch": best["epoch"], "world_size": d.world_size,
               "optimizer_steps": optimizer_steps(optimizer), "time_s": round(time.perf_counter() - started, 3)}
        if d.main:
            if is_best:
                save_model(out / "best", student, plan, info,
                           {"top1": ev["top1"], "top5": ev["top5"], "dataset": str(data_root), "epochs": epoch + 1,
                            "epoch": epoch, "val_images": ev["samples"], "distill": recipe.distill})
            state = {"model": student.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": _json_safe(scheduler.state_dict()), "epoch": epoch, "best": best,
                     "ema": ema.state_dict() if ema is not None else None, "recipe": asdict(recipe),
                     "model_info": info, "plan": plan.to_dict() if plan is not None else None}
            tmp = out / "last.pth.tmp"
            torch.save(state, tmp)
            tmp.replace(out / "last.pth")
            _append(metrics_file, row)
            log.info("epoch %d: loss %.4f, top-1 %.2f%%, top-5 %.2f%% (best %.2f%% @ %d), %.1f s", epoch,
                     row["train_loss"], ev["top1"], ev["top5"], best["top1"], best["epoch"], row["time_s"])
        d.barrier()
    best_metrics = out / "best" / METRICS_FILE
    if d.main and best_metrics.is_file():  # "epochs": how long the run that produced the best model trained
        doc = json.loads(best_metrics.read_text())
        doc["epochs"] = recipe.epochs
        best_metrics.write_text(json.dumps(doc, indent=1) + "\n")
    return best


def _append(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(_json_safe(row)) + "\n")


def optimizer_steps_from_state(state: dict) -> int:
    """The step count in an optimizer's ``state_dict()`` (e.g. read back from a checkpoint)."""
    for entry in state.get("state", {}).values():
        if "step" in entry:
            return int(torch.as_tensor(entry["step"]).item())
    return 0
