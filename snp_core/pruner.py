"""From a model, ratios and a criterion to a plan, and from a plan to a smaller model.

`make_plan` scores every group with the criterion (`score_groups`: running
calibration images through the model first if the criterion needs activations)
and keeps the highest-scoring neurons (`select`); `prune` cuts a model to a plan; `save` / `load` store a
pruned model as ``plan.json`` + ``model.safetensors`` and rebuild it.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from . import models
from . import ratios as ratio_sources
from .adapters import Adapter, adapter_for
from .errors import PlanError
from .flops import count_macs, count_params
from .groups import Group
from .head_importance import HeadImportance, get_head_criterion
from .importance import Importance, get_criterion
from .plan import PLAN_FILE, WEIGHTS_FILE, Plan

log = logging.getLogger(__name__)

#: Told ``(batches done, batches in all)`` as calibration runs; the command line draws a bar from it.
Progress = Callable[[int, int], None]


def kept_widths(groups: list[Group], ratios: Mapping[str, float], round_to: int | None = None) -> dict[str, int]:
    """Kept width of every group (per head for per-head kinds)."""
    return {g.name: g.kept_width(ratios.get(g.name, 0.0), round_to) for g in groups}


@torch.inference_mode()
def collect_qk_scores(model: nn.Module, adapter: Adapter, criterion: Importance, images: torch.Tensor,
                      batch_size: int = 16, progress: Progress | None = None) -> dict[str, torch.Tensor]:
    """Per-image Q/K pair scores ``[num_images, H, d]`` for every qk group.

    Hooks capture q and k where the adapter says they are; the criterion scores
    each batch as it passes, so only the small score tensors are kept in memory.
    """
    scores: dict[str, list[torch.Tensor]] = {}

    def hook(name: str, extract):
        def run(module, args, out):
            q, k = extract(out)
            scores.setdefault(name, []).append(criterion.qk_per_image(q, k))
        return run

    handles = [module.register_forward_hook(hook(name, extract)) for name, module, extract in adapter.qk_sources()]
    was_training = model.training
    model.eval()
    try:
        starts = range(0, len(images), batch_size)
        for done, start in enumerate(starts, 1):
            model(images[start:start + batch_size])
            if progress:
                progress(done, len(starts))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return {name: torch.cat(parts) for name, parts in scores.items()}


def _top(scores: torch.Tensor, kept: int) -> list:
    """Indices of the `kept` highest scores, ascending; per row when `scores` is [H, d]."""
    if scores.dim() == 2:
        return [_top(row, kept) for row in scores]
    return sorted(torch.topk(scores, kept).indices.tolist())


def score_groups(model: nn.Module, adapter: Adapter, criterion: Importance, images: torch.Tensor | None = None,
                 head_criterion: HeadImportance | str = "proj_l1", batch_size: int = 16,
                 progress: Progress | None = None) -> dict[str, torch.Tensor]:
    """The importance of every neuron of every group (higher = keep).

    ``[H, d]`` for per-head kinds, ``[width]`` otherwise (heads: one score per head).
    Scoring once and selecting many times lets a search try many ratio settings
    without re-running calibration.
    """
    if isinstance(head_criterion, str):
        head_criterion = get_head_criterion(head_criterion)
    groups = adapter.groups()
    qk_scores: dict[str, torch.Tensor] = {}
    if criterion.uses_activations:
        if images is None:
            raise PlanError(f"criterion {criterion.name!r} needs calibration images")
        qk_scores = collect_qk_scores(model, adapter, criterion, images, batch_size, progress)

    scores: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for g in groups:
            if g.kind == "qk":
                scores[g.name] = criterion.query_key(*adapter.qk_weights(g.name), qk_scores.get(g.name))
            elif g.kind == "v":
                scores[g.name] = criterion.value(adapter.value_weights(g.name))
            elif g.kind == "ffn":
                scores[g.name] = criterion.hidden(adapter.hidden_weights(g.name))
            elif g.kind == "embed":
                scores[g.name] = criterion.channels(adapter.channel_producers(g.name))
        for g in groups:
            if g.kind == "heads":
                qk = next(q.name for q in groups if q.kind == "qk" and q.head_group == g.name)
                scores[g.name] = head_criterion.score(scores[qk], adapter.head_proj_columns(g.name))
    return scores


def select(groups: list[Group], scores: Mapping[str, torch.Tensor], widths: Mapping[str, int]) -> dict[str, list]:
    """Kept indices per group: the `widths` highest scores.

    Heads go first; the neurons of a per-head group are then chosen within the
    surviving heads only (SNP on the heads that head pruning kept, docs/method.md §6).
    """
    keep = {g.name: _top(scores[g.name], widths[g.name]) for g in groups if g.kind == "heads"}
    for g in groups:
        if g.kind != "heads":
            s = scores[g.name]
            if g.head_group is not None:
                s = s[keep[g.head_group]]
            keep[g.name] = _top(s, widths[g.name])
    return keep


def make_plan(model: nn.Module, model_name: str | None = None, ratios: ratio_sources.RatioSpec | None = None,
              criterion: Importance | str = "snp", images: torch.Tensor | None = None,
              calibration_info: dict | None = None, round_to: int | None = None, batch_size: int = 16,
              progress: Progress | None = None, model_kwargs: dict | None = None,
              head_criterion: HeadImportance | str = "proj_l1",
              scores: Mapping[str, torch.Tensor] | None = None) -> Plan:
    """Score `model` with `criterion` and keep, per group, the neurons `ratios` leave.

    `model_name` is the timm architecture (a tag such as ``.fb_in1k`` is dropped);
    None takes the model's own (timm models know it), and a name that does not
    fit the model (with `model_kwargs`) is refused (`models.resolve_name`).
    `ratios`: a mapping of group name -> fraction removed (`ratios.uniform`
    makes one from ratios per kind), or a spec string: "paper" (the default, the
    paper's file for the model), a shipped config name or a JSON file path.
    `criterion` and `head_criterion` are objects or names (`get_criterion`,
    `get_head_criterion`). `head_criterion` ranks whole heads (`head_importance`);
    it only matters, and is only recorded in the plan, when a ``heads`` ratio is
    non-zero. `scores`: this model's `score_groups` output for `criterion` and
    `head_criterion`, computed earlier (a search that scored once and tried many
    ratios); `images` is then unused.
    """
    model_name = models.base_name(models.resolve_name(model, model_name, model_kwargs))
    if isinstance(criterion, str):
        criterion = get_criterion(criterion)
    adapter = adapter_for(model, model_name)
    groups = adapter.groups()
    ratios = (ratio_sources.validate(ratios, groups) if isinstance(ratios, Mapping)
              else ratio_sources.from_spec(ratios, model_name, groups))
    widths = kept_widths(groups, ratios, round_to)
    if scores is None:
        scores = score_groups(model, adapter, criterion, images, head_criterion, batch_size, progress)
    criterion_doc = {"name": criterion.name, "params": criterion.params()}
    if any(ratios[g.name] for g in groups if g.kind == "heads"):
        criterion_doc["heads"] = head_criterion
    return Plan(model=model_name, family=adapter.family, keep=select(groups, scores, widths), widths=widths,
                ratios=ratios, criterion=criterion_doc, model_kwargs=model_kwargs or {},
                round_to=round_to, calibration=calibration_info,
                macs={"original": adapter.macs({g.name: g.width for g in groups}), "pruned": adapter.macs(widths)},
                params={"original": count_params(model)})


def prune(model: nn.Module, plan: Plan, inplace: bool = False) -> nn.Module:
    """`model` cut to the plan's kept indices (a copy unless `inplace`)."""
    if not inplace:
        model = copy.deepcopy(model)
    adapter = adapter_for(model, plan.model)
    plan.check_against(adapter.groups())
    adapter.apply(plan.keep)
    plan.params["pruned"] = count_params(model)
    return model.eval()


def save(out_dir: str | Path, model: nn.Module, plan: Plan) -> Path:
    """Write ``plan.json`` and ``model.safetensors`` into `out_dir` (created)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan.write(out_dir / PLAN_FILE)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out_dir / WEIGHTS_FILE),
              metadata={"format": "snp-weights/1", "model": plan.model})
    return out_dir


def load(plan: Plan | dict | str | Path, state_dict: Mapping[str, torch.Tensor] | str | Path | None = None) -> nn.Module:
    """Rebuild a pruned model: the original architecture, cut to the plan, then its weights.

    `plan` is a Plan, its dict, a ``plan.json`` path or the folder holding it; without
    `state_dict` the weights are read from ``model.safetensors`` beside the plan file.
    """
    folder = None
    if isinstance(plan, (str, Path)):
        path = Path(plan)
        folder = path if path.is_dir() else path.parent
        plan = Plan.read(path)
    elif isinstance(plan, dict):
        plan = Plan.from_dict(plan)
    if state_dict is None:
        if folder is None:
            raise PlanError("load() needs a state_dict when the plan is not read from a file")
        state_dict = folder / WEIGHTS_FILE
    if isinstance(state_dict, (str, Path)):
        if not Path(state_dict).is_file():
            raise PlanError(f"weights file {str(state_dict)!r} does not exist")
        state_dict = models.read_state_dict(Path(state_dict))
    model = prune(models.create(plan.model, "random", **plan.model_kwargs), plan, inplace=True)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise PlanError(f"weights do not fit the plan for {plan.model!r}: {lines[min(1, len(lines) - 1)]}") from None
    return model


def summary(model: nn.Module, input_size: tuple[int, ...] | None = None) -> dict:
    """Parameters and MACs (hook-counted) of a model, for reports."""
    return {"params": count_params(model), "macs": count_macs(model, input_size)}
