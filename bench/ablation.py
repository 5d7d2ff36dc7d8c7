"""``python -m bench ablation``: evidence that the SNP criterion works (SNP_SPEC §9.2).

A small timm ViT is trained on scikit-learn's ``load_digits`` (offline, minutes on
a laptop CPU), pruned at several uniform ratios with each criterion (``snp``,
``l2``, ``random`` over several seeds, ``reverse``) and measured three ways:

* test accuracy right after pruning (no fine-tuning);
* test accuracy after the same short fine-tune for every criterion;
* attention-map fidelity on held-out images: cosine similarity and KL divergence
  between the original and the pruned model's attention maps
  ``softmax(q kᵀ · scale)``, per image, block and head, averaged. This is the
  quantitative form of the paper's qualitative attention-map ablation
  (ℓ2 / GM / Reverse / SNP).

It also scans SNP's open choices (γ as a count or an energy fraction, σ-weighting,
mean or median over images; SNP_SPEC §13.1–2) on attention fidelity at one ratio
and adds the best variant as an extra row.

Data: the 1797 8×8 digits, scaled to [0, 1], bilinearly upsampled to 32×32, copied to
3 channels and normalised with mean = std = 0.5; a stratified 70/30 split
(``train_test_split(test_size=0.3, stratify=y, random_state=0)``: 1257 train / 540
test). Calibration: 64 training images from a fixed permutation. Trained weights are
cached under ``runs/ablation/`` keyed by the training config.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

import snp_core
from snp_core import ratios as ratio_sources
from snp_core.adapters.vit import PrunedAttention

from .options import HelpFormatter

log = logging.getLogger(__name__)

MODEL_NAME = "deit_tiny_patch16_224"
CRITERIA = ("snp", "l2", "random", "reverse")
#: SNP variants scanned on attention fidelity (SNP_SPEC §13.1–2): γ × weighting × aggregate.
VARIANT_GAMMAS: tuple[int | float, ...] = (0.5, 0.9, 0.99, 1, 2, 4, 8)


@dataclass(frozen=True)
class TrainConfig:
    """The small ViT and its training recipe (the cache key)."""

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
        return {"img_size": self.img_size, "patch_size": self.patch_size, "depth": self.depth,
                "num_heads": self.num_heads, "embed_dim": self.embed_dim, "num_classes": 10}

    def key(self) -> str:
        text = json.dumps({"model": MODEL_NAME, **asdict(self), "data": "digits-v1"}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class Settings:
    """What one ablation run does."""

    train: TrainConfig = field(default_factory=TrainConfig)
    ratios: tuple[float, ...] = (0.3, 0.5, 0.7)
    embed: float = 0.0
    finetune_steps: int = 100
    finetune_lr: float = 5e-4
    random_seeds: tuple[int, ...] = (0, 1, 2)
    num_calib: int = 64
    variant_ratio: float = 0.5
    variant_gammas: tuple[int | float, ...] = VARIANT_GAMMAS
    head_ratios: tuple[float, ...] = (0.25, 0.5)
    cache: Path = Path("runs/ablation")


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #


@dataclass
class Digits:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits(img_size: int = 32) -> Digits:
    """scikit-learn's digits as ``[N, 3, img_size, img_size]`` tensors, fixed 70/30 stratified split."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    data = sk_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(data.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(torch.arange(len(y)).numpy(), test_size=0.3, stratify=y.numpy(),
                                           random_state=0)
    idx_train, idx_test = torch.as_tensor(idx_train), torch.as_tensor(idx_test)
    return Digits(x[idx_train], y[idx_train], x[idx_test], y[idx_test])


def calibration_images(data: Digits, num: int = 64, seed: int = 0) -> torch.Tensor:
    """A fixed set of `num` training images (seeded permutation)."""
    perm = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(seed))
    return data.x_train[perm[:num]]


