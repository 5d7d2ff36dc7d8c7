"""``python -m bench sweep``: models × formats × devices × batch sizes, timed on the devices.

1. Plan: every selected device gets, for each of its runtimes, the formats that
   runtime takes (onnxruntime: .onnx; torch: .pt/.pt2; tensorrt: .trt), for every
   model and batch size.
2. Prepare: build (and prune) the models and export the artifacts on the host,
   cached by content.
3. Run: devices in parallel (one thread each), each device's jobs one at a
   time; every result, ok or error, is written to the store the moment it
   arrives, so a killed sweep loses nothing and ``--resume RUN_ID`` runs only
   what is missing.
4. Report: a speedup table (each pruned model against its original on the same
   device, runtime and batch size).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

import exporters
from devices.config import DeviceSpec, open_transport
from devices.transport import error_result
from results import records, speedup
from results.store import Store

from . import config as bench_config
from .options import HelpFormatter
from .prepare import AGENT_FORMAT, export_all
from .runs import add_store_options, is_sweep, pick_run

log = logging.getLogger(__name__)


class JobModel(Protocol):
    """What a job needs of its model: a bench.toml entry (`ModelSpec`), or a model a command built
    without one (``bench compress --target-latency`` times profile variants and its pruned result)."""

    @property
    def name(self) -> str: ...
    @property
    def timm(self) -> str: ...
    @property
    def variant(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def known_top1(self) -> float | None: ...


@dataclass
class Job:
    model: JobModel
    device: DeviceSpec
    runtime: str
    fmt: str
    batch: int

    @property
    def options(self) -> dict:
        return self.device.runtimes[self.runtime]

    @property
    def key(self) -> str:
        # the config entry's name, not the timm name: two entries may share a timm model (other kwargs)
        return records.job_key(self.model.name, self.model.variant, self.fmt, self.device.name, self.runtime,
                               self.options, self.batch)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="time original and pruned models on the configured devices",
                       description="Time models x formats x devices x batch sizes on the devices of bench.toml "
                                   "(devices in parallel, each device's jobs one at a time). Every record goes to "
                                   "the SQLite store as it arrives; --resume finishes an interrupted run.",
                       formatter_class=HelpFormatter)
    add_store_options(p)
    p.add_argument("--sweep", metavar="NAME", help="start from the selection of [sweeps.NAME] in bench.toml (e.g. "
                                                   "'paper': every row of the paper's table); flags below override it")
    p.add_argument("--devices", type=_csv, help="comma-separated device names (default: the sweep's, or all)")
    p.add_argument("--models", type=_csv, help="comma-separated model entries; originals of pruned ones come along")
    p.add_argument("--formats", type=_csv, help=f"comma-separated formats: {', '.join(bench_config.FORMATS)}")
    p.add_argument("--batch", type=_csv_int, help="comma-separated batch sizes, e.g. 1,8")
    p.add_argument("--quick", action="store_true", help="fewer iterations ([measure.quick]): a smoke test, not a figure")
    p.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted run: only jobs without an ok record run")
    p.add_argument("--trust-new-hosts", action="store_true",
                   help="add first-seen SSH host keys to known_hosts (changed keys are always refused)")
    p.set_defaults(func=run)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _csv_int(text: str) -> list[int]:
    try:
        values = [int(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes {text!r} must be comma-separated positive integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes {text!r} must be comma-separated positive integers")
    return values


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


def plan_jobs(models: list[bench_config.ModelSpec], devices: list[DeviceSpec], formats: list[str],
              batches: list[int]) -> list[Job]:
    """Every job, each device only getting the formats its runtimes take."""
    jobs = []
    for device in devices:
        for runtime in device.runtimes:
            for fmt in formats:
                if fmt in device.formats_for(runtime):
                    jobs += [Job(m, device, runtime, fmt, b) for m in models for b in batches]
    return jobs


def agent_job(job: Job, artifact: exporters.Artifact, remote_path: str, workdir: str,
              measure: bench_config.Measure) -> dict:
    """The JSON document the device agent reads on stdin (devices/agent.py, protocol 1)."""
    return {
        "protocol": 1, "job_id": job.key,
        "artifact": {"path": remote_path, "sha256": artifact.sha256, "format": AGENT_FORMAT[job.fmt]},
        "runtime": job.runtime, "options": job.options,
        "input": {"shape": list(artifact.manifest["input_shape"]), "dtype": "float32"},
        "warmup": {"iterations": measure.warmup_iterations},
        "measure": {"iterations": measure.iterations, "min_seconds": measure.min_seconds},
        "timeout_s": measure.timeout_s, "workdir": workdir,
    }


def run_device(device: DeviceSpec, jobs: list[Job], artifacts: dict, store: Store, run_id: str, git_rev: str,
               measure: bench_config.Measure, bar: tqdm, trust_new_hosts: bool, uploaded: dict[str, int]) -> None:
    """Run one device's jobs in order; every job ends as a record, whatever fails."""
    transport = open_transport(device, trust_new_hosts=trust_new_hosts)
    pending = list(jobs)

    def record(job: Job, result: dict) -> None:
        art = artifacts[(job.model.name, job.fmt, job.batch)]
        store.add_record(records.make_record(run_id, job_spec(job, art), result, git_rev))
        bar.set_postfix_str(f"{job.model.name} {job.fmt} bs{job.batch}: {result.get('status')}", refresh=False)
        bar.update()

    try:
        for command in device.pre:
            transport.run_shell(command, timeout_s=measure.timeout_s)
        transport.ensure_agent()
        workdir = transport.device_workdir()
        while pending:
            job = pending[0]
            art = artifacts[(job.model.name, job.fmt, job.batch)]
            job_doc = agent_job(job, art, "", workdir, measure)
            try:
                job_doc["artifact"]["path"] = transport.ensure_blob(art.path, art.sha256)
                result = transport.run_agent(job_doc, timeout_s=measure.timeout_s + measure.grace_s)
            except Exception as exc:  # an upload failure ends this job, not the device's sweep
                result = error_result(job_doc, "transport", f"{type(exc).__name__}: {exc}")
            pending.pop(0)
            record(job, result)
    except Exception as exc:  # unreachable device, refused host key, ...: every remaining job gets an error record
        message = f"{type(exc).__name__}: {exc}"
        log.error("device %s: %s", device.name, message)
        for job in pending:
            art = artifacts[(job.model.name, job.fmt, job.batch)]
            record(job, error_result(agent_job(job, art, "", "", measure), "connect", message))
    finally:
        try:
            for command in device.post:
                transport.run_shell(command, timeout_s=measure.timeout_s)
        except Exception as exc:
            log.warning("device %s: post command failed: %s", device.name, exc)
        uploaded[device.name] = transport.bytes_uploaded
        transport.close()


