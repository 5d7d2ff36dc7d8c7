"""``bench tune``: measure runtime settings on a device, store the fastest for each model, so sweeps use them.

Why: a speedup is only fair when the original and the pruned model each run at
their best settings on the device. The thread count that suits a wide original
may oversubscribe a narrow pruned model, and onnxruntime's spinning threads or
its graph optimisation level change latency by more than the noise. So every
model entry (original and pruned alike) is tuned separately, on the device,
through the same agent that times the sweep.

The search (per device, runtime, format, batch size and model entry; its
artifact comes from the sweep's own `harness.prepare.export_all`):

1. The options to search are the runtime's `formats.Runtime.tunable` ones that
   bench.toml does not set for the device: an option set there is fixed (the
   config wins) and every candidate runs with it.
2. Coordinate search from the defaults: one option at a time (`SEARCH`
   order), its candidate values (`choices`; threads 1, 2, 4, 8 up to the
   cores the device reports) are timed in ONE agent job together with the
   current best and the defaults, in interleaved rounds as a sweep times a
   comparison group (so drift of the device hits every candidate alike).
3. A candidate replaces the current best only when `verdict` says it beats it
   by more than the noise; the best of those (lowest median ratio) is kept,
   and the next option is searched from there.
4. At the end the winner must also beat the defaults in the last stage's
   rounds, else the defaults win. The result is stored (`Store.add_tuned`,
   table ``tuned_settings``): the winner's settings ({} for the defaults), the
   medians of both and their ratio, every candidate's median per stage.

The winner rule (`verdict`): per round r, the candidate's median over the
reference's, q_r. The candidate wins when the median of q_r is below
1 - `MIN_GAIN` (2 %: gains smaller than that are not worth a settings change
that may not transfer) AND at least `CONSISTENCY` (80 %) of the rounds have
q_r < 1 (a sign test: with 10 rounds, 8 faster happens by chance with
probability ~5 % when nothing changed). Per-round medians, not all samples:
samples within a round are correlated, rounds are the independent units (as in
`results.intervals`).

Nothing here prints: progress goes to a `TuneProgress`, and the result is a `TuneResult`.
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import exporters
import formats
from devices.config import DeviceSpec, open_transport
from devices.transport import Transport
from results.records import options_key
from results.store import Store

from .config import Config, ConfigError, Measure
from .jobs import Job, Member, agent_job, plan_jobs
from .prepare import ExportFailure, artifact_targets, export_all
from .runner import DEVICE_ERRORS, Progress, git_revision

log = logging.getLogger(__name__)

#: A candidate must be at least this much faster (median of per-round ratios) than the reference.
MIN_GAIN = 0.02
#: ... and faster in at least this share of the rounds.
CONSISTENCY = 0.8
#: Thread counts tried, those up to the device's cores.
THREAD_CANDIDATES = (1, 2, 4, 8)
#: Values tried for each tunable option besides its default (threads: `THREAD_CANDIDATES`).
CHOICES: dict[str, tuple[Any, ...]] = {
    "graph_optimization": ("extended", "basic"),
    "execution_mode": ("parallel",),
    "allow_spinning": (False,),
}
#: The id of the defaults among a stage's candidates (`records.options_key` of no options).
DEFAULTS = options_key({})


@dataclass(frozen=True)
class TuneRequest:
    """What to tune: a selection over the config's devices, models, formats and batch sizes.

    Each None falls back to the config's ``[sweep]`` table, as `harness.runner.SweepRequest`'s do.
    `quick` measures with ``[measure.quick]`` (fewer iterations and rounds: a smoke test).
    """

    devices: list[str] | None = None
    models: list[str] | None = None
    formats: list[str] | None = None
    batch: list[int] | None = None
    quick: bool = False
    trust_new_hosts: bool = False


class TuneProgress(Progress):
    """What a tune tells its caller, besides the exports (`harness.runner.Progress`); nothing here by default."""

    def stage(self, device: str, subject: str, option: str, candidates: int) -> None:
        """One stage of a subject's search starts: `candidates` settings of `option` timed together."""

    def tuned(self, result: Tuned) -> None:
        """A subject's search finished and its result was stored."""