def _augment(x: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random translation by up to `pad` pixels (the same shift for the whole batch is too weak:
    one shift per image)."""
    padded = F.pad(x, (pad, pad, pad, pad), value=-1.0)
    size = x.shape[-1]
    shifts = torch.randint(0, 2 * pad + 1, (len(x), 2), generator=generator)
    return torch.stack([padded[i, :, sy:sy + size, sx:sx + size] for i, (sy, sx) in enumerate(shifts.tolist())])


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterable[torch.Tensor]:
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield perm[start:start + batch_size]


# --------------------------------------------------------------------------- #
# Train, fine-tune, evaluate
# --------------------------------------------------------------------------- #


def fit(model: nn.Module, data: Digits, steps: int, lr: float, weight_decay: float = 0.05, warmup_steps: int = 0,
        batch_size: int = 64, seed: int = 0, report: Callable[[int, float], None] | None = None,
        report_every: int = 0) -> nn.Module:
    """`steps` AdamW updates (timm's optimizer factory) with a per-step cosine schedule (timm's
    scheduler factory), random-shift augmentation; returns `model` in eval mode."""
    import timm.optim
    import timm.scheduler

    generator = torch.Generator().manual_seed(seed)
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=lr, weight_decay=weight_decay)
    # one "epoch" per update, so warm-up and decay are counted in updates
    scheduler, _ = timm.scheduler.create_scheduler_v2(optimizer, "cosine", num_epochs=steps, updates_per_epoch=1,
                                                      step_on_epochs=False, warmup_epochs=warmup_steps,
                                                      warmup_lr=lr * 0.01, min_lr=lr * 0.01)
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # drop-path / dropout, if any
        for step, idx in zip(range(steps), _batches(len(data.y_train), batch_size, generator)):
            x = _augment(data.x_train[idx], generator)
            loss = F.cross_entropy(model(x), data.y_train[idx], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step_update(step + 1)
            if report is not None and report_every and (step + 1) % report_every == 0:
                report(step + 1, loss.item())
    return model.eval()


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    model.eval()
    correct = sum(int((model(x[s:s + batch_size]).argmax(-1) == y[s:s + batch_size]).sum())
                  for s in range(0, len(y), batch_size))
    return correct / len(y)


def train(config: TrainConfig, data: Digits, cache: Path | None = None, log_fn: Callable[[str], None] = log.info
          ) -> tuple[nn.Module, dict]:
    """The trained small ViT: from `cache`/<key>/ when it is there, else trained and cached."""
    from safetensors.torch import load_file, save_file

    model = snp_core.create(MODEL_NAME, "random", **config.model_kwargs())
    folder = cache / config.key() if cache is not None else None
    if folder is not None and (folder / "model.safetensors").is_file():
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        info = json.loads((folder / "train.json").read_text())
        log_fn(f"trained model from cache {folder}/ (test accuracy {info['test_accuracy']:.4f})")
        return model.eval(), {**info, "from_cache": True}
    steps_per_epoch = len(data.y_train) // config.batch_size
    started = time.perf_counter()
    fit(model, data, config.epochs * steps_per_epoch, config.lr, config.weight_decay,
        config.warmup_epochs * steps_per_epoch, config.batch_size, config.seed,
        report=lambda step, loss: log_fn(f"  epoch {step // steps_per_epoch}/{config.epochs}: loss {loss:.3f} "
                                         f"({time.perf_counter() - started:.0f} s)"),
        report_every=5 * steps_per_epoch)
    info = {"config": asdict(config), "model": MODEL_NAME, "steps": config.epochs * steps_per_epoch,
            "train_seconds": round(time.perf_counter() - started, 1),
            "train_accuracy": accuracy(model, data.x_train, data.y_train),
            "test_accuracy": accuracy(model, data.x_test, data.y_test)}
    log_fn(f"trained {config.epochs} epochs in {info['train_seconds']} s: test accuracy {info['test_accuracy']:.4f}")
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
        (folder / "train.json").write_text(json.dumps(info, indent=2) + "\n")
    return model, info


# --------------------------------------------------------------------------- #
# Prune
# --------------------------------------------------------------------------- #


def criterion_for(name: str, seed: int = 0, **snp_params) -> snp_core.Importance:
    if name == "random":
        return snp_core.get_criterion("random", seed=seed)
    if name in ("snp", "reverse"):
        return snp_core.get_criterion(name, **snp_params)
    return snp_core.get_criterion(name)


def prune(model: nn.Module, config: TrainConfig, ratio: float, criterion: snp_core.Importance,
          calib: torch.Tensor, embed: float = 0.0, qk_only: bool = False, kinds: tuple[str, ...] | None = None,
          head_criterion: str | snp_core.HeadImportance = "proj_l1") -> nn.Module:
    """`model` pruned uniformly: `ratio` of Q/K pairs, V and FFN neurons removed (only Q/K pairs with
    `qk_only`, only the group kinds in `kinds` when given, e.g. ``("heads",)``), `embed` of the
    residual stream; whole heads are ranked by `head_criterion`."""
    groups = snp_core.adapter_for(model, MODEL_NAME).groups()
    if qk_only:
        kinds = ("qk",)
    if kinds is not None:
        ratios = ratio_sources.uniform(groups, **{k: ratio for k in kinds})
    else:
        ratios = ratio_sources.uniform(groups, qk=ratio, v=ratio, ffn=ratio, embed=embed)
    plan = snp_core.make_plan(model, MODEL_NAME, ratios, criterion, calib,
                              {"source": "digits train", "num_images": len(calib)}, progress=False,
                              model_kwargs=config.model_kwargs(), head_criterion=head_criterion)
    return snp_core.prune(model, plan)


# --------------------------------------------------------------------------- #
# Attention fidelity
# --------------------------------------------------------------------------- #


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    return [block.attn for block in model.blocks]


def _qk(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k ``[B, H, N, d]`` of an attention module for its input tokens `x`."""
    if isinstance(module, PrunedAttention):
        q, k, _ = module.project(x)
        return q, k
    B, N, _ = x.shape
    qkv = module.qkv(x).reshape(B, N, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    return module.q_norm(q), module.k_norm(k)


@torch.inference_mode()
def attention_maps(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Per block, the attention probabilities ``softmax(q kᵀ · scale)`` ``[B, H, N, N]`` for images `x`."""
    maps: list[torch.Tensor] = []

    def hook(module, args):
        q, k = _qk(module, args[0])
        maps.append(((q * module.scale) @ k.transpose(-2, -1)).softmax(-1))

    model.eval()
    handles = [m.register_forward_pre_hook(hook) for m in _attention_modules(model)]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return maps


@torch.inference_mode()
def attention_fidelity(original: nn.Module, pruned: nn.Module, x: torch.Tensor, batch_size: int = 128) -> dict:
    """How well `pruned` keeps `original`'s attention maps on images `x`.

    ``cosine``: cosine similarity of the flattened N×N maps, per image, block and head, averaged
    (1.0 = identical maps). ``kl``: KL(original ‖ pruned) of each query row, averaged over
    rows, heads, blocks and images (0 = identical). ``per_block_cosine``: the cosine per block.
    """
    cos_sum: list[float] = []
    kl_sum: list[float] = []
    n = 0
    for s in range(0, len(x), batch_size):
        xb = x[s:s + batch_size]
        a, b = attention_maps(original, xb), attention_maps(pruned, xb)
        if not cos_sum:
            cos_sum, kl_sum = [0.0] * len(a), [0.0] * len(a)
        for i, (pa, pb) in enumerate(zip(a, b)):
            cos = F.cosine_similarity(pa.flatten(2), pb.flatten(2), dim=-1)  # [B, H]
            kl = (pa * (pa.clamp_min(1e-12).log() - pb.clamp_min(1e-12).log())).sum(-1).mean(-1)  # [B, H]
            cos_sum[i] += float(cos.mean(-1).sum())
            kl_sum[i] += float(kl.mean(-1).sum())
        n += len(xb)
    per_block = [c / n for c in cos_sum]
    return {"cosine": sum(per_block) / len(per_block), "kl": sum(kl_sum) / n / len(kl_sum),
            "per_block_cosine": per_block}


# --------------------------------------------------------------------------- #
# The experiment
# --------------------------------------------------------------------------- #


def evaluate(original: nn.Module, pruned: nn.Module, data: Digits, settings: Settings, seed: int = 0,
             qk_only: nn.Module | None = None) -> dict:
    """Accuracy before/after the fixed fine-tune, attention fidelity (before fine-tuning) of `pruned`
    and, when given, of `qk_only` (the same criterion pruning only the Q/K pairs), parameter count."""
    row = {"acc_pruned": accuracy(pruned, data.x_test, data.y_test),
           **{k: v for k, v in attention_fidelity(original, pruned, data.x_test).items()},
           "num_params": sum(p.numel() for p in pruned.parameters())}
    if settings.finetune_steps > 0:
        tuned = fit(copy.deepcopy(pruned), data, settings.finetune_steps, settings.finetune_lr,
                    settings.train.weight_decay, warmup_steps=0, batch_size=settings.train.batch_size, seed=seed)
        row["acc_finetuned"] = accuracy(tuned, data.x_test, data.y_test)
    if qk_only is not None:
        fid = attention_fidelity(original, qk_only, data.x_test)
        row["cosine_qk"], row["kl_qk"] = fid["cosine"], fid["kl"]
    return row


def scan_variants(model: nn.Module, data: Digits, calib: torch.Tensor, settings: Settings) -> list[dict]:
    """SNP's open choices on attention fidelity (no fine-tune) at `settings.variant_ratio`.

    The choices change only the Q/K pair scores, so each variant prunes only the Q/K pairs and
    is ranked by the attention cosine of that model (``cosine``); ``acc_pruned`` is its accuracy."""
    rows = []
    for gamma in settings.variant_gammas:
        for weighting in ("none", "sigma"):
            for aggregate in ("mean", "median"):
                params = {"gamma": gamma, "weighting": weighting, "aggregate": aggregate}
                pruned = prune(model, settings.train, settings.variant_ratio, criterion_for("snp", **params), calib,
                               qk_only=True)
                fid = attention_fidelity(model, pruned, data.x_test)
                rows.append({**params, "cosine": fid["cosine"], "kl": fid["kl"],
                             "acc_pruned": accuracy(pruned, data.x_test, data.y_test)})
    return rows


def per_kind(model: nn.Module, data: Digits, calib: torch.Tensor, settings: Settings) -> list[dict]:
    """Each group kind pruned alone at `settings.variant_ratio` with each criterion (random: seed 0):
    test accuracy and attention cosine, no fine-tune. Shows which part of a criterion helps or hurts."""
    rows = []
    for kind in ("qk", "v", "ffn"):
        for name in CRITERIA:
            pruned = prune(model, settings.train, settings.variant_ratio, criterion_for(name), calib, kinds=(kind,))
            fid = attention_fidelity(model, pruned, data.x_test)
            rows.append({"kind": kind, "criterion": name, "acc_pruned": accuracy(pruned, data.x_test, data.y_test),
                         "cosine": fid["cosine"], "kl": fid["kl"]})
    return rows


@torch.inference_mode()
def output_kl(original: nn.Module, pruned: nn.Module, x: torch.Tensor) -> float:
    """Mean KL(original ‖ pruned) of the class distributions: how much the prediction moved."""
    log_p, log_q = original(x).log_softmax(-1), pruned(x).log_softmax(-1)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())


def compare_heads(model: nn.Module, data: Digits, calib: torch.Tensor, settings: Settings) -> list[dict]:
    """Whole-head pruning alone (SNP_SPEC §6) at each of `settings.head_ratios`, per head criterion:
    ``proj_l1``, ``qk_sum`` (sum of the head's SNP Q/K pair scores) and ``random`` (each seed).

    Removed heads have no attention map to compare, so fidelity is measured on the output: the
    KL divergence of the class distributions; plus accuracy before and after the fixed fine-tune."""
    rows = []
    runs = [("proj_l1", 0), ("qk_sum", 0)] + [("random", s) for s in settings.random_seeds]
    for ratio in settings.head_ratios:
        for name, seed in runs:
            head_criterion = snp_core.get_head_criterion(name, **({"seed": seed} if name == "random" else {}))
            pruned = prune(model, settings.train, ratio, criterion_for("snp"), calib, kinds=("heads",),
                           head_criterion=head_criterion)
            row = {"ratio": ratio, "head_criterion": name, "seed": seed,
                   "heads_kept": pruned.blocks[0].attn.num_heads,
                   "acc_pruned": accuracy(pruned, data.x_test, data.y_test),
                   "output_kl": output_kl(model, pruned, data.x_test)}
            if settings.finetune_steps > 0:
                tuned = fit(copy.deepcopy(pruned), data, settings.finetune_steps, settings.finetune_lr,
                            settings.train.weight_decay, batch_size=settings.train.batch_size, seed=seed)
                row["acc_finetuned"] = accuracy(tuned, data.x_test, data.y_test)
            rows.append(row)
    return rows


def run_experiment(settings: Settings, log_fn: Callable[[str], None] = log.info) -> dict:
    started = time.perf_counter()
    data = load_digits(settings.train.img_size)
    model, train_info = train(settings.train, data, settings.cache, log_fn)
    calib = calibration_images(data, settings.num_calib)
    base = {"acc": accuracy(model, data.x_test, data.y_test), **attention_fidelity(model, model, data.x_test[:64])}

    scan_started = time.perf_counter()
    variants = scan_variants(model, data, calib, settings) if settings.variant_gammas else []
    best = max(variants, key=lambda r: r["cosine"]) if variants else None
    if best:
        log_fn(f"SNP variants at ratio {settings.variant_ratio}: best gamma={best['gamma']} "
               f"weighting={best['weighting']} aggregate={best['aggregate']} (cosine {best['cosine']:.4f}), "
               f"{time.perf_counter() - scan_started:.0f} s")

    kinds = per_kind(model, data, calib, settings) if settings.variant_gammas else []
    for r in kinds:
        log_fn(f"only {r['kind']:3s} pruned {settings.variant_ratio:.0%}, {r['criterion']:7s}: "
               f"acc {r['acc_pruned']:.4f}, "
               f"attention cos {r['cosine']:.4f}")

    heads = compare_heads(model, data, calib, settings) if settings.head_ratios else []
    for r in heads:
        log_fn(f"heads {r['ratio']:.0%} removed, {r['head_criterion']:7s} seed {r['seed']}: acc {r['acc_pruned']:.4f} "
               f"-> {r.get('acc_finetuned', float('nan')):.4f}, output KL {r['output_kl']:.4f}")

    runs: list[tuple[str, dict, int]] = [("snp", {}, 0), ("l2", {}, 0), ("reverse", {}, 0)]
    runs += [("random", {}, s) for s in settings.random_seeds]
    default = SNPDefaults.params()
    if best and any(best[k] != default[k] for k in default):
        runs.append(("snp*", {k: best[k] for k in default}, 0))
    rows = []
    for ratio in settings.ratios:
        for label, params, seed in runs:
            t0 = time.perf_counter()
            name = "snp" if label == "snp*" else label
            criterion = criterion_for(name, seed=seed, **params)
            pruned = prune(model, settings.train, ratio, criterion, calib, settings.embed)
            qk_only = prune(model, settings.train, ratio, criterion_for(name, seed=seed, **params), calib, qk_only=True)
            row = {"ratio": ratio, "criterion": label, "params": params, "seed": seed,
                   **evaluate(model, pruned, data, settings, seed=seed, qk_only=qk_only),
                   "seconds": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            log_fn(f"ratio {ratio:.2f} {label:8s} seed {seed}: acc {row['acc_pruned']:.4f} -> "
                   f"{row.get('acc_finetuned', float('nan')):.4f}, attention cos {row['cosine']:.4f} "
                   f"KL {row['kl']:.4f}, Q/K only cos {row['cosine_qk']:.4f} KL {row['kl_qk']:.4f} "
                   f"({row['seconds']} s)")
    return {"settings": _jsonable(asdict(settings)), "train": train_info, "unpruned": base, "rows": rows,
            "variants": variants, "best_variant": best, "per_kind": kinds, "heads": heads,
            "seconds": round(time.perf_counter() - started, 1)}


class SNPDefaults:
    """The criterion's defaults (`snp_core.importance.SNPImportance`)."""

    @staticmethod
    def params() -> dict:
        c = snp_core.get_criterion("snp")
        return {"gamma": c.gamma, "weighting": c.weighting, "aggregate": c.aggregate}


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


# --------------------------------------------------------------------------- #
# Summaries: table, figure, README
# --------------------------------------------------------------------------- #


def summarise(rows: list[dict]) -> list[dict]:
    """One row per (ratio, criterion): means over seeds, with the std where there are several."""
    out = []
    keys = ("acc_pruned", "acc_finetuned", "cosine", "kl", "cosine_qk", "kl_qk")
    seen: dict[tuple, list[dict]] = {}
    for r in rows:
        seen.setdefault((r["ratio"], r["criterion"]), []).append(r)
    for (ratio, crit), group in seen.items():
        s = {"ratio": ratio, "criterion": crit, "n": len(group), "params": group[0]["params"]}
        for k in keys:
            vals = [g[k] for g in group if k in g]
            if vals:
                s[k] = statistics.fmean(vals)
                s[k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(s)
    return out


def _fmt(s: dict, key: str, digits: int = 1, scale: float = 100.0) -> str:
    if key not in s:
        return "–"
    text = f"{s[key] * scale:.{digits}f}"
    if s.get("n", 1) > 1:
        text += f" ± {s[key + '_std'] * scale:.{digits}f}"
    return text


def markdown_table(summary: list[dict]) -> str:
    lines = ["| removed (Q/K, V, FFN) | criterion | test acc. pruned (%) | test acc. fine-tuned (%) "
             "| attention cosine ↑ | attention KL ↓ | Q/K-only attention cosine ↑ | Q/K-only attention KL ↓ |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        label = s["criterion"] + (f" (×{s['n']} seeds)" if s["n"] > 1 else "")
        if s["params"]:
            label += " (" + ", ".join(f"{k}={v}" for k, v in s["params"].items()) + ")"
        lines.append(f"| {s['ratio']:.0%} | {label} | {_fmt(s, 'acc_pruned')} | {_fmt(s, 'acc_finetuned')} "
                     f"| {_fmt(s, 'cosine', 4, 1.0)} | {_fmt(s, 'kl', 4, 1.0)} "
                     f"| {_fmt(s, 'cosine_qk', 4, 1.0)} | {_fmt(s, 'kl_qk', 4, 1.0)} |")
    return "\n".join(lines)


def variants_table(variants: list[dict]) -> str:
    lines = ["| γ | weighting | aggregate | attention cosine ↑ | attention KL ↓ | test acc. pruned (%) |",
             "|---|---|---|---|---|---|"]
    for v in sorted(variants, key=lambda r: -r["cosine"]):
        lines.append(f"| {v['gamma']} | {v['weighting']} | {v['aggregate']} | {v['cosine']:.4f} | {v['kl']:.4f} "
                     f"| {v['acc_pruned'] * 100:.1f} |")
    return "\n".join(lines)


def per_kind_table(rows: list[dict]) -> str:
    if not rows:
        return "(not run)"
    criteria = list(dict.fromkeys(r["criterion"] for r in rows))
    lines = ["| pruned alone | " + " | ".join(f"{c}: acc. (%) / attn. cos" for c in criteria) + " |",
             "|---|" + "---|" * len(criteria)]
    for kind in dict.fromkeys(r["kind"] for r in rows):
        cells = {r["criterion"]: r for r in rows if r["kind"] == kind}
        lines.append(f"| {kind} | " + " | ".join(f"{cells[c]['acc_pruned'] * 100:.1f} / {cells[c]['cosine']:.4f}"
                                                 for c in criteria) + " |")
    return "\n".join(lines)


def heads_table(rows: list[dict]) -> str:
    """One line per (ratio, head criterion); random: mean ± sd over its seeds."""
    if not rows:
        return "(not run)"
    lines = ["| heads removed | head criterion | test acc. pruned (%) | test acc. fine-tuned (%) | output KL ↓ |",
             "|---|---|---|---|---|"]
    for ratio in dict.fromkeys(r["ratio"] for r in rows):
        for name in dict.fromkeys(r["head_criterion"] for r in rows):
            group = [r for r in rows if r["ratio"] == ratio and r["head_criterion"] == name]
            cells = []
            for key, scale, digits in (("acc_pruned", 100.0, 1), ("acc_finetuned", 100.0, 1), ("output_kl", 1.0, 4)):
                values = [r[key] * scale for r in group if key in r]
                if not values:
                    cells.append("–")
                elif len(values) == 1:
                    cells.append(f"{values[0]:.{digits}f}")
                else:
                    cells.append(f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}")
            kept = group[0]["heads_kept"]
            lines.append(f"| {ratio:.0%} ({kept} kept) | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


STYLE = {"snp": ("C0", "o", "-"), "snp*": ("C4", "D", "-"), "l2": ("C1", "s", "--"),
         "random": ("C7", "^", ":"), "reverse": ("C3", "v", "-.")}


def figure(result: dict, out: Path) -> list[Path]:
    """Accuracy (pruned, fine-tuned) and attention cosine vs ratio, one line per criterion."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    summary = summarise(result["rows"])
    panels = [("acc_pruned", "test accuracy (%), no fine-tuning", 100.0),
              ("acc_finetuned", f"test accuracy (%), {result['settings']['finetune_steps']}-step fine-tune", 100.0),
              ("cosine", "attention-map cosine to original", 1.0),
              ("cosine_qk", "attention-map cosine, only Q/K pruned", 1.0)]
    panels = [p for p in panels if any(p[0] in s for s in summary)]
    fig = Figure(figsize=(3.3 * len(panels), 3.3), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    criteria = list(dict.fromkeys(s["criterion"] for s in summary))
    for ax, (key, title, scale) in zip(axes, panels):
        for crit in criteria:
            pts = sorted((s for s in summary if s["criterion"] == crit and key in s), key=lambda s: s["ratio"])
            color, marker, ls = STYLE.get(crit, ("k", "x", "-"))
            xs = [0.0] + [s["ratio"] * 100 for s in pts]
            start = result["unpruned"]["acc"] if key.startswith("acc") else 1.0
            ys = [start * scale] + [s[key] * scale for s in pts]
            err = [0.0] + [s.get(key + "_std", 0.0) * scale for s in pts]
            label = crit if crit != "snp*" else "snp* (best variant)"
            if crit == "random" and pts and pts[0]["n"] > 1:
                label += f" (mean ± sd, {pts[0]['n']} seeds)"
            ax.errorbar(xs, ys, yerr=err if any(err) else None, color=color, marker=marker, linestyle=ls,
                        label=label, capsize=2, markersize=4, linewidth=1.3)
        if key == "acc_pruned":
            ax.axhline(10.0, color="0.6", linewidth=0.8, linestyle=":")  # chance
            ax.set_ylim(0, 102)
        elif key == "acc_finetuned":  # all recover to near the original: zoom in
            ax.axhline(result["unpruned"]["acc"] * 100, color="0.4", linewidth=0.8, linestyle="--")
        ax.set_xlabel("Q/K pairs removed (%)" if key == "cosine_qk" else "Q/K, V, FFN neurons removed (%)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"SNP criterion ablation: ViT ({result['train']['config']['depth']} blocks, "
                 f"dim {result['train']['config']['embed_dim']}) on 8×8 digits", fontsize=10)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "accuracy_vs_ratio.png", out / "accuracy_vs_ratio.pdf"]
    fig.savefig(paths[0], dpi=160)
    fig.savefig(paths[1])
    return paths


def _ordering(summary: list[dict], key: str, ratio: float, reverse: bool = True) -> str:
    rows = sorted((s for s in summary if s["ratio"] == ratio and key in s), key=lambda s: s[key], reverse=reverse)
    return " > ".join(s["criterion"] for s in rows)


def readme(result: dict, command: str) -> str:
    summary = summarise(result["rows"])
    cfg, st = result["train"]["config"], result["settings"]
    ratios = sorted({s["ratio"] for s in summary})
    best = result["best_variant"]
    order_lines = "\n".join(
        f"| {r:.0%} | {_ordering(summary, 'cosine', r)} | {_ordering(summary, 'cosine_qk', r)} "
        f"| {_ordering(summary, 'acc_pruned', r)} "
        f"| {_ordering(summary, 'acc_finetuned', r)} |" for r in ratios)
    default = SNPDefaults.params()
    return f"""# Does the SNP criterion work? An attention-fidelity and accuracy ablation

Produced by:

```bash
{command}
```

({result['seconds']:.0f} s on this machine, {'the trained weights came from the cache' if result['train'].get('from_cache') else 'training included'}.)

![accuracy and attention fidelity vs pruning ratio](accuracy_vs_ratio.png)

## What was measured

* **Model**: timm `{result['train']['model']}` architecture shrunk with `img_size={cfg['img_size']}`,
  `patch_size={cfg['patch_size']}`, `depth={cfg['depth']}`, `num_heads={cfg['num_heads']}`,
  `embed_dim={cfg['embed_dim']}`, `num_classes=10` ({cfg['img_size'] // cfg['patch_size']}² + 1 = \
{(cfg['img_size'] // cfg['patch_size']) ** 2 + 1} tokens, head width {cfg['embed_dim'] // cfg['num_heads']}).
* **Data**: scikit-learn `load_digits` (1797 8×8 images), scaled to [0, 1], bilinearly upsampled to
  {cfg['img_size']}×{cfg['img_size']}, 3 channels, normalised (mean = std = 0.5); stratified split
  `train_test_split(test_size=0.3, stratify=y, random_state=0)` = 1257 train / 540 test.
* **Training**: {cfg['epochs']} epochs, batch {cfg['batch_size']}, AdamW (`timm.optim.create_optimizer_v2`,
  lr {cfg['lr']}, weight decay {cfg['weight_decay']}), per-step cosine schedule with {cfg['warmup_epochs']} warm-up
  epochs (`timm.scheduler.create_scheduler_v2`), random ±2 px shifts, label smoothing 0.1.
  Test accuracy **{result['train']['test_accuracy'] * 100:.1f} %** (train {result['train']['train_accuracy'] * 100:.1f} %),
  trained in {result['train']['train_seconds']:.0f} s on 2 CPU cores; cached in `runs/ablation/<config hash>/`.
* **Pruning**: uniform ratios, the same fraction of Q/K pairs (per head), V neurons (per head) and FFN
  hidden neurons removed in every block; residual stream {'not pruned' if not st['embed'] else f"{st['embed']:.0%} removed"}.
  Calibration: {st['num_calib']} fixed training images (used by `snp`, `reverse`, `snp*`).
  `snp` uses the defaults γ = {default['gamma']}, weighting = {default['weighting']}, aggregate = {default['aggregate']}.
  `random` is averaged over seeds {', '.join(map(str, st['random_seeds']))} (mean ± sd).
* **Accuracy**: test accuracy right after pruning, and after the same fine-tune for every criterion
  ({st['finetune_steps']} AdamW steps, batch {cfg['batch_size']}, lr {st['finetune_lr']} cosine, same data order).
* **Attention fidelity** (SNP_SPEC §9.2, the paper's attention-map ablation, measured before fine-tuning):
  for all 540 test images, every block and head, the attention map `softmax(q kᵀ · scale)` of the
  original and of the pruned model (the pruned model's own q/k, from `PrunedAttention.project`);
  **cosine** = cosine similarity of the flattened N×N maps, **KL** = KL(original ‖ pruned) per query
  row; both averaged over rows, heads, blocks and images. **Q/K-only** columns: the same criterion
  pruning only the Q/K pairs (V, FFN and residual stream untouched), which isolates the part of the
  criterion the attention-map ablation is about (with V/FFN pruned too, later blocks' maps also move
  because their inputs change). Unpruned: cosine {result['unpruned']['cosine']:.4f},
  KL {result['unpruned']['kl']:.4f}.

Unpruned model: test accuracy {result['unpruned']['acc'] * 100:.1f} %.

## Results

{markdown_table(summary)}

Ordering (best first) per ratio:

| removed | attention cosine | Q/K-only attention cosine | accuracy pruned | accuracy fine-tuned |
|---|---|---|---|---|
{order_lines}

## SNP's open choices (SNP_SPEC §13.1–2), attention fidelity at {st['variant_ratio']:.0%}

γ: an int is a fixed number of singular components, a float an energy fraction of Σσ²;
weighting `sigma` weights component j by σ_j/Σσ; aggregate = over the {st['num_calib']} calibration images.
These choices change only the Q/K pair scores, so each variant prunes only the Q/K pairs
({st['variant_ratio']:.0%} per head); sorted by attention cosine (no fine-tuning); accuracy is of that Q/K-only model.

{variants_table(result['variants']) if result['variants'] else '(not run)'}

Best: γ = {best['gamma'] if best else '–'}, weighting = {best['weighting'] if best else '–'}, \
aggregate = {best['aggregate'] if best else '–'}{' (the row `snp*` above)' if any(r['criterion'] == 'snp*' for r in result['rows']) else ' (the default: no extra row)'}.

## Each group kind alone, {st['variant_ratio']:.0%} removed (no fine-tune)

Which part of each criterion helps or hurts: only the Q/K pairs, only the V neurons or only the
FFN hidden neurons are pruned (SNP: Q/K = attention-score criterion, V and FFN = redundancy
criterion; reverse = both inverted; random: seed 0).

{per_kind_table(result.get('per_kind') or [])}

## Whole-head pruning: which head criterion? (SNP_SPEC §6)

Only whole heads are removed (the same fraction in every block; no neuron pruning), ranked by
`proj_l1` (L1 norm of the head's output-projection columns), `qk_sum` (sum of the head's SNP Q/K
pair scores on the calibration images) or `random`. Removed heads have no attention map, so
fidelity is the KL divergence between the original and the pruned model's class distributions
on the test set; accuracy before and after the same fine-tune as above.

{heads_table(result.get('heads') or [])}

## Conclusions

CONCLUSIONS_PLACEHOLDER
"""


DISCUSSION = "\n## Discussion"


def write_outputs(result: dict, out: Path, command: str) -> list[Path]:
    """Write results.json, the figure and README.md. A hand-written ``## Discussion`` section at
    the end of an existing README.md is kept (the rest of the README is generated)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    paths = figure(result, out)
    text = readme(result, command).replace("CONCLUSIONS_PLACEHOLDER", conclusions(result))
    old = (out / "README.md").read_text() if (out / "README.md").is_file() else ""
    if DISCUSSION in old:
        text = text.rstrip("\n") + "\n" + old[old.index(DISCUSSION):]
    (out / "README.md").write_text(text)
    return [out / "README.md", out / "results.json", *paths]


def conclusions(result: dict) -> str:
    """Plain statements computed from the numbers (so the README never claims what the run did not show)."""
    summary = summarise(result["rows"])
    lines = []
    for ratio in sorted({s["ratio"] for s in summary}):
        at = {s["criterion"]: s for s in summary if s["ratio"] == ratio}
        if "snp" not in at:
            continue
        others = [c for c in ("l2", "random", "reverse") if c in at]
        for key, what in (("cosine", "attention cosine"), ("cosine_qk", "attention cosine with only Q/K pruned"),
                          ("acc_pruned", "accuracy before fine-tuning"),
                          ("acc_finetuned", "accuracy after fine-tuning")):
            if key not in at["snp"]:
                continue
            scale = 1.0 if key.startswith("cosine") else 100.0
            beaten = [c for c in others if at[c][key] > at["snp"][key]]
            vals = ", ".join(f"{c} {at[c][key] * scale:.3g}" for c in others)
            verdict = "best of the four" if not beaten else f"beaten by {', '.join(beaten)}"
            lines.append(f"* {ratio:.0%} removed, {what}: snp {at['snp'][key] * scale:.3g} ({vals}): snp is {verdict}.")
    lines += head_conclusions(result.get("heads") or [])
    return "\n".join(lines)


def head_conclusions(rows: list[dict]) -> list[str]:
    """Which head criterion kept the predictions closest (lowest output KL; random: its seed mean)."""
    lines = []
    for ratio in dict.fromkeys(r["ratio"] for r in rows):
        kl = {}
        for r in rows:
            if r["ratio"] == ratio:
                kl.setdefault(r["head_criterion"], []).append(r["output_kl"])
        mean = {name: statistics.mean(v) for name, v in kl.items()}
        order = sorted(mean, key=mean.get)
        lines.append(f"* {ratio:.0%} of heads removed, output KL (lower is better): "
                     + ", ".join(f"{n} {mean[n]:.4f}" for n in order) + f": {order[0]} is best.")
    return lines


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #


def quick_settings(cache: Path) -> Settings:
    return Settings(train=TrainConfig(epochs=15, depth=4), ratios=(0.5,), finetune_steps=20, random_seeds=(0,),
                    variant_gammas=(0.9, 4), head_ratios=(0.5,), cache=cache)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablation", help="train a small ViT on 8x8 digits and compare pruning criteria (accuracy, attention maps)",
        description="Evidence that the SNP criterion works: train a small timm ViT on scikit-learn's digits "
                    "(cached), prune it at several ratios with snp, l2, random and reverse, and report test "
                    "accuracy before and after a fixed fine-tune and the fidelity of the attention maps "
                    "(the paper's attention-map ablation, SNP_SPEC §9.2); also compare whole-head criteria "
                    "(proj_l1, qk_sum, random). Writes README.md (tables; a hand-written '## Discussion' "
                    "at its end is kept), "
                    "results.json and accuracy_vs_ratio.png/.pdf.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--quick", action="store_true",
                   help="a smoke test: 4 blocks, 15 epochs, ratio 0.5 only, 20 fine-tune steps, one random seed; "
                        "writes to a temporary folder unless --out is given")
    p.add_argument("--out", type=Path,
                   help="output folder (default: docs/ablation, or a temporary folder with --quick)")
    p.add_argument("--ratios", help="comma-separated fractions removed (default: 0.3,0.5,0.7)")
    p.add_argument("--epochs", type=int, help="training epochs (default: 40, --quick: 15)")
    p.add_argument("--finetune-steps", type=int, help="fine-tune steps per pruned model (default: 100, --quick: 20)")
    p.add_argument("--seeds", type=int, help="seeds of the random criterion (default: 3, --quick: 1)")
    p.add_argument("--embed", type=float, default=0.0, help="fraction of residual-stream channels removed")
    p.add_argument("--cache", type=Path, default=Path("runs/ablation"), help="where trained weights are cached")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = quick_settings(args.cache) if args.quick else Settings(cache=args.cache)
    if args.ratios:
        settings.ratios = tuple(float(r) for r in args.ratios.split(","))
    if args.epochs is not None:
        settings.train = TrainConfig(**{**asdict(settings.train), "epochs": args.epochs})
    if args.finetune_steps is not None:
        settings.finetune_steps = args.finetune_steps
    if args.seeds is not None:
        settings.random_seeds = tuple(range(args.seeds))
    settings.embed = args.embed
    if args.quick and args.out is None:
        out = Path(tempfile.mkdtemp(prefix="snp-ablation-"))
    else:
        out = args.out or Path("docs/ablation")
    command = "python -m bench ablation" + (" --quick" if args.quick else "")
    command += f" --out {args.out}" if args.out else ""
    for flag in ("ratios", "epochs", "finetune_steps", "seeds"):
        if getattr(args, flag) is not None:
            command += f" --{flag.replace('_', '-')} {getattr(args, flag)}"
    if args.embed:
        command += f" --embed {args.embed}"
    result = run_experiment(settings, log_fn=lambda text: print(text, flush=True))
    paths = write_outputs(result, out, command)
    print(markdown_table(summarise(result["rows"])))
    print(f"done in {result['seconds']:.0f} s; wrote " + ", ".join(str(p) for p in paths))
    return 0
