"""Device agent: times a comparison group of model artifacts with one runtime and reports the result.

This file is shipped, on its own, to every benchmark device (a Raspberry Pi, a
Jetson, a Xeon box, a GPU workstation) and run there as

    <python> agent.py            < job.json   > result.json   (logs on stderr)
    <python> agent.py --probe [--workdir DIR]                  (health check)
    <python> agent.py --version
    <python> agent.py --cold     < member.json > cold.json     (internal: see below)
    <python> agent.py --probe-runtime NAME                     (internal: see "Probe")

It must run on Python >= 3.6 with only the standard library plus the runtime it
times (onnxruntime, torch or tensorrt, each imported lazily by the backend that
needs it, so an onnxruntime-only Pi never needs torch).  It never imports
anything else from this project: the device has nothing but this file.
Because of Python 3.6 there are no f-strings with "=", no dataclasses, no
walrus, no ``subprocess.run(capture_output=...)`` and no ``perf_counter_ns``.

Protocol (version 3)
====================

Why rounds: a speedup is the ratio of two latencies.  Timed one after the
other, in one block each, the ratio also measures whatever changed on the
device between the blocks (load, clocks, temperature).  Protocol 2 therefore
times a *comparison group* (the original model and its pruned versions, one
runtime, one set of options, one format) in one process, alternately: R
rounds, each visiting every member once in a seeded random order, so that a
drift of the device hits every member alike.

The job is ONE JSON object on stdin (never on the command line, so nothing
leaks into ``ps`` and there is no quoting to get wrong).  Fields:

``protocol``    int, required, 3 (or 2: a protocol-3 job without per-member
                ``options``).  Anything else (protocol 1 included) is an
                error result in stage "parse" that names the protocols this
                agent speaks: a job is never half-understood (an agent of
                protocol 2 refuses a protocol-3 job rather than ignore its
                members' options).
``job_id``      str or int, required: the group's key, echoed back.
``runtime``     "onnxruntime" (format onnx) | "torch" (torchscript or pt2)
                | "tensorrt" (format onnx: the engine is built ON the device).
``options``     object, optional, runtime specific, the group's (a member's
                own ``options`` override it key by key):
                onnxruntime: ``threads`` (intra-op threads), ``providers``
                  (list of names, or of [name, {provider options}]) or
                  ``execution_provider`` (one name), ``graph_optimization``
                  ("all" default | "extended" | "basic" | "disable"),
                  ``allow_spinning`` (bool; default: onnxruntime's, which
                  spins: session config entries
                  ``session.intra_op.allow_spinning`` / ``inter_op``),
                  ``execution_mode`` ("sequential" default | "parallel"),
                  ``inter_op_threads`` (int >= 1; only with "parallel", a
                  warning otherwise);
                torch: ``threads``, ``interop_threads``, ``device``
                  ("cpu" default | "cuda" | "cuda:N");
                tensorrt: ``precision`` ("fp32" default | "fp16"),
                  ``device`` ("cuda" | "cuda:N"), ``workspace_mb`` (1024).
                Unknown option names are reported as warnings, not errors.
``members``     non-empty list of objects, ids unique:
                ``id``        str: the member's key (one record each);
                ``artifact``  ``path`` (file on the device, absolute or relative
                              to the cwd), ``sha256`` (64 hex digits, checked
                              before use: stage "verify"), ``format`` ("onnx" |
                              "torchscript" | "pt2", one the runtime takes);
                ``input``     ``shape`` (list of positive ints, batch first) and
                              ``dtype`` ("float32" default | "float16"); random
                              normal data from a fixed seed;
                ``options``   object, optional (protocol 3): this member's
                              runtime options over the group's, so original
                              and pruned models each run at their own best
                              settings in the same rounds.  torch's thread
                              count is per process: it is set to the member's
                              before each of its warm-ups and timed blocks.
``warmup``      object, optional, per member, once after loading (before round
                0): ``iterations`` (default 200) and ``seconds`` (default 0);
                warm-up runs until BOTH are reached.
``measure``     object, optional, per member, TOTALS over all rounds:
                ``iterations`` (default 1000), ``min_seconds`` (default 10),
                ``max_iterations`` (default max(100000, iterations)),
                ``max_seconds`` (default none).  See "Round design".
``rounds``      int >= 1, optional (default 10): R.
``seed``        int, optional (default 0): seeds the round orders.
``rewarm``      object, optional: ``iterations`` (default 20) untimed runs of a
                member right before each of its blocks (the other members ran
                in between: caches, clocks and allocators are the other
                model's).
``isolate``     bool, optional (default false): load one member at a time
                (per block: load, re-warm, time, close), for devices that
                cannot hold every member in memory.  The full warm-up is then
                done in each member's first block, after its first load.
                False still isolates when the members would not fit: see
                "Memory" below (the result's ``isolated`` says what was done).
``cold_start``  bool, optional (default true): measure each member's cold start
                and memory in a fresh child process first (see below); false
                skips it (``cold`` null), e.g. where importing the runtime
                again per member costs more than the figures are worth.
``cooldown``    null (default, off) or object: ``max_temp_c`` (number, or null
                = off) and ``max_wait_s`` (default 120).  Between rounds the
                agent waits, polling once a second and at most ``max_wait_s``,
                until the hottest temperature it can read (every
                /sys/class/thermal zone and nvidia-smi's GPU temperatures, as
                in ``snapshot``) is below ``max_temp_c``.  A device without any
                temperature source gets one warning and no waiting.
``timeout_s``   number, optional (default 3600): wall-clock budget of the whole
                job, lock wait included, counted from the agent's start.  The
                agent stops measuring with a reserve left to report.  A
                transport should kill the agent a little later than this
                (Python start-up and imports are not counted here).
``workdir``     str, required: the device's working folder.  The device lock
                is ``<workdir>/agent.lock`` and TensorRT engines are cached in
                ``<workdir>/engines/``.  Every client of one device must use the
                same workdir, otherwise the lock does not protect anything.
``watch_stdin`` bool, optional (default false): the cancellation watchdog.
                False: the job is all of stdin, read to EOF (the transport
                closes stdin once the job is written).  True: the transport
                writes the job as ONE line (``json.dumps(job) + "\n"``, no
                newline inside) and keeps stdin open while it waits for the
                result; the agent takes the first line as the job and a daemon
                thread reads (and drops) the rest of stdin.  EOF there means the
                transport gave up (timeout, Ctrl-C, a dead harness or a dropped
                SSH connection): the agent stops as on SIGTERM (the job ends in
                error, "cancelled: stdin closed ..."), writes its result if stdout
                still leads anywhere, releases the lock and exits.  The same
                thread also stops the job when the process that started the
                agent (sshd's session, the harness) is gone, checked every
                ``WATCH_POLL_S``: an EOF that never arrives cannot keep an
                orphaned agent measuring.  A job that
                says true but did not come as one newline-ended line is a parse
                error.  Not part of ``settings``; the ``--cold`` child never
                watches (its parent gives it its job and closes its stdin).

Round design.  Round r (0..R-1, always all of them) visits every member once,
in the order ``random.Random(seed * 1000003 + r).shuffle`` gives the member ids
(in job order); the orders are recorded.  Per member per round (a *block*):
``rewarm.iterations`` untimed runs, then timed runs until BOTH
``ceil(iterations / R)`` runs and ``min_seconds / R`` seconds are reached
(the SNP paper times ">= 1000 iterations or >= 10 s" per model; we take the
stricter reading so fast and slow devices both get a stable figure), stopping
early at the member's share of ``max_iterations`` (what is left of it over the
rounds left, rounded up), at ``max_seconds / R``, or when the job timeout is
near; stopping early is a warning, not an error.  Every sample keeps its
round index (``sample_rounds``).

Cold start and memory.  Before the timing process loads anything, each
member is loaded once in a fresh child process (``agent.py --cold``, reading
a one-member protocol-2 job on stdin, writing one small JSON object on stdout,
under the parent's lock: it takes no lock and does not verify again), so that
members cannot hide each other's figures: load time (session creation, engine
deserialisation), TensorRT build time separately (the build fills the engine
cache the timing process then uses), the host wall time of the first
(synchronised) inference, the child's peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, KiB on Linux -> bytes; null
where ``resource`` is missing) and the GPU peak memory where the runtime tells
it (torch on CUDA: ``torch.cuda.max_memory_allocated`` after the first
inference; null for onnxruntime and TensorRT).  A child that fails leaves
``cold`` null with a member warning; the member is still timed.

Memory.  Before loading the group the agent estimates what each member adds
to the timing process: its cold child's peak RSS less the child's peak RSS
before it loaded anything (``base_rss_bytes``), or, without a cold start,
twice the artifact's size (the weights, plus the runtime's copy while it
builds its session).  When the members together need more than MEMORY_SHARE (0.8) of
the device's ``MemAvailable`` (/proc/meminfo), the group is isolated as if
``isolate`` were true, with a group warning that gives both figures; a device
that reports no MemAvailable is never isolated for memory.

The result is ONE JSON object on stdout.  The agent redirects file descriptor 1
to stderr while it works, so a runtime that prints on stdout (TensorRT, C++
loggers) cannot corrupt the document.  Group fields:

``protocol``, ``agent_version``, ``job_id``, ``status`` ("ok" unless the group
failed as a whole; then "error" and ``error`` says why), ``runtime``,
``settings`` (the job with defaults filled in), ``env`` (see ``capture_env``;
``before`` / ``after``: ``snapshot`` right before round 0 and after the last
round), ``rounds``, ``seed``, ``isolated`` (true when the members were loaded
one at a time: asked, or for memory), ``round_orders`` (one list of member ids
per round), ``cooldown`` (one ``{"round", "waited_s", "temp_c"}`` per round
boundary when cool-down is on and a temperature is readable, else []),
``warnings`` (group warnings: unknown options, cool-down, environment changes
between ``before`` and ``after`` such as throttling), ``error`` (null, or
``stage``, ``type``, ``message``, ``traceback`` tail: a group failure such as
parse or lock, or a termination; every member is then an error member too),
``timings_s`` (phase durations summed over members: lock_wait, verify, cold,
load, build, warmup, rewarm, measure, cooldown, total), ``started_utc`` /
``finished_utc`` (ISO 8601) and ``members``, one object per member, in job
order:

``id``, ``status`` ("ok" | "error"), ``format``, ``artifact_sha256``,
``options`` (the member's runtime options as used, defaults filled in),
``backend`` (runtime-specific facts: for onnxruntime ``providers`` actually
active, ``requested_providers``, ``available_providers``,
``provider_fallback``; for torch ``device`` and thread counts; for tensorrt
``precision``, ``api`` ("v2" bindings / "v3" named tensors), ``engine`` cache
facts), ``providers`` and ``provider_fallback`` (copied up for onnxruntime,
null otherwise), ``timer`` ("perf_counter" on the host for synchronous CPU
runs, "cuda_events" for GPU runs), ``samples_ns`` (every measured iteration,
integer nanoseconds, in the order they ran) and ``sample_rounds`` (the round
of each sample, same length), ``stats`` over all the member's samples (``n``,
``min_ns``, ``max_ns``, ``median_ns``, ``mean_ns``, ``p90_ns``, ``p99_ns``,
``std_ns`` (sample standard deviation, n-1), ``cv`` = std/mean; percentiles
interpolate linearly between order statistics like numpy's default),
``warmup`` (``iterations``, ``seconds``), ``measure`` (``iterations``,
``seconds``, ``stop_reason`` ("target", else the most severe of "timeout",
"max_seconds", "max_iterations" among its blocks), ``rounds``,
``round_iterations`` / ``round_seconds`` per round, ``rewarm_iterations``,
``rewarm_seconds``, ``loads``, ``load_s`` and ``build_s`` of the timing
process), ``cold`` (``load_s``, ``build_s``, ``first_inference_ns``,
``peak_rss_bytes``, ``base_rss_bytes``, ``gpu_peak_bytes``, or null), ``warnings`` (few samples,
high cv, provider fallback, ...) and ``error`` (null or as above).  A member
that fails (verify, load, build, warm-up, a run raising, no sample before the
timeout) is an error member with no samples; the others go on.  Error
stages: "parse", "lock", "verify", "load", "build", "warmup", "measure".  The
exit code is 0 whenever a result document was written, even for a failed job.

Order of work: parse -> lock -> verify (every member) -> cold start (a child
per member) -> load every member (unless isolate) -> warm-up (every member)
-> rounds -> close.  Everything that loads the CPU (hashing a 300 MB artifact
on a Pi, importing torch, building a TensorRT engine) happens under the lock
so that it cannot disturb another agent's timing on the same device.

GPU timings use CUDA events recorded on the stream around each iteration and
an event synchronize, never the host time of an asynchronous call.  TensorRT
and torch CUDA keep input and output on the device: the time is the model, not
host<->device copies.  onnxruntime with the CUDA or TensorRT execution provider
uses IO binding with device-resident tensors when it can (the run is
synchronous there, so host time is valid), else plain ``session.run``.

TensorRT buffers come from pycuda when it is installed, else from torch CUDA
tensors (torch's allocator, streams and events); one of the two is needed.

Diagnostics.  ``faulthandler`` is enabled (to stderr) at start, so a fatal
signal (SIGSEGV or SIGBUS in a runtime, SIGABRT, SIGFPE, SIGILL) dumps every
thread's Python traceback before the process dies; and every stage change is
logged as one stderr line ("stage load member base", "stage measure member
base round 3"), so the stderr tail a transport keeps says where an agent that
died without a result was.

Probe.  ``--probe`` reports the Python, the environment (``capture_env`` and a
``snapshot``) and each runtime in ``runtimes``: ``importable``, ``version``,
details (onnxruntime ``providers``, torch ``cuda_available`` ...) or
``error``.  Each runtime is imported in its own child process
(``agent.py --probe-runtime NAME``, one after the other), so a runtime whose
import crashes the interpreter costs only its own entry ("import crashed:
killed by SIGSEGV", with the child's ``stderr_tail``).  With ``--workdir``
and the device lock held by a job, nothing is imported (it would disturb
that job's timing): ``busy`` is true, ``lock_holder`` is what the lock file
records (``pid``, ``job_id``, ``since_utc``) and ``busy_reason`` says "busy:
lock held by job <job_id> since <time>, pid <pid>".
"""

import argparse
import faulthandler
import fcntl
import glob
import hashlib
import json
import math
import os
import platform
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from datetime import datetime, timezone

