"""What the ablation runs: its settings, the pruning sweeps and comparisons, and their results.

Every pruned model comes from the library's own path (`snp_core.ratios.from_spec`,
`snp_core.criterion_from_options`, `snp_core.make_plan`, `snp_core.prune`), so the study
measures exactly what ``bench compress`` would produce. Results are plain dicts (one per
measured model) so that they go to ``results.json`` as they are.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

import snp_core
from snp_core import ratios as ratio_sources

from .data import Digits, calibration_images, load_digits
from .fidelity import attention_fidelity, output_kl
from .training import MODEL_NAME, TrainConfig, accuracy, fit, train

log = logging.getLogger(__name__)

#: Pruning criteria compared (SNP and the paper's ablation baselines).
CRITERIA = ("snp", "l2", "random", "reverse")
#: SNP variants scanned on attention fidelity (docs/method.md §13.1–2): γ × weighting × aggregate.
VARIANT_GAMMAS: tuple[int | float, ...] = (0.5, 0.9, 0.99, 1, 2, 4, 8)
#: Group kinds pruned one at a time by `per_kind`.
NEURON_KINDS = ("qk", "v", "ffn")

#: Receives one human-readable line per step of the study (the command prints them).
Progress = Callable[[str], None]


@dataclass
class Settings:
    """What one ablation run does (recorded as ``settings`` in results.json)."""

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

    @classmethod
    def quick(cls, cache: Path = Path("runs/ablation")) -> Settings:
        """A smoke test in minutes: 4 blocks, 15 epochs, ratio 0.5 only, 20 fine-tune steps, one random seed."""
        return cls(train=TrainConfig(epochs=15, depth=4), ratios=(0.5,), finetune_steps=20, random_seeds=(0,),
                   variant_gammas=(0.9, 4), head_ratios=(0.5,), cache=cache)

    def to_dict(self) -> dict:
        """JSON-ready: tuples as lists, paths as strings."""
        return json.loads(json.dumps(asdict(self), default=str))


def snp_defaults() -> dict:
    """The SNP criterion's default open choices (`snp_core.importance.SNPImportance`)."""
    c = snp_core.get_criterion("snp")
    return {"gamma": c.gamma, "weighting": c.weighting, "aggregate": c.aggregate}


def neurons(ratio: float, embed: float = 0.0) -> dict[str, float]:
    """The main sweep's ratios by group kind: `ratio` of Q/K pairs, V and FFN neurons, `embed` of the residual stream."""
    return {"qk": ratio, "v": ratio, "ffn": ratio, "embed": embed}


def prune(model: nn.Module, config: TrainConfig, kinds: Mapping[str, float], criterion: snp_core.Importance,
          calib: torch.Tensor, head_criterion: str | snp_core.HeadImportance = "proj_l1") -> nn.Module:
    """A pruned copy of `model`: the same ratio in every group of a kind (`kinds`: kind → ratio,
    e.g. ``{"qk": 0.5}`` or `neurons`); whole heads, when ``heads`` is given, ranked by `head_criterion`."""
    groups = snp_core.adapter_for(model, MODEL_NAME).groups()
    ratios = ratio_sources.from_spec(dict(kinds), MODEL_NAME, groups)
    plan = snp_core.make_plan(model, MODEL_NAME, ratios, criterion, calib,
                              {"source": "digits train", "num_images": len(calib)},
                              model_kwargs=config.model_kwargs(), head_criterion=head_criterion)
    return snp_core.prune(model, plan)


def finetuned_accuracy(pruned: nn.Module, data: Digits, settings: Settings, seed: int = 0) -> float:
    """Test accuracy after the fixed fine-tune every criterion gets (on a copy of `pruned`)."""
    tuned = fit(copy.deepcopy(pruned), data, settings.finetune_steps, settings.finetune_lr,
                settings.train.weight_decay, warmup_steps=0, batch_size=settings.train.batch_size, seed=seed)
    return accuracy(tuned, data.x_test, data.y_test)


def evaluate(original: nn.Module, pruned: nn.Module, data: Digits, settings: Settings, seed: int = 0,
             qk_only: nn.Module | None = None) -> dict:
    """Accuracy before/after the fixed fine-tune, attention fidelity (before fine-tuning) of `pruned`
    and, when given, of `qk_only` (the same criterion pruning only the Q/K pairs), parameter count."""
    row = {"acc_pruned": accuracy(pruned, data.x_test, data.y_test),
           **attention_fidelity(original, pruned, data.x_test),
           "num_params": snp_core.count_params(pruned)}
    if settings.finetune_steps > 0:
        row["acc_finetuned"] = finetuned_accuracy(pruned, data, settings, seed)
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
                pruned = prune(model, settings.train, {"qk": settings.variant_ratio},
                               snp_core.criterion_from_options("snp", **params), calib)
                fid = attention_fidelity(model, pruned, data.x_test)
                rows.append({**params, "cosine": fid["cosine"], "kl": fid["kl"],
                             "acc_pruned": accuracy(pruned, data.x_test, data.y_test)})
    return rows


def per_kind(model: nn.Module, data: Digits, calib: torch.Tensor, settings: Settings) -> list[dict]:
    """Each group kind pruned alone at `settings.variant_ratio` with each criterion (random: seed 0):
    test accuracy and attention cosine, no fine-tune. Shows which part of a criterion helps or hurts."""
    rows = []
    for kind in NEURON_KINDS:
        for name in CRITERIA:
            pruned = prune(model, settings.train, {kind: settings.variant_ratio},
                           snp_core.criterion_from_options(name), calib)
            fid = attention_fidelity(model, pruned, data.x_test)
            rows.append({"kind": kind, "criterion": name, "acc_pruned": accuracy(pruned, data.x_test, data.y_test),
                         "cosine": fid["cosine"], "kl": fid["kl"]})
    return rows


