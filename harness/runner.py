"""Running jobs on devices: one device's jobs in order (`run_device`), and a whole sweep (`run_sweep`).

1. Plan: every selected device gets, for each of its runtimes, the formats that
   runtime takes, for every model and batch size (`harness.jobs.plan_jobs`).
2. Prepare: build (and prune) the models and export the artifacts on the host,
   cached by content (`harness.prepare`); a failed export becomes error records.
3. Run: devices in parallel (one thread each); on each device its comparison
   groups (`harness.jobs.Group`: the jobs sharing runtime, options, format and
   batch size) one at a time, each group's members timed together by one agent
   run in interleaved rounds (``[measure] rounds``), so that the device's drift
   hits every member alike. Every result, ok or error, is written to the store
   the moment it arrives, so a killed sweep loses nothing and a resumed run
   (`SweepRequest.resume`) runs only what is missing (members timed again then
   form a new group: their records' ``group_key`` says which were measured together).

Nothing here prints: what happens is told to a `Progress` object (the command
line draws bars from it), and the result is an `Outcome`.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import exporters
import formats
from devices.config import DeviceSpec, open_transport
from devices.transport import Transport, error_result
from results import records
from results.runs import is_sweep, pick_run
from results.store import Store

from .config import Config, ConfigError, Measure, ModelSpec
from .jobs import Group, Job, group_job, group_jobs, job_spec, job_stub, member_result, plan_jobs
from .prepare import ArtifactKey, ExportFailure, export_all

log = logging.getLogger(__name__)


class Progress:
    """What a run tells its caller as it goes; every method does nothing here, a caller overrides what it shows."""

    def planned(self, run_id: str, jobs: int, todo: int, devices: dict[str, int]) -> None:
        """The run's id, its job count, how many are still to do, and how many of those each device gets."""

    def exporting(self, what: str) -> None:
        """An artifact is being built and exported on the host (e.g. "deit_tiny onnx bs1")."""

    def recorded(self, device: str, record: dict) -> None:
        """A job's record was stored (ok or error)."""

    def device_done(self, device: str) -> None:
        """A device has no job left in this run."""


@dataclass
class SweepRequest:
    """What to sweep: a selection over the config's devices, models, formats and batch sizes.

    Each None falls back to the config's ``[sweep]`` table, then to every device /
    the embedded default models / `formats.DEFAULT_SWEEP_FORMATS` / batch 1.
    `resume` names a run to finish instead (its own selection is used).
    """

    devices: list[str] | None = None
    models: list[str] | None = None
    formats: list[str] | None = None
    batch: list[int] | None = None
    quick: bool = False
    resume: str | None = None
    trust_new_hosts: bool = False

    def selection(self) -> dict[str, Any]:
        """The selection as stored with the run (and read back by a resume)."""
        return {"devices": self.devices, "models": self.models, "formats": self.formats, "batch": self.batch,
                "quick": self.quick}


@dataclass
class Outcome:
    """What a run did: its id, every record of it, and bytes sent to each device this time."""

    run_id: str
    records: list[dict]
    uploaded: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> list[dict]:
        return [r for r in self.records if r["status"] != "ok"]


def git_revision() -> str:
    """The project's git revision, with "-dirty" when the tree has changes; "unknown" outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class DeviceRun:
    """Everything one device's jobs share: where results go and how to measure."""

    store: Store
    run_id: str
    git_rev: str
    measure: Measure
    artifacts: dict[ArtifactKey, exporters.Artifact | ExportFailure]
    trust_new_hosts: bool = False
    progress: Progress = field(default_factory=Progress)


def run_device(device: DeviceSpec, jobs: list[Job], ctx: DeviceRun) -> int:
    """Run one device's jobs, one comparison group at a time; every job ends as a record, whatever fails.

    Returns the bytes uploaded to the device.
    """
    def record(job: Job, result: dict) -> None:
        art = ctx.artifacts[job.artifact_key]
        spec = job_spec(job, None, art.input_shape) if isinstance(art, ExportFailure) else job_spec(job, art)
        stored = records.make_record(ctx.run_id, spec, result, ctx.git_rev)
        ctx.store.add_record(stored)
        ctx.progress.recorded(device.name, stored)

    pending: list[Group] = []
    for group in group_jobs(jobs):  # a job without an artifact never reaches the device
        exported = []
        for job in group.jobs:
            art = ctx.artifacts[job.artifact_key]
            if isinstance(art, ExportFailure):
                record(job, error_result(job_stub(job, None), "export", art.message, error_type="ExportError"))
            else:
                exported.append(job)
        if exported:
            pending.append(Group(exported))
    if not pending:
        ctx.progress.device_done(device.name)
        return 0
    transport = None
    try:
        transport = open_transport(device, trust_new_hosts=ctx.trust_new_hosts)
        for command in device.pre:
            transport.run_shell(command, timeout_s=ctx.measure.timeout_s)
        transport.ensure_agent()
        workdir = transport.device_workdir()
        while pending:
            _run_group(transport, pending[0], workdir, ctx, record)
            pending.pop(0)
    except Exception as exc:  # unreachable device, refused host key, ...: every remaining job gets an error record
        message = f"{type(exc).__name__}: {exc}"
        log.error("device %s: %s", device.name, message)
        for group in pending:
            for job in group.jobs:
                record(job, error_result(job_stub(job, ctx.artifacts[job.artifact_key]), "connect", message))
    finally:
        uploaded = 0
        if transport is not None:
            try:
                for command in device.post:
                    transport.run_shell(command, timeout_s=ctx.measure.timeout_s)
            except Exception as exc:
                log.warning("device %s: post command failed: %s", device.name, exc)
            uploaded = transport.bytes_uploaded
            transport.close()
        ctx.progress.device_done(device.name)
    return uploaded


