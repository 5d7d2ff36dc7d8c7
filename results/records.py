"""The benchmark record: one row per (run, model, variant, artifact, device, runtime, options, batch size).

A record is a flat ``dict`` built by :func:`make_record` from the job the
sweep planned and the result document the device agent (``devices/agent.py``)
or a transport's ``error_result`` sent back.  Every job yields exactly one
record: a failed job, whether the agent reported the failure itself or the
transport did (crash, kill, timeout, garbled output), gives an *error record*,
never nothing (docs/design.md §4 and §5).  The keys of a record are exactly
the columns of the ``records`` table in ``results/store.py``; the store only
encodes the JSON ones.

This module imports nothing from ``bench`` (a later stage) nor ``devices``
(it only reads the agent's documented JSON shape).

Fields (``RECORD_FIELDS`` in this order)
========================================

=================  =========  ==================================================================
field              type       meaning
=================  =========  ==================================================================
run_id             str        the sweep (``runs`` table), e.g. ``20261124-121530-ab12``
job_key            str        unique within a run, see :func:`job_key`; ``--resume`` skips ok keys
model              str        timm model name, e.g. ``deit_tiny_patch16_224``
variant            str        ``original`` or the pruning config, e.g. ``snp:deit_tiny``
entry              str|None   the ``bench.toml`` model entry, e.g. ``deit_tiny_snp`` (None when the job
                              came from no entry)
base_entry         str|None   pruned models: the entry they are compared against (the ``base`` of
                              their ``bench.toml`` entry); None for originals and for records
                              made before schema 3 (see ``results.speedup.pair_records``)
label              str|None   the entry's display label (``label`` in ``bench.toml``), None if unset
artifact_sha256    str        sha256 of the timed artifact (64 lower-case hex digits); empty
                              when the export failed (error_stage ``export``)
format             str        artifact format: ``onnx``, ``torchscript``, ``pt2``, ...
artifact_path      str|None   where the artifact was on the host (informative only)
device             str        device name from ``bench.toml``
device_label       str|None   the device's display label (``label`` in ``bench.toml``), None if unset
runtime            str        ``onnxruntime`` | ``torch`` | ``tensorrt``
runtime_options    dict       options given to the runtime (threads, provider, precision, ...)
batch_size         int        batch size (first dimension of the input)
input_shape        list|None  full input shape, batch first
macs               int|None   multiply-accumulates of one forward pass (exporter manifest)
params             int|None   parameter count (exporter manifest)
top1               float|None the entry's known Top-1 accuracy in %, None if unknown
status             str        ``ok`` or ``error``
error_stage        str|None   on error: agent stage (parse, lock, verify, load, build, warmup,
                              measure), ``export`` (the artifact could not be made on the
                              host), ``connect``, ``transport``, ``timeout``, ``record`` (the result
                              was inconsistent, see :func:`make_record`), or ``unknown`` (the
                              result named no stage)
error_type         str|None   on error: exception class name (``TransportError`` for transports)
error_message      str|None   on error: one human-readable message
stderr_tail        str|None   on error: the last characters of the agent's stderr (its log)
n                  int        number of measured iterations (0 when none)
min_ms             float|None fastest iteration, milliseconds
median_ms          float|None median iteration (the figure tables use)
mean_ms            float|None mean iteration
max_ms             float|None slowest iteration
p90_ms, p99_ms     float|None 90th / 99th percentile (linear interpolation, numpy default)
std_ms             float|None sample standard deviation (n-1)
cv                 float|None coefficient of variation, std / mean
samples_ns         list[int]  every measured iteration in integer nanoseconds, in order
providers          list|None  onnxruntime execution providers actually active
provider_fallback  bool|None  onnxruntime fell back from a requested provider
env                dict|None  the agent's environment: host, CPU, OS, Python, runtime versions,
                              GPU, and ``before`` / ``after`` snapshots (clocks, temperatures,
                              throttling, load)
warnings           list[str]  the agent's warnings (few samples, high cv, throttling, ...)
                              plus any added here
group_key          str|None   the comparison group the record was timed in (the agent job's ``job_id``:
                              every member of one group was measured in the same interleaved
                              rounds, so their round ``r`` is the same stretch of time); None for
                              records made before schema 4 and for results without a group
rounds             int|None   ``R``, the number of interleaved rounds the group was timed in;
                              None before schema 4 (statistics then read one round)
sample_rounds      list|None  the round index (0..R-1) of each entry of ``samples_ns``, same
                              length; None before schema 4 (statistics then put every sample in
                              round 0, see ``results.intervals.round_medians``)
load_s             float|None cold start: seconds to load the artifact in a fresh process (session
                              creation, engine deserialisation), the agent's ``cold.load_s``
build_s            float|None cold start: seconds spent building (TensorRT engine build; 0 when the
                              runtime builds nothing), ``cold.build_s``
first_inference_ms float|None cold start: latency of the very first inference after that load, ms
peak_rss_mb        float|None peak resident memory of the fresh process that loaded the model and
                              ran the first inference, MiB (2^20 bytes); None where not measured
gpu_peak_mb        float|None peak GPU memory the runtime reports for that process, MiB (torch:
                              ``max_memory_allocated``); None where the runtime reports none
throughput_ips     float|None images per second, ``batch_size`` ÷ median seconds; ok records only
started            str|None   ISO 8601 UTC time the agent started (None if it never reported)
finished           str|None   ISO 8601 UTC time the job finished
git_rev            str        this project's git revision when the record was made (a resumed
                              run may span revisions, so it is kept per record)
agent_version      str|None   the agent's version (None when the transport failed)
extra              dict       everything else, kept so nothing is lost: job_id, timer, settings,
                              backend, warmup, measure, timings_s, transport (name,
                              returncode, wall_s), the error traceback, the group's round
                              design (``round_orders``: the member ids in the order each round
                              visited them, ``seed``, ``isolated``: loaded one at a time,
                              ``cooldown``: the waits between rounds),
                              cold-start keys without a column (under ``cold``), unknown fields
                              (unknown job keys under ``job``)
=================  =========  ==================================================================

Statistics are the agent's own (it has every sample); they are copied as they
are, converted from ns to ms.  Trust them only when ``status`` is ``ok``.

The cold-start and memory fields come from the agent's ``cold`` dict (protocol
2: each member loaded once in a fresh child process, so that members of a group
do not hide each other's figures); a result without one (protocol 1, an error
before the cold start) leaves them None.  Confidence intervals of speedups and
whether a cell can be trusted are not stored: ``results.intervals`` computes
them from the samples and their rounds when a report is made.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping

RECORD_VERSION = 3  # 2: entry, base_entry, label, device_label and top1 are columns, no longer extra["job"];
#                     3: group_key, rounds, sample_rounds, cold start, memory and throughput columns

RECORD_FIELDS: tuple[str, ...] = (
    "run_id", "job_key", "model", "variant", "entry", "base_entry", "label", "artifact_sha256", "format",
    "artifact_path", "device", "device_label", "runtime", "runtime_options", "batch_size", "input_shape", "macs",
    "params", "top1",
    "status", "error_stage", "error_type", "error_message", "stderr_tail",
    "n", "min_ms", "median_ms", "mean_ms", "max_ms", "p90_ms", "p99_ms", "std_ms", "cv",
    "samples_ns", "providers", "provider_fallback", "env", "warnings",
    "group_key", "rounds", "sample_rounds",
    "load_s", "build_s", "first_inference_ms", "peak_rss_mb", "gpu_peak_mb", "throughput_ips",
    "started", "finished", "git_rev", "agent_version", "extra",
)

# Fields holding lists / dicts: JSON in SQLite, JSON strings in CSV.
JSON_FIELDS: frozenset[str] = frozenset(
    {"runtime_options", "input_shape", "samples_ns", "providers", "env", "warnings", "sample_rounds", "extra"})

#: Fields as long as the samples: what ``Store.records(with_samples=False)`` leaves out.
SAMPLE_FIELDS: tuple[str, ...] = ("samples_ns", "sample_rounds")

STATUSES = ("ok", "error")

# (stats key in the agent result, record field): every latency is converted ns -> ms.
_STAT_FIELDS_NS = (("min_ns", "min_ms"), ("median_ns", "median_ms"), ("mean_ns", "mean_ms"),
                   ("max_ns", "max_ms"), ("p90_ns", "p90_ms"), ("p99_ns", "p99_ms"), ("std_ns", "std_ms"))

# Top-level keys of an agent result that have a column of their own; the rest goes to ``extra``.
_CONSUMED_RESULT_KEYS = frozenset({
    "status", "error", "samples_ns", "stats", "env", "warnings", "providers", "provider_fallback",
    "started_utc", "finished_utc", "agent_version", "transport", "runtime", "format", "artifact_sha256",
    "group_key", "rounds", "sample_rounds", "cold",
})
# (key of the agent's ``cold`` dict, record field, factor to the field's unit)
_COLD_FIELDS = (("load_s", "load_s", 1.0), ("build_s", "build_s", 1.0),
                ("first_inference_ns", "first_inference_ms", 1e-6),
                ("peak_rss_bytes", "peak_rss_mb", 1 / 2 ** 20), ("gpu_peak_bytes", "gpu_peak_mb", 1 / 2 ** 20))
_ARTIFACT_KEYS = frozenset({"sha256", "format", "path", "macs", "params"})
_JOB_KEYS = frozenset({"job_key", "model", "variant", "entry", "base", "label", "artifact", "device",
                       "device_label", "runtime", "runtime_options", "batch_size", "input_shape", "top1"})
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class RecordError(ValueError):
    """The job description cannot identify a record (missing or malformed identity field)."""


# --------------------------------------------------------------------------
# Job keys
# --------------------------------------------------------------------------

def _key_part(name: str, value: Any) -> str:
    """One identity field as it appears in a job key; '|' is the separator, so it is refused."""
    text = str(value)
    if not text or "|" in text or text != text.strip():
        raise RecordError(f"{name} must be a non-empty string without '|' or surrounding spaces, got {value!r}")
    return text


def _option_value(value: Any) -> str:
    """Render an option value: strings bare, everything else as compact JSON (true, 4, ["a","b"])."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def options_key(runtime_options: Mapping[str, Any] | None) -> str:
    """Canonical text of runtime options: ``k=v`` sorted by name, comma-joined; ``default`` when empty.

    Sorted so that the same options written in another order give the same key
    (``--resume`` must recognise a job whatever order bench.toml lists them in).
    """
    if not runtime_options:
        return "default"
    parts = [f"{k}={_option_value(v)}" for k, v in sorted(runtime_options.items())]
    return _key_part("runtime_options", ",".join(parts))


