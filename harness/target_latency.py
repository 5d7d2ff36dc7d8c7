"""``bench compress --target-latency 30ms --device pi``: prune to a latency measured on a device.

1. **Profile.** For each ratio pattern (the one ``--target-gmacs`` would scale,
   and a uniform one over the same kinds), the model is pruned at a few fractions
   of its MACs (`PROFILE_FRACTIONS`, with ``--round-to``), exported in the device
   runtime's format and timed on the device through the sweep's own harness
   (`harness.runner.run_device`: the same agent job, runtime options and
   ``[measure]`` settings as ``bench sweep``), each measurement a record in the
   results store. The variants are pruned with data-free ℓ2 scores: latency
   depends on the widths, not on which neurons survive. Each pattern's points go
   to the store's ``latency_profiles`` table; a later call with the same device,
   runtime, options, format, model, input shape and pattern reuses them
   (``--reprofile`` measures again).
2. **Search.** Per pattern, the fitted curve (`latency_model.Curve`) is inverted
   at the target and the pattern scaled to those MACs
   (`snp_core.ratios.scale_to_target`); each setting is charged the share of the
   real criterion's scores it removes (`latency_model.information_loss`, the model
   scored once with `snp_core.score_groups`), and the setting predicted to meet
   the target with the least loss wins.
3. **Verify.** The model is pruned with it and saved (plan.json,
   model.safetensors, latency.json), then exported and timed on the device. The
   verified point is appended to its pattern's stored profile (marked
   ``verified``: later calls fit only the profile's own points); when the
   measurement misses the target by more than `TOLERANCE`, the search runs once
   more on the curve corrected with it, and the new model is saved and timed instead.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import exporters
import snp_core
from devices.config import DeviceSpec
from results.records import options_key
from results.store import Store
from snp_core import ratios as ratio_sources
from snp_core.errors import RatioError
from snp_core.groups import Group

from .config import Measure
from .jobs import Job, artifact_target
from .latency_model import (
    Candidate,
    Curve,
    TargetLatencyError,
    choose,
    information_loss,
)
from .runner import DeviceRun, Progress, git_revision, run_device

log = logging.getLogger(__name__)

#: MACs of the profiled variants, as fractions of the pattern's unpruned model.
PROFILE_FRACTIONS = (1.0, 0.8, 0.6, 0.45, 0.3)
#: Data-free criterion for the profile variants: their latency depends on widths, not on the kept neurons.
PROFILE_CRITERION = "l2"
#: A measured median further than this from the target is reported as a miss (and corrected once).
TOLERANCE = 0.10
#: scale_to_target lands within 2 % of the MACs asked for, sometimes above them: ask up to this many
#: times for 1 % fewer until the prediction meets the target.
_SHRINK_STEPS = 6

#: An adapter's MAC count of a model with the given kept widths.
MacsOf = Callable[[dict[str, int]], int]


@dataclass(frozen=True)
class Request:
    """Where and against what to measure; resolved before any model is built, so mistakes fail at once."""

    target_ms: float
    device: DeviceSpec
    runtime: str
    fmt: str
    measure: Measure
    store_path: Path | str  # a SQLite file or a postgresql:// URL
    artifacts: Path
    trust_new_hosts: bool

    @property
    def options(self) -> dict:
        return self.device.runtimes[self.runtime]

    @property
    def artifact_target(self) -> str:
        """The device type the artifacts run on (`harness.jobs.artifact_target`)."""
        return artifact_target(self.fmt, self.options)

    def where(self) -> str:
        return f"{self.device.name} ({self.runtime} {options_key(self.options)}, .{self.fmt})"


@dataclass(frozen=True)
class Timed:
    """A model timed without a bench.toml entry (a `harness.jobs.JobModel`); `name` is unique within its run."""

    name: str
    timm: str
    variant: str
    label: str = ""
    base: str | None = None
    known_top1: float | None = None


@dataclass
class Pattern:
    """A ratio pattern to scale: its name, per-group ratios and the groups scaling must leave alone."""

    name: str
    ratios: dict[str, float]
    fixed: tuple[str, ...] = ()


def patterns(base: dict[str, float], name: str, fixed: list[str], groups: list[Group]) -> list[Pattern]:
    """The given pattern and a uniform one (same ratio for every scaled group), unless they are equal.

    Two shapes give the search a real choice: e.g. the paper's, which spares the
    residual stream, against an even cut that spreads the MACs over every width.
    """
    base = ratio_sources.validate(base, groups)
    uniform = {g.name: base[g.name] if g.name in fixed else (0.0 if g.kind == "heads" else 0.5) for g in groups}
    heads = [f"heads={r}" for r in sorted({base[n] for n in fixed if n.endswith(".heads")})]
    first = Pattern(name, base, tuple(fixed))
    second = Pattern(" + ".join(["uniform", *heads]), uniform, tuple(fixed))
    return [first] if uniform == base else [first, second]


@dataclass
class Profile:
    """One pattern's stored profile: its row id in the store and its measured points."""

    id: int
    pattern: Pattern
    points: list[dict]

    @property
    def curve(self) -> Curve:
        return Curve.fit((p["macs"], p["median_ms"]) for p in self.points)


