"""Pruning one timm model to ratios, a MACs budget or a latency budget, and saving it (``bench compress``).

`compress` is the one call behind the command: it resolves where the ratios come
from (`pattern`: a ratio spec, uniform ratios per kind, whole heads, or the
pattern a budget scales), builds the criterion, loads calibration images when
the criterion needs them, and either prunes and saves (ratios, ``target_gmacs``)
or hands over to `harness.target_latency` (``latency``). Every mistake a user
can make is checked before the model is built or calibrated, so it fails at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import formats
import snp_core
from results.store import location
from snp_core import ratios as ratio_sources
from snp_core.errors import RatioError
from snp_core.groups import Group

from . import config as harness_config
from . import target_latency
from .latency_model import TargetLatencyError, parse_latency
from .runner import Progress


@dataclass(frozen=True)
class LatencyTarget:
    """``--target-latency T --device NAME``: the budget as typed, and where to measure it."""

    target: str
    device: str
    runtime: str | None = None
    config: Path | None = None
    store: Path | str | None = None  # a SQLite file or a postgresql:// URL; None: $SNP_BENCH_STORE or the config's
    reprofile: bool = False
    trust_new_hosts: bool = False
    #: The outputs root (``--root``); None: the config's ``[paths] root``.
    root: Path | None = None


@dataclass
class CompressRequest:
    """One ``bench compress`` call. Ratios are fractions of neurons REMOVED.

    The ratios come from one source: `ratios` (a spec: "paper", a config name or a
    JSON file) or `uniform` (ratio per kind); without either, the paper's, or
    with a budget the pattern `ratio_sources.budget_pattern` gives. `heads` adds
    whole-head pruning, held fixed by a budget, like the kinds in `hold`.
    """

    model: str = "deit_tiny_patch16_224"
    weights: str = "pretrained"
    model_kwargs: dict = field(default_factory=dict)
    ratios: str | None = None
    uniform: dict[str, float] = field(default_factory=dict)
    heads: float | None = None
    target_gmacs: float | None = None
    latency: LatencyTarget | None = None
    hold: tuple[str, ...] = ()
    round_to: int | None = None
    criterion: str = "snp"
    #: Passed to the criterion that takes them (`snp_core.criterion_from_options`): gamma, weighting, aggregate.
    criterion_options: dict = field(default_factory=dict)
    head_criterion: str = "proj_l1"
    calib: str | None = None
    num_calib: int = 64
    batch_size: int = 16
    seed: int = 0
    out: Path | None = None
    #: Where `default_out` puts the folder: the outputs root (``--root``, ``[paths] root``).
    root: Path = Path("runs")

    def default_out(self, latency: target_latency.Request | None = None) -> Path:
        """ROOT/compress/<model>-<criterion>, + -<T>ms-<device> for a latency budget."""
        name = f"{self.model}-{self.criterion}"
        if latency is not None:
            name += f"-{latency.target_ms:g}ms-{latency.device.name}"
        return self.root / "compress" / name


@dataclass
class CompressResult:
    """What was saved where, and how: the plan, where the ratios came from, calibration, time taken."""

    plan: snp_core.Plan
    out: Path
    origin: str
    calib_info: dict | None
    elapsed_s: float
    latency: target_latency.Result | None = None


class CompressProgress(Progress):
    """`Progress` of the timing runs (latency budgets), plus calibration batches."""

    def calibrating(self, done: int, total: int) -> None:
        """Calibration batch `done` of `total` went through the model."""


def pattern(req: CompressRequest, groups: list[Group]) -> tuple[dict[str, float], str, list[str]]:
    """The ratios before any budget scales them, where they came from, and the groups a budget leaves alone."""
    if req.uniform and req.ratios:
        raise RatioError(f"--ratios {req.ratios!r} and uniform ratios ({', '.join('--' + k for k in req.uniform)}) "
                         "are exclusive; give one or the other")
    if req.uniform:
        ratios = ratio_sources.from_spec(req.uniform, req.model, groups)
        origin = "uniform " + " ".join(f"{k}={v}" for k, v in req.uniform.items())
    elif req.ratios or (req.target_gmacs is None and req.latency is None):
        ratios, origin = ratio_sources.from_spec(req.ratios, req.model, groups), f"ratios {req.ratios or 'paper'}"
    else:
        ratios, origin = ratio_sources.budget_pattern(req.model, groups)
    fixed = [g.name for g in groups if g.kind in req.hold]
    if req.heads is not None:
        heads = [g for g in groups if g.kind == "heads"]
        if not heads:
            raise RatioError(f"--heads {req.heads}: model {req.model!r} has no prunable head groups")
        fixed += [g.name for g in heads]
        ratios = {**ratios, **ratio_sources.uniform(heads, heads=req.heads)}
        origin += f" + heads={req.heads}"
    return ratios, origin, fixed


def resolve_latency(target: LatencyTarget) -> target_latency.Request:
    """Where and against what to measure a latency budget; one-line errors before anything is built."""
    target_ms = parse_latency(target.target)
    cfg = harness_config.load(target.config, root=target.root)
    device = cfg.pick_devices([target.device])[0]
    runtime = target.runtime or next(iter(device.runtimes))
    if runtime not in device.runtimes:
        raise TargetLatencyError(f"device {device.name!r} has no runtime {runtime!r}; its runtimes: "
                                 f"{', '.join(device.runtimes)}")
    return target_latency.Request(target_ms, device, runtime, device.formats_for(runtime)[0], cfg.measure,
                                  location(target.store, cfg.store), cfg.artifacts, target.trust_new_hosts)


def search_round_to(req: CompressRequest, latency: target_latency.Request) -> int | None:
    """The rounding of a latency-budget search: ``--round-to`` if given (1: none), else the multiple the device's
    runtime likes (`formats.Runtime.round_to`, measured: docs/efficiency.md). It is recorded in the plan."""
    if req.round_to is not None:
        return None if req.round_to == 1 else req.round_to
    return formats.RUNTIMES[latency.runtime].round_to


def _check(req: CompressRequest) -> None:
    if req.round_to is not None and req.round_to < 1:
        raise RatioError(f"--round-to {req.round_to} must be a positive integer")
    if req.latency is not None and req.target_gmacs is not None:
        raise TargetLatencyError("--target-latency and --target-gmacs are exclusive; give one budget")


def compress(req: CompressRequest, progress: CompressProgress | None = None) -> CompressResult:
    """Prune `req.model` as requested and save plan.json + model.safetensors (+ latency.json for a latency budget)."""
    progress = progress or CompressProgress()
    _check(req)
    latency = resolve_latency(req.latency) if req.latency else None  # a bad target or device fails before the build
    model = snp_core.create(req.model, req.weights, **req.model_kwargs)
    adapter = snp_core.adapter_for(model, req.model)
    groups = adapter.groups()
    criterion = snp_core.criterion_from_options(req.criterion, seed=req.seed, **req.criterion_options)
    base, origin, fixed = pattern(req, groups)
    ratios = base
    if req.target_gmacs is not None:
        ratios = ratio_sources.scale_to_target(base, groups, adapter.macs, req.target_gmacs * 1e9, req.round_to,
                                               fixed=fixed)
        origin += f" scaled to {req.target_gmacs} GMACs"
    snp_core.kept_widths(groups, ratios, req.round_to)  # bad ratios fail before calibration starts

    started = time.perf_counter()
    images, calib_info = _calibration(req, model, criterion)
    out = req.out or req.default_out(latency)
    if latency is not None:
        subject = target_latency.Subject(model, req.model, req.model_kwargs, criterion, images, calib_info,
                                         target_latency.Pattern(origin, base, tuple(fixed)),
                                         search_round_to(req, latency), req.head_criterion, req.batch_size)
        result = target_latency.run(latency, subject, out, req.latency.reprofile, progress, progress.calibrating)
        return CompressResult(result.plan, out, origin, calib_info, time.perf_counter() - started, result)
    plan = snp_core.make_plan(model, req.model, ratios, criterion, images, calib_info, round_to=req.round_to,
                              batch_size=req.batch_size, progress=progress.calibrating,
                              model_kwargs=req.model_kwargs, head_criterion=req.head_criterion)
    pruned = snp_core.prune(model, plan)
    elapsed = time.perf_counter() - started
    snp_core.save(out, pruned, plan)
    return CompressResult(plan, out, origin, calib_info, elapsed)


def _calibration(req: CompressRequest, model: torch.nn.Module,
                 criterion: snp_core.Importance) -> tuple[torch.Tensor | None, dict | None]:
    """Calibration images and their description, for criteria that use activations; (None, None) otherwise."""
    if not criterion.uses_activations:
        return None, None
    calib = snp_core.calibration.load(req.calib, model, req.num_calib, req.seed)
    return calib.images, calib.info()