AGENT_VERSION = "3.0.0"
PROTOCOL = 3
#: Protocol 2 is protocol 3 without per-member ``options``: an older harness still gets its jobs run.
ACCEPTED_PROTOCOLS = (2, 3)

RUNTIME_FORMATS = {
    "onnxruntime": ("onnx",),
    "torch": ("torchscript", "pt2"),
    "tensorrt": ("onnx",),
}
RUNTIME_OPTIONS = {
    "onnxruntime": ("threads", "providers", "execution_provider", "graph_optimization", "allow_spinning",
                    "execution_mode", "inter_op_threads"),
    "torch": ("threads", "interop_threads", "device"),
    "tensorrt": ("precision", "device", "workspace_mb"),
}
DTYPES = ("float32", "float16")
DEFAULT_WARMUP = {"iterations": 200, "seconds": 0.0}
DEFAULT_MEASURE = {"iterations": 1000, "min_seconds": 10.0, "max_iterations": 100000, "max_seconds": None}
DEFAULT_TIMEOUT_S = 3600.0
DEFAULT_ROUNDS = 10
DEFAULT_SEED = 0
DEFAULT_REWARM = {"iterations": 20}
DEFAULT_COOLDOWN_MAX_WAIT_S = 120.0
COOLDOWN_POLL_S = 1.0
ROUND_SEED_FACTOR = 1000003
CV_WARNING = 0.1
PROBE_TIMEOUT_S = 5.0
TRACEBACK_TAIL_CHARS = 4000
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def log(message):
    """Log one line to stderr; stdout is reserved for the result document.

    A stderr that leads nowhere (its reader, the harness or sshd's session, is
    gone: EPIPE) is not an error: the line is dropped.  Raising here would kill
    the stdin watchdog before it stops the job, and an orphaned agent would go
    on measuring with the device lock held.
    """
    try:
        sys.stderr.write("[agent %s] %s\n" % (time.strftime("%H:%M:%S"), message))
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def utc_now():
    """Current UTC time as an ISO 8601 string (what records store)."""
    return datetime.now(timezone.utc).isoformat()


class AgentError(Exception):
    """A failure with a known stage and a message meant for the user."""

    def __init__(self, stage, message):
        Exception.__init__(self, message)
        self.stage = stage


class JobError(AgentError):
    """The job document is malformed; the message names the offending field."""

    def __init__(self, message):
        AgentError.__init__(self, "parse", message)


class Terminated(BaseException):
    """Raised by the SIGTERM handler so a terminated agent still reports.

    A BaseException, so that no ``except Exception`` (a member's failure
    handling, a runtime's own) swallows it: it ends the whole group.
    """


class Progress(object):
    """Which stage the agent is in, so an unexpected exception can be blamed on it.

    Every change is also logged as one short stderr line ("stage load member
    base", "stage measure member base round 3"): an agent killed by a signal
    writes no result and raises nothing, so its stderr tail (which transports
    keep) is what says where it died.
    """

    def __init__(self, what="job"):
        self.what = what
        self._stage = "parse"
        self._where = (None, None, None)
        self._logged = None

    @property
    def stage(self):
        return self._stage

    @stage.setter
    def stage(self, stage):
        """A stage change within the current member and round (a backend's "build", then "load" again)."""
        self._stage = stage
        self._log()

    def at(self, stage, member=None, round_index=None, note=None):
        """Enter ``stage`` for ``member`` (an id) in round ``round_index``; None for the group as a whole."""
        self._where = (member, round_index, note)
        self.stage = stage

    def _log(self):
        member, round_index, note = self._where
        line = "stage %s" % self._stage
        if self.what != "job":
            line = "%s %s" % (self.what, line)
        if member is not None:
            line += " member %s" % member
        if round_index is not None:
            line += " round %d" % round_index
        if note:
            line += " (%s)" % note
        if line != self._logged:
            self._logged = line
            log(line)


# --------------------------------------------------------------------------
# Job parsing
# --------------------------------------------------------------------------

_REQUIRED = object()