def compare_heads(model: nn.Module, data: Digits, calib: torch.Tensor, settings: Settings) -> list[dict]:
    """Whole-head pruning alone (docs/method.md §6) at each of `settings.head_ratios`, per head criterion:
    ``proj_l1``, ``qk_sum`` (sum of the head's SNP Q/K pair scores) and ``random`` (each seed).

    Removed heads have no attention map to compare, so fidelity is measured on the output: the
    KL divergence of the class distributions; plus accuracy before and after the fixed fine-tune."""
    rows = []
    runs = [("proj_l1", 0), ("qk_sum", 0)] + [("random", s) for s in settings.random_seeds]
    for ratio in settings.head_ratios:
        for name, seed in runs:
            head_criterion = snp_core.get_head_criterion(name, **({"seed": seed} if name == "random" else {}))
            pruned = prune(model, settings.train, {"heads": ratio}, snp_core.criterion_from_options("snp"), calib,
                           head_criterion=head_criterion)
            row = {"ratio": ratio, "head_criterion": name, "seed": seed,
                   "heads_kept": pruned.blocks[0].attn.num_heads,
                   "acc_pruned": accuracy(pruned, data.x_test, data.y_test),
                   "output_kl": output_kl(model, pruned, data.x_test)}
            if settings.finetune_steps > 0:
                row["acc_finetuned"] = finetuned_accuracy(pruned, data, settings, seed)
            rows.append(row)
    return rows


def criterion_runs(settings: Settings, best: dict | None) -> list[tuple[str, dict, int]]:
    """(label, SNP options, seed) of every pruned model of the main sweep: snp, l2, reverse, random
    per seed, and ``snp*`` (the best variant) when the scan found one better than the defaults."""
    runs: list[tuple[str, dict, int]] = [("snp", {}, 0), ("l2", {}, 0), ("reverse", {}, 0)]
    runs += [("random", {}, s) for s in settings.random_seeds]
    default = snp_defaults()
    if best and any(best[k] != default[k] for k in default):
        runs.append(("snp*", {k: best[k] for k in default}, 0))
    return runs


def run_experiment(settings: Settings, progress: Progress | None = None) -> dict:
    """The whole study: train (or load) the model, scan SNP's variants, prune each group kind alone,
    compare head criteria, then the main sweep over ratios × criteria. `progress` gets one line
    per step, seconds to minutes apart (default: this module's logger at INFO)."""
    progress = progress or log.info
    started = time.perf_counter()
    data = load_digits(settings.train.img_size)
    model, train_info = train(settings.train, data, settings.cache, progress)
    calib = calibration_images(data, settings.num_calib)
    base = {"acc": accuracy(model, data.x_test, data.y_test), **attention_fidelity(model, model, data.x_test[:64])}

    scan_started = time.perf_counter()
    variants = scan_variants(model, data, calib, settings) if settings.variant_gammas else []
    best = max(variants, key=lambda r: r["cosine"]) if variants else None
    if best:
        progress(f"SNP variants at ratio {settings.variant_ratio}: best gamma={best['gamma']} "
                 f"weighting={best['weighting']} aggregate={best['aggregate']} (cosine {best['cosine']:.4f}), "
                 f"{time.perf_counter() - scan_started:.0f} s")

    kinds = per_kind(model, data, calib, settings) if settings.variant_gammas else []
    for r in kinds:
        progress(f"only {r['kind']:3s} pruned {settings.variant_ratio:.0%}, {r['criterion']:7s}: "
                 f"acc {r['acc_pruned']:.4f}, attention cos {r['cosine']:.4f}")

    heads = compare_heads(model, data, calib, settings) if settings.head_ratios else []
    for r in heads:
        progress(f"heads {r['ratio']:.0%} removed, {r['head_criterion']:7s} seed {r['seed']}: "
                 f"acc {r['acc_pruned']:.4f} -> {r.get('acc_finetuned', float('nan')):.4f}, "
                 f"output KL {r['output_kl']:.4f}")

    rows = []
    for ratio in settings.ratios:
        for label, params, seed in criterion_runs(settings, best):
            t0 = time.perf_counter()
            name = "snp" if label == "snp*" else label
            pruned = prune(model, settings.train, neurons(ratio, settings.embed),
                           snp_core.criterion_from_options(name, seed=seed, **params), calib)
            qk_only = prune(model, settings.train, {"qk": ratio},
                            snp_core.criterion_from_options(name, seed=seed, **params), calib)
            row = {"ratio": ratio, "criterion": label, "params": params, "seed": seed,
                   **evaluate(model, pruned, data, settings, seed=seed, qk_only=qk_only),
                   "seconds": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            progress(f"ratio {ratio:.2f} {label:8s} seed {seed}: acc {row['acc_pruned']:.4f} -> "
                     f"{row.get('acc_finetuned', float('nan')):.4f}, attention cos {row['cosine']:.4f} "
                     f"KL {row['kl']:.4f}, Q/K only cos {row['cosine_qk']:.4f} KL {row['kl_qk']:.4f} "
                     f"({row['seconds']} s)")
    return {"settings": settings.to_dict(), "train": train_info, "unpruned": base, "rows": rows,
            "variants": variants, "best_variant": best, "per_kind": kinds, "heads": heads,
            "seconds": round(time.perf_counter() - started, 1)}
