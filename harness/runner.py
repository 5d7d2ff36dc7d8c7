"""Running jobs on devices: one device's jobs in order (`run_device`), and a whole sweep (`run_sweep`).

1. Plan: every selected device gets, for each of its runtimes, the formats that
   runtime takes, for every model and batch size (`harness.jobs.plan_jobs`).
2. Prepare: build (and prune) the models and export the artifacts on the host,
   cached by content (`harness.prepare`); a failed export becomes error records.
3. Run: hosts in parallel (one thread each). Device entries that are one
   machine (every ``kind = "local"`` device; SSH devices that resolve to the
   same host and port behind the same jump hosts) share one thread and run one
   after another, so they never time at the same moment. On each device its
   comparison groups (`harness.jobs.Group`: the jobs sharing runtime, options,
   format and batch size) one at a time, each group's members timed together
   by one agent run in interleaved rounds (``[measure] rounds``), so that the
   device's drift hits every member alike. Every result, ok or error, is
   written to the store the moment it arrives, so a killed sweep loses nothing
   and a resumed run (`SweepRequest.resume`) runs only what is missing (members
   timed again then form a new group: their records' ``group_key`` says which
   were measured together).

Every planned job ends as a record, whatever fails: a device that cannot be
described, reached or set up (a port that is not a number, a ``~user``
workdir, a refused host key) ends its jobs as error records of stage
"connect" ("harness" when the error is a bug rather than the device's), and so
does a device thread that dies; the other devices finish. On Ctrl-C or SIGTERM
every open transport is closed, which stops the agents (and so frees the device
locks); the jobs in flight and those not started are recorded with stage
"interrupted", the run is marked interrupted, and `SweepInterrupted` is raised.

Nothing here prints: what happens is told to a `Progress` object (the command
line draws bars from it), and the result is an `Outcome`.
"""

from __future__ import annotations

import itertools
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import exporters
import formats
from devices.config import DeviceSpec, open_transport
from devices.transport import Transport, TransportError, error_result
from results import records
from results.runs import is_sweep, pick_run
from results.store import Store

from .config import Config, ConfigError, Measure, ModelSpec
from .jobs import Group, Job, group_job, group_jobs, job_spec, job_stub, member_result, plan_jobs
from .prepare import ArtifactKey, ExportFailure, artifact_targets, export_all

log = logging.getLogger(__name__)

#: What a device, its link or its settings fail with (a refused connection, a lost link, a ``~user`` workdir, a port
#: that is not a number): its jobs end with stage "connect". Anything else is a bug: stage "harness", traceback logged.
DEVICE_ERRORS: tuple[type[BaseException], ...] = (TransportError, OSError, ValueError, EOFError)
#: How long an interrupted sweep waits for its device threads once their transports are closed.
STOP_WAIT_S = 30.0