@dataclass(frozen=True)
class Verdict:
    """The winner rule applied to a candidate against a reference (see the module docstring)."""

    ratio: float | None  # median over rounds of candidate / reference per-round medians; None: no common round
    faster_rounds: int
    rounds: int
    wins: bool


def verdict(candidate: dict[int, float], reference: dict[int, float], min_gain: float = MIN_GAIN,
            consistency: float = CONSISTENCY) -> Verdict:
    """Whether `candidate` beats `reference`, from their per-round medians (round index -> latency).

    Only rounds both were timed in count. Pure: no timing, so the rule is tested on synthetic latencies.
    """
    common = sorted(set(candidate) & set(reference))
    ratios = [candidate[r] / reference[r] for r in common if reference[r] > 0]
    if not ratios:
        return Verdict(None, 0, 0, False)
    ratio = statistics.median(ratios)
    faster = sum(q < 1 for q in ratios)
    wins = ratio < 1 - min_gain and faster >= math.ceil(consistency * len(ratios))
    return Verdict(ratio, faster, len(ratios), wins)


def round_medians(samples_ns: list[int], sample_rounds: list[int]) -> dict[int, float]:
    """Median latency in ms of each round's samples."""
    by_round: dict[int, list[int]] = {}
    for sample, r in zip(samples_ns, sample_rounds):
        by_round.setdefault(r, []).append(sample)
    return {r: statistics.median(values) / 1e6 for r, values in sorted(by_round.items())}


def thread_choices(cores: int) -> tuple[int, ...]:
    """`THREAD_CANDIDATES` up to `cores` (at least 1)."""
    return tuple(t for t in THREAD_CANDIDATES if t <= max(1, cores))


def search_space(runtime: str, fixed: dict, cores: int) -> list[tuple[str, tuple[Any, ...]]]:
    """(option, values to try) in search order: the runtime's tunable options that bench.toml leaves open."""
    space = []
    for option in formats.RUNTIMES[runtime].tunable:
        if option in fixed:
            continue
        values = thread_choices(cores) if option == "threads" else CHOICES[option]
        space.append((option, values))
    return space


@dataclass
class Tuned:
    """One subject's result: the winner (`settings`, {} when the defaults won) against the defaults."""

    device: str
    runtime: str
    fmt: str
    entry: str
    batch: int
    fixed: dict
    settings: dict
    default_ms: float
    best_ms: float
    ratio: float | None  # the winner's median per-round ratio to the defaults in the last stage (1.0: defaults)
    candidates: list[dict]
    stored_id: int

    @property
    def subject(self) -> str:
        return f"{self.entry} {self.runtime} .{self.fmt} bs{self.batch}"


@dataclass
class TuneResult:
    """What a tune did: its run id, every stored result, and one line per subject that could not be tuned."""

    run_id: str
    tuned: list[Tuned] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class _StageFailed(Exception):
    """A stage's agent job failed as a whole or for a candidate: the subject cannot be tuned."""


@dataclass
class _Context:
    """What every subject of one tune shares."""

    store: Store
    run_id: str
    measure: Measure
    progress: TuneProgress
    result: TuneResult