def _type_names(kinds):
    names = {int: "integer", float: "number", str: "string", list: "list", dict: "object", bool: "boolean"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _field(obj, key, where, kinds, default=_REQUIRED):
    """Return obj[key] checked against `kinds`, or `default` when absent.

    Raises JobError naming ``where.key`` so a bad job says exactly what is wrong.
    A bool is never accepted as a number (JSON true is not 1 iterations).
    """
    if key not in obj or obj[key] is None:
        if default is _REQUIRED:
            raise JobError("job field %s.%s is missing" % (where, key))
        return default
    value = obj[key]
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        raise JobError("job field %s.%s must be %s, got %s %r"
                       % (where, key, _type_names(kinds), type(value).__name__, value))
    return value


def _non_negative(value, name):
    if value < 0 or (isinstance(value, float) and not math.isfinite(value)):
        raise JobError("job field %s must be a finite number >= 0, got %r" % (name, value))
    return value


def parse_job(text):
    """Parse and validate the job JSON; return a normalised dict with defaults filled in."""
    raw = _load_job_json(text)
    protocol = raw.get("protocol")
    if not isinstance(protocol, int) or isinstance(protocol, bool) or protocol not in ACCEPTED_PROTOCOLS:
        raise JobError("job field job.protocol is %s: this agent (version %s) speaks protocol %d (and %s, "
                       "without per-member options) only"
                       % ("missing" if protocol is None else repr(protocol), AGENT_VERSION, PROTOCOL,
                          ", ".join(str(p) for p in ACCEPTED_PROTOCOLS if p != PROTOCOL)))
    job = {"protocol": protocol, "job_id": _field(raw, "job_id", "job", (str, int))}

    runtime = _field(raw, "runtime", "job", (str,))
    if runtime not in RUNTIME_FORMATS:
        raise JobError("job field job.runtime must be one of %s, got %r" % (sorted(RUNTIME_FORMATS), runtime))
    job["runtime"] = runtime
    raw_options = _field(raw, "options", "job", (dict,), {})
    job["options"] = _parse_options(runtime, raw_options)
    job["options_raw"] = raw_options  # what a --cold child is given, parsed again there

    members = _field(raw, "members", "job", (list,))
    if not members:
        raise JobError("job field job.members is an empty list: a group has at least one member")
    job["members"] = []
    seen = set()
    for i, member in enumerate(members):
        where = "job.members[%d]" % i
        if not isinstance(member, dict):
            raise JobError("job field %s must be an object, got %s" % (where, type(member).__name__))
        parsed = _parse_member(member, where, runtime)
        _member_options(parsed, member, where, job, raw_options)
        if parsed["id"] in seen:
            raise JobError("job field %s.id %r is not unique in job.members" % (where, parsed["id"]))
        seen.add(parsed["id"])
        job["members"].append(parsed)

    warm = _field(raw, "warmup", "job", (dict,), {})
    job["warmup"] = {
        "iterations": _non_negative(_field(warm, "iterations", "job.warmup", (int,), DEFAULT_WARMUP["iterations"]),
                                    "job.warmup.iterations"),
        "seconds": float(_non_negative(_field(warm, "seconds", "job.warmup", (int, float), DEFAULT_WARMUP["seconds"]),
                                       "job.warmup.seconds")),
    }
    meas = _field(raw, "measure", "job", (dict,), {})
    measure = {}
    measure["iterations"] = _non_negative(
        _field(meas, "iterations", "job.measure", (int,), DEFAULT_MEASURE["iterations"]), "job.measure.iterations")
    measure["min_seconds"] = float(_non_negative(
        _field(meas, "min_seconds", "job.measure", (int, float), DEFAULT_MEASURE["min_seconds"]),
        "job.measure.min_seconds"))
    measure["max_iterations"] = _field(meas, "max_iterations", "job.measure", (int,),
                                       max(DEFAULT_MEASURE["max_iterations"], measure["iterations"]))
    if measure["max_iterations"] < 1:
        raise JobError("job field job.measure.max_iterations must be >= 1, got %r" % measure["max_iterations"])
    max_seconds = _field(meas, "max_seconds", "job.measure", (int, float), None)
    if max_seconds is not None:
        max_seconds = float(_non_negative(max_seconds, "job.measure.max_seconds"))
    measure["max_seconds"] = max_seconds
    if measure["iterations"] < 1 and measure["min_seconds"] <= 0:
        raise JobError("job field job.measure: iterations and min_seconds are both 0, nothing would be measured")
    job["measure"] = measure

    rounds = _field(raw, "rounds", "job", (int,), DEFAULT_ROUNDS)
    if rounds < 1:
        raise JobError("job field job.rounds must be >= 1, got %r" % rounds)
    job["rounds"] = rounds
    job["seed"] = _field(raw, "seed", "job", (int,), DEFAULT_SEED)
    rewarm = _field(raw, "rewarm", "job", (dict,), {})
    job["rewarm"] = {"iterations": _non_negative(
        _field(rewarm, "iterations", "job.rewarm", (int,), DEFAULT_REWARM["iterations"]), "job.rewarm.iterations")}
    job["isolate"] = _field(raw, "isolate", "job", (bool,), False)
    job["cold_start"] = _field(raw, "cold_start", "job", (bool,), True)
    cooldown = _field(raw, "cooldown", "job", (dict,), None)
    job["cooldown"] = None
    if cooldown is not None:
        max_temp = _field(cooldown, "max_temp_c", "job.cooldown", (int, float), None)
        if max_temp is not None and not math.isfinite(max_temp):
            raise JobError("job field job.cooldown.max_temp_c must be a finite number, got %r" % max_temp)
        max_wait = float(_non_negative(
            _field(cooldown, "max_wait_s", "job.cooldown", (int, float), DEFAULT_COOLDOWN_MAX_WAIT_S),
            "job.cooldown.max_wait_s"))
        if max_temp is not None:
            job["cooldown"] = {"max_temp_c": float(max_temp), "max_wait_s": max_wait}

    timeout = float(_field(raw, "timeout_s", "job", (int, float), DEFAULT_TIMEOUT_S))
    if not (timeout > 0 and math.isfinite(timeout)):
        raise JobError("job field job.timeout_s must be a positive number, got %r" % raw.get("timeout_s"))
    job["timeout_s"] = timeout
    job["workdir"] = os.path.expanduser(_field(raw, "workdir", "job", (str,)))
    job["watch_stdin"] = _field(raw, "watch_stdin", "job", (bool,), False)
    return job


def _load_job_json(text):
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise JobError("job is not valid JSON: %s" % exc)
    if not isinstance(raw, dict):
        raise JobError("job must be a JSON object, got %s" % type(raw).__name__)
    return raw


def _parse_member(member, where, runtime):
    """One entry of job.members: id, artifact (path, sha256, format), input (shape, dtype)."""
    member_id = _field(member, "id", where, (str,))
    artifact = _field(member, "artifact", where, (dict,))
    path = _field(artifact, "path", where + ".artifact", (str,))
    sha = _field(artifact, "sha256", where + ".artifact", (str,)).lower()
    if not re.match(r"^[0-9a-f]{64}$", sha):
        raise JobError("job field %s.artifact.sha256 must be 64 hex digits, got %r" % (where, sha))
    fmt = _field(artifact, "format", where + ".artifact", (str,))
    all_formats = sorted(set(f for fs in RUNTIME_FORMATS.values() for f in fs))
    if fmt not in all_formats:
        raise JobError("job field %s.artifact.format must be one of %s, got %r" % (where, all_formats, fmt))
    if fmt not in RUNTIME_FORMATS[runtime]:
        raise JobError("job field %s.artifact.format %r cannot run with runtime %r (it takes %s)"
                       % (where, fmt, runtime, ", ".join(RUNTIME_FORMATS[runtime])))
    inp = _field(member, "input", where, (dict,))
    shape = _field(inp, "shape", where + ".input", (list,))
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise JobError("job field %s.input.shape must be a non-empty list of positive integers, got %r"
                       % (where, shape))
    dtype = _field(inp, "dtype", where + ".input", (str,), "float32")
    if dtype not in DTYPES:
        raise JobError("job field %s.input.dtype must be one of %s, got %r" % (where, list(DTYPES), dtype))
    return {"id": member_id, "artifact": {"path": path, "sha256": sha, "format": fmt},
            "input": {"shape": list(shape), "dtype": dtype}}


def _member_options(parsed, member, where, job, group_raw):
    """A member's own ``options`` (protocol 3) override the group's key by key; without them it has the group's.

    Why per member: the original and its pruned models are each timed at their own best settings (tuned on the
    device), still in the same interleaved rounds.
    """
    own = _field(member, "options", where, (dict,), None)
    if own is not None and job["protocol"] < 3:
        raise JobError("job field %s.options needs protocol 3, the job says protocol %d" % (where, job["protocol"]))
    merged = dict(group_raw)
    merged.update(own or {})
    parsed["options_raw"] = merged
    parsed["options"] = job["options"] if own is None else _parse_options(job["runtime"], merged,
                                                                          where + ".options")


def known_members(text):
    """The members a job that failed to parse names (id, format, sha256 where readable), for its error result."""
    try:
        raw = json.loads(text)
    except (ValueError, TypeError):
        return []
    members = raw.get("members") if isinstance(raw, dict) else None
    out = []
    for entry in members if isinstance(members, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        artifact = entry.get("artifact") if isinstance(entry.get("artifact"), dict) else {}
        fmt = artifact.get("format") if isinstance(artifact.get("format"), str) else None
        sha = artifact.get("sha256") if isinstance(artifact.get("sha256"), str) else None
        out.append({"id": entry["id"], "artifact": {"format": fmt, "sha256": sha}})
    return out


def member_job(job, member):
    """What a backend reads: one member's artifact and input with the group's runtime and workdir, and the
    member's options (the group's unless it has its own)."""
    return {"id": member["id"], "runtime": job["runtime"], "options": member.get("options", job["options"]),
            "workdir": job["workdir"], "artifact": member["artifact"], "input": member["input"]}


def public_options(options):
    """Parsed options as results report them: the values used, without the parser's bookkeeping."""
    return dict((k, v) for k, v in options.items() if k not in ("unknown", "notes"))


def round_orders(member_ids, seed, rounds):
    """The order each round visits the members: ``random.Random(seed * 1000003 + r).shuffle`` of the ids."""
    orders = []
    for r in range(rounds):
        order = list(member_ids)
        random.Random(seed * ROUND_SEED_FACTOR + r).shuffle(order)
        orders.append(order)
    return orders


def _parse_options(runtime, options, where="job.options"):
    """Validate the runtime options; unknown names are kept aside as warnings, settings without effect as notes."""
    known = RUNTIME_OPTIONS[runtime]
    out = {"unknown": sorted(k for k in options if k not in known), "notes": []}
    threads = _field(options, "threads", where, (int,), None) if "threads" in known else None
    if threads is not None and threads < 1:
        raise JobError("job field %s.threads must be >= 1, got %r" % (where, threads))
    out["threads"] = threads

    if runtime == "onnxruntime":
        providers = _field(options, "providers", where, (list, str), None)
        single = _field(options, "execution_provider", where, (str,), None)
        if providers is not None and single is not None:
            raise JobError("job fields %s.providers and %s.execution_provider are exclusive" % (where, where))
        if providers is None:
            providers = [single] if single is not None else ["CPUExecutionProvider"]
        elif isinstance(providers, str):
            providers = [providers]
        checked = []
        for i, entry in enumerate(providers):
            if isinstance(entry, str):
                checked.append([entry, None])
            elif (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                  and isinstance(entry[1], dict)):
                checked.append([entry[0], dict(entry[1])])
            else:
                raise JobError("job field %s.providers[%d] must be a name or [name, {options}], got %r"
                               % (where, i, entry))
        if not checked:
            raise JobError("job field %s.providers is an empty list" % where)
        out["providers"] = checked
        level = _field(options, "graph_optimization", where, (str,), "all")
        if level not in ("all", "extended", "basic", "disable"):
            raise JobError("job field %s.graph_optimization must be all|extended|basic|disable, got %r"
                           % (where, level))
        out["graph_optimization"] = level
        # None: onnxruntime's default (its intra-op threads spin while waiting for work)
        out["allow_spinning"] = _field(options, "allow_spinning", where, (bool,), None)
        mode = _field(options, "execution_mode", where, (str,), "sequential")
        if mode not in ("sequential", "parallel"):
            raise JobError("job field %s.execution_mode must be sequential|parallel, got %r" % (where, mode))
        out["execution_mode"] = mode
        inter = _field(options, "inter_op_threads", where, (int,), None)
        if inter is not None and inter < 1:
            raise JobError("job field %s.inter_op_threads must be >= 1, got %r" % (where, inter))
        if inter is not None and mode != "parallel":
            out["notes"].append("%s.inter_op_threads=%d has no effect with execution_mode sequential"
                                % (where, inter))
        out["inter_op_threads"] = inter

    elif runtime == "torch":
        interop = _field(options, "interop_threads", where, (int,), None)
        if interop is not None and interop < 1:
            raise JobError("job field %s.interop_threads must be >= 1, got %r" % (where, interop))
        out["interop_threads"] = interop
        out["device"] = _parse_device(_field(options, "device", where, (str,), "cpu"), allow_cpu=True, where=where)

    elif runtime == "tensorrt":
        precision = _field(options, "precision", where, (str,), "fp32")
        if precision not in ("fp32", "fp16"):
            raise JobError("job field %s.precision must be fp32 or fp16, got %r" % (where, precision))
        out["precision"] = precision
        out["device"] = _parse_device(_field(options, "device", where, (str,), "cuda:0"), allow_cpu=False,
                                      where=where)
        workspace = _field(options, "workspace_mb", where, (int,), 1024)
        if workspace < 1:
            raise JobError("job field %s.workspace_mb must be >= 1, got %r" % (where, workspace))
        out["workspace_mb"] = workspace
    return out


def _parse_device(text, allow_cpu, where="job.options"):
    """Normalise "cpu" / "cuda" / "cuda:N" to "cpu" or "cuda:N"."""
    if text == "cpu" and allow_cpu:
        return "cpu"
    m = re.match(r"^cuda(?::(\d+))?$", text)
    if not m:
        allowed = "cpu, cuda or cuda:N" if allow_cpu else "cuda or cuda:N"
        raise JobError("job field %s.device must be %s, got %r" % (where, allowed, text))
    return "cuda:%d" % int(m.group(1) or 0)


def device_index(device):
    """"cuda:3" -> 3."""
    return int(device.split(":", 1)[1])


# --------------------------------------------------------------------------
# Deadline, lock and verification
# --------------------------------------------------------------------------

class Deadline(object):
    """The job's wall-clock budget, with a reserve kept for reporting.

    ``work_left()`` is what the lock wait, warm-up and measurement may still use;
    the reserve (10 % of the timeout, at most 10 s) pays for the closing
    environment probes and writing the result, so the agent answers before a
    transport that uses the same timeout gives up on it.
    """

    def __init__(self, timeout_s):
        self.timeout_s = timeout_s
        self.start = time.monotonic()
        self.end = self.start + timeout_s
        self.reserve = min(10.0, 0.1 * timeout_s)

    def remaining(self):
        return self.end - time.monotonic()

    def work_left(self):
        return self.remaining() - self.reserve


class DeviceLock(object):
    """Exclusive ``flock`` on ``<workdir>/agent.lock``: one timing at a time per device.

    The kernel drops the lock when the holder dies, so a killed agent never
    leaves a stale lock.  The holder writes its pid and job id into the file,
    only so that a waiting agent can say who is in the way.
    """

    def __init__(self, workdir, deadline, job_id):
        self.path = os.path.join(workdir, "agent.lock")
        self.deadline = deadline
        self.job_id = job_id
        self.fd = None
        self.waited_s = 0.0

    def __enter__(self):
        if not os.path.isdir(os.path.dirname(self.path)):
            os.makedirs(os.path.dirname(self.path))
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        t0 = time.monotonic()
        logged = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except (IOError, OSError):
                    if self.deadline.work_left() <= 0:
                        raise AgentError("lock", "device busy: %s is held by %s; gave up after %.1f s (job timeout)"
                                         % (self.path, describe_lock_holder(read_lock_holder(self.path)),
                                            time.monotonic() - t0))
                    if not logged:
                        log("waiting for the device lock %s (held by %s)"
                            % (self.path, describe_lock_holder(read_lock_holder(self.path))))
                        logged = True
                    time.sleep(0.05)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.waited_s = time.monotonic() - t0
        holder = json.dumps({"pid": os.getpid(), "job_id": self.job_id, "since_utc": utc_now()})
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, holder.encode("utf-8"))
        except OSError:
            pass
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None
        return False


def read_lock_holder(path):
    """What the lock file records (``pid``, ``job_id``, ``since_utc``), or None (best effort: the holder
    writes it right after taking the lock, so it may be a moment late)."""
    try:
        with open(path) as f:
            info = json.loads(f.read(1000).strip())
    except (OSError, IOError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def describe_lock_holder(info):
    """"job g-1 since 2026-12-01T15:00:00+00:00, pid 4242", from what ``read_lock_holder`` read."""
    if not info:
        return "another agent (its lock file does not say which yet)"
    return "job %s since %s, pid %s" % (info.get("job_id"), info.get("since_utc"), info.get("pid"))


def lock_is_held(workdir):
    """True when another process holds ``<workdir>/agent.lock`` right now."""
    path = os.path.join(workdir, "agent.lock")
    if not os.path.exists(path):
        return False
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except (IOError, OSError):
        return True
    finally:
        os.close(fd)


def sha256_file(path, chunk=1 << 20):
    """Hex sha256 of a file, read in 1 MiB chunks (artifacts can be hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def verify_artifact(path, expected):
    if not os.path.isfile(path):
        raise AgentError("verify", "artifact not found on the device: %s" % path)
    actual = sha256_file(path)
    if actual != expected:
        raise AgentError("verify", "sha256 mismatch for %s: expected %s, file has %s" % (path, expected, actual))


# --------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------

def percentile(sorted_values, q):
    """Percentile q (0..100) with linear interpolation between order statistics.

    Same definition as numpy's default ("linear"), so records can be checked
    with numpy; the 50th percentile equals the median.
    """
    n = len(sorted_values)
    if n == 0:
        return None
    pos = (n - 1) * (q / 100.0)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def summarize(samples_ns):
    """Summary statistics of the latency samples (all values in ns except n and cv)."""
    n = len(samples_ns)
    if n == 0:
        return {"n": 0, "min_ns": None, "max_ns": None, "median_ns": None, "mean_ns": None,
                "p90_ns": None, "p99_ns": None, "std_ns": None, "cv": None}
    s = sorted(samples_ns)
    mean = math.fsum(s) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in s) / (n - 1)) if n > 1 else 0.0
    return {
        "n": n,
        "min_ns": s[0],
        "max_ns": s[-1],
        "median_ns": percentile(s, 50),
        "mean_ns": mean,
        "p90_ns": percentile(s, 90),
        "p99_ns": percentile(s, 99),
        "std_ns": std,
        "cv": (std / mean) if mean > 0 else None,
    }


# --------------------------------------------------------------------------
# Environment capture (every probe is best effort and never raises)
# --------------------------------------------------------------------------

_EXTRA_BIN_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/opt/vc/bin", "/usr/local/bin")


def _which(name):
    """shutil.which plus the sbin and Pi firmware folders a non-login SSH PATH lacks."""
    found = shutil.which(name)
    if found:
        return found
    for d in _EXTRA_BIN_DIRS:
        candidate = os.path.join(d, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def run_cmd(argv, timeout=PROBE_TIMEOUT_S):
    """Stdout of a short command, or None if it is missing, fails or hangs."""
    exe = _which(argv[0])
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe] + list(argv[1:]), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip()


def read_text(path, limit=65536):
    """Stripped file content (NULs removed: device-tree strings end in one), or None."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit)
        return data.replace(b"\x00", b"").decode("utf-8", "replace").strip()
    except (OSError, IOError):
        return None


def read_int(path):
    text = read_text(path, 64)
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _safe(fn, *args):
    """Call a probe; a probe that raises gives None (environment capture never fails a job)."""
    try:
        return fn(*args)
    except Exception as exc:  # pragma: no cover - defensive
        log("probe %s failed: %s" % (getattr(fn, "__name__", fn), exc))
        return None


#: ``CPU implementer`` codes of /proc/cpuinfo on ARM (MIDR_EL1 bits 31-24), for parts not in ARM_PARTS.
ARM_IMPLEMENTERS = {0x41: "ARM", 0x42: "Broadcom", 0x43: "Cavium", 0x48: "HiSilicon", 0x4e: "NVIDIA",
                    0x51: "Qualcomm", 0x61: "Apple", 0xc0: "Ampere"}
#: (implementer, ``CPU part``) -> core name, for the cores benchmark boards carry.
ARM_PARTS = {
    (0x41, 0xb76): "ARM1176", (0x41, 0xc07): "Cortex-A7", (0x41, 0xc0f): "Cortex-A15",
    (0x41, 0xd03): "Cortex-A53", (0x41, 0xd04): "Cortex-A35", (0x41, 0xd05): "Cortex-A55",
    (0x41, 0xd07): "Cortex-A57", (0x41, 0xd08): "Cortex-A72", (0x41, 0xd09): "Cortex-A73",
    (0x41, 0xd0a): "Cortex-A75", (0x41, 0xd0b): "Cortex-A76", (0x41, 0xd0c): "Neoverse-N1",
    (0x41, 0xd0d): "Cortex-A77", (0x41, 0xd40): "Neoverse-V1", (0x41, 0xd41): "Cortex-A78",
    (0x41, 0xd42): "Cortex-A78AE", (0x41, 0xd46): "Cortex-A510", (0x41, 0xd47): "Cortex-A710",
    (0x41, 0xd49): "Neoverse-N2", (0x41, 0xd4f): "Neoverse-V2",
    (0x4e, 0x000): "Denver", (0x4e, 0x003): "Denver 2", (0x4e, 0x004): "Carmel",
}
_CPUINFO_KEYS = ("model name", "Model", "Hardware", "Revision", "CPU part", "CPU implementer", "Processor", "uarch")


def _hex(text):
    try:
        return int(text, 16)
    except (TypeError, ValueError):
        return None


def arm_core_name(implementer, part):
    """(0x41, 0xd08) -> "Cortex-A72"; an unknown pair keeps its codes ("Qualcomm part 0x805")."""
    if (implementer, part) in ARM_PARTS:
        return ARM_PARTS[(implementer, part)]
    vendor = ARM_IMPLEMENTERS.get(implementer, "implementer 0x%02x" % implementer if implementer is not None
                                  else "unknown implementer")
    return "%s part 0x%03x" % (vendor, part)


def parse_cpuinfo(text, board=None):
    """CPU facts from the text of /proc/cpuinfo (a function of the text, so tests feed it real ones).

    x86 names its CPU in ``model name``.  ARM kernels do not (or say only
    "ARMv7 Processor rev 3 (v7l)"): each processor block has ``CPU
    implementer`` and ``CPU part`` codes, named here from ARM_PARTS, and a
    Raspberry Pi kernel adds the board in ``Model`` (``board``, the device-tree
    model, stands in for it elsewhere).  ``model`` is then "Raspberry Pi 4
    Model B Rev 1.1 (4 x Cortex-A72)", "4 x Cortex-A57", or for big.LITTLE
    "4 x Cortex-A55 + 4 x Cortex-A76".  ``cpuinfo`` keeps the first value of
    the lines that name things, as read.
    """
    fields = {}
    processors = []  # one dict per "processor" block
    current = None
    for line in (text or "").splitlines():
        if not line.strip():
            current = None
            continue
        if ":" not in line:
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in _CPUINFO_KEYS and key not in fields and value:
            fields[key] = value
        if key == "processor":
            current = {}
            processors.append(current)
        elif current is not None:
            current[key] = value
    counts = []  # [core name, count] in order of first appearance
    for block in processors:
        part = _hex(block.get("CPU part"))
        if part is None:
            continue
        name = arm_core_name(_hex(block.get("CPU implementer")), part)
        for entry in counts:
            if entry[0] == name:
                entry[1] += 1
                break
        else:
            counts.append([name, 1])
    cores = " + ".join("%d x %s" % (n, name) for name, n in counts) or None
    board = fields.get("Model") or board
    if cores:
        model = "%s (%s)" % (board, cores) if board else cores
    else:
        model = fields.get("model name") or fields.get("Processor") or fields.get("uarch")
    return {"model": model, "cores": cores, "board_model": board, "hardware": fields.get("Hardware"),
            "cpuinfo": fields}


def cpu_info():
    """CPU model (see ``parse_cpuinfo``), board, cores."""
    board = read_text("/proc/device-tree/model") or read_text("/sys/firmware/devicetree/base/model")
    info = parse_cpuinfo(read_text("/proc/cpuinfo", 1 << 20), board)
    info["model"] = info["model"] or platform.processor() or None
    info.update({"logical_cores": os.cpu_count(), "usable_cores": None, "machine": platform.machine()})
    if hasattr(os, "sched_getaffinity"):
        try:
            info["usable_cores"] = len(os.sched_getaffinity(0))
        except OSError:
            pass
    return info


def os_info():
    info = {"system": platform.system(), "release": platform.release(), "platform": platform.platform(),
            "pretty_name": None}
    text = read_text("/etc/os-release") or ""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            info["pretty_name"] = line.split("=", 1)[1].strip().strip('"')
    tegra = read_text("/etc/nv_tegra_release")
    if tegra:
        info["jetson_l4t"] = tegra.splitlines()[0]
    return info


def python_info():
    return {"version": platform.python_version(), "implementation": platform.python_implementation(),
            "executable": sys.executable}


_RUNTIME_DISTS = ("onnxruntime", "torch", "tensorrt", "pycuda", "numpy")


def installed_versions():
    """Versions of the runtimes installed, read from dist-info / egg-info names.

    Reading folder names is fast and imports nothing (importing torch on a Pi
    takes seconds and memory); importlib.metadata is Python >= 3.8 only.  A
    module already imported reports its own ``__version__`` instead.
    """
    pattern = re.compile(r"^(?P<name>[A-Za-z0-9_.]+?)-(?P<version>[0-9][^-]*?)(?:-py[0-9.]+)?\.(?:dist|egg)-info$")
    found = {}
    for entry in sys.path:
        if not entry or not os.path.isdir(entry):
            continue
        try:
            names = os.listdir(entry)
        except OSError:
            continue
        for name in names:
            m = pattern.match(name)
            if not m:
                continue
            dist = m.group("name").lower().replace("-", "_")
            if any(dist == r or dist.startswith(r + "_") for r in _RUNTIME_DISTS):
                found.setdefault(dist, m.group("version"))
    for module in ("onnxruntime", "torch", "tensorrt", "numpy"):
        mod = sys.modules.get(module)
        if mod is not None and getattr(mod, "__version__", None):
            found[module] = str(mod.__version__)
    return found


def thermal_zones():
    """{zone type: degrees C} from /sys/class/thermal (millidegrees in sysfs)."""
    temps = {}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        value = read_int(os.path.join(zone, "temp"))
        if value is None:
            continue
        name = read_text(os.path.join(zone, "type")) or os.path.basename(zone)
        if name in temps:
            name = "%s(%s)" % (name, os.path.basename(zone))
        temps[name] = value / 1000.0 if abs(value) > 200 else float(value)
    return temps


def cpufreq():
    """Governor and clocks (kHz) per CPU from sysfs; absent in most containers and VMs."""
    cpus = {}
    paths = glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq")
    for path in sorted(paths, key=lambda p: int(re.findall(r"cpu(\d+)", p)[-1])):
        cpu = path.split("/")[-2]
        cpus[cpu] = {
            "governor": read_text(os.path.join(path, "scaling_governor")),
            "cur_khz": read_int(os.path.join(path, "scaling_cur_freq")),
            "min_khz": read_int(os.path.join(path, "scaling_min_freq")),
            "max_khz": read_int(os.path.join(path, "scaling_max_freq")),
            "hw_max_khz": read_int(os.path.join(path, "cpuinfo_max_freq")),
        }
    governors = sorted(set(c["governor"] for c in cpus.values() if c["governor"]))
    return {"governors": governors, "cpus": cpus}


def devfreq():
    """Clocks of devfreq devices (the Jetson GPU is one) in Hz."""
    out = {}
    for path in sorted(glob.glob("/sys/class/devfreq/*")):
        out[os.path.basename(path)] = {
            "governor": read_text(os.path.join(path, "governor")),
            "cur_hz": read_int(os.path.join(path, "cur_freq")),
            "max_hz": read_int(os.path.join(path, "max_freq")),
        }
    return out


# Bits of the Raspberry Pi `vcgencmd get_throttled` word.
_PI_THROTTLE_BITS = {
    0: "under_voltage_now", 1: "arm_freq_capped_now", 2: "throttled_now", 3: "soft_temp_limit_now",
    16: "under_voltage_occurred", 17: "arm_freq_capped_occurred", 18: "throttled_occurred",
    19: "soft_temp_limit_occurred",
}


def decode_pi_throttled(text):
    """'throttled=0x50005' -> {"raw": "0x50005", "value": ..., "flags": [...]}; None if unparsable."""
    m = re.search(r"throttled=(0x[0-9a-fA-F]+)", text or "")
    if not m:
        return None
    value = int(m.group(1), 16)
    flags = [name for bit, name in sorted(_PI_THROTTLE_BITS.items()) if value & (1 << bit)]
    return {"raw": m.group(1), "value": value, "flags": flags}


def pi_throttled():
    return decode_pi_throttled(run_cmd(["vcgencmd", "get_throttled"]))


def jetson_nvpmodel():
    """Jetson power mode from `nvpmodel -q` ("NV Power Mode: MAXN" then the id)."""
    text = run_cmd(["nvpmodel", "-q"])
    if not text:
        return None
    mode = None
    for line in text.splitlines():
        if "Power Mode" in line and ":" in line:
            mode = line.split(":", 1)[1].strip()
    return {"mode": mode, "raw": text[-400:]}


_SMI_FIELDS = ("index", "name", "driver_version", "memory.total", "pstate", "clocks.sm", "clocks.max.sm",
               "clocks.mem", "temperature.gpu", "power.draw", "power.limit")


def nvidia_smi():
    """One dict per GPU from nvidia-smi (absent on a Jetson and on CPU boxes)."""
    text = run_cmd(["nvidia-smi", "--query-gpu=" + ",".join(_SMI_FIELDS), "--format=csv,noheader,nounits"])
    if not text:
        return None
    gpus = []
    for line in text.splitlines():
        values = [v.strip() for v in line.split(",")]
        if len(values) == len(_SMI_FIELDS):
            gpus.append(dict(zip(_SMI_FIELDS, values)))
    return gpus or None


def snapshot():
    """Things that change while timing: temperatures, clocks, throttling, load."""
    snap = {"utc": utc_now()}
    snap["temperatures_c"] = _safe(thermal_zones)
    snap["cpufreq"] = _safe(cpufreq)
    snap["devfreq"] = _safe(devfreq)
    snap["pi_throttled"] = _safe(pi_throttled)
    snap["jetson_nvpmodel"] = _safe(jetson_nvpmodel)
    snap["nvidia_smi"] = _safe(nvidia_smi)
    try:
        snap["loadavg"] = list(os.getloadavg())
    except (OSError, AttributeError):
        snap["loadavg"] = None
    available = mem_available_bytes()
    snap["mem_available_kb"] = None if available is None else available // 1024
    return snap


def capture_env(gpu_extra=None):
    """The static environment: host, CPU, OS, Python, runtime versions, GPU.

    ``gpu_extra`` is what the running backend knows about its GPU (torch or
    pycuda device name); it completes nvidia-smi, which a Jetson lacks.
    """
    env = {
        "hostname": _safe(socket.gethostname),
        "cpu": _safe(cpu_info),
        "os": _safe(os_info),
        "python": _safe(python_info),
        "runtimes": _safe(installed_versions),
    }
    gpu = {"name": None, "driver": None}
    driver_file = read_text("/proc/driver/nvidia/version")
    if driver_file:
        m = re.search(r"Kernel Module\s+([0-9.]+)", driver_file)
        gpu["driver"] = m.group(1) if m else driver_file.splitlines()[0]
    if gpu_extra:
        gpu.update(dict((k, v) for k, v in gpu_extra.items() if v is not None))
    env["gpu"] = gpu
    return env


def _fill_gpu_from_smi(env, snap):
    """Name and driver from the first nvidia-smi row when the backend did not say."""
    rows = (snap or {}).get("nvidia_smi") or []
    if rows and env.get("gpu") is not None:
        env["gpu"].setdefault("name", None)
        if env["gpu"].get("name") is None:
            env["gpu"]["name"] = rows[0].get("name")
        if env["gpu"].get("driver") is None:
            env["gpu"]["driver"] = rows[0].get("driver_version")


def environment_warnings(before, after):
    """Warnings a reader of the record should see: throttling, non-performance governor, and changes of
    governor or Jetson power mode between the two snapshots."""
    warnings = []
    b = (before or {}).get("pi_throttled") or {}
    a = (after or {}).get("pi_throttled") or {}
    if a:
        now = [f for f in a.get("flags", []) if f.endswith("_now")]
        new = [f for f in a.get("flags", []) if f.endswith("_occurred") and f not in b.get("flags", [])]
        if now or new:
            warnings.append("throttling seen (vcgencmd get_throttled %s): %s" % (a.get("raw"), ", ".join(now + new)))
    governors = ((after or {}).get("cpufreq") or {}).get("governors") or []
    if governors and governors != ["performance"]:
        warnings.append("cpufreq governor is %s, not 'performance': clocks may vary while timing"
                        % "/".join(governors))
    b_governors = ((before or {}).get("cpufreq") or {}).get("governors") or []
    if b_governors and governors and b_governors != governors:
        warnings.append("cpufreq governor changed while timing: %s -> %s" % ("/".join(b_governors),
                                                                             "/".join(governors)))
    b_mode = ((before or {}).get("jetson_nvpmodel") or {}).get("mode")
    a_mode = ((after or {}).get("jetson_nvpmodel") or {}).get("mode")
    if b_mode != a_mode and (b_mode or a_mode):
        warnings.append("Jetson power mode changed while timing: %s -> %s" % (b_mode, a_mode))
    return warnings


# --------------------------------------------------------------------------
# Backends: load once, then one timed iteration per call
# --------------------------------------------------------------------------

class _NullContext(object):
    """contextlib.nullcontext is Python 3.7+."""

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


class Backend(object):
    """One runtime.  ``load`` prepares everything; ``timed_run_ns`` runs one
    iteration and returns its latency; ``info`` is merged into the result."""

    timer = "perf_counter"

    def __init__(self, job, warnings):
        self.job = job
        self.options = job["options"]
        self.warnings = warnings
        self.build_s = 0.0

    def load(self, progress):
        raise NotImplementedError

    def run_once(self):
        raise NotImplementedError

    def timed_run_ns(self):
        """Host time of one synchronous run (CPU backends override nothing)."""
        t0 = time.perf_counter()
        self.run_once()
        return int(round((time.perf_counter() - t0) * 1e9))

    def running(self):
        """Context held around warm-up and measurement (torch: inference_mode)."""
        return _NullContext()

    def synchronize(self):
        """Wait for work queued by ``run_once`` (asynchronous GPU runtimes override this)."""

    def first_run_ns(self):
        """Host wall time of one run, synchronised: the cold start's first inference, lazy set-up included."""
        t0 = time.perf_counter()
        self.run_once()
        self.synchronize()
        return int(round((time.perf_counter() - t0) * 1e9))

    def gpu_peak_bytes(self):
        """Peak GPU memory this process allocated, where the runtime tells it; else None."""
        return None

    def info(self):
        return {}

    def gpu_info(self):
        return None

    def close(self):
        pass


def _numpy_dtype(np, name):
    return {"float32": np.float32, "float16": np.float16}[name]


class OnnxRuntimeBackend(Backend):
    """onnxruntime InferenceSession; CPU, or CUDA / TensorRT execution providers."""

    def load(self, progress):
        import numpy as np
        import onnxruntime as ort

        opts = self.options
        so = ort.SessionOptions()
        levels = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
                  "disable": "ORT_DISABLE_ALL"}
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, levels[opts["graph_optimization"]])
        if opts["threads"] is not None:
            so.intra_op_num_threads = opts["threads"]
        so.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if opts["execution_mode"] == "parallel"
                             else ort.ExecutionMode.ORT_SEQUENTIAL)
        if opts["inter_op_threads"] is not None:
            so.inter_op_num_threads = opts["inter_op_threads"]
        if opts["allow_spinning"] is not None:
            spin = "1" if opts["allow_spinning"] else "0"
            so.add_session_config_entry("session.intra_op.allow_spinning", spin)
            so.add_session_config_entry("session.inter_op.allow_spinning", spin)

        available = list(ort.get_available_providers())
        requested = [name for name, _ in opts["providers"]]
        providers = []
        for name, popts in opts["providers"]:
            if name not in available:
                # Older onnxruntime raises on an unknown provider, newer ones warn
                # and drop it; drop it ourselves so every version behaves alike.
                continue
            if name == "TensorrtExecutionProvider" and popts is None:
                # Cache the EP's engines next to ours; without it each job rebuilds.
                popts = {"trt_engine_cache_enable": "True",
                         "trt_engine_cache_path": os.path.join(self.job["workdir"], "engines", "ort-trt")}
                if not os.path.isdir(popts["trt_engine_cache_path"]):
                    os.makedirs(popts["trt_engine_cache_path"])
            providers.append((name, popts) if popts else name)
        if not any((p if isinstance(p, str) else p[0]) == "CPUExecutionProvider" for p in providers):
            providers.append("CPUExecutionProvider")

        self.session = ort.InferenceSession(self.job["artifact"]["path"], sess_options=so, providers=providers)
        self.active = list(self.session.get_providers())
        missing = [name for name in requested if name not in self.active]
        self.requested = requested
        self.available = available
        self.fallback = bool(missing)
        if missing:
            self.warnings.append("provider fallback: requested %s but onnxruntime runs with %s (available here: %s)"
                                 % (", ".join(missing), ", ".join(self.active), ", ".join(available)))

        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise AgentError("load", "the model has %d inputs (%s); the agent feeds exactly one"
                             % (len(inputs), ", ".join(i.name for i in inputs)))
        self.input_name = inputs[0].name
        shape = self.job["input"]["shape"]
        rng = np.random.RandomState(0)
        self.x = rng.standard_normal(shape).astype(_numpy_dtype(np, self.job["input"]["dtype"]))
        self.feed = {self.input_name: self.x}
        self.output_names = [o.name for o in self.session.get_outputs()]

        self.io_binding = None
        if self.active and self.active[0] in GPU_PROVIDERS:
            self._bind_on_device(ort)

    def _bind_on_device(self, ort):
        """Keep input and outputs on the GPU so the time is the model, not copies."""
        try:
            device_id = 0
            for name, popts in self.options["providers"]:
                if name == self.active[0] and popts and "device_id" in popts:
                    device_id = int(popts["device_id"])
            binding = self.session.io_binding()
            x_dev = ort.OrtValue.ortvalue_from_numpy(self.x, "cuda", device_id)
            binding.bind_ortvalue_input(self.input_name, x_dev)
            for name in self.output_names:
                binding.bind_output(name, "cuda", device_id)
            self.session.run_with_iobinding(binding)  # fails here rather than in warm-up
            self._x_dev = x_dev
            self.io_binding = binding
        except Exception as exc:
            self.warnings.append("onnxruntime IO binding on the GPU failed (%s); timing session.run with host "
                                 "copies included" % exc)
            self.io_binding = None

    def run_once(self):
        if self.io_binding is not None:
            self.session.run_with_iobinding(self.io_binding)  # synchronous unless told otherwise
        else:
            self.session.run(None, self.feed)

    def info(self):
        return {"providers": self.active, "requested_providers": self.requested,
                "available_providers": self.available, "provider_fallback": self.fallback,
                "io_binding": self.io_binding is not None, "threads": self.options["threads"],
                "graph_optimization": self.options["graph_optimization"],
                "allow_spinning": self.options["allow_spinning"], "execution_mode": self.options["execution_mode"],
                "inter_op_threads": self.options["inter_op_threads"], "input_name": self.input_name}