class Progress:
    """What a run tells its caller as it goes; every method does nothing here, a caller overrides what it shows."""

    def planned(self, run_id: str, jobs: int, todo: int, devices: dict[str, int]) -> None:
        """The run's id, its job count, how many are still to do, and how many of those each device gets."""

    def exporting(self, what: str) -> None:
        """An artifact is being built and exported on the host (e.g. "deit_tiny onnx bs1")."""

    def exported(self, done: int, total: int) -> None:
        """`done` of the `total` artifacts a sweep needs are made: 0 before the first, `total` after the last."""

    def uploading(self, device: str, what: str, done: int, total: int) -> None:
        """`done` of the `total` bytes of artifact `what` are on `device` (called from that device's thread)."""

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
    `tuned` False ignores the settings ``bench tune`` stored (``--no-tuned``):
    every job runs with bench.toml's options and the runtime's defaults.
    """

    devices: list[str] | None = None
    models: list[str] | None = None
    formats: list[str] | None = None
    batch: list[int] | None = None
    quick: bool = False
    resume: str | None = None
    trust_new_hosts: bool = False
    tuned: bool = True

    def selection(self) -> dict[str, Any]:
        """The selection as stored with the run (and read back by a resume)."""
        return {"devices": self.devices, "models": self.models, "formats": self.formats, "batch": self.batch,
                "quick": self.quick, "tuned": self.tuned}


@dataclass
class Outcome:
    """What a run did: its id, every record of it, bytes sent to each device this time, and its planned job count.

    `planned` counts every job of the run (a resumed run's earlier ones too), so
    `not_ok` is what the run still lacks: jobs with an error record, or with none
    (only a sweep interrupted before their artifact was exported leaves those).
    `interrupted` names the signal that stopped the sweep, None when it ran to the end.
    """

    run_id: str
    records: list[dict]
    uploaded: dict[str, int] = field(default_factory=dict)
    planned: int = 0
    interrupted: str | None = None

    @property
    def errors(self) -> list[dict]:
        return [r for r in self.records if r["status"] != "ok"]

    @property
    def ok(self) -> int:
        return sum(r["status"] == "ok" for r in self.records)

    @property
    def not_ok(self) -> int:
        """Planned jobs without an ok record."""
        return max(0, self.planned - self.ok)


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a sweep, after its clean-up (agents stopped, unfinished jobs recorded as
    "interrupted", run marked interrupted). A KeyboardInterrupt, so callers that know only that one still stop."""

    def __init__(self, outcome: Outcome, signum: int) -> None:
        super().__init__(f"run {outcome.run_id} interrupted by {signal.Signals(signum).name}")
        self.outcome, self.signum = outcome, signum


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
    """Everything one device's jobs share: where results go, how to measure, and the run's cancellation.

    `cancel` is set by `stop` (Ctrl-C, SIGTERM, a failing sweep): `run_device` then
    starts no new group, and a job that fails after it is recorded as interrupted,
    not as the transport's error (a closed connection is how its agent was stopped).
    Records go through `record`, which keeps the first record of each job, so the
    main thread can fill in the jobs a device thread never reached without racing it.
    """

    store: Store
    run_id: str
    git_rev: str
    measure: Measure
    artifacts: dict[ArtifactKey, exporters.Artifact | ExportFailure]
    trust_new_hosts: bool = False
    progress: Progress = field(default_factory=Progress)
    cancel: threading.Event = field(default_factory=threading.Event)
    stop_reason: str = "interrupted"
    _recorded: set[str] = field(default_factory=set, init=False, repr=False)
    _transports: list[Transport] = field(default_factory=list, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def open(self, device: DeviceSpec) -> Transport:
        """The device's transport, kept so that `stop` can close it from another thread."""
        transport = open_transport(device, trust_new_hosts=self.trust_new_hosts)
        with self._lock:
            self._transports.append(transport)
            stopped = self.cancel.is_set()
        if stopped:  # stopped while it opened: it must not start an agent that nobody stops
            _close(transport)
        return transport

    def stop(self, reason: str) -> list[_Worker]:
        """Cancel the run and close every open transport: that stops the agents (an agent exits when its stdin
        closes, a local one is killed), and a stopped agent's device lock is free.

        Each transport closes in a thread of its own (returned, to be joined), so that
        one that blocks (a device thread amid an upload) delays no other device's stop.
        """
        with self._lock:
            self.stop_reason = reason
            self.cancel.set()
            transports = list(self._transports)
        closers = [_Worker(f"close-{getattr(transport, 'name', 'device')}", _close, transport)
                   for transport in transports]
        for closer in closers:
            closer.start()
        return closers

    def record(self, job: Job, result: dict) -> None:
        """Store a job's record (the first one only); after `stop` a failure is the interruption's."""
        art = self.artifacts.get(job.artifact_key)
        with self._lock:
            if job.key in self._recorded:
                return
            stage = (result.get("error") or {}).get("stage")
            if self.cancel.is_set() and result.get("status") != "ok" and stage not in ("export", "interrupted"):
                result = self._interrupted(job, "while the job ran", result)
            spec = job_spec(job, None, art.input_shape) if isinstance(art, ExportFailure) else job_spec(job, art)
            stored = records.make_record(self.run_id, spec, result, self.git_rev)
            self.store.add_record(stored)
            self._recorded.add(job.key)
        self.progress.recorded(job.device.name, stored)

    def fail(self, jobs: list[Job], stage: str, message: str = "") -> None:
        """An error record for each of `jobs` that has none yet: of `stage` with `message`, except that a job
        whose export failed gets its export's error, and stage "interrupted" says the run's `stop_reason`.

        A job whose artifact does not exist yet (the sweep stopped during the
        exports) cannot have a record: the store keeps artifact-less records for
        export failures only. It stays without one, which `Outcome.not_ok` counts.
        """
        for job in jobs:
            art = self.artifacts.get(job.artifact_key)
            if art is None or job.key in self._recorded:
                continue
            if isinstance(art, ExportFailure):
                self.record(job, error_result(job_stub(job, None), "export", art.message, error_type="ExportError"))
            elif stage == "interrupted":
                self.record(job, self._interrupted(job, "before the job ran"))
            else:
                self.record(job, error_result(job_stub(job, art), stage, message))

    def _interrupted(self, job: Job, when: str, failed: dict | None = None) -> dict:
        """The result of a job the run's stop ended (`failed`: what its transport or agent said then)."""
        art = self.artifacts.get(job.artifact_key)
        error = (failed or {}).get("error") or {}
        result = error_result(job_stub(job, art if isinstance(art, exporters.Artifact) else None), "interrupted",
                              f"{self.stop_reason} {when}", error.get("stderr_tail"), error_type="Interrupted")
        if failed and failed.get("transport"):
            result["transport"] = failed["transport"]
        return result


def _close(transport: Transport) -> None:
    """Close a transport, from any thread; a failure to close is logged, never raised (it runs during clean-ups)."""
    try:
        transport.close()
    except Exception as exc:
        log.warning("%s: closing the transport failed: %s", getattr(transport, "name", "device"), exc)


def _reason(exc: BaseException) -> str:
    """One line for a record: the exception's type and its message's first line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _device_failed(device: DeviceSpec, jobs: list[Job], ctx: DeviceRun, exc: BaseException,
                   stage: str | None = None) -> None:
    """End a device's unrecorded jobs with `exc` (stage "connect" for a device's error, "harness" for a bug)."""
    stage = stage or ("connect" if isinstance(exc, DEVICE_ERRORS) else "harness")
    message = _reason(exc)
    log.error("device %s: %s", device.name, message, exc_info=exc if stage == "harness" else None)
    ctx.fail(jobs, stage, message)


def run_device(device: DeviceSpec, jobs: list[Job], ctx: DeviceRun, transport: Transport | None = None) -> int:
    """Run one device's jobs, one comparison group at a time; every job ends as a record, whatever fails.

    `transport` is the device's, already open (a sweep opens every device's first,
    to see which of them are one host); without one it is opened here. It is closed
    here either way. Returns the bytes uploaded to the device.
    """
    pending = _exported_groups(jobs, ctx)
    started = False
    try:
        if pending and not ctx.cancel.is_set():
            transport = transport or ctx.open(device)
            started = True
            _run_groups(device, transport, pending, ctx)
    except Exception as exc:  # unreachable device, refused host key, a bad setting: every remaining job gets a record
        _device_failed(device, [job for group in pending for job in group.jobs], ctx, exc)
    finally:
        uploaded = _close_device(device, transport, ctx, run_post=started)
        if ctx.cancel.is_set():
            ctx.fail(jobs, "interrupted")
        ctx.progress.device_done(device.name)
    return uploaded


def _exported_groups(jobs: list[Job], ctx: DeviceRun) -> list[Group]:
    """The comparison groups of the jobs whose artifact exists; a job without one is recorded and never sent."""
    pending: list[Group] = []
    for group in group_jobs(jobs):
        exported = [job for job in group.jobs if not isinstance(ctx.artifacts[job.artifact_key], ExportFailure)]
        ctx.fail([job for job in group.jobs if job not in exported], "export")
        if exported:
            pending.append(Group(exported))
    return pending


def _run_groups(device: DeviceSpec, transport: Transport, pending: list[Group], ctx: DeviceRun) -> None:
    """The device's ``pre`` commands, then its groups until none is left or the run is cancelled.

    `pending` shrinks as groups finish, so a caller that catches an error knows which jobs have no record.
    """
    for command in device.pre:
        transport.run_shell(command, timeout_s=ctx.measure.timeout_s)
    transport.ensure_agent()
    workdir = transport.device_workdir()
    while pending and not ctx.cancel.is_set():
        _run_group(transport, pending[0], workdir, ctx)
        pending.pop(0)


def _close_device(device: DeviceSpec, transport: Transport | None, ctx: DeviceRun, run_post: bool) -> int:
    """Run the ``post`` commands (unless the run was stopped), close the transport; the bytes uploaded."""
    if transport is None:
        return 0
    if run_post and device.post and ctx.cancel.is_set():
        log.warning("device %s: %s; its post commands did not run: %s", device.name, ctx.stop_reason,
                    "; ".join(device.post))
    elif run_post:
        try:
            for command in device.post:
                transport.run_shell(command, timeout_s=ctx.measure.timeout_s)
        except Exception as exc:
            log.warning("device %s: post command failed: %s", device.name, exc)
    uploaded = transport.bytes_uploaded
    _close(transport)
    return uploaded


def _run_group(transport: Transport, group: Group, workdir: str, ctx: DeviceRun) -> None:
    """Upload a group's artifacts, time them together, record every member (an upload failure ends that member)."""
    members: dict[str, tuple[str, exporters.Artifact]] = {}
    for job in group.jobs:
        if ctx.cancel.is_set():  # stopped amid the uploads: run_device records the rest as interrupted
            return
        art = ctx.artifacts[job.artifact_key]
        try:
            members[job.key] = (transport.ensure_blob(art.path, art.sha256, _upload_progress(ctx.progress, job)), art)
        except Exception as exc:  # an upload failure ends this job, not the group's or the device's sweep
            ctx.record(job, error_result(job_stub(job, art), "transport", _reason(exc)))
    if not members or ctx.cancel.is_set():
        return
    doc = group_job(Group([j for j in group.jobs if j.key in members]), members, workdir, ctx.measure)
    result = transport.run_agent(doc, timeout_s=doc["timeout_s"] + ctx.measure.grace_s)
    for job in group.jobs:
        if job.key in members:
            ctx.record(job, member_result(result, job.key))