def _run_group(transport: Transport, group: Group, workdir: str, ctx: DeviceRun,
               record: Callable[[Job, dict], None]) -> None:
    """Upload a group's artifacts, time them together, record every member (an upload failure ends that member)."""
    members: dict[str, tuple[str, exporters.Artifact]] = {}
    for job in group.jobs:
        art = ctx.artifacts[job.artifact_key]
        try:
            members[job.key] = (transport.ensure_blob(art.path, art.sha256), art)
        except Exception as exc:  # an upload failure ends this job, not the group's or the device's sweep
            record(job, error_result(job_stub(job, art), "transport", f"{type(exc).__name__}: {exc}"))
    if not members:
        return
    doc = group_job(Group([j for j in group.jobs if j.key in members]), members, workdir, ctx.measure)
    result = transport.run_agent(doc, timeout_s=doc["timeout_s"] + ctx.measure.grace_s)
    for job in group.jobs:
        if job.key in members:
            record(job, member_result(result, job.key))


def _formats(cfg: Config, selection: dict) -> list[str]:
    fmts = selection.get("formats") or cfg.sweep.get("formats") or list(formats.DEFAULT_SWEEP_FORMATS)
    for fmt in fmts:
        if fmt not in formats.FORMATS:
            raise ConfigError(f"unknown format {fmt!r}; known formats: {', '.join(formats.FORMATS)}")
    return fmts


def run_sweep(cfg: Config, store: Store, request: SweepRequest, progress: Progress | None = None) -> Outcome:
    """Plan, prepare and run a sweep (or the rest of run `request.resume`); records are stored as they arrive."""
    progress = progress or Progress()
    selection = request.selection()
    if request.resume:
        run_info = pick_run(store, request.resume)
        if not is_sweep(run_info):  # e.g. a latency profile of `bench compress --target-latency`
            raise ConfigError(f"run {request.resume} is not a sweep ({run_info['note'] or 'no note'}); "
                              "only sweeps resume")
        selection = run_info["config"]["selection"]
        store.set_run_status(request.resume, "running")
    devices = cfg.pick_devices(selection.get("devices"))
    models = cfg.pick_models(selection.get("models"))
    fmts = _formats(cfg, selection)
    batches = selection.get("batch") or cfg.sweep.get("batch") or [1]
    measure = cfg.quick if selection.get("quick") else cfg.measure

    jobs = plan_jobs(models, devices, fmts, batches)
    if not jobs:
        raise ConfigError(f"nothing to run: no selected device has a runtime for formats {fmts}")
    git_rev = git_revision()
    run_id = request.resume or store.new_run({"selection": selection, "devices": [d.name for d in devices],
                                              "models": [m.name for m in models]}, git_rev, kind="sweep")
    done = store.done_keys(run_id)
    todo = [j for j in jobs if j.key not in done]
    per_device = {d.name: sum(j.device is d for j in todo) for d in devices}
    progress.planned(run_id, len(jobs), len(todo), {n: c for n, c in per_device.items() if c})

    needed: list[ModelSpec] = [m for m in models if any(j.model is m for j in todo)]
    artifacts = export_all(needed, sorted({j.fmt for j in todo}, key=formats.format_order), batches, cfg.artifacts,
                           cfg.models, progress.exporting) if todo else {}
    ctx = DeviceRun(store, run_id, git_rev, measure, artifacts, request.trust_new_hosts, progress)
    uploaded: dict[str, int] = {}

    def device_thread(device: DeviceSpec, device_jobs: list[Job]) -> None:
        uploaded[device.name] = run_device(device, device_jobs, ctx)

    threads = [threading.Thread(target=device_thread, name=f"device-{d.name}", daemon=True,
                                args=(d, [j for j in todo if j.device is d]))
               for d in devices if per_device[d.name]]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:
        store.finish_run(run_id, "interrupted")
        raise
    store.finish_run(run_id, "done")
    return Outcome(run_id, store.records(run_id), uploaded)