#: torch's intra-op thread count when this process first imported it: what a member without ``threads`` runs with.
_TORCH_START_THREADS = []


class TorchBackend(Backend):
    """TorchScript (torch.jit.load) or torch.export (.pt2) programs on CPU or CUDA.

    torch's intra-op thread count is one per process, but members of a group may
    ask for different ones (protocol 3): each member's count is set again on
    entering ``running`` (around its warm-up and each timed block) when it is not
    already the current one.
    """

    def load(self, progress):
        import torch
        self.torch = torch
        opts = self.options
        self.device = opts["device"]
        if not _TORCH_START_THREADS:
            _TORCH_START_THREADS.append(torch.get_num_threads())
        self.threads = opts["threads"] if opts["threads"] is not None else _TORCH_START_THREADS[0]
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        if opts["interop_threads"] is not None:
            try:
                torch.set_num_interop_threads(opts["interop_threads"])
            except RuntimeError as exc:  # only allowed before any parallel work
                self.warnings.append("torch.set_num_interop_threads failed: %s" % exc)
        if self.device != "cpu":
            if not torch.cuda.is_available():
                raise AgentError("load", "device %s asked but torch.cuda.is_available() is False (torch %s, CUDA %s)"
                                 % (self.device, torch.__version__, getattr(torch.version, "cuda", None)))
            torch.cuda.set_device(device_index(self.device))
            self.timer = "cuda_events"
        dev = torch.device(self.device)
        path = self.job["artifact"]["path"]
        if self.job["artifact"]["format"] == "torchscript":
            model = torch.jit.load(path, map_location=dev)
            model.eval()
        else:
            export = getattr(torch, "export", None)
            if export is None or not hasattr(export, "load"):
                raise AgentError("load", "torch %s cannot load .pt2 files (torch.export needs torch >= 2.1)"
                                 % torch.__version__)
            program = export.load(path)
            if self.device != "cpu":
                program = self._program_to_device(program, dev)
            # An exported module does not support .eval() (it is already
            # traced in the mode it was exported in).
            model = program.module()
            if self.device != "cpu":
                model = model.to(dev)
        self.model = model
        torch.manual_seed(0)
        dtype = {"float32": torch.float32, "float16": torch.float16}[self.job["input"]["dtype"]]
        self.x = torch.randn(*self.job["input"]["shape"]).to(dtype=dtype, device=dev)
        if self.device != "cpu":
            self.start_event = torch.cuda.Event(enable_timing=True)
            self.end_event = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(dev)

    @staticmethod
    def _program_to_device(program, dev):
        """Move an ExportedProgram's weights and constants (torch >= 2.3 has a pass for it)."""
        try:
            from torch.export.passes import move_to_device_pass
        except ImportError:
            return program
        return move_to_device_pass(program, dev)

    def running(self):
        torch = self.torch
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        return torch.inference_mode() if hasattr(torch, "inference_mode") else torch.no_grad()

    def run_once(self):
        self.model(self.x)

    def synchronize(self):
        if self.device != "cpu":
            self.torch.cuda.synchronize(self.torch.device(self.device))

    def gpu_peak_bytes(self):
        if self.device == "cpu":
            return None
        return int(self.torch.cuda.max_memory_allocated(device_index(self.device)))

    def timed_run_ns(self):
        if self.device == "cpu":
            return Backend.timed_run_ns(self)
        # Events on the current stream bracket the GPU work; synchronize on the
        # end event so the sample is the device time, not the launch time.
        self.start_event.record()
        self.model(self.x)
        self.end_event.record()
        self.end_event.synchronize()
        return int(round(self.start_event.elapsed_time(self.end_event) * 1e6))

    def info(self):
        torch = self.torch
        out = {"device": self.device, "threads": self.threads,
               "interop_threads": torch.get_num_interop_threads()}
        if self.device != "cpu":
            out["cuda_version"] = getattr(torch.version, "cuda", None)
            out["cudnn_version"] = torch.backends.cudnn.version()
        return out

    def gpu_info(self):
        if self.device == "cpu":
            return None
        torch = self.torch
        idx = device_index(self.device)
        return {"name": torch.cuda.get_device_name(idx),
                "capability": ".".join(str(v) for v in torch.cuda.get_device_capability(idx)),
                "cuda_runtime": getattr(torch.version, "cuda", None)}

    def close(self):
        self.model = None
        self.x = None


