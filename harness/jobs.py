"""Job planning: what a sweep will time, and the documents that describe it to the agent and the store.

A *job* is one (model entry, device, runtime, format, batch size); it becomes one
record. `plan_jobs` gives every device only the formats its runtimes take
(`formats.RUNTIMES`). The jobs of one device that share runtime, runtime options,
format and batch size form a comparison `Group`, measured together by one agent
run in interleaved rounds (`group_job`: the JSON the device agent reads,
``devices/agent.py`` protocol 3), so that drift of the device hits every member
alike. `member_result` takes one member's part of the agent's answer, and
`job_spec` is what the results store needs besides it (`results.records.make_record`).

Runtime options: a job's `Job.options` are bench.toml's (they name the job and
its group); what it runs with, `Job.effective_options`, adds the settings
``bench tune`` stored for it (`Job.tuned`, only for options bench.toml leaves
open), so each member of a group carries its own options to the agent and
original and pruned are each timed at their best (docs/tuning.md).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Protocol

import exporters
import formats
from devices.config import DeviceSpec
from results import records

from .config import Measure

#: The agent protocol the harness speaks (``devices/agent.py`` PROTOCOL).
PROTOCOL = 3
#: Where an option a job runs with came from (`Job.option_origins`).
ORIGINS = ("config", "tuned", "default")


def artifact_target(fmt: str, options: dict) -> str:
    """The device type an artifact of `fmt` timed with runtime `options` runs on: "cuda" or "cpu".

    "cuda" for a torch job whose ``device`` option is a CUDA device: a .pt/.pt2 bakes in the
    attention kernel of its target (`exporters.pipeline.attention_kernel`). An ONNX graph is
    the same for every provider, so ONNX formats always say "cpu" and share one artifact.
    """
    if formats.FORMATS[fmt].agent_format == "onnx":
        return "cpu"
    return "cuda" if str(options.get("device", "cpu")).startswith("cuda") else "cpu"


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
    #: Settings `bench tune` stored for this job (options bench.toml leaves open), and that row's id.
    tuned: dict = field(default_factory=dict)
    tuned_id: int | None = None

    @property
    def options(self) -> dict:
        """bench.toml's options for the runtime: part of the job's key and its group's."""
        return self.device.runtimes[self.runtime]

    @property
    def effective_options(self) -> dict:
        """What the agent runs the job with: bench.toml's options, then the tuned ones it leaves open."""
        return {**{k: v for k, v in self.tuned.items() if k not in self.options}, **self.options}

    @property
    def option_origins(self) -> dict[str, str]:
        """Where each option came from (`ORIGINS`), for every option set and every tunable one left at its default."""
        keys = [*self.options, *self.tuned, *formats.RUNTIMES[self.runtime].tunable]
        return {k: "config" if k in self.options else "tuned" if k in self.tuned else "default"
                for k in dict.fromkeys(keys)}

    @property
    def target(self) -> str:
        """The device type the job's artifact runs on (`artifact_target`)."""
        return artifact_target(self.fmt, self.options)

    @property
    def artifact_key(self) -> tuple[str, str, int, str]:
        """Which exported artifact the job times: (model entry, format, batch size, target)."""
        return self.model.name, self.fmt, self.batch, self.target

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


@dataclass(frozen=True)
class Member:
    """One member of an agent job: its id, its artifact (path on the device and the exported artifact) and the
    runtime options it runs with."""

    id: str
    path: str
    artifact: exporters.Artifact
    options: dict


def group_job(group: Group, members: dict[str, tuple[str, exporters.Artifact]], workdir: str,
              measure: Measure) -> dict:
    """The JSON document the device agent reads on stdin (devices/agent.py, protocol 3).

    `members` maps a job key to (its artifact's path on the device, the artifact)
    for the members that reached the device; each runs with its job's
    `Job.effective_options`. The job id is the group's key plus a fresh token:
    records measured together share it (``group_key``), and a member timed again
    later (``--resume``) does not.
    """
    jobs = {job.key: job for job in group.jobs}
    return agent_job(group.key, group.jobs[0].runtime, group.jobs[0].fmt, group.jobs[0].options,
                     [Member(key, path, art, jobs[key].effective_options) for key, (path, art) in members.items()],
                     workdir, measure)


def agent_job(key: str, runtime: str, fmt: str, options: dict, members: list[Member], workdir: str,
              measure: Measure, cold_start: bool | None = None) -> dict:
    """An agent job timing `members` in interleaved rounds: the group's `options`, and a member's own where its
    options differ; the time budget is the per-model `Measure.timeout_s` once per member."""
    return {
        "protocol": PROTOCOL, "job_id": f"{key}#{secrets.token_hex(4)}", "runtime": runtime, "options": options,
        "workdir": workdir, "timeout_s": measure.timeout_s * max(1, len(members)),
        "members": [{"id": m.id, "artifact": {"path": m.path, "sha256": m.artifact.sha256,
                                              "format": formats.FORMATS[fmt].agent_format},
                     "input": {"shape": list(m.artifact.manifest["input_shape"]), "dtype": "float32"},
                     **({"options": m.options} if m.options != options else {})}
                    for m in members],
        "warmup": {"iterations": measure.warmup_iterations, "seconds": 0.0},
        "measure": {"iterations": measure.iterations, "min_seconds": measure.min_seconds,
                    "max_iterations": 100000 * measure.rounds, "max_seconds": None},
        "rounds": measure.rounds, "seed": measure.seed, "rewarm": {"iterations": measure.rewarm_iterations},
        "isolate": measure.isolate, "cold_start": measure.cold_start if cold_start is None else cold_start,
        "cooldown": {"max_temp_c": measure.cooldown_temp_c, "max_wait_s": measure.cooldown_max_wait_s},
    }


#: Keys of a protocol-3 result that describe the whole group and are handed to every member's record.
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

    ``runtime_options`` are bench.toml's (what pairs an original with its pruned
    models in the reports); the options the job ran with, where each came from
    (`ORIGINS`) and the tuned row used go to the record's ``extra["job"]`` as
    ``options``, ``options_from`` and ``tuned_id``. Without an artifact (its
    export failed) the record names no sha256 and takes the input shape the
    export was asked for.
    """
    manifest = art.manifest if art else {}
    return {"job_key": job.key, "model": job.model.timm, "variant": job.model.variant, "entry": job.model.name,
            "base": job.model.base, "label": job.model.label,
            "artifact": {"sha256": art.sha256 if art else "", "format": job.fmt,
                         "path": str(art.path) if art else None,
                         "macs": manifest.get("macs"), "params": manifest.get("params")},
            "device": job.device.name, "device_label": job.device.display, "runtime": job.runtime,
            "runtime_options": job.options, "batch_size": job.batch,
            "input_shape": list(manifest["input_shape"]) if art else input_shape, "top1": job.model.known_top1,
            # not record columns: kept in the record's extra["job"]
            "options": job.effective_options, "options_from": job.option_origins, "tuned_id": job.tuned_id}
