"""``python -m bench finetune`` and ``python -m bench evaluate``: recover accuracy after pruning.

The defaults are the paper's fine-tuning recipe (docs/method.md §8); see `snp_core.finetune` for
where each comes from. Run on N GPUs (or N CPU processes) with::

    torchrun --nproc_per_node N -m bench finetune --model runs/deit_t_snp --data imagenet --out runs/deit_t_ft
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from . import exit_codes, vocab
from .options import (HelpFormatter, add_deprecated, add_quiet, fraction, non_negative_int, non_negative_number,
                      output_dir, positive_int, positive_number)

TORCH_DEVICE_HELP = "torch device to run on: cpu, cuda or cuda:N (default: cuda when available)"


def _torch_device(p: argparse.ArgumentParser) -> None:
    """``--torch-device`` (``--device`` names a bench.toml device elsewhere; here it is a deprecated alias)."""
    p.add_argument("--torch-device", metavar="DEVICE", help=TORCH_DEVICE_HELP)
    add_deprecated(p, "--device", "--torch-device", "torch_device")


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    r = vocab.RECIPE
    p = sub.add_parser(
        "finetune", help=help,
        description="Fine-tune a pruned model (a folder with plan.json + model.safetensors) or a timm model on an "
                    "ImageFolder dataset (DATA/train, DATA/val) with the paper's recipe: AdamW, cosine schedule, "
                    "RandAugment, mixup/cutmix, label smoothing, drop-path, 300 epochs. Evaluates top-1/top-5 "
                    "every epoch, checkpoints OUT/last.pth, keeps the best model in OUT/best (plan folder + "
                    "metrics.json) and logs OUT/metrics.jsonl. Under torchrun it trains with "
                    "DistributedDataParallel.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", required=True, help="plan folder (plan.json + model.safetensors) or timm model name")
    p.add_argument("--weights", default="pretrained",
                   help="for a timm name: 'pretrained', 'random' or a checkpoint path (ignored for folders)")
    p.add_argument("--data", required=True, type=Path, help="dataset root holding the train/ and val/ ImageFolders")
    p.add_argument("--out", required=True, type=output_dir, help="output folder")
    p.add_argument("--epochs", type=positive_int, default=r["epochs"], help="number of epochs")
    p.add_argument("--batch-size", type=positive_int, default=r["batch_size"],
                   help="images per process (paper: 256 x 8 GPUs)")
    p.add_argument("--lr", type=positive_number, default=r["base_lr"],
                   help="base learning rate per 512 images; the effective one is LR x global batch / 512 "
                        "(DeiT's linear scaling: 2.5e-4 -> 1e-3 at the paper's global batch 2048)")
    p.add_argument("--min-lr", type=non_negative_number, default=r["min_lr"], help="cosine schedule floor")
    p.add_argument("--warmup-epochs", type=non_negative_int, default=r["warmup_epochs"], help="linear warm-up epochs")
    p.add_argument("--warmup-lr", type=non_negative_number, default=r["warmup_lr"], help="warm-up start learning rate")
    p.add_argument("--weight-decay", type=non_negative_number, default=r["weight_decay"], help="AdamW weight decay")
    p.add_argument("--drop-path", type=fraction, default=r["drop_path"], help="stochastic depth rate")
    p.add_argument("--mixup", type=non_negative_number, default=r["mixup"], help="mixup alpha (0: off)")
    p.add_argument("--cutmix", type=non_negative_number, default=r["cutmix"], help="cutmix alpha (0: off)")
    p.add_argument("--smoothing", type=fraction, default=r["smoothing"], help="label smoothing")
    p.add_argument("--no-augment", action="store_true",
                   help="no RandAugment/erasing/mixup: eval transforms for training (tiny smoke tests)")
    p.add_argument("--model-ema", action="store_true", help=f"keep a timm ModelEmaV3 (decay {r['model_ema_decay']})")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    kd = p.add_argument_group("distillation (off in the paper)")
    kd.add_argument("--distill", default="none", choices=("none", "soft", "hard"),
                    help="soft: KL on softened logits (timm LogitDistillationTask); hard: CE on the teacher's argmax")
    kd.add_argument("--teacher", help="teacher: plan folder or timm model name (e.g. the unpruned model)")
    kd.add_argument("--teacher-weights", default="pretrained", help="for a timm name: pretrained, random or PATH")
    kd.add_argument("--distill-alpha", type=non_negative_number, default=r["distill_alpha"],
                    help="weight of the distillation term")
    kd.add_argument("--distill-tau", type=positive_number, default=r["distill_tau"],
                    help="soft distillation temperature")
    p.add_argument("--resume", type=Path, metavar="CKPT", help="checkpoint (OUT/last.pth or its folder) to resume from")
    p.add_argument("--workers", type=non_negative_int, default=r["workers"],
                   help="data loader processes per training process")
    p.add_argument("--seed", type=non_negative_int, default=r["seed"], help="random seed (plus the rank)")
    _torch_device(p)
    add_quiet(p)
    p.set_defaults(func=run)



def add_evaluate_parser(sub: argparse._SubParsersAction, help: str) -> None:
    r = vocab.RECIPE
    e = sub.add_parser(
        "evaluate", help=help,
        description="Evaluate a pruned model (plan folder) or a timm model on an ImageFolder (e.g. DATA/val) with "
                    "the paper's evaluation transform (bicubic resize to size/0.875, centre crop).",
        formatter_class=HelpFormatter,
    )
    e.add_argument("--model", required=True, help="plan folder or timm model name")
    e.add_argument("--weights", default="pretrained", help="for a timm name: pretrained, random or PATH")
    e.add_argument("--data", required=True, type=Path, help="ImageFolder to evaluate on (ROOT/CLASS/IMAGE)")
    e.add_argument("--batch-size", type=positive_int, default=256, help="images per batch")
    e.add_argument("--crop-pct", type=positive_number, default=r["crop_pct"], help="centre-crop fraction")
    e.add_argument("--workers", type=non_negative_int, default=r["workers"], help="data loader processes")
    _torch_device(e)
    add_quiet(e)
    e.set_defaults(func=run_evaluate)


def run(args: argparse.Namespace) -> int:
    from snp_core import finetune as ft

    recipe = ft.Recipe(epochs=args.epochs, batch_size=args.batch_size, base_lr=args.lr, min_lr=args.min_lr,
                       warmup_epochs=args.warmup_epochs, warmup_lr=args.warmup_lr, weight_decay=args.weight_decay,
                       drop_path=args.drop_path, mixup=args.mixup, cutmix=args.cutmix, smoothing=args.smoothing,
                       augment=not args.no_augment, model_ema=args.model_ema, amp=args.amp, distill=args.distill,
                       distill_alpha=args.distill_alpha, distill_tau=args.distill_tau, workers=args.workers,
                       seed=args.seed)
    best = ft.finetune(args.model, args.data, args.out, recipe, weights=args.weights, teacher=args.teacher,
                       teacher_weights=args.teacher_weights, resume=args.resume, device=args.torch_device)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{args.model}: best top-1 {best['top1']:.4f}% top-5 {best['top5']:.4f}% at epoch {best['epoch']}; "
              f"saved to {args.out}/best")
    return exit_codes.OK


def run_evaluate(args: argparse.Namespace) -> int:
    from snp_core import finetune as ft

    result = ft.evaluate_folder(args.model, args.data, weights=args.weights, batch_size=args.batch_size,
                                workers=args.workers, crop_pct=args.crop_pct, device=args.torch_device)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{args.model}: top-1 {result['top1']:.4f}% top-5 {result['top5']:.4f}% "
              f"({result['samples']} images, loss {result['loss']:.4f})")
    return exit_codes.OK
