"""Job planning: what a sweep will time, and the documents that describe one job to the agent and the store.

A *job* is one (model entry, device, runtime, format, batch size). `plan_jobs`
gives every device only the formats its runtimes take (`formats.RUNTIMES`);
`agent_job` is the JSON the device agent reads (``devices/agent.py``, protocol
1); `job_spec` is what the results store needs besides the agent's result
(`results.records.make_record`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import exporters
import formats
from devices.config import DeviceSpec
from results import records

from .config import Measure


class JobModel(Protocol):
    """What a job needs of its model: a bench.toml entry (`harness.config.ModelSpec`), or a model timed
    without one (the latency profiles and verifications of `harness.target_latency`)."""

    @property
    def name(self) -> str: ...
    @property
    def timm(self) -> str: ...
    @property
    def variant(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def base(self) -> str | None: ...
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
    def artifact_key(self) -> tuple[str, str, int]:
        """Which exported artifact the job times: (model entry, format, batch size)."""
        return self.model.name, self.fmt, self.batch

    @property
    def key(self) -> str:
        # the config entry's name, not the timm name: two entries may share a timm model (other kwargs)
        return records.job_key(self.model.name, self.model.variant, self.fmt, self.device.name, self.runtime,
                               self.options, self.batch)


def plan_jobs(models: list[JobModel], devices: list[DeviceSpec], fmts: list[str], batches: list[int]) -> list[Job]:
    """Every job, each device only getting the formats its runtimes take."""
    jobs = []
    for device in devices:
        for runtime in device.runtimes:
            for fmt in fmts:
                if fmt in device.formats_for(runtime):
                    jobs += [Job(m, device, runtime, fmt, b) for m in models for b in batches]
    return jobs


def agent_job(job: Job, artifact: exporters.Artifact | None, remote_path: str, workdir: str, measure: Measure) -> dict:
    """The JSON document the device agent reads on stdin (devices/agent.py, protocol 1).

    `artifact` is None for a job whose export failed: the document then only
    identifies the job, for the error record.
    """
    return {
        "protocol": 1, "job_id": job.key,
        "artifact": {"path": remote_path, "sha256": artifact.sha256 if artifact else "",
                     "format": formats.FORMATS[job.fmt].agent_format},
        "runtime": job.runtime, "options": job.options,
        "input": {"shape": list(artifact.manifest["input_shape"]) if artifact else [], "dtype": "float32"},
        "warmup": {"iterations": measure.warmup_iterations},
        "measure": {"iterations": measure.iterations, "min_seconds": measure.min_seconds},
        "timeout_s": measure.timeout_s, "workdir": workdir,
    }


def job_spec(job: Job, art: exporters.Artifact | None, input_shape: list[int] | None = None) -> dict:
    """What the record store needs to know about a job besides the agent's result.

    Without an artifact (its export failed) the record names no sha256 and takes
    the input shape the export was asked for.
    """
    manifest = art.manifest if art else {}
    return {"job_key": job.key, "model": job.model.timm, "variant": job.model.variant, "entry": job.model.name,
            "base": job.model.base, "label": job.model.label,
            "artifact": {"sha256": art.sha256 if art else "", "format": job.fmt,
                         "path": str(art.path) if art else None,
                         "macs": manifest.get("macs"), "params": manifest.get("params")},
            "device": job.device.name, "device_label": job.device.display, "runtime": job.runtime,
            "runtime_options": job.options, "batch_size": job.batch,
            "input_shape": list(manifest["input_shape"]) if art else input_shape, "top1": job.model.known_top1}
