"""One call from a model, or its timm name, to the pruned model and its plan: the API's common case.

``snp_core.compress("deit_tiny_patch16_224", ratios="paper", calib="imagenet/train")``
does what the step-by-step API does (``create`` → ``calibration.load`` →
``make_plan`` → ``prune``) with the name given once.  Everything it takes is
accepted in the forms users write: criteria by name or as objects, ratios as
"paper", a shipped config name, a JSON file, a mapping per kind (``{"qk": 0.5,
"ffn": 0.3}``) or per group, paths as str or Path, timm names with or without
their pretrained tag.  It adds no logic of its own: the steps are the
functions docs/api.md describes, so the two ways give the same plan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, NamedTuple

import torch
from torch import nn

from . import calibration, models
from . import ratios as ratio_sources
from .groups import KINDS
from .head_importance import HeadImportance
from .importance import Importance, get_criterion
from .plan import Plan
from .adapters import adapter_for
from .pruner import Progress, make_plan, prune, save


class Compressed(NamedTuple):
    """The pruned model and the plan that made it (unpack it, or ``.save(folder)``)."""

    model: nn.Module
    plan: Plan

    def save(self, out_dir: str | Path) -> Path:
        """``plan.json`` + ``model.safetensors`` in `out_dir`, which ``snp_core.load(out_dir)`` rebuilds."""
        return save(out_dir, self.model, self.plan)


def compress(model: nn.Module | str, ratios: ratio_sources.RatioSpec = "paper",
             calib: str | Path | torch.Tensor | None = None, *, criterion: Importance | str = "snp",
             weights: str = "random", num_images: int = 64, round_to: int | None = None,
             head_criterion: HeadImportance | str = "proj_l1", model_kwargs: dict | None = None,
             progress: Progress | None = None) -> Compressed:
    """Prune `model` (a module, or a timm name created with `weights` and `model_kwargs`) with SNP.

    `ratios`: "paper" (the paper's ratios for the model), a shipped config name, a
    JSON file, ratios per kind (``{"qk": 0.5, "v": 0.5, "ffn": 0.5, "embed": 0.2}``)
    or per group (``{"blocks.0.qk": 0.5, ...}``).  `calib`: an image folder, a
    saved ``[N, 3, H, W]`` tensor file or a tensor, read only when the criterion
    needs activations (SNP does); None falls back to sample photos with a warning
    (``calibration.load``).  `weights` ("random", "pretrained" or a checkpoint
    path) applies to a name only: a module keeps its own.  The model is not
    changed; the pruned one is a copy.
    """
    name = None
    if isinstance(model, str):
        name = model
        model = models.create(name, weights, **(model_kwargs or {}))
    elif not isinstance(model, nn.Module):
        raise TypeError(f"model must be a timm model name or an nn.Module, got {type(model).__name__}")
    if isinstance(criterion, str):
        criterion = get_criterion(criterion)
    if isinstance(ratios, Mapping) and set(ratios) <= set(KINDS):
        ratios = ratio_sources.uniform(adapter_for(model, name or "").groups(), **ratios)
    images, info = None, None
    if criterion.uses_activations:
        data = calibration.load(calib, model, num_images)
        images, info = data.images, data.info()
    # make_plan checks that `name` fits the model
    plan = make_plan(model, name, ratios, criterion, images, info, round_to=round_to, progress=progress,
                     model_kwargs=model_kwargs, head_criterion=head_criterion)
    return Compressed(prune(model, plan), plan)
