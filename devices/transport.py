"""How the host reaches a device: ship files, run the agent, read its result.

Every transport (this module's ``LocalTransport``, and the SSH one in
``devices/ssh.py``) implements ``Transport``:

* files go into a content-addressed store ``<workdir>/blobs/<sha256>`` on the
  device and are uploaded only when missing.  An upload goes to a temporary
  name, is hashed there, and renamed into place only if the hash matches, so a
  blob that exists under its final name is complete.  ``bytes_uploaded`` counts
  what was really sent, which is how callers (and tests) see the cache work.
* the agent (``devices/agent.py``) is itself such a blob;
* ``run_agent`` never raises for an agent that crashes, hangs, is killed or
  prints garbage: it returns an error result shaped like the agent's own
  (``status: "error"``, ``error.stage`` "transport" or "timeout", stderr tail),
  so the record store keeps one row per job, never silence (docs/design.md §4).

The result of a ``run_agent`` (and of a ``probe``) also carries a ``transport``
object (name, exit code, wall seconds, stderr tail) added on the host side.

Cancellation (the agent's ``watch_stdin`` job field): ``run_agent`` sets
``watch_stdin: true`` on the job it sends, writes the job as ONE line
(``json.dumps(job) + "\n"``) and keeps the agent's stdin open until the agent
has exited.  EOF on that stdin is the agent's order to stop: on a timeout or a
cancellation (an exception in the waiting thread, Ctrl-C) the transport closes
stdin first, gives the agent ``CANCEL_GRACE_S`` to stop, report and release the
device lock, and only then kills what is left; and when the host process or
the SSH connection dies, the kernel or sshd closes stdin for it, so a device
is never left measuring (and locked) for nobody.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from typing import IO, Any, Callable, NamedTuple

AGENT_SOURCE = pathlib.Path(__file__).with_name("agent.py")
PROTOCOL = 3  # devices/agent.py speaks this one; harness/jobs.py writes its job documents
STDERR_TAIL_CHARS = 4000
PROBE_TIMEOUT_S = 180.0
#: After closing a timed-out or cancelled agent's stdin: how long it may take to stop, report and unlock.
CANCEL_GRACE_S = 5.0
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (artifacts can be hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def check_sha256(sha256: str) -> str:
    """Return the digest lower-cased; reject anything else, since it becomes a file name on the device."""
    digest = str(sha256).lower()
    if not _SHA256_RE.match(digest):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return digest


def tail(text: str | bytes | None, limit: int = STDERR_TAIL_CHARS) -> str:
    """Last `limit` characters of a process's output, decoded leniently."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text[-limit:]


def error_result(job: dict, stage: str, message: str, stderr: str | bytes | None = "",
                 error_type: str = "TransportError") -> dict:
    """An error result with the agent's shape, for failures the agent could not report itself.

    Used by every transport: ``stage`` is "transport" (crash, kill, garbled
    output, upload failure) or "timeout" (killed after ``timeout_s``); the
    harness uses it for "connect" and "export" failures (`error_type`: what failed).
    """
    now = datetime.now(timezone.utc).isoformat()
    return {
        "protocol": job.get("protocol", PROTOCOL),
        "agent_version": None,
        "job_id": job.get("job_id"),
        "status": "error",
        "runtime": job.get("runtime"),
        "format": (job.get("artifact") or {}).get("format"),
        "artifact_sha256": (job.get("artifact") or {}).get("sha256"),
        "samples_ns": [],
        "stats": None,
        "env": None,
        "started_utc": None,
        "finished_utc": now,
        "warnings": [],
        "error": {"stage": stage, "type": error_type, "message": message, "traceback": "",
                  "stderr_tail": tail(stderr)},
    }