# ----- TensorRT: pure helpers (tested without TensorRT) -------------------

def parse_version(text):
    """'8.2.1.8' -> (8, 2, 1, 8); '10.0.1.6' -> (10, 0, 1, 6); garbage -> ()."""
    return tuple(int(p) for p in re.findall(r"\d+", str(text or ""))[:4])


# Attributes each TensorRT execution API needs on the engine and the context.
TRT_V2_ATTRS = ("num_bindings", "binding_is_input", "get_binding_shape", "set_binding_shape", "execute_async_v2")
TRT_V3_ATTRS = ("num_io_tensors", "get_tensor_name", "get_tensor_mode", "set_input_shape",
                "set_tensor_address", "execute_async_v3")


def select_trt_api(trt_version, available_attrs):
    """Pick the TensorRT execution API: "v3" (named tensors) or "v2" (bindings).

    TensorRT 8.5 introduced named tensors and execute_async_v3; TensorRT 10
    removed bindings and execute_async_v2.  The version says which is preferred,
    the attributes actually present decide (a vendor build can differ from its
    version number).  ``available_attrs``: names present on the engine and the
    execution context together.
    """
    attrs = set(available_attrs)
    has_v3 = all(a in attrs for a in TRT_V3_ATTRS)
    has_v2 = all(a in attrs for a in TRT_V2_ATTRS)
    prefer_v3 = parse_version(trt_version) >= (8, 5)
    if has_v3 and (prefer_v3 or not has_v2):
        return "v3"
    if has_v2:
        return "v2"
    raise RuntimeError("TensorRT %s offers neither the bindings API (execute_async_v2) nor the named-tensor API "
                       "(execute_async_v3)" % trt_version)


def trt_needs_explicit_batch_flag(trt_version):
    """Before TensorRT 10 an ONNX network must be created with EXPLICIT_BATCH; 10 ignores it."""
    v = parse_version(trt_version)
    return bool(v) and v < (10,)


def engine_cache_key(onnx_sha256, trt_version, gpu_name, precision, input_shape):
    """Cache key of a built engine: (onnx sha256, TensorRT version, GPU, precision, input shape).

    An engine is only valid for the exact TensorRT version and GPU model it was
    built on, and for one precision; the input shape is part of the key too
    because a dynamic-batch ONNX is built with one optimisation profile per
    shape.  Returns (hex key, the fields it hashes).
    """
    fields = {
        "onnx_sha256": str(onnx_sha256).lower(),
        "tensorrt": str(trt_version),
        "gpu": " ".join(str(gpu_name).split()),
        "precision": str(precision),
        "input_shape": [int(d) for d in input_shape],
    }
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest(), fields


def engine_cache_path(workdir, key):
    return os.path.join(workdir, "engines", key + ".engine")


def trt_dtype_name(dtype):
    """'DataType.FLOAT' / 'FLOAT' -> 'float32' etc. (pybind enums print oddly across versions)."""
    name = str(dtype).split(".")[-1].upper()
    table = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32", "INT64": "int64",
             "BOOL": "bool", "UINT8": "uint8", "BF16": "bfloat16", "FP8": "float8"}
    if name not in table:
        raise RuntimeError("unsupported TensorRT tensor type %s" % dtype)
    return table[name]


def _volume(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n


# ----- TensorRT: CUDA memory, streams and events ---------------------------

class _PycudaMemory(object):
    """Device buffers, a stream and timing events from pycuda.

    Uses the device's primary context, which is also what the CUDA runtime
    inside TensorRT uses, so both see the same memory.
    """

    name = "pycuda"

    def __init__(self, index):
        import numpy as np
        import pycuda.driver as cuda
        self.np = np
        self.cuda = cuda
        cuda.init()
        self.device = cuda.Device(index)
        self.context = self.device.retain_primary_context()
        self.context.push()
        self.stream = cuda.Stream()
        self.stream_handle = self.stream.handle
        self.start = cuda.Event()
        self.end = cuda.Event()
        self.buffers = []

    def device_name(self):
        return self.device.name()

    def capability(self):
        return "%d.%d" % self.device.compute_capability()

    def alloc(self, shape, dtype_name, random_fill):
        np = self.np
        if dtype_name in ("bfloat16", "float8"):
            raise RuntimeError("pycuda buffers cannot hold %s tensors" % dtype_name)
        dtype = np.dtype("bool" if dtype_name == "bool" else dtype_name)
        nbytes = max(1, _volume(shape) * dtype.itemsize)
        mem = self.cuda.mem_alloc(nbytes)
        if random_fill and dtype.kind == "f":
            host = np.random.RandomState(0).standard_normal(shape).astype(dtype)
        else:
            host = np.zeros(shape, dtype=dtype)
        if host.nbytes:
            self.cuda.memcpy_htod(mem, np.ascontiguousarray(host))
        self.buffers.append(mem)
        return int(mem)

    def time_ms(self, fn):
        self.start.record(self.stream)
        fn()
        self.end.record(self.stream)
        self.end.synchronize()
        return self.start.time_till(self.end)

    def synchronize(self):
        self.stream.synchronize()

    def close(self):
        for mem in self.buffers:
            try:
                mem.free()
            except Exception:
                pass
        self.buffers = []
        try:
            self.context.pop()
        except Exception:
            pass


class _TorchCudaMemory(object):
    """The same as _PycudaMemory with torch CUDA tensors, for devices without pycuda."""

    name = "torch"

    def __init__(self, index):
        import torch
        if not torch.cuda.is_available():
            raise RuntimeError("neither pycuda nor a CUDA-enabled torch is available for TensorRT buffers")
        self.torch = torch
        self.index = index
        torch.cuda.set_device(index)
        self.stream = torch.cuda.Stream(device=index)
        self.stream_handle = self.stream.cuda_stream
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)
        self.buffers = []

    def device_name(self):
        return self.torch.cuda.get_device_name(self.index)

    def capability(self):
        return "%d.%d" % self.torch.cuda.get_device_capability(self.index)

    def alloc(self, shape, dtype_name, random_fill):
        torch = self.torch
        dtype = {"float32": torch.float32, "float16": torch.float16, "int8": torch.int8, "int32": torch.int32,
                 "int64": torch.int64, "bool": torch.bool, "uint8": torch.uint8,
                 "bfloat16": torch.bfloat16}.get(dtype_name)
        if dtype is None:
            raise RuntimeError("torch buffers cannot hold %s tensors" % dtype_name)
        device = torch.device("cuda", self.index)
        if random_fill and dtype.is_floating_point:
            gen = torch.Generator().manual_seed(0)
            tensor = torch.randn(*shape, generator=gen).to(dtype=dtype, device=device)
        else:
            tensor = torch.zeros(*shape, dtype=dtype, device=device)
        torch.cuda.synchronize(device)
        self.buffers.append(tensor)
        return int(tensor.data_ptr())

    def time_ms(self, fn):
        self.start.record(self.stream)
        fn()
        self.end.record(self.stream)
        self.end.synchronize()
        return self.start.elapsed_time(self.end)

    def synchronize(self):
        self.stream.synchronize()

    def close(self):
        self.buffers = []


def _cuda_memory(index):
    """pycuda if it imports, else torch (documented fallback)."""
    import importlib
    try:
        importlib.import_module("pycuda.driver")
    except ImportError:
        log("pycuda is not installed; TensorRT buffers come from torch CUDA tensors")
        return _TorchCudaMemory(index)
    return _PycudaMemory(index)