def identity(req: Request, model_name: str, model_kwargs: dict, shape: tuple[int, ...], pattern: Pattern,
             round_to: int | None) -> dict:
    """What a stored profile must match to be reused (results.store.PROFILE_KEY_FIELDS).

    Weights are not part of it: latency depends on the architecture and widths only.
    """
    return {"device": req.device.name, "runtime": req.runtime, "format": req.fmt, "runtime_options": req.options,
            "model": model_name, "model_kwargs": model_kwargs, "input_shape": list(shape),
            "pattern": {"ratios": pattern.ratios, "fixed": sorted(pattern.fixed), "round_to": round_to}}


def time_models(req: Request, store: Store, entries: list[tuple[Timed, exporters.Artifact]], note: str,
                config: dict, kind: str, progress: Progress) -> tuple[str, dict[str, dict]]:
    """Time artifacts on the device in a new run of the store, as a sweep does; ok records by model name."""
    git_rev = git_revision()
    run_id = store.new_run(config, git_rev, note=note, kind=kind)
    jobs = [Job(m, req.device, req.runtime, req.fmt, 1) for m, _ in entries]
    artifacts = {job.artifact_key: art for job, (_, art) in zip(jobs, entries)}
    progress.planned(run_id, len(jobs), len(jobs), {req.device.name: len(jobs)})
    try:
        run_device(req.device, jobs, DeviceRun(store, run_id, git_rev, req.measure, artifacts, req.trust_new_hosts,
                                               progress))
    except BaseException:
        store.finish_run(run_id, "interrupted")
        raise
    store.finish_run(run_id)
    by_key = {r["job_key"]: r for r in store.records(run_id, with_samples=False)}
    timed = {}
    for job in jobs:
        record = by_key[job.key]
        if record["status"] != "ok":
            raise TargetLatencyError(f"timing {job.model.variant!r} on device {req.device.name} failed: "
                                     f"[{record['error_stage']}] {record['error_message']} (run {run_id} in "
                                     f"{store.path})")
        timed[job.model.name] = record
    return run_id, timed


def profile(req: Request, store: Store, model: nn.Module, model_name: str, model_kwargs: dict,
            pats: list[Pattern], round_to: int | None, reprofile: bool, progress: Progress) -> list[Profile]:
    """Each pattern's profile: from the store when one matches (unless `reprofile`), else measured now."""
    shape = (1, *snp_core.models.input_size(model))
    found: dict[str, Profile] = {}
    for pat in pats:
        row = None if reprofile else store.latency_profile(identity(req, model_name, model_kwargs, shape, pat,
                                                                    round_to))
        if row is not None:
            # verified points stay in the row as a record of accuracy, but only the profile's own points are
            # fitted: a verification timed under other load would otherwise bend every later curve
            points = [p for p in row["points"] if not p.get("verified")]
            log.info("latency profile #%d of %s on %s: reused (%d points, %s); --reprofile measures again",
                     row["id"], pat.name, req.device.name, len(points), row["created"][:19])
            found[pat.name] = Profile(row["id"], pat, points)
    missing = [p for p in pats if p.name not in found]
    if missing:
        found.update(_measure_profiles(req, store, model, model_name, model_kwargs, shape, missing, round_to,
                                       progress))
    return [found[p.name] for p in pats]