def _job_key_text(key: Any) -> str:
    """A given job key is taken as is (callers may use their own scheme) but must be a non-empty string."""
    if not isinstance(key, str) or not key.strip():
        raise RecordError(f"job_key must be a non-empty string, got {key!r}")
    return key


def _batch_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RecordError(f"batch_size must be a positive integer, got {value!r}")
    return value


def job_key(model: str, variant: str, format: str, device: str, runtime: str,
            runtime_options: Mapping[str, Any] | None, batch_size: int) -> str:
    """The stable key of one job within a run.

    ``model|variant|format|device|runtime|options|bs<N>``, e.g.
    ``deit_tiny_patch16_224|snp:deit_tiny|onnx|pi|onnxruntime|threads=4|bs1``.
    Readable on purpose (it shows up in logs and ``--resume`` messages) and
    free of the artifact hash, so a re-export of the same variant resumes too.
    """
    parts = [_key_part("model", model), _key_part("variant", variant), _key_part("format", format),
             _key_part("device", device), _key_part("runtime", runtime), options_key(runtime_options),
             f"bs{_batch_size(batch_size)}"]
    return "|".join(parts)


def job_key_of(job: Mapping[str, Any]) -> str:
    """The job key of a job dict (the shape :func:`make_record` takes)."""
    artifact = job.get("artifact") or {}
    return job_key(job.get("model", ""), job.get("variant", ""), artifact.get("format", ""), job.get("device", ""),
                   job.get("runtime", ""), job.get("runtime_options") or {}, job.get("batch_size"))