def tune(cfg: Config, store: Store, request: TuneRequest, progress: TuneProgress | None = None) -> TuneResult:
    """Tune every selected device, runtime, format, batch size and model entry (the module docstring)."""
    progress = progress or TuneProgress()
    devices = cfg.pick_devices(request.devices)
    models = cfg.pick_models(request.models)
    fmts = request.formats or cfg.sweep.get("formats") or list(formats.DEFAULT_SWEEP_FORMATS)
    unknown = [f for f in fmts if f not in formats.FORMATS]
    if unknown:
        raise ConfigError(f"unknown format {unknown[0]!r}; known formats: {', '.join(formats.FORMATS)}")
    batches = request.batch or cfg.sweep.get("batch") or [1]
    jobs = plan_jobs(models, devices, fmts, batches)
    if not jobs:
        raise ConfigError(f"nothing to tune: no selected device has a runtime for formats {fmts}")
    measure = cfg.quick if request.quick else cfg.measure
    selection = {"devices": request.devices, "models": request.models, "formats": request.formats,
                 "batch": request.batch, "quick": request.quick}
    run_id = store.new_run({"command": "tune", "selection": selection, "devices": [d.name for d in devices],
                            "models": [m.name for m in models]}, git_revision(), note="bench tune", kind="tune")
    ctx = _Context(store, run_id, measure, progress, TuneResult(run_id))
    status = "interrupted"
    try:
        fmts_used = sorted({j.fmt for j in jobs}, key=formats.format_order)
        artifacts = export_all(models, fmts_used, batches, cfg.artifacts, cfg.models,
                               lambda what: progress.exporting(what), artifact_targets(jobs))
        for device in devices:
            _tune_device(device, [j for j in jobs if j.device is device], artifacts, request, ctx)
        status = "done"
    finally:
        store.finish_run(run_id, status)
    return ctx.result


def _tune_device(device: DeviceSpec, jobs: list[Job], artifacts: dict, request: TuneRequest, ctx: _Context) -> None:
    """One device's subjects, one after another, on one transport; a device error ends all of them."""
    todo = []
    for job in jobs:
        art = artifacts[job.artifact_key]
        if isinstance(art, ExportFailure):
            ctx.result.failures.append(f"{_subject(job)} on {device.name}: export failed: {art.message}")
        elif not search_space(job.runtime, job.options, 1):
            ctx.result.skipped.append(f"{_subject(job)} on {device.name}: nothing to tune (every tunable option of "
                                      f"{job.runtime} is set in bench.toml, or it has none)")
        else:
            todo.append((job, art))
    transport = None
    try:
        if todo:
            transport = open_transport(device, trust_new_hosts=request.trust_new_hosts)
            for command in device.pre:
                transport.run_shell(command, timeout_s=ctx.measure.timeout_s)
            transport.ensure_agent()
            workdir = transport.device_workdir()
            cores = _cores(transport.probe())
        while todo:
            job, art = todo[0]
            path = transport.ensure_blob(art.path, art.sha256,
                                         lambda done, total, what=_subject(job): ctx.progress.uploading(
                                             device.name, what, done, total))
            try:
                ctx.result.tuned.append(_tune_subject(job, path, art, transport, workdir, cores, ctx))
                ctx.progress.tuned(ctx.result.tuned[-1])
            except _StageFailed as exc:
                ctx.result.failures.append(f"{_subject(job)} on {device.name}: {exc}")
            todo.pop(0)
        if transport is not None:
            for command in device.post:
                transport.run_shell(command, timeout_s=ctx.measure.timeout_s)
    except DEVICE_ERRORS as exc:  # unreachable, a refused host key, a bad setting: the device's remaining subjects
        ctx.result.failures += [f"{_subject(job)} on {device.name}: {type(exc).__name__}: {exc}" for job, _ in todo]
    finally:
        if transport is not None:
            transport.close()


def _subject(job: Job) -> str:
    return f"{job.model.name} {job.runtime} .{job.fmt} bs{job.batch}"


def _cores(probe: dict) -> int:
    """The CPU cores the agent may use on the device (its probe's usable, else logical, cores; 1 if unknown)."""
    cpu = (probe.get("env") or {}).get("cpu") or {}
    return int(cpu.get("usable_cores") or cpu.get("logical_cores") or 1)


