"""Building a sweep's models and exporting their artifacts (on the host, before any device runs).

Pruned entries are pruned here, from their base entry, so a sweep always
measures the architecture its config describes; exports are cached by content
in ``paths.artifacts``, so an unchanged model is neither re-exported nor (by the
transports' blob store) re-uploaded. An export that fails does not end the
sweep: it is returned as an `ExportFailure`, and its jobs become error records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol, Sequence

from torch import nn

import exporters
import snp_core
from snp_core.plan import Plan

from .config import ModelSpec

log = logging.getLogger(__name__)

#: (model entry, format, batch size, target): how the runner finds a job's artifact (`harness.jobs.Job.artifact_key`).
ArtifactKey = tuple[str, str, int, str]


class HasArtifact(Protocol):
    """What `artifact_targets` reads of a job (`harness.jobs.Job`)."""

    @property
    def fmt(self) -> str: ...
    @property
    def target(self) -> str: ...


@dataclass(frozen=True)
class ExportFailure:
    """An artifact that could not be made: the exporter's one-line message and the shape it was asked for."""

    message: str
    input_shape: list[int]


def build_model(spec: ModelSpec, base: ModelSpec | None) -> tuple[nn.Module, Plan | None]:
    """The model a config entry describes: a timm model, or its pruned variant."""
    if spec.plan:
        return snp_core.load(spec.plan), Plan.read(Path(spec.plan))
    if spec.base is None:
        return snp_core.create(spec.timm, spec.weights, **spec.kwargs), None
    assert base is not None
    original = snp_core.create(base.timm, base.weights, **base.kwargs)
    adapter = snp_core.adapter_for(original, spec.timm)
    ratios = snp_core.ratios.from_spec(spec.ratios, spec.timm, adapter.groups())
    criterion = snp_core.criterion_from_options(spec.criterion)
    images, info = None, None
    if criterion.uses_activations:
        calib = snp_core.calibration.load(spec.calib, original, spec.num_calib)
        images, info = calib.images, calib.info()
    snp_core.kept_widths(adapter.groups(), ratios, spec.round_to)
    plan = snp_core.make_plan(original, spec.timm, ratios, criterion, images, info, round_to=spec.round_to,
                              model_kwargs=base.kwargs)
    return snp_core.prune(original, plan), plan


def artifact_targets(jobs: Iterable[HasArtifact]) -> dict[str, list[str]]:
    """Per format, the targets the `jobs` need artifacts for (`harness.jobs.Job.target`)."""
    out: dict[str, set[str]] = {}
    for job in jobs:
        out.setdefault(job.fmt, set()).add(job.target)
    return {fmt: sorted(t) for fmt, t in out.items()}


def export_all(specs: list[ModelSpec], fmts: list[str], batches: list[int], cache_dir: Path,
               models: dict[str, ModelSpec], progress: Callable[[str], None] | None = None,
               targets: Mapping[str, Sequence[str]] | None = None,
               ) -> dict[ArtifactKey, exporters.Artifact | ExportFailure]:
    """Every (model entry, format, batch size, target) artifact the sweep needs, or why it could not be made.

    `targets` gives, per format, the device types its artifacts run on ("cpu", "cuda";
    default: "cpu" only): a .pt traced for CUDA holds another attention kernel than one
    for a CPU (`exporters.pipeline.attention_kernel`). `progress` is told the name of
    each artifact as it is made.
    """
    artifacts: dict[ArtifactKey, exporters.Artifact | ExportFailure] = {}
    for spec in specs:
        model, plan = build_model(spec, models.get(spec.base) if spec.base else None)
        size = snp_core.models.input_size(model)
        for fmt in fmts:
            for target in (targets or {}).get(fmt, ("cpu",)):
                for batch in batches:
                    shape, what = (batch, *size), f"{spec.name} {fmt} bs{batch}" + (f" {target}" if target != "cpu" else "")
                    if progress:
                        progress(what)
                    try:
                        art = exporters.export(model, fmt, cache_dir, input_shape=shape, source=spec.timm,
                                               variant=spec.variant, plan=plan, target=target)
                    except exporters.ExportError as exc:
                        log.error("%s: export failed: %s", what, exc)
                        artifacts[(spec.name, fmt, batch, target)] = ExportFailure(str(exc), list(shape))
                        continue
                    log.info("%s: %s%s", what, art.path, " (cached)" if art.cached else "")
                    artifacts[(spec.name, fmt, batch, target)] = art
    return artifacts