def _measure_profiles(req: Request, store: Store, model: nn.Module, model_name: str, model_kwargs: dict,
                      shape: tuple[int, ...], pats: list[Pattern], round_to: int | None,
                      progress: Progress) -> dict[str, Profile]:
    """Build, export and time every pattern's variants (shared widths timed once), then store the profiles."""
    adapter = snp_core.adapter_for(model, model_name)
    groups = adapter.groups()
    criterion = snp_core.get_criterion(PROFILE_CRITERION)
    scores = snp_core.score_groups(model, adapter, criterion)
    variants: dict[tuple, tuple[str, dict[str, float], int]] = {}  # widths -> (variant, ratios, MACs)
    points_of: dict[str, list[tuple[float, tuple]]] = {p.name: [] for p in pats}
    for pat in pats:
        top = {n: r if n in pat.fixed else 0.0 for n, r in pat.ratios.items()}
        top_macs = adapter.macs(snp_core.kept_widths(groups, top, round_to))
        for fraction in PROFILE_FRACTIONS:
            try:
                ratios = top if fraction == 1.0 else ratio_sources.scale_to_target(
                    pat.ratios, groups, adapter.macs, fraction * top_macs, round_to, fixed=pat.fixed)
            except RatioError as exc:
                log.warning("pattern %s: no variant at %.0f%% of the MACs (%s)", pat.name, 100 * fraction, exc)
                continue
            widths = snp_core.kept_widths(groups, ratios, round_to)
            key = tuple(sorted(widths.items()))
            if key not in variants:
                variant = "original" if not any(ratios.values()) else f"latency-profile {pat.name} @{fraction:.2f}"
                variants[key] = (variant, ratios, adapter.macs(widths))
            points_of[pat.name].append((fraction, key))

    entries = []
    for variant, ratios, _ in variants.values():
        progress.exporting(f"profile variant {variant}")
        plan = None
        pruned = model
        if any(ratios.values()):
            plan = snp_core.make_plan(model, model_name, ratios, criterion, round_to=round_to,
                                      model_kwargs=model_kwargs, scores=scores)
            pruned = snp_core.prune(model, plan)
        art = exporters.export(pruned, req.fmt, req.artifacts, input_shape=shape, source=model_name,
                               variant=variant, plan=plan, target=req.artifact_target)
        entries.append((Timed(variant, model_name, variant), art))
    config = {"command": "compress --target-latency (latency profile)", "model": model_name,
              "model_kwargs": model_kwargs, "device": req.device.name, "runtime": req.runtime,
              "patterns": [p.name for p in pats], "fractions": list(PROFILE_FRACTIONS), "round_to": round_to}
    run_id, timed = time_models(req, store, entries, f"latency-profile {model_name} on {req.where()}", config,
                                "latency-profile", progress)

    profiles = {}
    for pat in pats:
        points = []
        for fraction, key in points_of[pat.name]:
            variant, _, macs = variants[key]
            record = timed[variant]
            points.append({"fraction": fraction, "macs": macs, "median_ms": record["median_ms"],
                           "record_id": record["id"], "artifact_sha256": record["artifact_sha256"]})
        profile_id = store.add_latency_profile({**identity(req, model_name, model_kwargs, shape, pat, round_to),
                                                "name": pat.name, "points": points, "run_id": run_id,
                                                "measure": asdict(req.measure), "git_rev": git_revision()})
        profiles[pat.name] = Profile(profile_id, pat, points)
    return profiles


def candidate(pattern: Pattern, curve: Curve, target_ms: float, groups: list[Group], macs_of: MacsOf,
              scores: dict[str, torch.Tensor], round_to: int | None) -> Candidate | None:
    """The pattern scaled to the MACs its curve gives for the target; None when the curve does not reach it."""
    macs = curve.macs_for(target_ms)
    if macs is None:
        return None
    best = None
    for step in range(_SHRINK_STEPS):
        try:
            ratios = ratio_sources.scale_to_target(pattern.ratios, groups, macs_of, macs * (1 - 0.01 * step),
                                                   round_to, fixed=pattern.fixed)
        except RatioError as exc:
            log.info("pattern %s: cannot scale to %.3f GMACs (%s)", pattern.name, macs / 1e9, exc)
            break
        widths = snp_core.kept_widths(groups, ratios, round_to)
        achieved = macs_of(widths)
        best = Candidate(pattern.name, ratios, widths, achieved, curve.predict(achieved),
                         kinds={g.name: g.kind for g in groups})
        if best.predicted_ms <= target_ms:
            break
    if best is not None:
        best.loss = information_loss(groups, scores, snp_core.select(groups, scores, best.widths))
    return best