def _tune_subject(job: Job, path: str, art: exporters.Artifact, transport: Transport, workdir: str, cores: int,
                  ctx: _Context) -> Tuned:
    """The coordinate search for one subject (steps 2-4 of the module docstring); its result stored."""
    fixed = dict(job.options)
    current: dict = {}
    candidates: list[dict] = []
    host = None
    medians: dict[str, dict[int, float]] = {}
    for stage, (option, values) in enumerate(search_space(job.runtime, fixed, cores)):
        settings = {DEFAULTS: {}, options_key(current): current}
        for value in values:
            trial = {**current, option: value}
            settings.setdefault(options_key(trial), trial)
        ctx.progress.stage(job.device.name, _subject(job), option, len(settings))
        result = _time(job, path, art, settings, fixed, transport, workdir, ctx.measure)
        host = host or (result.get("env") or {}).get("hostname")
        medians = {m["id"]: round_medians(m["samples_ns"], m["sample_rounds"]) for m in result["members"]}
        reference = options_key(current)
        verdicts = {cid: verdict(medians[cid], medians[reference]) for cid in settings}
        winners = [cid for cid in settings if cid != reference and verdicts[cid].wins]
        best = min(winners, key=lambda cid: verdicts[cid].ratio) if winners else reference
        for cid, trial in settings.items():
            member = next(m for m in result["members"] if m["id"] == cid)
            vs_default = verdict(medians[cid], medians[DEFAULTS])
            candidates.append({"stage": stage, "option": option, "settings": trial,
                               "median_ms": member["stats"]["median_ns"] / 1e6, "rounds": len(medians[cid]),
                               "ratio_vs_current": verdicts[cid].ratio, "ratio_vs_default": vs_default.ratio,
                               "faster_rounds_vs_current": verdicts[cid].faster_rounds, "chosen": cid == best})
        current = settings[best]
    final = verdict(medians[options_key(current)], medians[DEFAULTS])
    if current and not final.wins:  # each step beat the one before, but not the defaults in the same rounds
        log.info("%s on %s: %s does not beat the defaults in the last stage (ratio %.3f); the defaults win",
                 _subject(job), job.device.name, options_key(current), final.ratio or math.nan)
        current = {}
    # the winner and the defaults were both timed in the last stage's rounds: their medians there
    last = {options_key(c["settings"]): c["median_ms"] for c in candidates if c["stage"] == candidates[-1]["stage"]}
    default_ms, best_ms = last[DEFAULTS], last[options_key(current)]
    ratio = final.ratio if current else 1.0
    row = {"device": job.device.name, "host": host, "runtime": job.runtime, "format": job.fmt,
           "entry": job.model.name, "batch_size": job.batch, "config_options": fixed, "artifact_sha256": art.sha256,
           "settings": current, "default_ms": default_ms, "best_ms": best_ms, "ratio": ratio,
           "candidates": candidates, "rule": {"min_gain": MIN_GAIN, "consistency": CONSISTENCY},
           "run_id": ctx.run_id, "git_rev": git_revision()}
    stored = ctx.store.add_tuned(row)
    return Tuned(job.device.name, job.runtime, job.fmt, job.model.name, job.batch, fixed, current, default_ms,
                 best_ms, ratio, candidates, stored)


def _time(job: Job, path: str, art: exporters.Artifact, settings: dict[str, dict], fixed: dict,
          transport: Transport, workdir: str, measure: Measure) -> dict:
    """Time one stage's candidates (one member each, the same artifact) in one agent job; its ok result."""
    members = [Member(cid, path, art, {**fixed, **trial}) for cid, trial in settings.items()]
    doc = agent_job(f"tune|{job.key}", job.runtime, job.fmt, fixed, members, workdir, measure, cold_start=False)
    result = transport.run_agent(doc, timeout_s=doc["timeout_s"] + measure.grace_s)
    error = result.get("error") or {}
    if result.get("status") != "ok":
        raise _StageFailed(f"[{error.get('stage')}] {error.get('message')}")
    for member in result.get("members") or []:
        if member.get("status") != "ok":
            failed = member.get("error") or {}
            raise _StageFailed(f"candidate {member.get('id')}: [{failed.get('stage')}] {failed.get('message')}")
    if {m.get("id") for m in result.get("members") or []} != set(settings):
        raise _StageFailed("the agent's result does not name every candidate")
    return result