# --------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------

def _ms(value: Any) -> float | None:
    return None if value is None else float(value) / 1e6


def _stats_fields(stats: Mapping[str, Any] | None) -> dict[str, Any]:
    """Summary statistics in ms from the agent's ``stats`` (None when the agent sent none)."""
    stats = stats or {}
    out: dict[str, Any] = {field: _ms(stats.get(key)) for key, field in _STAT_FIELDS_NS}
    out["n"] = int(stats.get("n") or 0)
    out["cv"] = None if stats.get("cv") is None else float(stats["cv"])
    return out


def _optional_text(value: Any) -> str | None:
    """A descriptive job field (entry, base, labels): its text, None when absent or empty."""
    return None if value is None or str(value) == "" else str(value)


def _identity(run_id: str, job: Mapping[str, Any], git_rev: str, exported: bool = True) -> dict[str, Any]:
    """The fields that come from the planned job, validated: they key the record, so they must be sound.

    `exported` is False for a job whose artifact could not be made: its sha256 is then empty.
    """
    artifact = job.get("artifact")
    if not isinstance(artifact, Mapping):
        raise RecordError("job['artifact'] must be an object with sha256 and format")
    sha = str(artifact.get("sha256") or "").lower()
    if not (_SHA256_RE.match(sha) or (sha == "" and not exported)):
        raise RecordError(f"job['artifact']['sha256'] is not a sha256 hex digest: {artifact.get('sha256')!r}")
    options = job.get("runtime_options") or {}
    if not isinstance(options, Mapping):
        raise RecordError(f"job['runtime_options'] must be an object, got {options!r}")
    key = job.get("job_key") or job_key_of(job)
    shape = job.get("input_shape")
    top1 = job.get("top1")
    return {
        "run_id": _key_part("run_id", run_id),
        "job_key": _job_key_text(key),
        "model": _key_part("model", job.get("model", "")),
        "variant": _key_part("variant", job.get("variant", "")),
        "entry": _optional_text(job.get("entry")),
        "base_entry": _optional_text(job.get("base")),
        "label": _optional_text(job.get("label")),
        "artifact_sha256": sha,
        "format": _key_part("format", artifact.get("format", "")),
        "artifact_path": None if artifact.get("path") is None else str(artifact["path"]),
        "device": _key_part("device", job.get("device", "")),
        "device_label": _optional_text(job.get("device_label")),
        "runtime": _key_part("runtime", job.get("runtime", "")),
        "runtime_options": dict(options),
        "batch_size": _batch_size(job.get("batch_size")),
        "input_shape": None if shape is None else [int(d) for d in shape],
        "macs": None if artifact.get("macs") is None else int(artifact["macs"]),
        "params": None if artifact.get("params") is None else int(artifact["params"]),
        "top1": None if top1 is None else float(top1),
        "git_rev": str(git_rev),
    }