def _upload_progress(progress: Progress, job: Job) -> Callable[[int, int], None]:
    """The transport's ``(done, total)`` bytes callback for one job's artifact, told on to `progress`."""
    what = f"{job.model.name} {job.fmt} bs{job.batch}"
    return lambda done, total: progress.uploading(job.device.name, what, done, total)


def _formats(cfg: Config, selection: dict) -> list[str]:
    fmts = selection.get("formats") or cfg.sweep.get("formats") or list(formats.DEFAULT_SWEEP_FORMATS)
    for fmt in fmts:
        if fmt not in formats.FORMATS:
            raise ConfigError(f"unknown format {fmt!r}; known formats: {', '.join(formats.FORMATS)}")
    return fmts


@dataclass
class _Plan:
    """A sweep's run and jobs: every planned one, and those still without an ok record (`todo`)."""

    run_id: str
    git_rev: str
    devices: list[DeviceSpec]
    models: list[ModelSpec]
    batches: list[int]
    measure: Measure
    jobs: list[Job]
    todo: list[Job]


def _plan(cfg: Config, store: Store, request: SweepRequest) -> _Plan:
    """Check the selection and every job's key, then create (or reopen, for a resume) the run: a selection that
    cannot run never leaves a run behind, nor one marked ``running``."""
    selection = request.selection()
    resumed = None
    if request.resume:
        resumed = pick_run(store, request.resume)
        if not is_sweep(resumed):  # e.g. a latency profile of `bench compress --target-latency`
            raise ConfigError(f"run {request.resume} is not a sweep ({resumed['note'] or 'no note'}); "
                              "only sweeps resume")
        selection = resumed["config"]["selection"]
    devices = cfg.pick_devices(selection.get("devices"))
    models = cfg.pick_models(selection.get("models"))
    fmts = _formats(cfg, selection)
    batches = selection.get("batch") or cfg.sweep.get("batch") or [1]
    measure = cfg.quick if selection.get("quick") else cfg.measure
    jobs = plan_jobs(models, devices, fmts, batches)
    if not jobs:
        raise ConfigError(f"nothing to run: no selected device has a runtime for formats {fmts}")
    if selection.get("tuned", True):
        apply_tuned(store, jobs)
    try:
        keys = {id(job): job.key for job in jobs}
    except (records.RecordError, TypeError) as exc:  # a runtime option with '|' (the key's separator), or a date
        raise ConfigError(f"bench.toml: a job cannot be named: {exc}") from None
    git_rev = git_revision()
    if resumed is None:
        run_id = store.new_run({"selection": selection, "devices": [d.name for d in devices],
                                "models": [m.name for m in models]}, git_rev, kind="sweep")
    else:
        run_id = resumed["run_id"]
        store.set_run_status(run_id, "running")
    done = store.done_keys(run_id)
    return _Plan(run_id, git_rev, devices, models, batches, measure, jobs,
                 [job for job in jobs if keys[id(job)] not in done])