class TensorRTBackend(Backend):
    """TensorRT engine built on the device from the shipped ONNX, cached per key."""

    timer = "cuda_events"

    def load(self, progress):
        opts = self.options
        self.memory = _cuda_memory(device_index(opts["device"]))
        import tensorrt as trt
        self.trt = trt
        self.version = str(trt.__version__)
        logger = trt.Logger(trt.Logger.WARNING)
        self.logger = logger
        if hasattr(trt, "init_libnvinfer_plugins"):
            trt.init_libnvinfer_plugins(logger, "")
        shape = self.job["input"]["shape"]
        key, fields = engine_cache_key(self.job["artifact"]["sha256"], self.version, self.memory.device_name(),
                                       opts["precision"], shape)
        path = engine_cache_path(self.job["workdir"], key)
        self.engine_info = {"key": key, "fields": fields, "path": path, "cache_hit": False}
        self.runtime_obj = trt.Runtime(logger)
        engine = None
        if os.path.isfile(path):
            with open(path, "rb") as f:
                engine = self.runtime_obj.deserialize_cuda_engine(f.read())
            if engine is None:
                self.warnings.append("cached TensorRT engine %s did not deserialize; rebuilt it" % path)
            else:
                self.engine_info["cache_hit"] = True
        if engine is None:
            progress.stage = "build"
            t0 = time.monotonic()
            plan = self._build(trt, logger, shape)
            self.build_s = time.monotonic() - t0
            self._store(path, plan, fields)
            progress.stage = "load"
            engine = self.runtime_obj.deserialize_cuda_engine(plan)
            if engine is None:
                raise AgentError("load", "TensorRT could not deserialize the engine it just built")
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise AgentError("load", "TensorRT could not create an execution context (out of GPU memory?)")
        attrs = [a for a in TRT_V2_ATTRS + TRT_V3_ATTRS if hasattr(engine, a) or hasattr(self.context, a)]
        self.api = select_trt_api(self.version, attrs)
        if self.api == "v3":
            self._setup_v3(trt, shape)
        else:
            self._setup_v2(shape)
        self.memory.synchronize()

    def _build(self, trt, logger, shape):
        """Parse the ONNX and build a serialized engine (bytes) for this GPU."""
        onnx_path = self.job["artifact"]["path"]
        builder = trt.Builder(logger)
        flags = 0
        if trt_needs_explicit_batch_flag(self.version) and hasattr(trt.NetworkDefinitionCreationFlag,
                                                                    "EXPLICIT_BATCH"):
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if hasattr(parser, "parse_from_file"):
            parsed = parser.parse_from_file(onnx_path)
        else:
            with open(onnx_path, "rb") as f:
                parsed = parser.parse(f.read())
        if not parsed:
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise AgentError("build", "TensorRT could not parse the ONNX: %s" % "; ".join(errors))
        if network.num_inputs != 1:
            raise AgentError("build", "the ONNX has %d inputs; the agent feeds exactly one" % network.num_inputs)

        config = builder.create_builder_config()
        workspace = self.options["workspace_mb"] << 20
        if hasattr(config, "set_memory_pool_limit"):  # TensorRT >= 8.4
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
        else:  # TensorRT 8.2 (removed in 10)
            config.max_workspace_size = workspace
        if self.options["precision"] == "fp16":
            if not builder.platform_has_fast_fp16:
                self.warnings.append("precision fp16 asked but this GPU has no fast fp16")
            config.set_flag(trt.BuilderFlag.FP16)

        tensor = network.get_input(0)
        dims = tuple(tensor.shape)
        if len(dims) != len(shape):
            raise AgentError("build", "the ONNX input %s has rank %d but job.input.shape %s has rank %d"
                             % (tensor.name, len(dims), shape, len(shape)))
        if any(d < 0 for d in dims):
            profile = builder.create_optimization_profile()
            profile.set_shape(tensor.name, tuple(shape), tuple(shape), tuple(shape))
            config.add_optimization_profile(profile)
        elif list(dims) != list(shape):
            raise AgentError("build", "the ONNX input %s has the fixed shape %s, not job.input.shape %s"
                             % (tensor.name, list(dims), shape))

        log("building a TensorRT %s %s engine (this can take minutes)" % (self.version, self.options["precision"]))
        if hasattr(builder, "build_serialized_network"):  # TensorRT >= 8.0
            plan = builder.build_serialized_network(network, config)
            if plan is None:
                raise AgentError("build", "TensorRT failed to build the engine (see the log on stderr)")
            return bytes(plan)
        engine = builder.build_engine(network, config)
        if engine is None:
            raise AgentError("build", "TensorRT failed to build the engine (see the log on stderr)")
        return bytes(engine.serialize())

    @staticmethod
    def _store(path, plan, fields):
        """Write the engine and a readable key file, atomically (temp name + rename)."""
        folder = os.path.dirname(path)
        if not os.path.isdir(folder):
            os.makedirs(folder)
        tmp = "%s.tmp-%d" % (path, os.getpid())
        with open(tmp, "wb") as f:
            f.write(plan)
        os.replace(tmp, path)
        with open(path[:-len(".engine")] + ".json", "w") as f:
            json.dump(fields, f, indent=1, sort_keys=True)

    def _setup_v3(self, trt, shape):
        """TensorRT >= 8.5: named tensors, set_tensor_address, execute_async_v3."""
        engine, context = self.engine, self.context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise AgentError("load", "the engine has %d inputs; the agent feeds exactly one" % len(inputs))
        if any(d < 0 for d in engine.get_tensor_shape(inputs[0])):
            if context.set_input_shape(inputs[0], tuple(shape)) is False:
                raise AgentError("load", "TensorRT rejected input shape %s" % shape)
        self.io = []
        for name in names:
            tensor_shape = tuple(context.get_tensor_shape(name))
            dtype = trt_dtype_name(engine.get_tensor_dtype(name))
            is_input = name in inputs
            if is_input:
                self._check_input_dtype(dtype)
            ptr = self.memory.alloc(tensor_shape, dtype, random_fill=is_input)
            context.set_tensor_address(name, ptr)
            self.io.append({"name": name, "input": is_input, "shape": list(tensor_shape), "dtype": dtype})
        handle = self.memory.stream_handle

        def run():
            if not context.execute_async_v3(handle):
                raise RuntimeError("TensorRT execute_async_v3 returned False")
        self._run = run

    def _setup_v2(self, shape):
        """TensorRT 8.2 (JetPack 4.6 on the Jetson Nano): bindings and execute_async_v2."""
        engine, context = self.engine, self.context
        count = engine.num_bindings
        inputs = [i for i in range(count) if engine.binding_is_input(i)]
        if len(inputs) != 1:
            raise AgentError("load", "the engine has %d inputs; the agent feeds exactly one" % len(inputs))
        if any(d < 0 for d in engine.get_binding_shape(inputs[0])):
            if context.set_binding_shape(inputs[0], tuple(shape)) is False:
                raise AgentError("load", "TensorRT rejected input shape %s" % shape)
        bindings = [0] * count
        self.io = []
        for i in range(count):
            binding_shape = tuple(context.get_binding_shape(i))
            dtype = trt_dtype_name(engine.get_binding_dtype(i))
            is_input = i in inputs
            if is_input:
                self._check_input_dtype(dtype)
            bindings[i] = self.memory.alloc(binding_shape, dtype, random_fill=is_input)
            self.io.append({"name": engine.get_binding_name(i), "input": is_input, "shape": list(binding_shape),
                            "dtype": dtype})
        handle = self.memory.stream_handle

        def run():
            if not context.execute_async_v2(bindings=bindings, stream_handle=handle):
                raise RuntimeError("TensorRT execute_async_v2 returned False")
        self._run = run

    def _check_input_dtype(self, engine_dtype):
        if engine_dtype != self.job["input"]["dtype"]:
            self.warnings.append("the engine's input is %s; job.input.dtype %s was not used"
                                 % (engine_dtype, self.job["input"]["dtype"]))

    def run_once(self):
        self._run()
        self.memory.synchronize()

    def timed_run_ns(self):
        return int(round(self.memory.time_ms(self._run) * 1e6))

    def info(self):
        return {"precision": self.options["precision"], "device": self.options["device"], "api": self.api,
                "tensorrt": self.version, "buffers": self.memory.name, "engine": self.engine_info, "io": self.io}

    def gpu_info(self):
        return {"name": self.memory.device_name(), "capability": self.memory.capability()}

    def close(self):
        # Free TensorRT objects before the CUDA context goes away.
        self._run = None
        self.context = None
        self.engine = None
        self.runtime_obj = None
        memory = getattr(self, "memory", None)
        if memory is not None:
            memory.close()


BACKENDS = {"onnxruntime": OnnxRuntimeBackend, "torch": TorchBackend, "tensorrt": TensorRTBackend}


# --------------------------------------------------------------------------
# Timing loops
# --------------------------------------------------------------------------

def warm_up(backend, spec, deadline):
    """Run until both the warm-up iterations and seconds are reached."""
    t0 = time.monotonic()
    n = 0
    while n < spec["iterations"] or time.monotonic() - t0 < spec["seconds"]:
        if deadline.work_left() <= 0:
            raise AgentError("warmup", "job timeout_s=%g reached during warm-up after %d iterations"
                             % (deadline.timeout_s, n))
        backend.timed_run_ns()
        n += 1
    return {"iterations": n, "seconds": time.monotonic() - t0}


def rewarm(backend, iterations, deadline):
    """The untimed runs before a block; skipped (not an error) once the deadline is near."""
    t0 = time.monotonic()
    n = 0
    while n < iterations and deadline.work_left() > 0:
        backend.timed_run_ns()  # synchronised, like a timed run; the time is dropped
        n += 1
    return n, time.monotonic() - t0


def measure(backend, spec, deadline):
    """Time iterations until both ``iterations`` and ``min_seconds`` are reached.

    Stops early at ``max_iterations``, ``max_seconds`` or the job deadline and
    says why in ``stop_reason``.  One call is one block (one member, one round).
    """
    samples = []
    t0 = time.monotonic()
    while True:
        elapsed = time.monotonic() - t0
        n = len(samples)
        if n >= spec["iterations"] and elapsed >= spec["min_seconds"]:
            reason = "target"
            break
        if n >= spec["max_iterations"]:
            reason = "max_iterations"
            break
        if spec["max_seconds"] is not None and elapsed >= spec["max_seconds"]:
            reason = "max_seconds"
            break
        if deadline.work_left() <= 0:
            reason = "timeout"
            break
        samples.append(backend.timed_run_ns())
    return samples, {"iterations": len(samples), "seconds": time.monotonic() - t0, "stop_reason": reason}


def block_spec(totals, rounds, r, done):
    """What a member's block in round r times: its per-round share of the job's totals.

    ``ceil(iterations / R)`` runs and ``min_seconds / R`` seconds; at most what is
    left of ``max_iterations`` over the rounds left (rounded up, so the total
    never exceeds it) and ``max_seconds / R``.  ``done``: samples the member has.
    """
    left = max(0, totals["max_iterations"] - done)
    return {"iterations": int(math.ceil(totals["iterations"] / float(rounds))),
            "min_seconds": totals["min_seconds"] / rounds,
            "max_iterations": int(math.ceil(left / float(rounds - r))),
            "max_seconds": None if totals["max_seconds"] is None else totals["max_seconds"] / rounds}


STOP_SEVERITY = ("timeout", "max_seconds", "max_iterations")


def combine_stop_reasons(reasons):
    """A member's stop reason over its blocks: "target" unless a block stopped early (the most severe)."""
    for reason in STOP_SEVERITY:
        if reason in reasons:
            return reason
    return "target"


def measure_warnings(samples, spec, summary, done):
    warnings = []
    n = len(samples)
    if n < spec["iterations"]:
        warnings.append("fewer samples than asked: %d of %d (stopped at %s)" % (n, spec["iterations"],
                                                                                 done["stop_reason"]))
    elif done["seconds"] < spec["min_seconds"]:
        warnings.append("measured %.2f s, less than min_seconds=%g (stopped at %s)"
                        % (done["seconds"], spec["min_seconds"], done["stop_reason"]))
    if summary.get("cv") is not None and summary["cv"] > CV_WARNING:
        warnings.append("high variation: cv=%.3f > %.2f" % (summary["cv"], CV_WARNING))
    return warnings


# --------------------------------------------------------------------------
# Cool-down between rounds
# --------------------------------------------------------------------------

def hottest_temperature():
    """The hottest temperature readable here (thermal zones, nvidia-smi GPUs) in degrees C, or None."""
    temps = list((_safe(thermal_zones) or {}).values())
    for row in _safe(nvidia_smi) or []:
        try:
            temps.append(float(row.get("temperature.gpu")))
        except (TypeError, ValueError):
            pass
    temps = [t for t in temps if isinstance(t, float) and math.isfinite(t)]
    return max(temps) if temps else None


def cool_down(spec, r, deadline):
    """Before round r: wait (at most max_wait_s, never past the deadline) until below max_temp_c."""
    t0 = time.monotonic()
    temp = hottest_temperature()
    while temp is not None and temp >= spec["max_temp_c"]:
        left = min(spec["max_wait_s"] - (time.monotonic() - t0), deadline.work_left())
        if left <= 0:
            break
        time.sleep(min(COOLDOWN_POLL_S, left))
        temp = hottest_temperature()
    return {"round": r, "waited_s": time.monotonic() - t0, "temp_c": temp}


def cooldown_warnings(spec, entries):
    hot = [e for e in entries if e["temp_c"] is not None and e["temp_c"] >= spec["max_temp_c"]]
    if not hot:
        return []
    return ["cool-down: %d of %d rounds started at or above max_temp_c=%g C (hottest %.1f C) after waiting "
            "up to max_wait_s=%g s" % (len(hot), len(entries), spec["max_temp_c"], max(e["temp_c"] for e in hot),
                                       spec["max_wait_s"])]


# --------------------------------------------------------------------------
# Cold start: one member in a fresh child process
# --------------------------------------------------------------------------

def peak_rss_bytes():
    """Peak resident set size of this process in bytes (ru_maxrss: KiB on Linux, bytes on macOS), or None."""
    try:
        import resource  # Unix only
    except ImportError:
        return None
    try:
        value = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    except (OSError, ValueError, AttributeError):
        return None
    return value if sys.platform == "darwin" else value * 1024


def run_cold(text):
    """``agent.py --cold``: load the job's one member, run it once, report load / first inference / memory.

    Runs under the parent agent's lock (it takes none) on an artifact the
    parent verified (it does not hash it again).  Never raises.
    """
    doc = {"protocol": PROTOCOL, "agent_version": AGENT_VERSION, "mode": "cold", "id": None, "status": "error",
           "cold": None, "warnings": [], "error": None}
    progress = Progress("cold")
    backend = None
    try:
        job = parse_job(text)
        if len(job["members"]) != 1:
            raise JobError("job field job.members: agent.py --cold takes exactly one member, got %d"
                           % len(job["members"]))
        member = job["members"][0]
        doc["id"] = member["id"]
        progress.at("load", member["id"])
        base_rss = peak_rss_bytes()  # the interpreter and the agent, before the runtime and the model
        backend = BACKENDS[job["runtime"]](member_job(job, member), doc["warnings"])
        t0 = time.monotonic()
        backend.load(progress)
        loaded = time.monotonic() - t0
        progress.stage = "warmup"
        with backend.running():
            first = backend.first_run_ns()
        doc["cold"] = {"load_s": loaded - backend.build_s, "build_s": backend.build_s,
                       "first_inference_ns": first, "peak_rss_bytes": peak_rss_bytes(),
                       "base_rss_bytes": base_rss, "gpu_peak_bytes": _safe(backend.gpu_peak_bytes)}
        doc["status"] = "ok"
    except (Exception, KeyboardInterrupt, Terminated) as exc:
        doc["error"] = error_info(progress.stage, exc)
        log("cold start failed in stage %s: %s" % (doc["error"]["stage"], exc))
    finally:
        if backend is not None:
            try:
                backend.close()
            except Exception as exc:
                log("closing the backend failed: %s" % exc)
    return doc


