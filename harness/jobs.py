"""Job planning: what a sweep will time, and the documents that describe it to the agent and the store.

A *job* is one (model entry, device, runtime, format, batch size); it becomes one
record. `plan_jobs` gives every device only the formats its runtimes take
(`formats.RUNTIMES`). The jobs of one device that share runtime, runtime options,
format and batch size form a comparison `Group`, measured together by one agent
run in interleaved rounds (`group_job`: the JSON the device agent reads,
``devices/agent.py`` protocol 2), so that drift of the device hits every member
alike. `member_result` takes one member's part of the agent's answer, and
`job_spec` is what the results store needs besides it (`results.records.make_record`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Protocol

import exporters
import formats
from devices.config import DeviceSpec
from results import records

from .config import Measure

#: The agent protocol the harness speaks (``devices/agent.py`` PROTOCOL).
PROTOCOL = 2


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


@dataclass
class Group:
    """Jobs one device measures together: same runtime, runtime options, format and batch size."""

    jobs: list[Job]

    @property
    def device(self) -> DeviceSpec:
        return self.jobs[0].device

    @property
    def key(self) -> str:
        """The group's id: its members' shared identity (``device|runtime|options|format|bs<N>``)."""
        first = self.jobs[0]
        return "|".join([first.device.name, first.runtime, records.options_key(first.options), first.fmt,
                         f"bs{first.batch}"])


def group_jobs(jobs: list[Job]) -> list[Group]:
    """The comparison groups of some jobs, in the order their first job comes."""
    groups: dict[tuple, Group] = {}
    for job in jobs:
        identity = (job.device.name, job.runtime, records.options_key(job.options), job.fmt, job.batch)
        groups.setdefault(identity, Group([])).jobs.append(job)
    return list(groups.values())


def group_job(group: Group, members: dict[str, tuple[str, exporters.Artifact]], workdir: str,
              measure: Measure) -> dict:
    """The JSON document the device agent reads on stdin (devices/agent.py, protocol 2).

    `members` maps a job key to (its artifact's path on the device, the artifact)
    for the members that reached the device; the job's time budget is the
    per-model `Measure.timeout_s` once per member. The job id is the group's key
    plus a fresh token: records measured together share it (``group_key``), and a
    member timed again later (``--resume``) does not.
    """
    first = group.jobs[0]
    return {
        "protocol": PROTOCOL, "job_id": f"{group.key}#{secrets.token_hex(4)}", "runtime": first.runtime,
        "options": first.options,
        "workdir": workdir, "timeout_s": measure.timeout_s * max(1, len(members)),
        "members": [{"id": key, "artifact": {"path": path, "sha256": art.sha256,
                                             "format": formats.FORMATS[first.fmt].agent_format},
                     "input": {"shape": list(art.manifest["input_shape"]), "dtype": "float32"}}
                    for key, (path, art) in members.items()],
        "warmup": {"iterations": measure.warmup_iterations, "seconds": 0.0},
        "measure": {"iterations": measure.iterations, "min_seconds": measure.min_seconds,
                    "max_iterations": 100000 * measure.rounds, "max_seconds": None},
        "rounds": measure.rounds, "seed": measure.seed, "rewarm": {"iterations": measure.rewarm_iterations},
        "isolate": measure.isolate, "cold_start": measure.cold_start,
        "cooldown": {"max_temp_c": measure.cooldown_temp_c, "max_wait_s": measure.cooldown_max_wait_s},
    }


#: Keys of a protocol-2 result that describe the whole group and are handed to every member's record.
_GROUP_KEYS = ("protocol", "agent_version", "runtime", "settings", "env", "timings_s", "started_utc",
               "finished_utc", "rounds", "seed", "isolated", "round_orders", "cooldown")


def member_result(result: dict[str, Any], key: str) -> dict[str, Any]:
    """One member's part of a group's result, in the shape `results.records.make_record` reads.

    The member's own fields (status, samples and their rounds, stats, cold start,
    warnings, error) with the group's environment, settings and round design;
    group-level warnings (e.g. throttling during the group) are every member's.
    A result without this member (the group failed as a whole, or a transport
    error) gives the group's error for it.
    """
    shared = {k: result.get(k) for k in _GROUP_KEYS if k in result}
    member = next((m for m in result.get("members") or [] if m.get("id") == key), None)
    group_warnings = [str(w) for w in result.get("warnings") or []]
    if member is None:
        error = result.get("error") or {"stage": "unknown", "type": None,
                                        "message": f"the agent's result has no member {key!r}"}
        return {**shared, "status": "error", "error": error, "samples_ns": [], "stats": None,
                "warnings": group_warnings, "transport": result.get("transport"), "group_key": result.get("job_id")}
    own = {k: v for k, v in member.items() if k not in ("id", "warnings")}
    return {**shared, **own, "warnings": [*(member.get("warnings") or []), *group_warnings],
            "transport": result.get("transport"), "group_key": result.get("job_id")}


def job_stub(job: Job, artifact: exporters.Artifact | None) -> dict:
    """Just enough of a job document to describe a failure before the agent ran it (`error_result`)."""
    return {"protocol": PROTOCOL, "job_id": job.key, "runtime": job.runtime,
            "artifact": {"sha256": artifact.sha256 if artifact else "", "format": formats.FORMATS[job.fmt].agent_format}}


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