def apply_tuned(store: Store, jobs: list[Job]) -> None:
    """Give each job the settings ``bench tune`` stored for it (the newest row for its device, runtime, format,
    model entry, batch size and bench.toml options); options bench.toml sets are never replaced."""
    for job in jobs:
        row = store.tuned(job.device.name, job.runtime, job.fmt, job.model.name, job.batch, job.options)
        if row is not None:
            job.tuned = {k: v for k, v in row["settings"].items() if k not in job.options}
            job.tuned_id = row["id"]
            log.info("%s %s %s bs%d on %s: tuned settings #%d %s", job.model.name, job.runtime, job.fmt, job.batch,
                     job.device.name, row["id"], records.options_key(job.tuned) if job.tuned else "(the defaults won)")


def _host_key(device: DeviceSpec, transport: Transport) -> tuple[Any, ...]:
    """Which machine a device entry times on: every local device is this one; an SSH device is the host and port
    it resolves to (through its ssh config) behind its jump hosts."""
    if device.kind == "local":
        return ("local",)
    target = getattr(transport, "target", None)
    if target is None:
        return ("device", device.name)
    return ("ssh", str(target.hostname).lower(), target.port, tuple(target.proxy_jump))


def _describe_host(key: tuple[Any, ...]) -> str:
    return "this machine" if key[0] == "local" else f"{key[1]}:{key[2]}" if key[0] == "ssh" else str(key[1])