def _number(value: Any) -> float | None:
    """A finite number the agent sent, as float; None for a missing or non-numeric value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _round_fields(result: Mapping[str, Any]) -> dict[str, Any]:
    """group_key, rounds and sample_rounds of a protocol-2 member result (None each when it has none)."""
    rounds = result.get("sample_rounds")
    group = result.get("group_key")
    return {"group_key": None if group in (None, "") else str(group),
            "rounds": _count(result.get("rounds")),
            "sample_rounds": list(rounds) if isinstance(rounds, (list, tuple)) else None}


def _cold_fields(result: Mapping[str, Any]) -> dict[str, Any]:
    """Cold start and memory in the record's units from the agent's ``cold`` dict (None each without one)."""
    cold = result.get("cold") if isinstance(result.get("cold"), Mapping) else {}
    out = {}
    for key, field, factor in _COLD_FIELDS:
        value = _number(cold.get(key))
        out[field] = None if value is None else value * factor
    return out


def _inconsistency(job_ids: dict[str, Any], result: Mapping[str, Any], samples: list[int]) -> str | None:
    """Why an ``ok`` result cannot be trusted, or None.  Such a result becomes an error record."""
    sha = result.get("artifact_sha256")
    if sha and str(sha).lower() != job_ids["artifact_sha256"]:
        return f"the agent timed artifact {sha}, not the job's {job_ids['artifact_sha256']}"
    stats = result.get("stats") or {}
    if not samples or not stats.get("n") or stats.get("median_ns") is None:
        return "the agent reported ok but sent no samples or statistics"
    if int(stats["n"]) != len(samples):
        return f"the agent's stats count {stats['n']} samples but it sent {len(samples)}"
    rounds, count = job_ids["sample_rounds"], job_ids["rounds"]
    if result.get("sample_rounds") is not None and rounds is None:
        return "the agent's sample_rounds is not a list"
    if rounds is not None:
        if len(rounds) != len(samples):
            return f"the agent sent {len(samples)} samples but {len(rounds)} round indices"
        if any(isinstance(r, bool) or not isinstance(r, int) or r < 0 or (count is not None and r >= count)
               for r in rounds):
            return f"the agent's round indices are not all integers in 0..{'R-1' if count is None else count - 1}"
    return None


def _stderr_tail(result: Mapping[str, Any]) -> str:
    """The agent's stderr tail: a transport error carries it in ``error``, every transport in ``transport``."""
    error = result.get("error") or {}
    transport = result.get("transport") or {}
    return str(error.get("stderr_tail") or transport.get("stderr_tail") or "")


def _extra(job: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any]:
    """Everything of the job and result without a column, so a record loses nothing the agent said."""
    extra: dict[str, Any] = {"record_version": RECORD_VERSION}
    extra.update({k: v for k, v in result.items() if k not in _CONSUMED_RESULT_KEYS})
    cold = result.get("cold")
    if isinstance(cold, Mapping):
        rest = {k: v for k, v in cold.items() if k not in {key for key, _, _ in _COLD_FIELDS}}
        if rest:
            extra["cold"] = rest
    transport = result.get("transport")
    if isinstance(transport, Mapping):
        extra["transport"] = {k: v for k, v in transport.items() if k != "stderr_tail"}
    error = result.get("error")
    if isinstance(error, Mapping) and error.get("traceback"):
        extra["error_traceback"] = error["traceback"]
    manifest = {k: v for k, v in (job.get("artifact") or {}).items() if k not in _ARTIFACT_KEYS}
    if manifest:
        extra["artifact_manifest"] = manifest
    job_rest = {k: v for k, v in job.items() if k not in _JOB_KEYS}
    if job_rest:
        extra["job"] = job_rest
    return extra


