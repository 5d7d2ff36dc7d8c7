"""Building a sweep's models and exporting their artifacts (on the host, before any device runs).

Pruned entries are pruned here, from their base entry, so a sweep always
measures the architecture its config describes; exports are cached by content
in ``paths.artifacts``, so an unchanged model is neither re-exported nor (by the
transports' blob store) re-uploaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

import exporters
import snp_core
from snp_core.plan import Plan

from .config import ModelSpec

log = logging.getLogger(__name__)

#: What the exporter is asked for, per sweep format (TensorRT engines are built on the device from the .onnx).
EXPORT_FORMAT = {"onnx": "onnx", "torchscript": "torchscript", "pt2": "pt2", "trt": "trt"}
#: The artifact format the agent is told it receives.
AGENT_FORMAT = {"onnx": "onnx", "torchscript": "torchscript", "pt2": "pt2", "trt": "onnx"}


def build_model(spec: ModelSpec, base: ModelSpec | None) -> tuple[nn.Module, Plan | None]:
    """The model a config entry describes: a timm model, or its pruned variant."""
    if spec.plan:
        return snp_core.load(spec.plan), Plan.read(Path(spec.plan))
    if spec.base is None:
        return snp_core.create(spec.timm, spec.weights, **spec.kwargs), None
    assert base is not None
    original = snp_core.create(base.timm, base.weights, **base.kwargs)
    adapter = snp_core.adapter_for(original, spec.timm)
    if isinstance(spec.ratios, dict):
        ratios = snp_core.ratios.uniform(adapter.groups(), **spec.ratios)
    else:
        ratios = snp_core.ratios.resolve(spec.ratios or "paper", spec.timm)
    criterion = snp_core.get_criterion(spec.criterion)
    images, info = None, None
    if criterion.uses_activations:
        calib = snp_core.calibration.load(spec.calib, original, spec.num_calib)
        images, info = calib.images, calib.info()
    snp_core.kept_widths(adapter.groups(), ratios, spec.round_to)
    plan = snp_core.make_plan(original, spec.timm, ratios, criterion, images, info, round_to=spec.round_to,
                              progress=False, model_kwargs=base.kwargs)
    return snp_core.prune(original, plan), plan


def export_all(specs: list[ModelSpec], formats: list[str], batches: list[int], cache_dir: Path,
               models: dict[str, ModelSpec]) -> dict[tuple[str, str, int], exporters.Artifact]:
    """Every (model entry, sweep format, batch size) artifact the sweep needs."""
    artifacts: dict[tuple[str, str, int], exporters.Artifact] = {}
    for spec in specs:
        model, plan = build_model(spec, models.get(spec.base) if spec.base else None)
        size = snp_core.models.input_size(model)
        for fmt in formats:
            for batch in batches:
                art = exporters.export(model, EXPORT_FORMAT[fmt], cache_dir, input_shape=(batch, *size),
                                       source=spec.timm, variant=spec.variant, plan=plan)
                log.info("%s %s bs%d: %s%s", spec.name, fmt, batch, art.path, " (cached)" if art.cached else "")
                artifacts[(spec.name, fmt, batch)] = art
    return artifacts