#: A device entry and its open transport.
_Member = tuple[DeviceSpec, Transport]


def _share_hosts(todo: list[Job], devices: list[DeviceSpec], ctx: DeviceRun) -> list[list[_Member]]:
    """Open the transport of every device with jobs, grouped by host; a device whose transport cannot even be
    opened (a bad setting) ends its jobs as records here."""
    hosts: dict[tuple[Any, ...], list[_Member]] = {}
    for device in devices:
        jobs = [job for job in todo if job.device is device]
        if not jobs:
            continue
        transport = None
        try:
            transport = ctx.open(device)
            hosts.setdefault(_host_key(device, transport), []).append((device, transport))
        except Exception as exc:
            if transport is not None:
                _close(transport)
            _device_failed(device, jobs, ctx, exc)
            ctx.progress.device_done(device.name)
    for key, members in hosts.items():
        if len(members) > 1:
            log.warning("devices %s are one host (%s): their jobs run one after another, never at the same time",
                        ", ".join(device.name for device, _ in members), _describe_host(key))
    return list(hosts.values())


def _run_host(members: list[_Member], todo: list[Job], ctx: DeviceRun,
              uploaded: dict[str, int]) -> None:
    """One host's devices, one after another; whatever one of them raises, its jobs end as records, the next runs."""
    for device, transport in members:
        jobs = [job for job in todo if job.device is device]
        try:
            uploaded[device.name] = run_device(device, jobs, ctx, transport)
        except BaseException as exc:  # a bug (run_device records what it can): never a silent thread death
            _device_failed(device, jobs, ctx, exc, stage="harness")