def cold_child_job(job, member, budget):
    """The one-member job an ``agent.py --cold`` child reads: the member with its own options as the group's."""
    return {"protocol": PROTOCOL, "job_id": job["job_id"], "runtime": job["runtime"],
            "options": member.get("options_raw", job["options_raw"]), "workdir": job["workdir"],
            "timeout_s": budget, "members": [dict((k, member[k]) for k in ("id", "artifact", "input"))]}


def measure_cold(job, member, deadline):
    """Run ``agent.py --cold`` for one member: (its cold dict, None) or (None, a warning saying why not)."""
    budget = deadline.work_left()
    if budget < 1.0:
        return None, "cold start not measured: the job timeout is near"
    child_job = cold_child_job(job, member, budget)
    argv = [sys.executable or "python3", os.path.abspath(__file__), "--cold"]
    try:
        proc = subprocess.run(argv, input=json.dumps(child_job), stdout=subprocess.PIPE, universal_newlines=True,
                              timeout=budget)
    except subprocess.TimeoutExpired:
        return None, "cold start not measured: the --cold child ran past the job timeout (%.0f s)" % budget
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return None, "cold start not measured: cannot run the --cold child: %s" % exc
    doc = last_json_object(proc.stdout)
    if doc is None:
        how = ("was killed by %s" % signal_name(-proc.returncode) if proc.returncode < 0
               else "exited with %s" % proc.returncode)
        return None, "cold start not measured: the --cold child %s and wrote no result" % how
    if doc.get("status") == "ok" and isinstance(doc.get("cold"), dict):
        return doc["cold"], None
    error = doc.get("error") or {}
    return None, "cold start not measured: the --cold child failed in stage %s: %s" % (error.get("stage"),
                                                                                       error.get("message"))


# --------------------------------------------------------------------------
# The job: a comparison group timed in rounds
# --------------------------------------------------------------------------

TIMING_PHASES = ("lock_wait", "verify", "cold", "load", "build", "warmup", "rewarm", "measure", "cooldown")


def new_result():
    return {
        "protocol": PROTOCOL, "agent_version": AGENT_VERSION, "job_id": None, "status": "error",
        "runtime": None, "settings": None, "env": None, "rounds": None, "seed": None, "isolated": None,
        "round_orders": [],
        "cooldown": [], "warnings": [], "error": None, "timings_s": {}, "started_utc": utc_now(),
        "finished_utc": None, "members": [],
    }


def new_member_doc(member_id, fmt=None, sha256=None):
    return {
        "id": member_id, "status": "error", "format": fmt, "artifact_sha256": sha256, "backend": None,
        "providers": None, "provider_fallback": None, "timer": None, "samples_ns": [], "sample_rounds": [],
        "stats": summarize([]), "warmup": None, "measure": None, "cold": None, "options": None, "warnings": [],
        "error": None,
    }


def error_info(stage, exc):
    """The result's ``error`` object for an exception raised in ``stage``."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"stage": getattr(exc, "stage", None) or stage, "type": type(exc).__name__, "message": str(exc),
            "traceback": tb[-TRACEBACK_TAIL_CHARS:]}


def _unique(items):
    out = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


class Member(object):
    """One member's state while the group runs; ``document`` is its part of the result."""

    def __init__(self, spec, job):
        self.spec = spec
        self.id = spec["id"]
        self.job = member_job(job, spec)
        self.warnings = []  # the backend appends to it too (provider fallback, ...)
        self.backend = None
        self.error = None
        self.info = None
        self.timer = None
        self.cold = None
        self.warmup = None
        self.samples = []
        self.sample_rounds = []
        self.blocks = []
        self.loads = 0
        self.load_s = 0.0
        self.build_s = 0.0
        self.rewarm_n = 0
        self.rewarm_s = 0.0

    @property
    def ok(self):
        return self.error is None

    def fail(self, stage, exc):
        self.error = error_info(stage, exc)
        log("member %s failed in stage %s: %s" % (self.id, self.error["stage"], exc))
        self.close()

    def close(self):
        backend, self.backend = self.backend, None
        if backend is not None:
            try:
                backend.close()
            except Exception as exc:
                log("closing the backend of member %s failed: %s" % (self.id, exc))

    def measure_info(self, rounds):
        per_n = [0] * rounds
        per_s = [0.0] * rounds
        for block in self.blocks:
            per_n[block["round"]] += block["iterations"]
            per_s[block["round"]] += block["seconds"]
        return {"iterations": len(self.samples), "seconds": math.fsum(per_s),
                "stop_reason": combine_stop_reasons([b["stop_reason"] for b in self.blocks]), "rounds": rounds,
                "round_iterations": per_n, "round_seconds": per_s, "rewarm_iterations": self.rewarm_n,
                "rewarm_seconds": self.rewarm_s, "loads": self.loads, "load_s": self.load_s, "build_s": self.build_s}

    def document(self, job, group_error):
        """The member's result object; a group failure makes every member that had not failed an error."""
        art = self.spec["artifact"]
        doc = new_member_doc(self.id, art["format"], art["sha256"])
        doc["options"] = public_options(self.job["options"])
        doc["cold"] = self.cold
        doc["warmup"] = self.warmup
        if self.info is not None:
            doc["backend"] = self.info
            doc["timer"] = self.timer
            if job["runtime"] == "onnxruntime":
                doc["providers"] = self.info.get("providers")
                doc["provider_fallback"] = self.info.get("provider_fallback")
        warnings = _unique(self.warnings)
        error = self.error or group_error
        if error is None and not self.samples:
            error = error_info("measure", AgentError(
                "measure", "no iteration finished before the job timeout (timeout_s=%g)" % job["timeout_s"]))
        if error is None:
            done = self.measure_info(job["rounds"])
            doc["samples_ns"] = list(self.samples)
            doc["sample_rounds"] = list(self.sample_rounds)
            doc["stats"] = summarize(self.samples)
            doc["measure"] = done
            doc["status"] = "ok"
            warnings.extend(measure_warnings(self.samples, job["measure"], doc["stats"], done))
        else:
            doc["error"] = error
        doc["warnings"] = warnings
        return doc


def member_step(member, progress, stage, fn, *args):
    """Run one step of a member; an exception makes it an error member (Terminated ends the group)."""
    progress.at(stage, member.id)
    try:
        fn(*args)
    except Exception as exc:
        member.fail(progress.stage, exc)
        return False
    return True


def load_member(member, progress):
    backend = BACKENDS[member.job["runtime"]](member.job, member.warnings)
    member.backend = backend
    t0 = time.monotonic()
    backend.load(progress)
    member.loads += 1
    member.build_s += backend.build_s
    member.load_s += time.monotonic() - t0 - backend.build_s
    if member.info is None:
        member.timer = backend.timer
        member.info = backend.info()


def warm_member(member, job, deadline):
    with member.backend.running():
        member.warmup = warm_up(member.backend, job["warmup"], deadline)


def time_block(member, r, job, progress, deadline):
    """Round r's block of a loaded member: re-warm (untimed), then time its share of the iterations."""
    backend = member.backend
    with backend.running():
        progress.at("warmup", member.id, r, "re-warm")
        n, seconds = rewarm(backend, job["rewarm"]["iterations"], deadline)
        member.rewarm_n += n
        member.rewarm_s += seconds
        progress.at("measure", member.id, r)
        samples, done = measure(backend, block_spec(job["measure"], job["rounds"], r, len(member.samples)), deadline)
    member.samples.extend(samples)
    member.sample_rounds.extend([r] * len(samples))
    done["round"] = r
    member.blocks.append(done)


def _fill_gpu_from_backend(env, backend):
    extra = _safe(backend.gpu_info) if backend is not None else None
    if env is not None and env.get("gpu") is not None and extra:
        env["gpu"].update(dict((k, v) for k, v in extra.items() if v is not None))


#: Share of the device's MemAvailable the members of a group may need together before they are isolated.
MEMORY_SHARE = 0.8


def mem_available_bytes():
    """MemAvailable of /proc/meminfo in bytes, or None (not Linux, or a kernel older than 3.14)."""
    m = re.search(r"MemAvailable:\s+(\d+)", read_text("/proc/meminfo") or "")
    return int(m.group(1)) * 1024 if m else None


def member_footprint(member):
    """Bytes a member adds to the timing process once loaded (see "Memory" in the module docstring)."""
    cold = member.cold or {}
    peak, base = cold.get("peak_rss_bytes"), cold.get("base_rss_bytes")
    if peak and base is not None and peak > base:
        return peak - base
    try:
        return 2 * os.path.getsize(member.spec["artifact"]["path"])
    except OSError:
        return 0


def memory_isolation(members, available):
    """None when the members fit in memory together, else the warning that says why they are isolated."""
    if len(members) < 2 or not available:
        return None
    need = sum(member_footprint(m) for m in members)
    if need <= MEMORY_SHARE * available:
        return None
    return ("loading one member at a time: the %d members need about %.0f MiB together, more than %.0f %% of the "
            "%.0f MiB this device has available" % (len(members), need / 2.0 ** 20, MEMORY_SHARE * 100,
                                                    available / 2.0 ** 20))


def run_group(job, members, result, progress, deadline):
    """Under the lock: verify, cold starts, load, warm up, then the rounds (see the module docstring)."""
    timings = result["timings_s"]
    by_id = dict((m.id, m) for m in members)
    gpu_known = [False]

    def note_gpu(member):
        if not gpu_known[0] and member.backend is not None:
            _fill_gpu_from_backend(result["env"], member.backend)
            gpu_known[0] = True

    for m in members:
        t0 = time.monotonic()
        member_step(m, progress, "verify", verify_artifact, m.spec["artifact"]["path"], m.spec["artifact"]["sha256"])
        timings["verify"] += time.monotonic() - t0
    for m in members:
        if m.ok and job["cold_start"]:
            progress.at("load", m.id, note="cold start child")
            t0 = time.monotonic()
            m.cold, warning = measure_cold(job, m.spec, deadline)
            timings["cold"] += time.monotonic() - t0
            if warning:
                m.warnings.append(warning)
                log("member %s: %s" % (m.id, warning))

    result["env"] = capture_env()
    isolate = job["isolate"]
    if not isolate:
        why = memory_isolation([m for m in members if m.ok], mem_available_bytes())
        if why:
            isolate = True
            result["warnings"].append(why)
            log(why)
    result["isolated"] = isolate
    if not isolate:
        for m in members:
            if m.ok and member_step(m, progress, "load", load_member, m, progress):
                note_gpu(m)
        for m in members:
            if m.ok:
                member_step(m, progress, "warmup", warm_member, m, job, deadline)

    progress.at("measure", note="environment snapshot")
    before = snapshot()
    result["env"]["before"] = before
    _fill_gpu_from_smi(result["env"], before)
    cooldown = job["cooldown"]
    if cooldown is not None and hottest_temperature() is None:
        result["warnings"].append("cool-down asked (max_temp_c=%g) but this device reports no temperature (no "
                                  "/sys/class/thermal zone, no nvidia-smi GPU): rounds run without waiting"
                                  % cooldown["max_temp_c"])
        cooldown = None
    for r, order in enumerate(result["round_orders"]):
        if r > 0 and cooldown is not None and deadline.work_left() > 0:
            progress.at("measure", round_index=r, note="cool-down")
            entry = cool_down(cooldown, r, deadline)
            result["cooldown"].append(entry)
            timings["cooldown"] += entry["waited_s"]
        for member_id in order:
            m = by_id[member_id]
            if not m.ok:
                continue
            if isolate:
                if deadline.work_left() <= 0:  # no time left to time it: do not pay for a load
                    m.blocks.append({"iterations": 0, "seconds": 0.0, "stop_reason": "timeout", "round": r})
                    continue
                if not member_step(m, progress, "load", load_member, m, progress):
                    continue
                note_gpu(m)
                if m.warmup is None and not member_step(m, progress, "warmup", warm_member, m, job, deadline):
                    continue
            member_step(m, progress, "measure", time_block, m, r, job, progress, deadline)
            if isolate:
                m.close()
    after = snapshot()
    result["env"]["after"] = after
    if cooldown is not None:
        result["warnings"].extend(cooldown_warnings(cooldown, result["cooldown"]))
    result["warnings"].extend(environment_warnings(before, after))


def run_job(text, stdin_fd=None):
    """Run the job given as JSON text and return the result document (never raises).

    ``stdin_fd``: the still open stdin the job came on (first line only), to
    watch when the job asks for it; None when stdin was read to EOF.
    """
    t_start = time.monotonic()
    result = new_result()
    progress = Progress()
    timings = result["timings_s"]
    job = None
    members = []
    group_error = None
    try:
        try:
            job = parse_job(text)
            result.update({"job_id": job["job_id"], "runtime": job["runtime"], "rounds": job["rounds"],
                           "seed": job["seed"]})
            if job["watch_stdin"]:
                if stdin_fd is None:
                    raise JobError("job field job.watch_stdin is true but the job did not come as ONE line ended "
                                   "by a newline (stdin was read to EOF, so it cannot be watched): send "
                                   "json.dumps(job) + \"\\n\" and keep stdin open, or leave watch_stdin out")
                start_stdin_watch(stdin_fd)
            result["round_orders"] = round_orders([m["id"] for m in job["members"]], job["seed"], job["rounds"])
            result["settings"] = dict((k, job[k]) for k in ("options", "members", "warmup", "measure", "rounds",
                                                            "seed", "rewarm", "isolate", "cold_start", "cooldown",
                                                            "timeout_s", "workdir"))
            result["settings"]["members"] = [
                {"id": m["id"], "artifact": m["artifact"], "input": m["input"],
                 "options": public_options(m["options"])} for m in job["members"]]
            for name in job["options"]["unknown"]:
                result["warnings"].append("unknown option %r for runtime %s ignored" % (name, job["runtime"]))
            result["warnings"].extend(job["options"]["notes"])
            members = [Member(spec, job) for spec in job["members"]]
            for m in members:
                own = m.job["options"]
                if own is not job["options"]:  # the member's own options: their warnings are its own
                    m.warnings.extend("unknown option %r for runtime %s ignored" % (name, job["runtime"])
                                      for name in own["unknown"] if name not in job["options"]["unknown"])
                    m.warnings.extend(n for n in own["notes"] if n not in job["options"]["notes"])
            for phase in TIMING_PHASES:
                timings[phase] = 0.0
            deadline = Deadline(job["timeout_s"])

            progress.at("lock")
            with DeviceLock(job["workdir"], deadline, job["job_id"]) as lock:
                timings["lock_wait"] = lock.waited_s
                run_group(job, members, result, progress, deadline)
        finally:
            disarm_stop()  # a SIGTERM or EOF from here on would only lose the result
    except (Exception, KeyboardInterrupt, Terminated) as exc:
        group_error = error_info(progress.stage, exc)
        result["error"] = group_error
        log("job failed in stage %s: %s" % (group_error["stage"], exc))
    finally:
        for m in members:
            m.close()
    if result["env"] is None:
        # Cheap (files only, no subprocess): says which Python and runtimes failed.
        result["env"] = _safe(capture_env)
    if job is None:
        docs = []
        for known in known_members(text):
            doc = new_member_doc(known["id"], known["artifact"]["format"], known["artifact"]["sha256"])
            doc["error"] = group_error
            docs.append(doc)
        result["members"] = docs
    else:
        result["members"] = [m.document(job, group_error) for m in members]
        if members:
            timings["load"] = math.fsum(m.load_s for m in members)
            timings["build"] = math.fsum(m.build_s for m in members)
            timings["warmup"] = math.fsum(m.warmup["seconds"] for m in members if m.warmup)
            timings["rewarm"] = math.fsum(m.rewarm_s for m in members)
            timings["measure"] = math.fsum(b["seconds"] for m in members for b in m.blocks)
    result["status"] = "ok" if group_error is None else "error"
    timings["total"] = time.monotonic() - t_start
    result["finished_utc"] = utc_now()
    return result