def job_spec(job: Job, art: exporters.Artifact) -> dict:
    """What the record store needs to know about a job besides the agent's result."""
    return {"job_key": job.key, "model": job.model.timm, "variant": job.model.variant, "entry": job.model.name,
            "label": job.model.label,
            "artifact": {"sha256": art.sha256, "format": job.fmt, "path": str(art.path),
                         "macs": art.manifest.get("macs"), "params": art.manifest.get("params")},
            "device": job.device.name, "device_label": job.device.display, "runtime": job.runtime,
            "runtime_options": job.options, "batch_size": job.batch,
            "input_shape": list(art.manifest["input_shape"]), "top1": job.model.known_top1}


@dataclass
class Outcome:
    """What a sweep did: its run, every record of it, and bytes sent to each device this time."""

    run_id: str
    records: list[dict]
    uploaded: dict[str, int]

    @property
    def errors(self) -> list[dict]:
        return [r for r in self.records if r["status"] != "ok"]


def execute(cfg: bench_config.Config, store: Store, selection: dict, resume: str | None = None,
            trust_new_hosts: bool = False, progress: bool = True) -> Outcome:
    """Plan, prepare and run a sweep (or the rest of run `resume`); records are stored as they arrive."""
    if resume:
        run_info = pick_run(store, resume)
        if not is_sweep(run_info):  # e.g. a latency profile of `bench compress --target-latency`
            raise bench_config.ConfigError(f"run {resume} is not a sweep ({run_info['note'] or 'no note'}); "
                                           "only sweeps resume")
        selection = run_info["config"]["selection"]
        store.set_run_status(resume, "running")
    devices = cfg.pick_devices(selection.get("devices"))
    models = cfg.pick_models(selection.get("models"))
    formats = selection.get("formats") or cfg.sweep.get("formats") or ["onnx", "torchscript"]
    for fmt in formats:
        if fmt not in bench_config.FORMATS:
            raise bench_config.ConfigError(f"unknown format {fmt!r}; known formats: {', '.join(bench_config.FORMATS)}")
    batches = selection.get("batch") or cfg.sweep.get("batch") or [1]
    measure = cfg.quick if selection.get("quick") else cfg.measure

    jobs = plan_jobs(models, devices, formats, batches)
    if not jobs:
        raise bench_config.ConfigError(f"nothing to run: no selected device has a runtime for formats {formats}")
    git_rev = git_revision()
    run_id = resume or store.new_run({"selection": selection, "devices": [d.name for d in devices],
                                      "models": [m.name for m in models]}, git_rev)
    done = store.done_keys(run_id)
    todo = [j for j in jobs if j.key not in done]
    print(f"run {run_id}: {len(jobs)} jobs on {len(devices)} device(s), {len(todo)} to do; store {store.path}",
          flush=True)

    artifacts = export_all([m for m in models if any(j.model is m for j in todo)], sorted({j.fmt for j in todo}),
                           batches, cfg.artifacts, cfg.models) if todo else {}
    uploaded: dict[str, int] = {}
    threads, bars = [], []
    try:
        for i, device in enumerate(devices):
            device_jobs = [j for j in todo if j.device is device]
            if not device_jobs:
                continue
            bar = tqdm(total=len(device_jobs), desc=f"{device.name:>12}", unit="job", position=i, leave=True,
                       disable=not progress)
            bars.append(bar)
            thread = threading.Thread(target=run_device, name=f"device-{device.name}", daemon=True,
                                      args=(device, device_jobs, artifacts, store, run_id, git_rev, measure, bar,
                                            trust_new_hosts, uploaded))
            threads.append(thread)
            thread.start()
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:
        store.finish_run(run_id, "interrupted")
        raise
    finally:
        for bar in bars:
            bar.close()
    store.finish_run(run_id, "done")
    return Outcome(run_id, store.records(run_id), uploaded)


def run(args: argparse.Namespace) -> int:
    cfg = bench_config.load(args.config)
    store = Store(args.store or cfg.store)
    selection = {"devices": args.devices, "models": args.models, "formats": args.formats, "batch": args.batch,
                 "quick": args.quick}
    if args.sweep:
        named = cfg.named_sweep(args.sweep)
        named.pop("threshold", None)  # a nightly setting; a plain sweep compares nothing
        selection = {**named, **{k: v for k, v in selection.items() if v}}
    outcome = execute(cfg, store, selection, resume=args.resume, trust_new_hosts=args.trust_new_hosts)
    print(speedup.speedup_markdown(outcome.records))
    for r in outcome.errors:
        print(f"error: {r['device']} {r['model']} {r['variant']} {r['format']} bs{r['batch_size']}: "
              f"[{r['error_stage']}] {r['error_message']}")
    sent = ", ".join(f"{name} {n / 1e6:.1f} MB" for name, n in outcome.uploaded.items())
    print(f"run {outcome.run_id}: {len(outcome.records) - len(outcome.errors)} ok, {len(outcome.errors)} error(s); "
          f"uploaded: {sent or 'nothing'}; store {store.path}")
    return 1 if outcome.errors else 0