def search(target_ms: float, profiles: list[Profile], groups: list[Group], macs_of: MacsOf,
           scores: dict[str, torch.Tensor], round_to: int | None) -> tuple[Candidate, list[Candidate]]:
    """The chosen setting and every pattern's candidate; a one-line error when the target is out of range."""
    curves = [p.curve for p in profiles]
    lo, hi = min(c.range_ms[0] for c in curves), max(c.range_ms[1] for c in curves)
    if target_ms > hi:
        raise TargetLatencyError(f"target {target_ms:.4g} ms is above the measured range {lo:.4g}-{hi:.4g} ms: the "
                                 f"unpruned model already runs in {hi:.4g} ms there; nothing to prune for latency "
                                 "(use --target-gmacs or --ratios to prune anyway)")
    if target_ms < lo:
        fastest = min((pt for p in profiles for pt in p.points), key=lambda pt: pt["median_ms"])
        raise TargetLatencyError(f"target {target_ms:.4g} ms is below the measured range {lo:.4g}-{hi:.4g} ms: the "
                                 f"most pruned profiled model ({fastest['macs'] / 1e9:.3f} GMACs) takes "
                                 f"{fastest['median_ms']:.4g} ms; raise the target, or use a faster runtime or device")
    candidates = [c for p, curve in zip(profiles, curves)
                  if (c := candidate(p.pattern, curve, target_ms, groups, macs_of, scores, round_to)) is not None]
    return choose(candidates, target_ms), candidates


@dataclass
class Attempt:
    """One pruned model timed on the device: what the search predicted and what the device measured."""

    pattern: str
    widths: dict[str, int]
    macs: int
    predicted_ms: float
    measured_ms: float
    run_id: str
    record_id: int
    candidates: list[dict]

    def error(self, reference_ms: float) -> float:
        """Relative error of the measured median against `reference_ms` (+0.05 = 5 % slower)."""
        return self.measured_ms / reference_ms - 1


@dataclass
class Subject:
    """The model to prune for the target, and how: filled by `harness.compress` from the user's request."""

    model: nn.Module
    name: str
    kwargs: dict
    criterion: snp_core.Importance
    images: torch.Tensor | None
    calib_info: dict | None
    pattern: Pattern
    round_to: int | None = None
    head_criterion: str = "proj_l1"
    batch_size: int = 16


@dataclass
class Result:
    """What the search did: every timed attempt (the last is the saved model), its plan and the profiles used."""

    target_ms: float
    #: Where it was measured, as `Request.where` says it: "pi (onnxruntime threads=4, .onnx)".
    where: str
    attempts: list[Attempt]
    plan: snp_core.Plan
    out: Path
    profiles: list[Profile] = field(default_factory=list)

    @property
    def missed(self) -> bool:
        """True when the saved model's measured median is further than `TOLERANCE` from the target."""
        return abs(self.attempts[-1].error(self.target_ms)) > TOLERANCE