def make_record(run_id: str, job: Mapping[str, Any], agent_result: Mapping[str, Any], git_rev: str) -> dict[str, Any]:
    """Build the record of one finished job from the planned job and the agent's (or transport's) result.

    ``job`` holds ``job_key`` (computed with :func:`job_key_of` when absent),
    ``model``, ``variant``, ``artifact`` {sha256, format, path, macs, params},
    ``device``, ``runtime``, ``runtime_options``, ``batch_size`` and
    ``input_shape``, and optionally what the reports show: ``entry``,
    ``base`` (stored as ``base_entry``), ``label``, ``device_label`` and
    ``top1`` (a missing or empty one is None).  A malformed identity field
    raises :class:`RecordError` (that is a planner bug, found before any job
    runs).  Any other job key is kept in ``extra["job"]``.

    ``agent_result`` is the agent's protocol-1 result or, for protocol 2, one
    member's part of the group result (``harness.jobs.member_result``): the
    member dict with the group's env, settings and timings plus
    ``sample_rounds`` (the round of each sample), ``rounds`` (R),
    ``group_key`` (the group's ``job_id``), ``cold`` (``load_s``, ``build_s``,
    ``first_inference_ns``, ``peak_rss_bytes``, ``gpu_peak_bytes``, or None)
    and ``round_orders``, ``seed`` and ``cooldown`` (kept in ``extra``).  A
    result without them gives None in those fields.

    Whatever the result says, a record comes out: an ``error`` result (from
    the agent or a transport) gives an error record with stage, message and
    stderr tail; an ``ok`` result that is inconsistent (no samples, stats that
    do not match the samples, round indices that do not match the samples or
    fall outside ``0..R-1``, another artifact's sha256) gives an error record
    with stage ``record`` and keeps its samples, so the evidence stays.
    """
    if not isinstance(agent_result, Mapping):
        raise TypeError(f"agent_result must be a dict, got {type(agent_result).__name__}")
    failed_export = agent_result.get("status") != "ok" and (agent_result.get("error") or {}).get("stage") == "export"
    record = _identity(run_id, job, git_rev, exported=not failed_export)
    samples = [int(s) for s in (agent_result.get("samples_ns") or [])]
    warnings = [str(w) for w in (agent_result.get("warnings") or [])]
    shape = record["input_shape"]
    if shape and shape[0] != record["batch_size"]:
        warnings.append(f"record: input_shape[0]={shape[0]} differs from batch_size={record['batch_size']}")
    fallback = agent_result.get("provider_fallback")
    record.update({
        "status": "ok", "error_stage": None, "error_type": None, "error_message": None, "stderr_tail": None,
        **_stats_fields(agent_result.get("stats")),
        "samples_ns": samples,
        "providers": agent_result.get("providers"),
        "provider_fallback": None if fallback is None else bool(fallback),
        "env": agent_result.get("env"),
        "warnings": warnings,
        **_round_fields(agent_result),
        **_cold_fields(agent_result),
        "throughput_ips": None,
        "started": agent_result.get("started_utc"),
        "finished": agent_result.get("finished_utc"),
        "agent_version": agent_result.get("agent_version"),
        "extra": _extra(job, agent_result),
    })
    if agent_result.get("status") == "ok":
        problem = _inconsistency(record, agent_result, samples)
        if problem:
            record.update(status="error", error_stage="record", error_type="InconsistentResult",
                          error_message=problem, stderr_tail=_stderr_tail(agent_result))
        elif record["median_ms"]:
            record["throughput_ips"] = record["batch_size"] / (record["median_ms"] / 1e3)
    else:
        error = agent_result.get("error") if isinstance(agent_result.get("error"), Mapping) else {}
        record.update(status="error", error_stage=str(error.get("stage") or "unknown"),
                      error_type=None if error.get("type") is None else str(error["type"]),
                      error_message=str(error.get("message") or
                                        f"result status {agent_result.get('status')!r} without an error message"),
                      stderr_tail=_stderr_tail(agent_result))
    return {field: record[field] for field in RECORD_FIELDS}