# --------------------------------------------------------------------------
# Probe (health check)
# --------------------------------------------------------------------------

PROBED_RUNTIMES = ("onnxruntime", "torch", "tensorrt", "pycuda", "numpy")
#: Per runtime child, and all of them together: under the transports' probe timeout (180 s), for a Pi
#: that takes tens of seconds to import torch.
PROBE_RUNTIME_TIMEOUT_S = 90.0
PROBE_BUDGET_S = 150.0
PROBE_STDERR_TAIL_CHARS = 1500
FATAL_ERROR_LINE = "Fatal Python error"


def describe_runtime(name):
    """Import one runtime in this process and describe it (the body of ``--probe-runtime NAME``)."""
    import importlib
    entry = {"importable": False, "version": None}
    try:
        module = importlib.import_module("pycuda.driver" if name == "pycuda" else name)
        entry["importable"] = True
        version = getattr(module, "__version__", None)
        if name == "pycuda":
            version = getattr(importlib.import_module("pycuda"), "VERSION_TEXT", None)
        entry["version"] = str(version) if version is not None else None
        if name == "onnxruntime":
            entry["providers"] = list(module.get_available_providers())
        elif name == "torch":
            entry["cuda_available"] = bool(module.cuda.is_available())
            entry["cuda_version"] = getattr(module.version, "cuda", None)
            if entry["cuda_available"]:
                entry["gpus"] = [module.cuda.get_device_name(i) for i in range(module.cuda.device_count())]
    except Exception as exc:
        entry["error"] = "%s: %s" % (type(exc).__name__, exc)
    return entry


def probe_one_runtime(name):
    """``--probe-runtime NAME``: the document a probe child writes."""
    return {"protocol": PROTOCOL, "agent_version": AGENT_VERSION, "status": "ok", "runtime": name,
            "entry": describe_runtime(name)}


def signal_name(number):
    """9 -> "SIGKILL" (a number the signal module does not know stays a number)."""
    try:
        return signal.Signals(number).name
    except (ValueError, AttributeError):
        return "signal %d" % number


def last_json_object(text):
    """The JSON object on the last line of a child's stdout, or None."""
    lines = (text or "").strip().splitlines()
    try:
        doc = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def probe_runtime_child(name, timeout):
    """Import runtime ``name`` in a child process (``--probe-runtime``) and return its entry.

    A runtime whose import crashes the interpreter (a segfaulting extension,
    an abort in a CUDA library) then costs only its own entry: its error says
    how the child died, with the child's stderr tail (faulthandler's traceback).
    """
    argv = [sys.executable or "python3", os.path.abspath(__file__), "--probe-runtime", name]
    entry = {"importable": False, "version": None}
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        entry["error"] = "import did not finish within %.0f s (probe child killed)" % timeout
        return entry
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        entry["error"] = "cannot run the probe child: %s" % exc
        return entry
    doc = last_json_object(proc.stdout)
    if doc is not None and isinstance(doc.get("entry"), dict):
        return doc["entry"]
    if proc.returncode < 0:
        entry["error"] = "import crashed: killed by %s" % signal_name(-proc.returncode)
    else:
        entry["error"] = "import failed: the probe child exited with code %d without a result" % proc.returncode
    entry["stderr_tail"] = crash_report(proc.stderr or "")
    return entry


def crash_report(stderr):
    """What a crashed child's stderr says about its death: from faulthandler's "Fatal Python error" line on
    (the crashing frame comes first: most recent call first), else its tail."""
    start = stderr.rfind(FATAL_ERROR_LINE)
    if start < 0:
        return stderr[-PROBE_STDERR_TAIL_CHARS:]
    return stderr[start:start + PROBE_STDERR_TAIL_CHARS]


def _module_present(name):
    """Whether ``name`` can be found (not imported): the probe's answer while the device is busy."""
    try:
        from importlib.util import find_spec
        return find_spec(name) is not None
    except (ImportError, ValueError, AttributeError):
        return False


def probe_runtimes(busy_reason=None):
    """Which runtimes are present; unless the device is busy, import each in its own child and ask for details.

    One child per runtime, one after the other: importing torch on a Pi is
    heavy enough without tensorrt and onnxruntime loading at the same time.
    """
    out = {}
    end = time.monotonic() + PROBE_BUDGET_S
    for name in PROBED_RUNTIMES:
        present = _module_present(name)
        entry = {"importable": present, "version": None}
        if not present:
            entry["error"] = "not installed (no module named %r)" % name
        elif busy_reason:
            entry["note"] = "not imported (%s)" % busy_reason
        elif end - time.monotonic() < 1.0:
            entry = {"importable": False, "version": None,
                     "error": "not imported: the probe's %.0f s budget ran out" % PROBE_BUDGET_S}
        else:
            entry = probe_runtime_child(name, min(PROBE_RUNTIME_TIMEOUT_S, end - time.monotonic()))
        out[name] = entry
    return out


def probe(workdir=None):
    """Environment plus runtime availability, for `bench devices`.

    If a benchmark holds the device lock, nothing heavy is imported (importing
    torch on a Pi would disturb the timing in progress); ``busy_reason`` then
    says which job holds it, since when, and its pid.
    """
    workdir = os.path.expanduser(workdir) if workdir else None
    busy = bool(workdir) and lock_is_held(workdir)
    holder = read_lock_holder(os.path.join(workdir, "agent.lock")) if busy else None
    reason = "busy: lock held by %s" % describe_lock_holder(holder) if busy else None
    doc = {"protocol": PROTOCOL, "agent_version": AGENT_VERSION, "status": "ok", "busy": busy,
           "lock_holder": holder, "busy_reason": reason}
    doc["runtimes"] = probe_runtimes(reason)
    doc["env"] = capture_env()
    snap = snapshot()
    doc["env"]["now"] = snap
    _fill_gpu_from_smi(doc["env"], snap)
    doc["warnings"] = environment_warnings(snap, snap)
    return doc


# --------------------------------------------------------------------------
# Output and entry point
# --------------------------------------------------------------------------

def claim_stdout():
    """Keep the real stdout for the result; point fd 1 at stderr while working.

    TensorRT, onnxruntime and C++ extensions may print on fd 1; anything they
    write now lands in the log instead of corrupting the JSON document.
    Returns a writable file object on the original stdout.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    return os.fdopen(saved, "w")


def _jsonable(value):
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return dict((str(k), _jsonable(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_document(out, doc):
    """Write one JSON document and a newline; falls back to a bare error document."""
    try:
        text = json.dumps(_jsonable(doc), allow_nan=False, default=str)
    except Exception as exc:
        text = json.dumps({"protocol": PROTOCOL, "agent_version": AGENT_VERSION, "job_id": doc.get("job_id"),
                           "status": "error", "error": {"stage": "report", "type": type(exc).__name__,
                                                        "message": "result not serialisable: %s" % exc,
                                                        "traceback": ""}})
    out.write(text + "\n")
    out.flush()


# --------------------------------------------------------------------------
# Stopping early: SIGTERM and the stdin watchdog (job field watch_stdin)
# --------------------------------------------------------------------------

#: ``armed``: a SIGTERM raises Terminated (until the result is being written);
#: ``raised``: it did already (once is enough: the clean-up after it must not be
#: interrupted again); ``reason``: why, when the stdin watchdog sent it.
#: ``parent``: the pid that started the agent, noted as it starts (the watchdog stops an orphaned job).
_STOP = {"armed": True, "raised": False, "reason": None, "parent": None}

STDIN_CLOSED = ("cancelled: stdin closed (watch_stdin: the transport gave up on the job, or the harness or its "
                "connection to the device died)")
PARENT_GONE = ("cancelled: the process that started the agent is gone (watch_stdin: the harness or its connection "
               "to the device died)")
#: How often the stdin watchdog also checks that the agent's parent is alive (seconds; one wake-up each).
WATCH_POLL_S = 1.0


def _on_sigterm(signum, frame):
    if not _STOP["armed"] or _STOP["raised"]:
        log("signal %d ignored: %s" % (signum, "already stopping" if _STOP["raised"] else "writing the result"))
        return
    _STOP["raised"] = True
    raise Terminated(_STOP["reason"] or "terminated by signal %d" % signum)


def disarm_stop():
    """The work is over: a SIGTERM or a closed stdin must not interrupt the clean-up and the result."""
    _STOP["armed"] = False


def _wait_stdin_closed(fd, parent):
    """Read (and drop) stdin until EOF or until the agent's parent (pid `parent`) is gone; why it stopped."""
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], WATCH_POLL_S)
            if ready and not os.read(fd, 4096):
                return STDIN_CLOSED
            if os.getppid() != parent:  # re-parented: the process that started us exited
                return PARENT_GONE
    except (OSError, ValueError) as exc:
        log("reading stdin failed (%s): taken as closed" % exc)
        return STDIN_CLOSED


def _watch_stdin(fd, main_ident, parent):
    """Daemon thread: wait for stdin's EOF or the parent's exit, then stop the job as a SIGTERM would.

    It reads the raw descriptor, not ``sys.stdin``: a daemon thread blocked
    inside a buffered object's lock can abort the interpreter's shutdown.
    """
    reason = _wait_stdin_closed(fd, parent)
    if not _STOP["armed"]:
        return
    _STOP["reason"] = reason
    log(reason + ": stopping")
    try:  # at the main thread, so that its blocking calls return (EINTR) and the handler runs at once
        signal.pthread_kill(main_ident, signal.SIGTERM)
    except (AttributeError, OSError, ValueError):
        os.kill(os.getpid(), signal.SIGTERM)


def start_stdin_watch(fd):
    parent = _STOP["parent"] or os.getppid()
    thread = threading.Thread(target=_watch_stdin, args=(fd, threading.main_thread().ident, parent),
                              name="stdin-watch")
    thread.daemon = True
    thread.start()


def read_job(stream):
    """The job text from stdin, and whether stdin is left open to be watched (see ``watch_stdin``).

    The first line is the whole job when it is a JSON object with a
    ``watch_stdin`` that is not false (a malformed one is then a quick parse
    error, not a wait for an EOF the transport will not send); anything else
    (the old protocol: a document of any layout, then EOF) is read to EOF.
    """
    first = stream.readline()
    if first.endswith(b"\n"):
        try:
            raw = json.loads(first.decode("utf-8"))
        except ValueError:
            raw = None
        if isinstance(raw, dict) and raw.get("watch_stdin") is not None and raw.get("watch_stdin") is not False:
            return first.decode("utf-8"), True
    return (first + stream.read()).decode("utf-8"), False


def enable_faulthandler():
    """A fatal signal (SIGSEGV in a runtime, SIGABRT, SIGBUS, SIGFPE, SIGILL) dumps every thread's
    Python traceback to stderr, after the stage lines: the transport's stderr tail then says where."""
    try:
        faulthandler.enable(file=sys.stderr, all_threads=True)
    except (AttributeError, ValueError, OSError) as exc:  # a stderr without a file descriptor
        log("faulthandler not enabled: %s" % exc)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Time a group of model artifacts in interleaved rounds; "
                                                 "job JSON on stdin, result on stdout.")
    parser.add_argument("--probe", action="store_true", help="print the environment and the runtimes that import")
    parser.add_argument("--workdir", help="with --probe: the agent workdir, to see whether a benchmark is running")
    parser.add_argument("--version", action="store_true", help="print the agent version")
    parser.add_argument("--cold", action="store_true",
                        help="internal: cold start of a one-member job (run by the agent under its lock)")
    parser.add_argument("--probe-runtime", metavar="NAME", choices=PROBED_RUNTIMES,
                        help="internal: import one runtime and describe it (run by --probe, one child each)")
    args = parser.parse_args(argv)
    if args.version:
        print(AGENT_VERSION)
        return 0
    _STOP["parent"] = os.getppid()
    enable_faulthandler()
    try:
        out = claim_stdout()
    except OSError as exc:
        sys.stderr.write("agent: cannot set up stdout: %s\n" % exc)
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if args.probe or args.probe_runtime:
            try:
                doc = probe_one_runtime(args.probe_runtime) if args.probe_runtime else probe(args.workdir)
            except (Exception, Terminated) as exc:
                doc = {"protocol": PROTOCOL, "agent_version": AGENT_VERSION, "status": "error",
                       "error": error_info("probe", exc)}
        else:
            try:
                if args.cold:  # its parent gives it its job and closes its stdin: never watched
                    text, watch = sys.stdin.buffer.read().decode("utf-8"), False
                else:
                    text, watch = read_job(sys.stdin.buffer)
            except (Exception, KeyboardInterrupt, Terminated) as exc:
                doc = new_result()
                doc["error"] = error_info("parse", exc)
                doc["finished_utc"] = utc_now()
            else:
                doc = run_cold(text) if args.cold else run_job(text, sys.stdin.fileno() if watch else None)
        disarm_stop()
        write_document(out, doc)
    except Exception as exc:
        log("cannot write the result: %s" % exc)
        return 1
    return 0


if __name__ == "__main__":
    if sys.version_info < (3, 6):
        sys.stderr.write("agent: needs Python >= 3.6, this is %s\n" % sys.version.split()[0])
        sys.exit(3)
    sys.exit(main())