def run(req: Request, subject: Subject, out: Path, reprofile: bool = False,
        progress: Progress | None = None, calibrating: Callable[[int, int], None] | None = None) -> Result:
    """Score, profile, search, prune, save and verify (the module docstring)."""
    progress = progress or Progress()
    model, adapter = subject.model, snp_core.adapter_for(subject.model, subject.name)
    groups = adapter.groups()
    store = Store(req.store_path)
    scores = snp_core.score_groups(model, adapter, subject.criterion, subject.images, subject.head_criterion,
                                   subject.batch_size, calibrating)
    pats = patterns(subject.pattern.ratios, subject.pattern.name, list(subject.pattern.fixed), groups)
    profiles = profile(req, store, model, subject.name, subject.kwargs, pats, subject.round_to, reprofile, progress)
    attempts: list[Attempt] = []
    while len(attempts) < 2:  # a second pass only after a miss: the curve then holds the measured point
        best, candidates = search(req.target_ms, profiles, groups, adapter.macs, scores, subject.round_to)
        if attempts and best.widths == attempts[-1].widths:
            break  # the corrected curve picks the same model: timing it again would tell nothing new
        plan = snp_core.make_plan(model, subject.name, best.ratios, subject.criterion, None, subject.calib_info,
                                  round_to=subject.round_to, model_kwargs=subject.kwargs,
                                  head_criterion=subject.head_criterion, scores=scores)
        pruned = snp_core.prune(model, plan)
        snp_core.save(out, pruned, plan)
        attempt = _verify(req, store, subject.name, subject.criterion.name, pruned, plan, best, candidates, progress)
        attempts.append(attempt)
        chosen = next(p for p in profiles if p.pattern.name == best.pattern)
        point = {"macs": best.macs, "median_ms": attempt.measured_ms, "record_id": attempt.record_id,
                 "verified": True}
        store.add_latency_point(chosen.id, point)
        chosen.points.append(point)
        _write_report(out / "latency.json", req, store, attempts, profiles)
        if abs(attempt.error(req.target_ms)) <= TOLERANCE:
            break
        log.warning("measured %.4g ms misses the target %.4g ms by %+.1f %% (more than %.0f %%)%s",
                    attempt.measured_ms, req.target_ms, 100 * attempt.error(req.target_ms), 100 * TOLERANCE,
                    "; searching again with the measured point" if len(attempts) == 1 else "")
    return Result(req.target_ms, req.where(), attempts, plan, out, profiles)


def _verify(req: Request, store: Store, model_name: str, criterion_name: str, pruned: nn.Module,
            plan: snp_core.Plan, best: Candidate, candidates: list[Candidate], progress: Progress) -> Attempt:
    """Export the pruned model and time it on the device (a record in a run of its own)."""
    variant = f"{criterion_name}:target-latency {req.target_ms:g}ms {best.pattern}"
    art = exporters.export(pruned, req.fmt, req.artifacts,
                           input_shape=(1, *snp_core.models.input_size(pruned)), source=model_name, variant=variant,
                           plan=plan, target=req.artifact_target)
    config = {"command": "compress --target-latency (verification)", "model": model_name, "device": req.device.name,
              "runtime": req.runtime, "target_ms": req.target_ms, "predicted_ms": best.predicted_ms,
              "pattern": best.pattern}
    run_id, timed = time_models(req, store, [(Timed(variant, model_name, variant), art)],
                                f"target-latency verify {model_name} {req.target_ms:g} ms on {req.where()}", config,
                                "latency-verify", progress)
    record = timed[variant]
    return Attempt(best.pattern, best.widths, best.macs, best.predicted_ms, record["median_ms"], run_id,
                   record["id"], [_candidate_doc(c, c is best) for c in candidates])


def _candidate_doc(c: Candidate, chosen: bool) -> dict:
    return {"pattern": c.pattern, "macs": c.macs, "predicted_ms": c.predicted_ms, "loss": c.mean_loss,
            "qk_loss": c.kind_loss("qk"), "chosen": chosen}


def _write_report(path: Path, req: Request, store: Store, attempts: list[Attempt], profiles: list[Profile]) -> None:
    """latency.json beside the plan: the target, what was predicted and measured, and where the data lives."""
    last = attempts[-1]
    doc = {"format": "snp-target-latency/1", "target_ms": req.target_ms, "predicted_ms": last.predicted_ms,
           "measured_ms": last.measured_ms, "error_vs_target": last.error(req.target_ms),
           "error_vs_predicted": last.error(last.predicted_ms), "pattern": last.pattern, "macs": last.macs,
           "device": req.device.name, "runtime": req.runtime, "runtime_options": req.options,
           "artifact_format": req.fmt, "store": str(store.path),
           "attempts": [{k: v for k, v in asdict(a).items() if k != "widths"} for a in attempts],
           "profiles": [{"id": p.id, "pattern": p.pattern.name, "points": p.points} for p in profiles]}
    path.write_text(json.dumps(doc, indent=1) + "\n")