def signal_name(number: int) -> str:
    """9 -> "SIGKILL"; a number this platform does not name stays a number."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def agent_died(returncode: int | None, signal_unknown: bool = False) -> str:
    """Why an agent left no result document, from how it ended.

    ``returncode`` is read as subprocess reports it (negative: killed by that
    signal).  ``signal_unknown``: it died of a signal whose number was not
    reported, as over SSH, where sshd sends an exit signal instead of a status
    and paramiko says -1 (which must not read as SIGHUP).
    """
    if signal_unknown:
        return "agent killed by a signal (exit status unknown; the OOM killer?) before it wrote a result"
    if returncode is not None and returncode < 0:
        return f"agent killed by {signal_name(-returncode)} before it wrote a result"
    return f"agent exited with code {returncode} without a result document"


def job_line(job: dict) -> bytes:
    """The job as the agent's ``watch_stdin`` protocol sends it: ONE line of JSON and a newline, with
    ``watch_stdin`` set (json.dumps escapes every newline inside strings)."""
    return (json.dumps({**job, "watch_stdin": True}) + "\n").encode("utf-8")


def parse_agent_output(job: dict, stdout: str | bytes, stderr: str | bytes, returncode: int | None,
                       signal_unknown: bool = False) -> dict:
    """Turn the agent's exit code and stdout into a result dict (error result if unusable).

    A result document is trusted whatever the exit code, as long as it parses
    and is a JSON object; otherwise the failure is described from the exit
    code (see `agent_died`).
    """
    if isinstance(stdout, bytes):
        stdout = stdout.decode("utf-8", "replace")
    text = (stdout or "").strip()
    doc: Any = None
    if text:
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
    if isinstance(doc, dict) and "status" in doc:
        return doc
    if signal_unknown or returncode not in (0, None):
        message = agent_died(returncode, signal_unknown)
    elif not text:
        message = "agent exited without printing a result document"
    else:
        message = f"agent printed something that is not a result document: {text[:200]!r}"
    return error_result(job, "transport", message, stderr)


class TransportError(RuntimeError):
    """A transport could not do what it was asked (a shell command failed, a connection dropped, ...).

    Every transport raises this or a subclass (`devices.ssh.SSHTransportError`), so the
    harness can tell a device's failure from a bug.
    """


class Transport(abc.ABC):
    """Ships blobs and the agent to one device and runs jobs there."""

    name: str
    bytes_uploaded: int

    @abc.abstractmethod
    def ensure_blob(self, local_path: pathlib.Path, sha256: str,
                    progress: Callable[[int, int], None] | None = None) -> str:
        """Make ``<workdir>/blobs/<sha256>`` exist on the device; return its device path.

        Uploads only when missing, through a temporary name that is hashed on
        arrival and renamed into place; a hash mismatch raises ValueError.
        `progress(done, total)` hears about the bytes as they go (``(total, total)``
        once when the blob is already there).
        """

    @abc.abstractmethod
    def ensure_agent(self) -> str:
        """Ship ``devices/agent.py`` as a blob (by its sha256); return its device path."""

    @abc.abstractmethod
    def run_agent(self, job: dict, timeout_s: float) -> dict:
        """Run the agent with ``job`` on stdin; return its result, or an error result.

        Never raises for agent failures: a crash, kill or garbled output gives
        ``error.stage == "transport"``, running past ``timeout_s`` gives
        ``"timeout"``.  Choose ``timeout_s`` a little above ``job["timeout_s"]``
        (the agent's own budget excludes interpreter start-up and imports).
        """

    @abc.abstractmethod
    def probe(self) -> dict:
        """Run ``agent.py --probe``: environment and importable runtimes."""

    @abc.abstractmethod
    def device_workdir(self) -> str:
        """The device's work folder as a path on the device (agent jobs name it as ``workdir``)."""

    @abc.abstractmethod
    def run_shell(self, command: str, timeout_s: float) -> str:
        """Run a user's ``pre``/``post`` command from bench.toml through the device's shell.

        Returns the command's standard output. Only for commands the user wrote in
        their own config; everything the project sends itself is passed as quoted
        argv. A non-zero exit or a timeout raises `TransportError` naming the
        command, with the tail of its standard error.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; the transport is unusable afterwards."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Finished(NamedTuple):
    """How a `LocalTransport` subprocess ended."""

    returncode: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool
    #: Stopped by itself once its stdin was closed (see `LocalTransport._stop`).
    stopped_cleanly: bool


def _drain(pipe: IO[bytes], chunks: list[bytes]) -> None:
    """Read a child's output pipe to EOF (one thread per pipe, so neither can fill up and stall it)."""
    for chunk in iter(lambda: pipe.read1(1 << 16), b""):
        chunks.append(chunk)
    pipe.close()


def _feed(pipe: IO[bytes], data: bytes, close: bool) -> None:
    """Write a child's stdin (in a thread: a child that does not read must not block the wait)."""
    try:
        if data:
            pipe.write(data)
            pipe.flush()
        if close:
            pipe.close()
    except (BrokenPipeError, OSError, ValueError):  # it exited without reading (not an agent, or crashed)
        pass


def _close(pipe: IO[bytes], feeder: threading.Thread) -> None:
    """Close a child's stdin once the feeder is done with it (EOF: the watching agent stops)."""
    feeder.join()
    try:
        pipe.close()
    except (BrokenPipeError, OSError, ValueError):
        pass


class LocalTransport(Transport):
    """The device is this machine: blobs are hard-linked (else copied) into ``workdir``, the agent is a subprocess.

    Used for local benchmarks and, because it shares the content store and
    the error handling rules with the SSH transport, to test them without SSH.
    """

    name = "local"

    def __init__(self, workdir: pathlib.Path, python: str = sys.executable) -> None:
        self.workdir = pathlib.Path(workdir).expanduser().resolve()
        self.python = python
        self.bytes_uploaded = 0
        self._agent_path: str | None = None
        #: Processes running now, with their stdin feeders: `close` stops them (the harness was interrupted).
        self._live: dict[subprocess.Popen, threading.Thread] = {}
        self._live_lock = threading.Lock()
        (self.workdir / "blobs").mkdir(parents=True, exist_ok=True)

    def blob_path(self, sha256: str) -> pathlib.Path:
        return self.workdir / "blobs" / check_sha256(sha256)

    def ensure_blob(self, local_path: pathlib.Path, sha256: str,
                    progress: Callable[[int, int], None] | None = None) -> str:
        """The device's copy of an artifact: a hard link when it can be (no second copy on this disk), else a copy.

        A link is safe because the artifact cache never rewrites a file in place
        (an export is published by renaming a new folder; a bad entry is removed,
        which leaves the linked inode alone), and the content is checked
        against `sha256` either way. Only copied bytes count as uploaded.
        """
        path = self._store(local_path, sha256, link=True)
        if progress is not None:
            size = pathlib.Path(path).stat().st_size
            progress(size, size)
        return path

    def _store(self, local_path: pathlib.Path, sha256: str, link: bool) -> str:
        target = self.blob_path(sha256)
        if target.is_file():
            return str(target)
        fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{target.name[:16]}-", dir=target.parent)
        tmp = pathlib.Path(tmp_name)
        os.close(fd)
        copied = 0
        try:
            try:
                if not link:
                    raise OSError("copy asked for")
                tmp.unlink()
                os.link(local_path, tmp)
            except OSError:  # asked for, another file system, or one without hard links: copy
                with open(tmp, "wb") as out, open(local_path, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
                tmp.chmod(0o644)
                copied = tmp.stat().st_size
            actual = sha256_file(tmp)
            if actual != target.name:
                raise ValueError(f"{local_path}: content has sha256 {actual}, expected {target.name}")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        self.bytes_uploaded += copied
        return str(target)

    def ensure_agent(self) -> str:
        if self._agent_path is None or not pathlib.Path(self._agent_path).is_file():
            # a copy: the source tree's agent.py may be edited in place, which would change a linked blob
            self._agent_path = self._store(AGENT_SOURCE, sha256_file(AGENT_SOURCE), link=False)
        return self._agent_path

    def _run(self, argv: list[str], stdin: bytes, timeout_s: float, keep_stdin_open: bool = False) -> _Finished:
        """Run argv in its own process group; on timeout or cancellation stop the whole group.

        The new session makes the agent and anything it started (nvidia-smi,
        its --cold child) one group.  ``keep_stdin_open`` (the ``watch_stdin``
        protocol): stdin stays open until the process has exited, and
        stopping it starts by closing stdin (see `_stop`).
        """
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, cwd=self.workdir)
        out: list[bytes] = []
        err: list[bytes] = []
        threads = [threading.Thread(target=_drain, args=(proc.stdout, out), daemon=True),
                   threading.Thread(target=_drain, args=(proc.stderr, err), daemon=True),
                   threading.Thread(target=_feed, args=(proc.stdin, stdin, not keep_stdin_open), daemon=True)]
        for thread in threads:
            thread.start()
        with self._live_lock:
            self._live[proc] = threads[2]
        grace = CANCEL_GRACE_S if keep_stdin_open else 0.0
        timed_out, clean = False, False
        try:
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                clean = self._stop(proc, threads[2], grace)
        except BaseException:  # the waiting thread is cancelled: the agent must not go on without it
            self._stop(proc, threads[2], grace)
            raise
        finally:
            _close(proc.stdin, threads[2])
            for thread in threads:
                thread.join()
            with self._live_lock:
                self._live.pop(proc, None)
        return _Finished(proc.returncode, b"".join(out), b"".join(err), timed_out, clean)

    def _stop(self, proc: subprocess.Popen, feeder: threading.Thread, grace: float) -> bool:
        """Stop a process that must not go on: close its stdin, wait up to ``grace`` s, kill its group.

        Returns True when it exited by itself within the grace time (an agent
        watching stdin stops, reports and releases the device lock).
        """
        clean = False
        if grace > 0 and not feeder.is_alive():  # a feeder still writing holds the pipe: kill at once
            _close(proc.stdin, feeder)
            try:
                proc.wait(timeout=grace)
                clean = True
            except subprocess.TimeoutExpired:
                pass
        self._kill_group(proc)  # what is left of the group (an agent's children), or the agent itself
        proc.wait()
        return clean

    @staticmethod
    def _kill_group(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def run_agent(self, job: dict, timeout_s: float) -> dict:
        t0 = time.monotonic()
        try:
            agent = self.ensure_agent()
            run = self._run([self.python, agent], job_line(job), timeout_s, keep_stdin_open=True)
        except (OSError, ValueError, TypeError) as exc:
            return self._annotate(error_result(job, "transport", f"could not start the agent: {exc}"),
                                  None, "", t0)
        if run.timed_out:
            how = ("stdin closed, so it stopped and reported (see its stderr); its process group then killed"
                   if run.stopped_cleanly else f"stdin closed, still running {CANCEL_GRACE_S:g} s later; killed")
            result = error_result(job, "timeout", f"agent still running after {timeout_s:g} s; {how}", run.stderr)
        else:
            result = parse_agent_output(job, run.stdout, run.stderr, run.returncode)
        return self._annotate(result, run.returncode, run.stderr, t0)

    def _annotate(self, result: dict, code: int | None, stderr: bytes | str, t0: float) -> dict:
        result["transport"] = {"name": self.name, "returncode": code, "wall_s": time.monotonic() - t0,
                               "stderr_tail": tail(stderr)}
        return result

    def probe(self) -> dict:
        t0 = time.monotonic()
        try:
            agent = self.ensure_agent()
            run = self._run([self.python, agent, "--probe", "--workdir", str(self.workdir)], b"", PROBE_TIMEOUT_S)
        except OSError as exc:
            return {"status": "error", "error": {"stage": "transport", "message": f"could not start the agent: {exc}"}}
        if run.timed_out:
            doc = {"status": "error", "error": {"stage": "timeout", "message": "probe timed out",
                                                "stderr_tail": tail(run.stderr)}}
        else:
            doc = parse_agent_output({}, run.stdout, run.stderr, run.returncode)
        return self._annotate(doc, run.returncode, run.stderr, t0)

    def device_workdir(self) -> str:
        return str(self.workdir)

    def run_shell(self, command: str, timeout_s: float) -> str:
        run = self._run(["/bin/sh", "-c", command], b"", timeout_s)
        if run.timed_out or run.returncode != 0:
            what = "timed out" if run.timed_out else f"exited with code {run.returncode}"
            raise TransportError(f"local: `{command}` {what}: {tail(run.stderr, 1000).strip()}")
        return run.stdout.decode("utf-8", "replace")

    def close(self) -> None:
        """Stop what still runs (a sweep interrupted mid-measure): stdin closed, a grace time, then the kill.

        The thread waiting for such a run then gets the agent's own "cancelled" result.
        """
        with self._live_lock:
            live = list(self._live.items())
        for proc, feeder in live:
            if proc.poll() is None:
                self._stop(proc, feeder, CANCEL_GRACE_S)