class _Worker:
    """A thread with its own completion event: waiting on that (not `threading.Thread.join`) is what the main
    thread does, because a join that a KeyboardInterrupt cuts short can leave the thread reported dead while it
    still runs (Python before 3.13), and the clean-up would then not wait for it."""

    def __init__(self, name: str, target: Callable[..., None], *args: Any) -> None:
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, args=(target, args), daemon=True)

    def _run(self, target: Callable[..., None], args: tuple[Any, ...]) -> None:
        try:
            target(*args)
        finally:
            self.done.set()

    def start(self) -> None:
        self.thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Whether it finished (never started counts as finished: it will not run)."""
        return self.thread.ident is None or self.done.wait(timeout)


def _start_hosts(todo: list[Job], devices: list[DeviceSpec], ctx: DeviceRun, uploaded: dict[str, int],
                 workers: list[_Worker]) -> None:
    """One thread per host, appended to `workers` before it starts (the caller waits or stops them, even mid-way)."""
    for members in _share_hosts(todo, devices, ctx):
        name = "device-" + "+".join(device.name for device, _ in members)
        worker = _Worker(name, _run_host, members, todo, ctx, uploaded)
        workers.append(worker)
        worker.start()


def _stop(ctx: DeviceRun, workers: list[_Worker], todo: list[Job], reason: str) -> None:
    """Cancel the run, close the transports, wait (bounded) for the device threads, record every job left as
    interrupted (by a signal, or by the error that ended the sweep: `reason`)."""
    closers = ctx.stop(reason)
    deadline = time.monotonic() + STOP_WAIT_S
    alive = [w.thread.name for w in closers + workers if not w.wait(max(0.0, deadline - time.monotonic()))]
    if alive:
        log.warning("%s still running %.0f s after the stop; not waiting any longer", ", ".join(alive), STOP_WAIT_S)
    ctx.fail(todo, "interrupted")


@dataclass
class _Signals:
    """The signal that interrupted a sweep, and whether its clean-up has begun."""

    signum: int = signal.SIGINT
    stopping: bool = False


@contextmanager
def _interrupting_signals() -> Iterator[_Signals]:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the main thread until the clean-up begins, then are only
    logged: a second Ctrl-C cannot cut short the clean-up (`STOP_WAIT_S` bounds it). Outside the main thread (where
    Python allows no handler) nothing changes; an ignored signal stays ignored."""
    state = _Signals()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum: int, _frame: object) -> None:
        if state.stopping:
            log.warning("%s: still stopping the devices (at most %.0f s)", signal.Signals(signum).name, STOP_WAIT_S)
            return
        state.signum = signum
        raise KeyboardInterrupt

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, handler)
    try:
        yield state
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)


def _outcome(plan: _Plan, store: Store, uploaded: dict[str, int], interrupted: str | None = None) -> Outcome:
    return Outcome(plan.run_id, store.records(plan.run_id), dict(uploaded), len(plan.jobs), interrupted)


def _counting_exports(progress: Progress, total: int) -> Callable[[str], None]:
    """`export_all`'s per-artifact callback: tells `progress` the artifact's name and how many are done before it."""
    done = itertools.count()

    def exporting(what: str) -> None:
        progress.exported(next(done), total)
        progress.exporting(what)

    return exporting


def run_sweep(cfg: Config, store: Store, request: SweepRequest, progress: Progress | None = None) -> Outcome:
    """Plan, prepare and run a sweep (or the rest of run `request.resume`); records are stored as they arrive.

    Every planned job ends with a record (see the module docstring). Ctrl-C or
    SIGTERM raises `SweepInterrupted` after the clean-up; any other exception
    leaves the run marked interrupted (never ``running``) and propagates.
    """
    progress = progress or Progress()
    plan = _plan(cfg, store, request)
    per_device = {d.name: sum(j.device is d for j in plan.todo) for d in plan.devices}
    progress.planned(plan.run_id, len(plan.jobs), len(plan.todo), {n: c for n, c in per_device.items() if c})
    ctx = DeviceRun(store, plan.run_id, plan.git_rev, plan.measure, {}, request.trust_new_hosts, progress)
    workers: list[_Worker] = []
    uploaded: dict[str, int] = {}
    with _interrupting_signals() as signals:
        try:
            if plan.todo:
                needed = [m for m in plan.models if any(j.model is m for j in plan.todo)]
                fmts = sorted({j.fmt for j in plan.todo}, key=formats.format_order)
                targets = artifact_targets(plan.todo)
                total = len(needed) * sum(len(t) for t in targets.values()) * len(plan.batches)
                ctx.artifacts.update(export_all(needed, fmts, plan.batches, cfg.artifacts, cfg.models,
                                                _counting_exports(progress, total), targets))
                progress.exported(total, total)
                _start_hosts(plan.todo, plan.devices, ctx, uploaded, workers)
                for worker in workers:
                    worker.wait()
            ctx.fail(plan.todo, "harness", "the sweep ended without a record of this job (a harness bug)")
        except KeyboardInterrupt:
            signals.stopping = True
            name = signal.Signals(signals.signum).name
            try:
                _stop(ctx, workers, plan.todo, f"interrupted by {name}")
            finally:
                store.finish_run(plan.run_id, "interrupted")
            raise SweepInterrupted(_outcome(plan, store, uploaded, name), signals.signum) from None
        except BaseException as exc:
            signals.stopping = True
            try:
                _stop(ctx, workers, plan.todo, f"the sweep stopped on {_reason(exc)}")
            finally:
                store.finish_run(plan.run_id, "interrupted")
            raise
    store.finish_run(plan.run_id, "done")
    return _outcome(plan, store, uploaded)
