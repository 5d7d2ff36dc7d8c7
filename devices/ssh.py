"""SSH transport: ship artifacts and the agent to a device and run jobs there.

This is the paramiko implementation of :class:`devices.transport.Transport`
(docs/design.md §4).  A newcomer should know five things about it:

1. **Host keys are always verified** against known_hosts files (the device's
   ``known_hosts``, else the ssh config's UserKnownHostsFile and
   GlobalKnownHostsFile ones; HostKeyAlias names the entry).  An unknown
   key is refused with a :class:`HostKeyError` that says how to trust it; with
   ``trust_new_hosts=True`` a first-seen key is appended to the (first) file
   (and a warning logged).  A *changed* key is refused in every mode.  The
   same rules apply to ProxyJump hosts.  StrictHostKeyChecking ``no``/``off``
   is refused; ``accept-new`` adds nothing without ``trust_new_hosts``.
2. **Authentication uses key files and ssh-agent only**; no password is ever
   passed to paramiko, so nothing secret can end up in a log.
3. **Remote commands are built from lists** and every element goes through
   :func:`shlex.quote` (:func:`remote_command`).  The workdir and the python
   path come from user config and may contain anything - spaces, quotes,
   ``; touch pwned`` - and must never be executed as shell syntax.  Data (the
   job JSON) travels on stdin, never on the command line.
4. **Blobs are content-addressed**: ``<workdir>/blobs/<sha256>``.  A blob is
   uploaded under a unique temporary name, its sha256 is checked *on the
   device*, and only then is it renamed (atomically) to its final name.  So a
   file at the final name was complete and correct when it got there; an
   interrupted upload leaves only a ``.tmp-*`` file that is never used and is
   removed later.  A blob already present is re-hashed on the device once per
   transport object before it is trusted (cheap insurance against SD-card
   corruption or a hand-edited file) and remembered afterwards.
5. **Timeouts kill the remote agent.**  Every command runs under a tiny
   ``/bin/sh`` wrapper (never the device python, which may be the thing that
   hangs) that writes its process-group id to ``<workdir>/run/<random>.pid``;
   on timeout the transport first closes the agent's stdin (an agent that
   watches stdin then writes its result and frees the device lock), and only
   if it is still running a second ``sh`` command kills that process group
   (SIGTERM, then SIGKILL) and confirms that nothing of it is left.  Closing
   an SSH channel alone does not stop a remote process.
6. **Every network operation has a deadline** (docs/design.md §4): connecting
   (``connect_timeout``), each SFTP transfer (``stall_timeout_s`` without
   progress fails it), and a dead link is noticed while waiting for anything
   within a few ``keepalive_s`` intervals: a keepalive request that wants an
   answer is sent every interval and the connection is closed when
   ``ALIVE_COUNT_MAX`` intervals pass without one.  A connection that was up
   and dropped is re-established with bounded exponential backoff
   (``reconnect_attempts``); an interrupted upload resumes from the verified
   prefix of its temporary file; an agent run that was cut is reported, never
   re-run behind the caller's back.
7. **Login-shell noise is ignored.**  sshd runs every command through the
   user's login shell, whose rc files may print a banner.  Each command
   prints a random marker on stdout and stderr right before it starts, and
   only what follows the marker is read.

``run_shell`` is the one deliberate exception to rule 3: it runs the
``pre``/``post`` shell commands the user wrote in ``bench.toml`` as written.

**Where to connect is decided by OpenSSH** (`devices.ssh_config`).  A device's ``host`` is resolved
the way ``ssh HOST`` resolves it: by ``ssh -G`` when an ``ssh`` binary is
installed (Include, Match, wildcard ``Host`` blocks, tokens and defaults all
applied by OpenSSH itself), else by paramiko's parser, which then refuses
Include and Match.  Every directive that changes where or how to connect is
either honoured (:data:`HONOURED`) or refused by name (:data:`REFUSED`);
:data:`IGNORED` lists the rest and why ignoring each is harmless.  The
device's own ``user``/``port``/``identity_file``/``known_hosts`` win over the
config, as ``ssh -l/-p/-i`` would.

ProxyJump is implemented in-process: the transport connects to the jump host
(host-key checked like any other), opens a ``direct-tcpip`` channel to the
target and runs the target's SSH session over that channel.  ProxyCommand
runs the configured command and speaks SSH over its stdin/stdout.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import logging
import os
import pathlib
import posixpath
import re
import secrets
import select
import shlex
import socket
import stat
import subprocess
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Sequence

import paramiko
from paramiko.auth_strategy import AuthSource, AuthStrategy, InMemoryPrivateKey, OnDiskPrivateKey

from devices.transport import (
    AGENT_SOURCE,
    PROBE_TIMEOUT_S,
    Transport,
    check_sha256,
    error_result,
    parse_agent_output,
    sha256_file,
    signal_name,
    tail,
)

from devices.ssh_config import (  # noqa: F401 - HONOURED, IGNORED, REFUSED: re-exported, the transport's contract
    DEFAULT_CONNECT_TIMEOUT_S,
    HONOURED,
    IGNORED,
    REFUSED,
    SSHConfigError,
    SSHConfigResolver,
    SSHTarget,
    find_ssh,
    parse_jump_spec,
    resolve_target,
)
from devices.ssh_errors import (  # noqa: F401 - SSHTransportError and BlobMismatchError: re-exported for callers
    AgentRunError,
    BlobMismatchError,
    BlobUploadError,
    HostKeyError,
    SSHAuthError,
    SSHConnectError,
    SSHLinkError,
    SSHTransportError,
    WorkdirError,
)
from devices.ssh_errors import reason as _reason

log = logging.getLogger(__name__)

#: A ``.tmp-*`` upload older than this (device clock) is an abandoned upload.
#: Live uploads keep touching their file, so this only has to exceed the
#: longest stall we tolerate, not the longest upload.
STALE_TEMP_AGE_S = 15 * 60

#: A dead link is one that has not answered for this many keepalive intervals
#: (OpenSSH's ServerAliveCountMax default).
ALIVE_COUNT_MAX = 3

#: After its stdin is closed (timeout, cancel) an agent gets this long to write
#: its result and exit by itself before its process group is killed.
STDIN_CLOSE_GRACE_S = 3.0

#: Bound on the kill command (SIGTERM grace 3 s, SIGKILL 2 s, slack for a slow device).
KILL_TIMEOUT_S = 20.0

#: SFTP write size (paramiko's own putfo chunk).
_CHUNK = 32768

#: ProxyJump chains longer than this are treated as a loop in the config.
MAX_JUMP_DEPTH = 8

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")  # what a device-side hasher must print


# --------------------------------------------------------------------------
# Programs run on the device.  The shell ones run under /bin/sh (POSIX sh,
# dash and busybox included), so that a hanging device python cannot stop a
# kill; the hasher needs Python >= 3.6 and the standard library only
# (docs/design.md §4).  All receive every path as an argument - nothing is
# ever interpolated into their source.
# --------------------------------------------------------------------------

#: Fallback hasher when the device has no ``sha256sum`` (argv[1] = file).
_HASH_SRC = """\
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())
"""

#: ``sh -c _MARKED_SH <marker> argv...``: print the marker on stdout and
#: stderr, then become the command.  Whatever the login shell's rc files
#: printed comes before the marker and is cut off (:func:`_after_marker`).
_MARKED_SH = 'printf "%s\\n" "$0"; printf "%s\\n" "$0" >&2; exec "$@"'

#: ``sh -c _WRAPPER_SH <marker> <pidfile> argv...``: like ``_MARKED_SH``, and
#: records the process-group id first.  sshd makes each session its own group
#: (setsid) and the login shell execs us, so the group is the command and
#: everything it starts; /proc says which group it is if the shell forked.
_WRAPPER_SH = """\
printf '%s\\n' "$0"; printf '%s\\n' "$0" >&2
pidfile=$1; shift
pgid=$$
if read -r stat 2>/dev/null < "/proc/$$/stat"; then
    pgid=$(set -- ${stat##*") "}; printf '%s' "$3")
fi
printf '%s\\n' "$pgid" > "$pidfile" || exit 125
exec "$@"
"""

#: ``sh -c _KILL_SH kill <pidfile>``: SIGTERM the recorded process group (the
#: agent then still writes its report), SIGKILL it after 3 s, and confirm that
#: no process of it is left (a zombie counts as gone: its reaper may be slow).
#: Prints "gone" (nothing was running), "killed", or why it could not confirm
#: (exit 3: no PID file, exit 4: survivors).
_KILL_SH = """\
pgid=$(cat "$1" 2>/dev/null)
case $pgid in ''|*[!0-9]*) echo "no PID file $1 (the command never started?)"; exit 3;; esac
alive() {
    if [ -d /proc/self ]; then
        for f in /proc/[0-9]*/stat; do
            read -r s 2>/dev/null < "$f" || continue
            set -- ${s##*") "}
            [ "$3" = "$pgid" ] && [ "$1" != Z ] && return 0
        done
        return 1
    fi
    kill -0 -"$pgid" 2>/dev/null
}
wait_gone() {
    i=0
    while alive; do
        [ "$i" -ge "$1" ] && return 1
        sleep 0.1 2>/dev/null || sleep 1
        i=$((i + 1))
    done
}
if ! alive; then rm -f "$1"; echo gone; exit 0; fi
kill -TERM -"$pgid" 2>/dev/null
if ! wait_gone 30; then
    kill -KILL -"$pgid" 2>/dev/null
    wait_gone 20 || { echo "process group $pgid survived SIGKILL"; exit 4; }
fi
rm -f "$1"
echo killed
"""

#: ``sh -c _SPACE_SH space <path>``: for the nearest existing ancestor of
#: path, print "<writable yes|no> <free KiB or -> <that ancestor>".  Used to
#: turn SFTP's bare "Failure" into "no space left" or "not writable".
_SPACE_SH = """\
p=$1
while [ ! -e "$p" ]; do p=$(dirname -- "$p"); done
if [ -d "$p" ] && [ -w "$p" ]; then w=yes; else w=no; fi
free=$(df -Pk -- "$p" 2>/dev/null | { read -r _; read -r _ _ _ a _; printf '%s' "$a"; })
printf '%s %s %s\\n' "$w" "${free:--}" "$p"
"""


def remote_command(argv: Sequence[str]) -> str:
    """Join ``argv`` into one POSIX-shell command line, quoting every element.

    SSH only transports a *string* that the remote login shell parses, so this
    is the single place where arguments become shell text.
    """
    return " ".join(shlex.quote(str(a)) for a in argv)


# --------------------------------------------------------------------------
# Host key policy
# --------------------------------------------------------------------------


@dataclass
class KnownHosts:
    """The usable content of a known_hosts file."""

    keys: paramiko.HostKeys
    revoked: list[paramiko.PKey]


def load_known_hosts(path: pathlib.Path, keys: Optional[paramiko.HostKeys] = None) -> KnownHosts:
    """Read a known_hosts file without tripping over lines paramiko cannot parse.

    ``paramiko.HostKeys.load`` raises on a ``@cert-authority`` line, which
    would make a perfectly normal ``~/.ssh/known_hosts`` unusable.  Here such
    lines, unknown key types and garbage are skipped (logged at DEBUG), and
    ``@revoked`` keys are collected so that they are refused.  Hashed names
    (``|1|...``) work as in OpenSSH; wildcard patterns are not supported.
    Keys are added to ``keys`` when given (e.g. an ``SSHClient``'s set).
    """
    keys = paramiko.HostKeys() if keys is None else keys
    revoked: list[paramiko.PKey] = []
    if not path.exists():
        return KnownHosts(keys, revoked)
    for lineno, raw in enumerate(path.read_text(errors="replace").splitlines(), 1):
        line, marker = raw.strip(), ""
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            marker, _, line = line.partition(" ")
            line = line.strip()
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line, lineno)
        except Exception:  # noqa: BLE001 - malformed line: ignore it, as ssh does
            entry = None
        if entry is None or entry.key is None or marker not in ("", "@revoked"):
            log.debug("%s:%d: skipped (unsupported or malformed)", path, lineno)
            continue
        if marker == "@revoked":
            revoked.append(entry.key)
            continue
        for name in entry.hostnames:
            keys.add(name, entry.key.get_name(), entry.key)
    return KnownHosts(keys, revoked)


def _revoked_message(name: str, key: paramiko.PKey, known_hosts: pathlib.Path) -> str:
    return (f"host key for {name} ({key.get_name()} {key.fingerprint}) is marked @revoked in "
            f"{known_hosts}; refusing to connect")


class _KnownHostsPolicy(paramiko.MissingHostKeyPolicy):
    """Decides about a host key that known_hosts does not mention.

    paramiko itself handles the *changed* case (it raises
    ``BadHostKeyException`` before asking any policy), so this class only has
    to refuse - or, when the user said ``--trust-new-hosts``, record - a
    first-seen key.  Recording appends one line to the file instead of letting
    paramiko rewrite it, so comments, hashed and ``@cert-authority`` lines the
    user already has stay as they are.
    """

    def __init__(
        self, target: SSHTarget, known_hosts: pathlib.Path, revoked: list[paramiko.PKey],
        trust_new_hosts: bool, via_jump: bool, read_from: Sequence[pathlib.Path] = (),
    ):
        self.target = target
        self.known_hosts = known_hosts  # where a trusted new key is written
        self.read_from = list(read_from) or [known_hosts]  # every file that was searched
        self.revoked = revoked
        self.trust_new_hosts = trust_new_hosts
        self.via_jump = via_jump

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if key in self.revoked:
            raise HostKeyError(_revoked_message(hostname, key, self.known_hosts))
        if not self.trust_new_hosts:
            searched = ", ".join(str(p) for p in self.read_from)
            if self.target.strict_host_key_checking == "accept-new":
                raise HostKeyError(
                    f"unknown host key for {hostname}: {key.get_name()} {key.fingerprint} is not in {searched}, "
                    f"and the ssh config's StrictHostKeyChecking accept-new (Host {self.target.alias}) is not "
                    f"followed: snp-bench never accepts a new host key by itself; check that fingerprint, then "
                    f"rerun with --trust-new-hosts"
                )
            where = " (run it where that address is reachable, e.g. on the jump host)" if self.via_jump else ""
            alias = (f" and store the key under the name {hostname} (HostKeyAlias)"
                     if self.target.host_key_alias else "")
            raise HostKeyError(
                f"unknown host key for {hostname}: {key.get_name()} {key.fingerprint} is not in "
                f"{searched}; check that fingerprint with the device's owner, then trust it with "
                f"`ssh-keyscan -p {self.target.port} {self.target.hostname} >> {self.known_hosts}`{where}{alias} "
                f"or rerun with --trust-new-hosts"
            )
        _append_known_host(self.known_hosts, hostname, key, hashed=self.target.hash_known_hosts)
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.warning(
            "trusting NEW host key for %s: %s %s (added to %s)",
            hostname, key.get_name(), key.fingerprint, self.known_hosts,
        )


def _append_known_host(path: pathlib.Path, hostname: str, key: paramiko.PKey, hashed: bool = False) -> None:
    """Append ``hostname keytype base64`` to a known_hosts file, creating it 0600.

    ``hashed`` (the ssh config's HashKnownHosts) writes the name as OpenSSH's
    ``|1|salt|hash``, so the file does not list where the user connects to.
    """
    name = paramiko.HostKeys.hash_host(hostname) if hashed else hostname
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        if f.tell() > 0:
            with open(path, "rb") as existing:
                existing.seek(-1, os.SEEK_END)
                if existing.read(1) != b"\n":
                    f.write("\n")
        f.write(f"{name} {key.get_name()} {key.get_base64()}\n")


# --------------------------------------------------------------------------
# Liveness and deadlines
# --------------------------------------------------------------------------


class _Liveness:
    """Asks the server for an answer every ``interval_s``; closes the connection when none comes.

    paramiko's own ``set_keepalive`` sends requests that want no reply: they
    keep NAT state alive but cannot tell a dead link from a quiet one, so a
    measurement that prints nothing for minutes would only notice a cut link
    when TCP gives up (~15 min).  A ``keepalive@openssh.com`` global request
    with want-reply is answered by every OpenSSH server (with a refusal, which
    is an answer).  When ``count_max`` intervals pass in silence the
    connection is aborted, which makes every blocked call on it fail at once;
    ``lost_after_s`` then says how long the link had been silent.
    """

    def __init__(self, conn: _Connection, interval_s: float, count_max: int = ALIVE_COUNT_MAX) -> None:
        self.conn = conn
        self.interval_s = interval_s
        self.count_max = count_max
        self.last_answer = time.monotonic()
        self.lost_after_s: Optional[float] = None
        self._stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True, name="ssh-liveness").start()

    def silence_s(self) -> float:
        return time.monotonic() - self.last_answer

    def stop(self) -> None:
        self._stop.set()

    def _ask(self, transport: paramiko.Transport) -> None:
        transport.global_request("keepalive@openssh.com", wait=True)  # returns early when the link closes
        if transport.is_active():
            self.last_answer = time.monotonic()

    def _watch(self) -> None:
        asker: Optional[threading.Thread] = None
        next_ask = time.monotonic() + self.interval_s
        while not self._stop.wait(min(self.interval_s / 4, 0.5)):
            transport = self.conn.client.get_transport() if self.conn.clients else None
            if transport is None or not transport.is_active():
                return
            silence = self.silence_s()
            if silence > self.interval_s * self.count_max:
                self.lost_after_s = silence
                log.warning("no answer from %s for %.0f s: closing the connection", transport.getpeername(), silence)
                self.conn.abort()
                return
            if (asker is None or not asker.is_alive()) and time.monotonic() >= next_ask:
                asker = threading.Thread(target=self._ask, args=(transport,), daemon=True, name="ssh-keepalive")
                asker.start()
                next_ask = time.monotonic() + self.interval_s


class _Watchdog:
    """Calls ``on_expire`` once when ``tick`` has not been called for ``limit_s``.

    A send into a full TCP buffer or the opening of the SFTP subsystem has no
    deadline in paramiko; aborting the connection from this thread makes such
    a call fail, so the caller can say what stalled.
    """

    def __init__(self, limit_s: float, on_expire: Callable[[], None]) -> None:
        self.limit_s = limit_s
        self.on_expire = on_expire
        self.expired = False
        self._last = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="ssh-watchdog")

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def tick(self) -> None:
        self._last = time.monotonic()

    def _watch(self) -> None:
        while not self._done.wait(min(self.limit_s / 4, 0.25)):
            if time.monotonic() - self._last > self.limit_s:
                self.expired = True
                self.on_expire()
                return


@dataclass
class _Progress:
    """How far one upload got (for messages like "stalled after 12.3 MB of 45.0 MB")."""

    size: int
    done: int = 0
    started: bool = False
    stalled: bool = False
    report: Optional[Callable[[int, int], None]] = None  # the caller's progress(done, total)

    def advance(self, n: int) -> None:
        """Count ``n`` more bytes sent and tell the caller."""
        self.done += n
        if self.report is not None:
            self.report(self.done, self.size)


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


# --------------------------------------------------------------------------
# The transport
# --------------------------------------------------------------------------


@dataclass
class _Connection:
    """A live SSH session to the device and the jump-host sessions it rides on."""

    clients: list[paramiko.SSHClient] = field(default_factory=list)  # jumps first, target last
    sftp: Optional[paramiko.SFTPClient] = None
    home: str = ""
    liveness: Optional[_Liveness] = None

    @property
    def client(self) -> paramiko.SSHClient:
        return self.clients[-1]

    def is_active(self) -> bool:
        t = self.client.get_transport() if self.clients else None
        return bool(t is not None and t.is_active())

    def lost_after_s(self) -> Optional[float]:
        """Seconds of silence after which the keepalive check gave the link up (None: it did not)."""
        return self.liveness.lost_after_s if self.liveness is not None else None

    def abort(self) -> None:
        """Close the SSH transports, target first, without a goodbye (safe from any thread).

        Every call blocked on this connection then fails at once.
        """
        for c in reversed(self.clients):
            t = c.get_transport()
            if t is not None:
                t.close()

    def close(self) -> None:
        if self.liveness is not None:
            self.liveness.stop()
        # Transports first: closing the SFTP channel first would block on a
        # dead link whose send buffer is full.
        self.abort()
        for closable in (self.sftp, *reversed(self.clients)):
            try:
                if closable is not None:
                    closable.close()
            except Exception:  # noqa: BLE001 - best effort on a dead link
                pass


class _ProxyCommand(paramiko.ProxyCommand):
    """A ProxyCommand socket, run like OpenSSH runs it (``exec COMMAND`` in ``$SHELL``, else ``/bin/sh``).

    Differs from paramiko's own in three ways that matter for a long run:
    the command's exit reads as end-of-file (paramiko's busy-waits at full
    CPU until the timeout), its stderr is drained (a chatty command would
    otherwise block on a full pipe) and kept for error messages, and closing
    it reaps the process.
    """

    def __init__(self, command: str) -> None:  # noqa: D107 - paramiko's __init__ is replaced, not extended
        self.cmd = [os.environ.get("SHELL") or "/bin/sh", "-c", f"exec {command}"]
        self.process = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, bufsize=0)
        self.timeout: Optional[float] = None
        self._stderr = bytearray()
        threading.Thread(target=self._drain_stderr, daemon=True, name="ssh-proxycommand-stderr").start()

    def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in iter(self.process.stderr.readline, b""):
            log.debug("ProxyCommand: %s", line.decode(errors="replace").rstrip())
            self._stderr = (self._stderr + line)[-2000:]

    def stderr_tail(self) -> str:
        """The end of what the command wrote to stderr, on one line."""
        return " ".join(self._stderr.decode(errors="replace").split())[-300:]

    def send(self, content: bytes) -> int:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(content)
        except (OSError, ValueError) as e:  # ValueError: closed by close() meanwhile
            raise paramiko.ProxyCommandFailure(" ".join(self.cmd), getattr(e, "strerror", None) or str(e)) from None
        return len(content)

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes; b"" once the command has closed its output (socket semantics)."""
        stdout = self.process.stdout
        assert stdout is not None
        try:
            ready, _, _ = select.select([stdout], [], [], self.timeout)
            data = os.read(stdout.fileno(), size) if ready else None
        except ValueError:  # closed by close() meanwhile: the end of the stream
            return b""
        except OSError as e:
            raise paramiko.ProxyCommandFailure(" ".join(self.cmd), e.strerror) from None
        if data is None:
            raise socket.timeout()
        return data

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


class _KeyList(AuthStrategy):
    """Offer exactly these keys, in order (what OpenSSH does with IdentitiesOnly)."""

    def __init__(self, sources: list[AuthSource]) -> None:
        super().__init__(ssh_config=paramiko.SSHConfig())  # unused: the sources are already chosen
        self.sources = sources

    def get_sources(self):  # type: ignore[no-untyped-def]
        yield from self.sources


def _public_blob(path: str) -> Optional[bytes]:
    """The public key of an IdentityFile, as OpenSSH finds it: ``<path>.pub``, else the private file.

    An OpenSSH-format private key stores its public half unencrypted, so
    even a passphrase-protected key without a .pub file can be matched
    against the keys in ssh-agent.
    """
    try:
        with open(path + ".pub") as f:
            return base64.b64decode(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        pass
    try:
        with open(path) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    m = re.search(r"-----BEGIN OPENSSH PRIVATE KEY-----(.*?)-----END OPENSSH PRIVATE KEY-----", text, re.S)
    magic = b"openssh-key-v1\0"
    try:
        data = base64.b64decode("".join(m.group(1).split())) if m else b""
        if not data.startswith(magic):
            return None
        msg = paramiko.Message(data[len(magic):])
        for _ in range(3):  # cipher name, kdf name, kdf options
            msg.get_binary()
        return msg.get_binary() if msg.get_int() >= 1 else None
    except (ValueError, TypeError, IndexError):
        return None


def _agent_keys(allow_agent: bool) -> tuple[Optional[paramiko.Agent], list[paramiko.AgentKey], str]:
    """The ssh-agent's keys and a phrase for messages ("ssh-agent: 2 keys", "... not running")."""
    if not allow_agent:
        return None, [], "ssh-agent: off"
    if not os.environ.get("SSH_AUTH_SOCK"):
        return None, [], "ssh-agent: not running (SSH_AUTH_SOCK is not set)"
    try:
        agent = paramiko.Agent()
        keys = list(agent.get_keys())
    except (OSError, paramiko.SSHException) as e:
        return None, [], f"ssh-agent: unreachable ({_reason(e)})"
    return agent, keys, f"ssh-agent: {len(keys)} key(s)"


class SSHTransport(Transport):
    """Runs the device agent on a remote machine over SSH (see the module docstring)."""

    def __init__(
        self,
        name: str,
        host: str,
        *,
        user: Optional[str] = None,
        port: Optional[int] = None,
        identity_file: Optional[os.PathLike | str] = None,
        python: str = "python3",
        workdir: str = "~/.snp-bench",
        known_hosts: Optional[os.PathLike | str] = None,
        trust_new_hosts: bool = False,
        connect_timeout: Optional[float] = None,
        ssh_config_path: Optional[os.PathLike | str] = None,
        allow_agent: bool = True,
        look_for_keys: bool = True,
        keepalive_s: float = 15.0,
        stall_timeout_s: float = 60.0,
        reconnect_attempts: int = 3,
        reconnect_backoff_max_s: float = 30.0,
        agent_source: Optional[os.PathLike | str] = None,
    ) -> None:
        """Describe the device; nothing connects until the first call that needs it.

        ``python`` and ``workdir`` are paths *on the device*; a leading ``~/``
        means the login directory (expanded via SFTP, never by a shell).
        ``allow_agent``/``look_for_keys`` control ssh-agent and ``~/.ssh/id_*``
        keys; tests switch both off to stay hermetic.  ``agent_source`` lets a
        test ship a stand-in agent; normally it is ``devices/agent.py``.
        The host is resolved like ``ssh HOST`` would (:class:`SSHConfigResolver`;
        ``ssh_config_path`` None: ``~/.ssh/config`` and ``/etc/ssh/ssh_config``);
        ``user``/``port``/``identity_file``/``known_hosts`` given here win over
        the config, as on the ``ssh`` command line.
        Deadlines: ``connect_timeout`` per connection attempt (None: the ssh
        config's ConnectTimeout, else 10 s), ``stall_timeout_s``
        without progress of an SFTP transfer, a dead link after
        ``ALIVE_COUNT_MAX`` silent ``keepalive_s`` intervals (ServerAliveInterval
        in the ssh config wins); a connection that was up is re-opened up to
        ``reconnect_attempts`` times, waiting 1 s, 2 s, 4 s ... at most
        ``reconnect_backoff_max_s`` in between.
        """
        for what, value in (("workdir", workdir), ("python", python)):
            if value.startswith("~") and not (value == "~" or value.startswith("~/")):
                raise ValueError(f"{what} {value!r}: only '~/' (the login directory) is supported, not '~user'")
        self.name = name
        self.bytes_uploaded = 0
        self.host = host
        self.python = python
        self.workdir = workdir
        self._resolver = SSHConfigResolver(ssh_config_path, find_ssh())
        self.target = resolve_target(host, self._resolver, user=user, port=port, identity_file=identity_file)
        self._explicit_known_hosts = pathlib.Path(known_hosts).expanduser() if known_hosts else None
        self.known_hosts = self._known_hosts_files(self.target)[0]  # where a trusted new key is written
        self.trust_new_hosts = trust_new_hosts
        self.connect_timeout = (connect_timeout if connect_timeout is not None
                                else self.target.connect_timeout or DEFAULT_CONNECT_TIMEOUT_S)
        self.stall_timeout_s = stall_timeout_s
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_backoff_max_s = reconnect_backoff_max_s
        self.allow_agent = allow_agent
        self.look_for_keys = look_for_keys
        self.agent_source = pathlib.Path(agent_source) if agent_source else AGENT_SOURCE
        self._keepalive_s = self.target.keepalive_s or keepalive_s
        self._conn: Optional[_Connection] = None
        self._connected_once = False  # only a connection that was up is retried with backoff
        self._closing = False
        self._lock = threading.RLock()  # one connection, possibly several caller threads
        self._verified: set[str] = set()  # blobs whose on-device sha256 we checked this session
        self._partials: dict[str, str] = {}  # sha -> our interrupted upload's temp file, to resume
        self._orphans: set[str] = set()  # pidfiles of runs cut by a lost link: killed on reconnect
        self._watches_stdin: Optional[bool] = None

    def __repr__(self) -> str:
        return f"SSHTransport({self.name!r}, {self.target})"

    # ------------------------------------------------------------------ connecting

    def _known_hosts_files(self, target: SSHTarget) -> list[pathlib.Path]:
        """The known_hosts files searched for ``target``'s key; new keys are written to the first.

        The device's own ``known_hosts`` is the only one when given;
        otherwise the ssh config's UserKnownHostsFile list (then the
        GlobalKnownHostsFile ones, read only), as OpenSSH searches them.
        """
        if self._explicit_known_hosts is not None:
            return [self._explicit_known_hosts]
        files = [pathlib.Path(p) for p in (*target.known_hosts_files, *target.global_known_hosts_files)]
        if not target.known_hosts_files:
            raise SSHConfigError(f"ssh config {self._resolver.source}: Host {target.alias}: UserKnownHostsFile none "
                                 f"leaves nowhere to check host keys against; name a file, or set known_hosts "
                                 f"for the device")
        return files

    def _connect_one(self, target: SSHTarget, sock: Any = None, via_jump: bool = False) -> paramiko.SSHClient:
        """Open one verified, authenticated SSH session (``sock``: a jump channel)."""
        client = paramiko.SSHClient()
        # Read afresh for every connection (another transport may have added a key).
        # The keys go into the client's in-memory set; paramiko never writes the file.
        files = self._known_hosts_files(target)
        revoked: list[paramiko.PKey] = []
        for path in files:
            revoked += load_known_hosts(path, client.get_host_keys()).revoked
        client.set_missing_host_key_policy(
            _KnownHostsPolicy(target, files[0], revoked, self.trust_new_hosts, via_jump, read_from=files)
        )
        key_files = [p for p in target.identity_files if os.path.exists(p)]
        certified = self._certified_key(target, key_files) if target.certificate_files else None
        allow_agent = self.allow_agent and target.use_agent
        agent, agent_keys, agent_note = _agent_keys(allow_agent)
        auth: dict[str, Any] = {}
        tried = ", ".join(key_files) or "none given"
        if certified is not None:
            auth["pkey"] = certified
        if target.identities_only and key_files:  # OpenSSH: these files only, via the agent when it holds them
            sources, notes = self._identity_sources(target, key_files, agent_keys)
            if certified is not None:
                sources.insert(0, InMemoryPrivateKey(target.user, certified))
            tried = "; ".join(notes)
            if not sources:
                if agent is not None:
                    agent.close()
                raise SSHAuthError(f"{self.name}: no usable key for {target.user}@{target.hostname} "
                                   f"(IdentitiesOnly; {agent_note}): {tried}")
            auth = {"auth_strategy": _KeyList(sources)}
        how = " via ProxyJump" if via_jump else ""
        if sock is None and target.proxy_command is not None:
            how = f" via ProxyCommand {target.proxy_command!r}"
        key_name, key_port = ((target.host_key_alias, 22) if target.host_key_alias
                              else (target.hostname, target.port))
        try:
            # A socket of our own when paramiko must not connect by itself: the
            # ProxyCommand's pipes, or a plain TCP socket when HostKeyAlias makes
            # the known_hosts name differ from the address (paramiko looks the
            # key up under the name it is given).
            if sock is None and target.proxy_command is not None:
                sock = self._proxy_command(target)
            elif sock is None and target.host_key_alias:
                sock = self._tcp_socket(target)
            client.connect(
                key_name,
                port=key_port,
                username=target.user,
                key_filename=key_files or None,
                allow_agent=allow_agent,
                look_for_keys=self.look_for_keys,
                password=None,  # never: keys and ssh-agent only
                passphrase=None,
                sock=sock,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                channel_timeout=self.connect_timeout,
                **auth,
            )
        except SSHConnectError:  # ours (host key, ProxyCommand, TCP): the message is complete
            client.close()
            raise
        except paramiko.BadHostKeyException as e:
            client.close()
            holder = ", ".join(str(p) for p in files)
            raise HostKeyError(
                f"host key for {target.known_hosts_name} has CHANGED: the server offers "
                f"{e.key.get_name()} {e.key.fingerprint} but {holder} holds "
                f"{e.expected_key.get_name()} {e.expected_key.fingerprint}; refusing to connect "
                f"(possible man-in-the-middle). If the device was reinstalled, verify the new "
                f"fingerprint, then remove the old entry with "
                f"`ssh-keygen -R {shlex.quote(target.known_hosts_name)} -f {files[0]}`"
            ) from None
        except paramiko.AuthenticationException as e:
            client.close()
            detail = "the server refused them" if auth else _reason(e)
            raise SSHAuthError(
                f"{self.name}: authentication as {target.user} on {target.hostname}:{target.port} "
                f"failed (key files: {tried}; {agent_note}): {detail}"
            ) from None
        except (OSError, EOFError, paramiko.SSHException) as e:
            client.close()
            said = f" (it said: {sock.stderr_tail()})" if isinstance(sock, _ProxyCommand) and sock.stderr_tail() else ""
            raise SSHConnectError(
                f"{self.name}: cannot connect to {target}{how}: "
                f"{_describe_connect_error(e, self.connect_timeout)}{said}"
            ) from None
        finally:
            if agent is not None:
                agent.close()  # its keys have signed (or failed) by now
        transport = client.get_transport()
        assert transport is not None
        server_key = transport.get_remote_server_key()
        if server_key in revoked:  # known *and* revoked: revocation wins, as in OpenSSH
            client.close()
            raise HostKeyError(_revoked_message(target.known_hosts_name, server_key, files[0]))
        return client

    def _proxy_command(self, target: SSHTarget) -> _ProxyCommand:
        """Start the ssh config's ProxyCommand the way OpenSSH does: ``exec`` in the user's shell."""
        assert target.proxy_command is not None
        try:
            return _ProxyCommand(target.proxy_command)
        except OSError as e:
            raise SSHConnectError(f"{self.name}: cannot start ProxyCommand {target.proxy_command!r} "
                                  f"(Host {target.alias}): {_reason(e)}") from None

    def _tcp_socket(self, target: SSHTarget) -> socket.socket:
        """A TCP connection to the target (bounded by ``connect_timeout``)."""
        try:
            return socket.create_connection((target.hostname, target.port), timeout=self.connect_timeout)
        except OSError as e:
            raise SSHConnectError(f"{self.name}: cannot connect to {target}: "
                                  f"{_describe_connect_error(e, self.connect_timeout)}") from None

    def _certified_key(self, target: SSHTarget, key_files: list[str]) -> paramiko.PKey:
        """The first IdentityFile key that one of the CertificateFiles certifies, with that certificate loaded.

        OpenSSH pairs certificates with identities the same way; a
        certificate for a key held only by ssh-agent is not supported.
        """
        for path in key_files:
            try:
                key = paramiko.PKey.from_path(path)
            except (paramiko.PasswordRequiredException, TypeError, OSError, ValueError, paramiko.SSHException):
                continue  # passphrase-protected or unreadable: _connect_one reports the key files
            for cert in target.certificate_files:
                try:
                    key.load_certificate(cert)
                except (OSError, ValueError, paramiko.SSHException):
                    continue
                return key
        raise SSHAuthError(
            f"{self.name}: CertificateFile {' '.join(target.certificate_files)} (ssh config "
            f"{self._resolver.source}, Host {target.alias}) certifies none of the readable identity files "
            f"({', '.join(key_files) or 'none given'}); a certificate for a key held only by ssh-agent "
            f"is not supported")

    def _identity_sources(
        self, target: SSHTarget, key_files: list[str], agent_keys: list[paramiko.AgentKey]
    ) -> tuple[list[AuthSource], list[str]]:
        """What IdentitiesOnly offers: per IdentityFile its ssh-agent key if loaded, else the file itself.

        Returns the sources and one note per file saying what was tried.
        """
        sources: list[AuthSource] = []
        notes: list[str] = []
        for path in key_files:
            blob = _public_blob(path)
            in_agent = next((k for k in agent_keys if blob is not None and k.asbytes() == blob), None)
            if in_agent is not None:
                sources.append(InMemoryPrivateKey(target.user, in_agent))
                notes.append(f"{path} (from ssh-agent, {in_agent.fingerprint})")
                continue
            try:
                key = paramiko.PKey.from_path(path)
            except (paramiko.PasswordRequiredException, TypeError) as e:
                if isinstance(e, TypeError) and "password" not in str(e):  # cryptography's way to say "encrypted"
                    raise
                notes.append(f"{path} (passphrase-protected and not loaded in ssh-agent: run `ssh-add {path}`)")
                continue
            except (OSError, ValueError, paramiko.SSHException) as e:
                notes.append(f"{path} (unreadable: {_reason(e)})")
                continue
            sources.append(OnDiskPrivateKey(target.user, "ssh-config", pathlib.Path(path), key))
            notes.append(path)
        return sources, notes

    def _connect_chain(self, target: SSHTarget, depth: int = 0) -> list[paramiko.SSHClient]:
        """Connect to ``target``, through its ProxyJump hosts if it has any.

        Returns the clients jump-first.  The first hop is resolved with the
        ssh config (so it may itself have a ProxyJump or a ProxyCommand); later
        hops ride on the previous one, as OpenSSH does for ``ProxyJump a,b``.
        OpenSSH uses whichever of ProxyJump and ProxyCommand the config sets
        first, and ``ssh -G`` prints only that one, so a target has at most one.
        """
        if depth > MAX_JUMP_DEPTH:
            raise SSHConnectError(
                f"{self.name}: ProxyJump chain deeper than {MAX_JUMP_DEPTH} (a loop in the ssh config?)"
            )
        if not target.proxy_jump:
            return [self._connect_one(target)]
        hops: list[SSHTarget] = []
        for spec in target.proxy_jump:
            u, h, p = parse_jump_spec(spec)
            hops.append(resolve_target(h, self._resolver, user=u, port=p))
        clients = self._connect_chain(hops[0], depth + 1)
        try:
            for nxt in [*hops[1:], target]:
                channel = self._jump_channel(clients[-1], nxt)
                clients.append(self._connect_one(replace(nxt, proxy_jump=(), proxy_command=None), channel,
                                                 via_jump=True))
        except BaseException:
            for c in reversed(clients):
                c.close()
            raise
        return clients

    def _jump_channel(self, jump: paramiko.SSHClient, dest: SSHTarget) -> paramiko.Channel:
        """A ``direct-tcpip`` channel from the jump host to ``dest`` (the ``ssh -W`` of ProxyJump)."""
        transport = jump.get_transport()
        assert transport is not None
        try:
            return transport.open_channel(
                "direct-tcpip", (dest.hostname, dest.port), ("127.0.0.1", 0), timeout=self.connect_timeout
            )
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise SSHConnectError(
                f"{self.name}: the jump host could not reach {dest.hostname}:{dest.port}: {_reason(e)}"
            ) from None

    def _open_connection(self) -> _Connection:
        """One connection attempt: SSH chain, keepalive watch, SFTP (each step bounded)."""
        conn = _Connection(clients=self._connect_chain(self.target))
        conn.liveness = _Liveness(conn, self._keepalive_s, self.target.alive_count_max or ALIVE_COUNT_MAX)
        try:
            with _Watchdog(self.connect_timeout, conn.abort) as dog:  # opening SFTP has no deadline of its own
                conn.sftp = conn.client.open_sftp()
                conn.home = conn.sftp.normalize(".")
        except (OSError, EOFError, paramiko.SSHException) as e:
            conn.close()
            why = f"no answer within {self.connect_timeout:g} s" if dog.expired else _reason(e)
            raise SSHConnectError(f"{self.name}: SFTP is not available on {self.target}: {why}") from None
        channel = conn.sftp.get_channel()
        assert channel is not None
        channel.settimeout(self.stall_timeout_s)  # every SFTP request: no answer for this long fails it
        log.debug("%s: connected to %s (%d jump host(s))", self.name, self.target, len(conn.clients) - 1)
        return conn

    def _connection(self) -> _Connection:
        """The live connection, (re)connecting if there is none or it dropped.

        The first connection is tried once (a wrong address should fail fast);
        once the device was reached, a dropped link is re-opened up to
        ``reconnect_attempts`` times with exponential backoff (a device that
        reboots, a flaky Wi-Fi).  After a round that failed, calls try once
        again (the device's remaining work fails fast, but resumes if it comes
        back).  Host-key and authentication failures are never retried.
        """
        with self._lock:
            if self._conn is not None and self._conn.is_active():
                return self._conn
            self._drop_connection()
            attempts = 1 + (self.reconnect_attempts if self._connected_once else 0)
            delay = 1.0
            for attempt in range(1, attempts + 1):
                try:
                    conn = self._open_connection()
                    break
                except (HostKeyError, SSHAuthError):
                    raise
                except SSHConnectError as e:
                    if attempt == attempts:
                        if attempts > 1:  # the device is gone: later calls try once each, no more waiting
                            self._connected_once = False
                            raise SSHConnectError(f"{e} (gave up after {attempts} attempts)") from None
                        raise
                    log.warning("%s: %s; retrying in %g s (attempt %d of %d)", self.name, e, delay,
                                attempt + 1, attempts)
                    time.sleep(delay)
                    delay = min(delay * 2, self.reconnect_backoff_max_s)
            self._conn = conn
            self._closing = False  # a closed transport that is used again reconnects
            if self._connected_once:
                self._clean_up_after_reconnect()
            self._connected_once = True
            if self._conn is None:
                raise SSHConnectError(f"{self.name}: the connection to {self.target} dropped again at once")
            return self._conn

    def _clean_up_after_reconnect(self) -> None:
        """Kill runs that a lost link cut off (they may still hold the device lock); best effort."""
        for pidfile in sorted(self._orphans):
            self._orphans.discard(pidfile)
            confirmed, detail = self._kill_remote(pidfile)
            log.info("%s: run cut by the lost connection (%s): %s", self.name, pidfile,
                     detail if confirmed else f"not confirmed: {detail}")

    def _drop_connection(self) -> None:
        """Forget the connection after an error so the next call starts a fresh one."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def close(self) -> None:
        """Close the connection; a run in progress sees its stdin closed (the agent stops by itself).

        Partial uploads nobody will resume are removed first, while the link is up.
        """
        self._closing = True
        conn = self._conn
        if conn is not None and conn.is_active():
            for tmp in self._partials.values():
                _try_remove(conn.sftp, tmp)
        self._partials.clear()
        self._drop_connection()

    # ------------------------------------------------------------------ remote paths

    def _device_path(self, path: str, home: str) -> str:
        """Make a user-given device path absolute: ``~``/``~/x``/relative are under the login dir."""
        if path == "~":
            return home
        if path.startswith("~/"):
            return posixpath.join(home, path[2:])
        return path if path.startswith("/") else posixpath.join(home, path)

    def device_workdir(self) -> str:
        """The absolute workdir on the device (what jobs must name as ``workdir``)."""
        conn = self._connection()
        return self._device_path(self.workdir, conn.home)

    def _python(self, conn: _Connection) -> str:
        """The device python: a bare name (found on PATH) or an absolute path."""
        p = self.python
        return self._device_path(p, conn.home) if ("/" in p or p.startswith("~")) else p

    def _dir(self, conn: _Connection, name: str) -> str:
        """``<workdir>/<name>``, created (with parents) through SFTP, never a shell.

        A failure on a live link is diagnosed on the device: SFTP reports a
        read-only file system as "Failure" and a missing parent that cannot be
        created as "No such file", which both hide the cause.
        """
        workdir = self._device_path(self.workdir, conn.home)
        path = posixpath.join(workdir, name)
        try:
            _sftp_makedirs(conn.sftp, path)
        except OSError as e:
            if _link_failed(conn, e):
                raise
            space = self._space(path)
            if space is not None and not space[0]:
                raise WorkdirError(f"{self.name}: workdir {workdir} is not writable ({space[2]} is read-only "
                                   f"or not writable by {self.target.user})") from None
            raise WorkdirError(f"{self.name}: cannot create {path} on the device: {_reason(e)}") from None
        return path

    def _space(self, path: str) -> Optional[tuple[bool, Optional[int], str]]:
        """(writable, free bytes or None, nearest existing ancestor) of a device path; None if unknown."""
        try:
            rc, out, _ = self._exec(["/bin/sh", "-c", _SPACE_SH, "space", path], timeout_s=30)
        except SSHTransportError:
            return None
        fields = out.decode(errors="replace").strip().split(" ", 2)
        if rc != 0 or len(fields) != 3:
            return None
        free = int(fields[1]) * 1024 if fields[1].isdigit() else None
        return fields[0] == "yes", free, fields[2]

    # ------------------------------------------------------------------ running commands

    def _exec(
        self, argv: Sequence[str], *, stdin: bytes = b"", timeout_s: float = 60.0
    ) -> tuple[int, bytes, bytes]:
        """Run ``argv`` on the device; returns (exit code, stdout, stderr), login-shell noise removed.

        Raises :class:`SSHTransportError` on timeout, :class:`SSHLinkError` on a lost connection.
        """
        conn = self._connection()
        try:
            chan = self._open_session(conn)
        except (OSError, EOFError, paramiko.SSHException) as e:  # the connection is already dropped
            raise SSHLinkError(self.name, self._lost(conn, e, f"starting {argv[0]}")) from None
        marker = _new_marker()
        out, err = bytearray(), bytearray()
        try:
            chan.exec_command(remote_command(["exec", "/bin/sh", "-c", _MARKED_SH, marker, *argv]))
            _send_stdin(chan, stdin)
            rc = _collect(chan, time.monotonic() + timeout_s, out, err)
        except (OSError, EOFError, paramiko.SSHException) as e:
            self._drop_connection()
            raise SSHLinkError(self.name, self._lost(conn, e, f"while running {argv[0]}")) from None
        finally:
            chan.close()
        if rc is None:
            raise SSHTransportError(f"{self.name}: {argv[0]} did not finish within {timeout_s:g} s")
        return (rc, *_after_marker(marker, out, err))

    def _lost(self, conn: _Connection, e: BaseException, during: str) -> str:
        """Why a connection failed mid-operation, e.g. "connection to pi lost during measurement (...)"."""
        lost = conn.lost_after_s()
        if lost is not None:
            return f"connection to {self.target.hostname} lost {during} (no answer for {lost:.0f} s)"
        if self._closing:
            return f"the transport was closed {during}"
        return f"connection to {self.target.hostname} lost {during}: {_reason(e)}"

    def _open_session(self, conn: _Connection) -> paramiko.Channel:
        """A new session channel; a stale connection is replaced once (nothing ran yet)."""
        for attempt in (1, 2):
            try:
                transport = conn.client.get_transport()
                assert transport is not None
                return transport.open_session(timeout=self.connect_timeout)
            except (OSError, EOFError, paramiko.SSHException):
                self._drop_connection()
                if attempt == 2:
                    raise
                conn = self._connection()
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ blobs

    def ensure_blob(
        self, local_path: pathlib.Path, sha256: str, progress: Optional[Callable[[int, int], None]] = None
    ) -> str:
        """Make ``<workdir>/blobs/<sha256>`` exist and be correct on the device; return its path.

        Uploads only when the blob is missing (or fails its check), to a temp
        name, verifies it on the device, then renames it into place.  A
        transfer cut by a lost link (or stalled) reconnects and resumes, up to
        ``reconnect_attempts`` times.  ``progress(done, total)`` (bytes) is
        called as bytes are sent - from the resume point after a
        reconnect - and once with ``(total, total)`` when the blob was already
        there; it runs on the caller's thread and should return quickly.
        """
        sha = check_sha256(sha256)  # it becomes a file name on the device
        local_path = pathlib.Path(local_path)
        if not local_path.is_file():  # a local mistake, not a device problem: say so plainly
            raise FileNotFoundError(f"{local_path}: no such file to upload")
        what = f"{self.name}: uploading {local_path.name} ({sha[:12]}) failed"
        attempts = 1 + self.reconnect_attempts
        failure = ""
        with self._lock:
            for attempt in range(1, attempts + 1):
                try:
                    conn = self._connection()
                except SSHConnectError as e:
                    if not failure:
                        raise
                    raise BlobUploadError(f"{what}: {failure}; reconnecting failed: {e}") from None
                state = _Progress(local_path.stat().st_size, report=progress)
                try:
                    blobs = self._dir(conn, "blobs")
                    final = posixpath.join(blobs, sha)
                    if self._blob_is_good(conn, final, sha):
                        if progress is not None:
                            progress(state.size, state.size)
                        return final
                    return self._upload(conn, local_path, sha, blobs, final, state)
                except (OSError, EOFError, paramiko.SSHException, SSHLinkError) as e:
                    failure = self._transfer_failure(conn, e, state)
                    self._drop_connection()
                    if not _link_failed(conn, e) or attempt == attempts:
                        raise BlobUploadError(f"{what}: {failure}") from None
                    log.warning("%s: %s; reconnecting (attempt %d of %d)", what, failure, attempt + 1, attempts)
        raise AssertionError("unreachable")

    def _transfer_failure(self, conn: _Connection, e: BaseException, progress: _Progress) -> str:
        """A reason that says what happened, never an empty string."""
        where = f" after {_mb(progress.done)} of {_mb(progress.size)}" if progress.started else ""
        if progress.stalled or (progress.started and isinstance(e, socket.timeout)):
            return f"upload stalled{where}: no progress for {self.stall_timeout_s:g} s"
        if isinstance(e, socket.timeout):
            return f"the device did not answer within {self.stall_timeout_s:g} s"
        if isinstance(e, SSHLinkError):
            return e.reason
        if _link_failed(conn, e):
            return self._lost(conn, e, f"during the upload{where}")
        return _reason(e)

    def ensure_agent(self) -> str:
        """Ship the agent like any other blob (content-addressed) and return its device path."""
        return self.ensure_blob(self.agent_source, sha256_file(self.agent_source))

    def _blob_is_good(self, conn: _Connection, final: str, sha: str) -> bool:
        """Is a verified blob already at ``final``?  Re-hash once per session, then trust."""
        assert conn.sftp is not None
        try:
            conn.sftp.stat(final)
        except FileNotFoundError:
            self._verified.discard(sha)
            return False
        if sha in self._verified:
            return True
        got = self._remote_sha256(conn, final)
        if got == sha:
            self._verified.add(sha)
            return True
        log.warning("%s: blob %s is corrupt on the device (sha256 %s); uploading it again", self.name, final, got)
        conn.sftp.remove(final)
        return False

    def _upload(
        self, conn: _Connection, local_path: pathlib.Path, sha: str, blobs: str, final: str, progress: _Progress
    ) -> str:
        """Send to a temp file (resuming a verified partial one), check the hash on the device, rename.

        A temp file cut by the link is kept (and remembered) for the retry to
        resume; on any other failure it is removed - it would only eat disk.
        """
        assert conn.sftp is not None
        tmp, offset = self._resume_point(conn, local_path, sha, blobs, progress.size)
        self._partials[sha] = tmp
        try:
            self._check_space(conn, blobs, progress.size - offset)
            log.info("%s: uploading %s (%d bytes, from byte %d) to %s", self.name, local_path.name,
                     progress.size, offset, final)
            self._send_file(conn, local_path, tmp, offset, progress)
            got = self._remote_sha256(conn, tmp)
            if got != sha:
                raise BlobMismatchError(
                    f"{self.name}: {local_path} arrived with sha256 {got}, expected {sha} "
                    f"(the local file does not match its manifest, or it was corrupted in transit)"
                )
            self._rename(conn, tmp, final)
        except Exception as e:
            if isinstance(e, (OSError, EOFError, paramiko.SSHException, SSHLinkError)) and _link_failed(conn, e):
                raise  # keep the partial: the retry resumes it
            self._partials.pop(sha, None)
            message = self._write_failure(conn, tmp, progress.size, e) if isinstance(e, OSError) else None
            _try_remove(conn.sftp, tmp)
            if message is not None:
                raise BlobUploadError(f"{self.name}: uploading {local_path.name} ({sha[:12]}) failed: "
                                      f"{message}") from None
            raise
        self._partials.pop(sha, None)
        self._verified.add(sha)
        self._remove_stale_temps(conn, blobs, device_now=conn.sftp.stat(final).st_mtime or 0)
        return final

    def _send_file(
        self, conn: _Connection, local_path: pathlib.Path, tmp: str, offset: int, progress: _Progress
    ) -> None:
        """Write ``local_path[offset:]`` into ``tmp`` at ``offset``; fail after ``stall_timeout_s`` of no progress.

        The SFTP channel's timeout bounds each wait for the server; the
        watchdog also catches a send stuck in a full TCP buffer.
        """
        assert conn.sftp is not None
        progress.done, progress.started = offset, True
        progress.advance(0)

        def stalled() -> None:
            progress.stalled = True
            conn.abort()

        with _Watchdog(self.stall_timeout_s, stalled) as dog, open(local_path, "rb") as src:
            remote = conn.sftp.open(tmp, "r+" if offset else "w")
            remote.set_pipelined(True)
            src.seek(offset)
            remote.seek(offset)
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                remote.write(chunk)
                progress.advance(len(chunk))
                self.bytes_uploaded += len(chunk)
                dog.tick()
            remote.close()  # waits until the device acknowledged every write
        arrived = conn.sftp.stat(tmp).st_size
        if arrived != progress.size:
            raise OSError(errno.EIO, f"only {arrived} of {progress.size} bytes arrived")

    def _resume_point(
        self, conn: _Connection, local_path: pathlib.Path, sha: str, blobs: str, size: int
    ) -> tuple[str, int]:
        """(temp file, bytes already there): a verified partial upload of this blob, or a fresh name.

        Candidates are the partial this transport left when its link dropped,
        and partials of earlier runs that nobody has written to for twice the
        stall timeout (an upload that alive touches its file; one older than
        ``STALE_TEMP_AGE_S`` is abandoned and removed instead).  A candidate
        is renamed to our own name first (so two clients never share one), and
        used only if its sha256 equals that of the local file's first bytes.
        """
        assert conn.sftp is not None
        fresh = posixpath.join(blobs, f".tmp-{sha}-{secrets.token_hex(6)}")
        entries = {e.filename: e for e in conn.sftp.listdir_attr(blobs) if e.filename.startswith(f".tmp-{sha}-")}
        own = self._partials.get(sha)
        candidate: Optional[str] = None
        if own is not None and posixpath.basename(own) in entries:
            candidate = own
        elif entries:
            now = self._device_time()
            idle = [e for e in entries.values() if e.st_size and now is not None
                    and 2 * self.stall_timeout_s < now - (e.st_mtime or 0) < STALE_TEMP_AGE_S]
            if idle:
                best = max(idle, key=lambda e: e.st_size or 0)
                try:
                    conn.sftp.posix_rename(posixpath.join(blobs, best.filename), fresh)
                    candidate = fresh
                except OSError:  # someone else claimed it first
                    candidate = None
        if candidate is None:
            return fresh, 0
        have = conn.sftp.stat(candidate).st_size or 0
        if 0 < have <= size and self._remote_sha256(conn, candidate) == _sha256_prefix(local_path, have):
            log.info("%s: resuming %s at byte %d of %d", self.name, local_path.name, have, size)
            return candidate, have
        log.info("%s: partial upload %s does not match %s; starting over", self.name, candidate, local_path.name)
        _try_remove(conn.sftp, candidate)
        return fresh, 0

    def _device_time(self) -> Optional[float]:
        """The device clock (temp-file ages are judged by it, not by ours)."""
        try:
            rc, out, _ = self._exec(["date", "+%s"], timeout_s=30)
            return float(out.decode().strip()) if rc == 0 else None
        except (SSHTransportError, ValueError):
            return None

    def _check_space(self, conn: _Connection, blobs: str, needed: int) -> None:
        """Refuse an upload that cannot fit, before writing a byte of it."""
        space = self._space(blobs)
        if space is not None and space[1] is not None and space[1] < needed:
            raise OSError(errno.ENOSPC, f"no space left on {self.name}:{space[2]} "
                                        f"({_mb(needed)} needed, {_mb(space[1])} free)")

    def _write_failure(self, conn: _Connection, tmp: str, size: int, e: OSError) -> str:
        """Say why writing failed: SFTP reports a full disk or a read-only one as just "Failure"."""
        if e.errno == errno.ENOSPC:
            return e.strerror or _reason(e)
        try:
            have = conn.sftp.stat(tmp).st_size or 0 if conn.sftp is not None else 0
        except OSError:
            have = 0
        space = self._space(posixpath.dirname(tmp))
        if space is not None:
            writable, free, where = space
            if free is not None and free < size - have + _CHUNK:
                return (f"no space left on {self.name}:{where} ({_mb(size - have)} more needed, "
                        f"{_mb(free)} free)")
            if not writable:
                return f"workdir {self._device_path(self.workdir, conn.home)} is not writable ({where})"
        return f"{type(e).__name__}: {_reason(e)}"

    def _rename(self, conn: _Connection, src: str, dst: str) -> None:
        """Atomic replace-rename; ``mv -f`` when the server lacks posix-rename."""
        assert conn.sftp is not None
        try:
            conn.sftp.posix_rename(src, dst)
        except OSError as e:
            if _link_failed(conn, e):
                raise
            rc, _, err = self._exec(["mv", "-f", src, dst])
            if rc != 0:
                raise BlobUploadError(f"{self.name}: could not rename {src}: {err.decode(errors='replace')}")

    def _remote_sha256(self, conn: _Connection, path: str) -> str:
        """sha256 of a device file, computed on the device (``sha256sum``, else the device python)."""
        rc, out, err = self._exec(["sha256sum", path], timeout_s=600)
        # GNU sha256sum prefixes the line with "\" when the name needs escaping.
        digest = out.decode(errors="replace").lstrip("\\")[:64].lower()
        if rc == 0 and _SHA256_RE.match(digest):
            return digest
        first = err.decode(errors="replace").strip()[-300:] or f"exit code {rc}"
        rc, out, err = self._exec([self._python(conn), "-c", _HASH_SRC, path], timeout_s=600)
        digest = out.decode(errors="replace").strip().lower()
        if rc != 0 or not _SHA256_RE.match(digest):
            raise BlobUploadError(
                f"{self.name}: cannot hash {path} on the device (sha256sum: {first}; {self.python}: "
                f"{err.decode(errors='replace').strip()[-300:] or f'exit code {rc}'})"
            )
        return digest

    def _remove_stale_temps(self, conn: _Connection, blobs: str, device_now: float) -> None:
        """Delete ``.tmp-*`` files abandoned by interrupted uploads (judged by the device clock)."""
        assert conn.sftp is not None
        try:
            for entry in conn.sftp.listdir_attr(blobs):
                if entry.filename.startswith(".tmp-") and (entry.st_mtime or 0) < device_now - STALE_TEMP_AGE_S:
                    log.info("%s: removing abandoned upload %s", self.name, entry.filename)
                    _try_remove(conn.sftp, posixpath.join(blobs, entry.filename))
        except OSError as e:  # cleaning is a courtesy; never fail an upload over it
            log.debug("%s: could not clean temps in %s: %s", self.name, blobs, e)

    # ------------------------------------------------------------------ the agent

    def run_agent(self, job: dict, timeout_s: float) -> dict:
        """Run one job with the device agent; always returns a result document.

        Failures the agent cannot report itself (no connection, unknown host
        key, crash, timeout, a cut link, output that is not JSON) come back as
        :func:`devices.transport.error_result` documents so that a sweep
        records them instead of dying.  Every result gets a ``transport``
        object (name, exit code, wall seconds, stderr tail), as with
        ``LocalTransport``.  The job goes to the agent as one JSON line; an
        agent that watches its stdin gets ``"watch_stdin": true`` and the
        channel's stdin stays open, so that closing it (timeout, cancel,
        :meth:`close`, a dropped link) makes the agent write its result, free
        the device lock and exit.  A run cut by a lost link is reported, not
        re-run: it may have produced a result.
        """
        t0 = time.monotonic()
        code: Optional[int] = None
        stderr = b""
        try:
            if "workdir" not in job:  # the agent's device lock lives there; all clients must agree
                job = {**job, "workdir": self.device_workdir()}
            watch = self._agent_watches_stdin()
            if watch:
                job = {**job, "watch_stdin": True}
            line = json.dumps(job).encode("utf-8") + b"\n"  # json.dumps without indent: one line
            code, out, stderr = self._run_agent([], line, timeout_s, keep_stdin_open=watch)
            if code == -1:  # paramiko's "no exit status": sshd sent exit-signal instead
                code = None
                result = parse_agent_output(job, out, stderr, None, signal_unknown=True)
            else:
                result = parse_agent_output(job, out, stderr, code)
                if code is not None and code > 128 and result.get("error", {}).get("type") == "TransportError":
                    # a login shell that forked (dash) reports a signal death as 128 + signal number
                    result["error"]["message"] += f" (128 + {signal_name(code - 128)}: killed by a signal?)"
        except AgentRunError as e:
            stderr = e.stderr_tail.encode()
            result = error_result(job, e.stage, str(e), e.stderr_tail)
        except (SSHTransportError, OSError, ValueError, TypeError) as e:  # HostKeyError's message says what to do
            result = error_result(job, "transport", str(e) or type(e).__name__)
        result["transport"] = {"name": self.name, "returncode": code, "wall_s": time.monotonic() - t0,
                               "stderr_tail": tail(stderr)}
        return result

    def _agent_watches_stdin(self) -> bool:
        """Does the agent we ship read one job line and then watch stdin for EOF?

        Only such an agent may get an open stdin (one that reads to EOF would
        wait forever); the transport ships its own agent, so its source says.
        """
        if self._watches_stdin is None:
            self._watches_stdin = b"watch_stdin" in self.agent_source.read_bytes()
        return self._watches_stdin

    def probe(self) -> dict:
        """``agent --probe`` on the device: environment and importable runtimes.

        Like ``LocalTransport.probe``, failures come back as a document with
        ``status: "error"`` (the message of a :class:`HostKeyError` included).
        """
        try:
            code, out, stderr = self._run_agent(
                ["--probe", "--workdir", self.device_workdir()], b"", PROBE_TIMEOUT_S, what="probe"
            )
        except AgentRunError as e:
            return {"status": "error",
                    "error": {"stage": e.stage, "message": str(e), "stderr_tail": e.stderr_tail}}
        except (SSHTransportError, OSError, ValueError) as e:
            return {"status": "error", "error": {"stage": "transport", "message": str(e) or type(e).__name__}}
        return parse_agent_output({}, out, stderr, code)

    def run_shell(self, command: str, timeout_s: float) -> str:
        """Run a user-written shell command on the device (``pre``/``post`` in bench.toml).

        Unlike everything else here, ``command`` is NOT quoted: it is the
        user's own shell code and runs as written (``/bin/sh -c``), like
        ``ssh host 'command'``.  Returns its stdout; raises
        :class:`SSHTransportError` on a non-zero exit or timeout (a failed
        ``pre`` step means the device is not in the state the user asked for).
        """
        rc, out, err = self._run_killable(["/bin/sh", "-c", command], b"", timeout_s, what="command")
        if rc != 0:
            raise SSHTransportError(
                f"{self.name}: `{command}` exited with code {rc}: {tail(err, 1000).strip()}"
            )
        return out.decode("utf-8", "replace")

    def _run_agent(
        self, args: list[str], stdin: bytes, timeout_s: float, *, keep_stdin_open: bool = False,
        what: str = "agent",
    ) -> tuple[int, bytes, bytes]:
        """Run ``<python> <agent> args`` with ``stdin``; returns (exit code, stdout, stderr)."""
        with self._lock:
            agent = self.ensure_agent()
            conn = self._connection()
            python = self._python(conn)
        return self._run_killable([python, agent, *args], stdin, timeout_s, what=what,
                                  keep_stdin_open=keep_stdin_open)

    def _start(self, what: str) -> tuple[_Connection, paramiko.Channel, str]:
        """Connection, new session channel and pidfile name for a killable command (nothing runs yet)."""
        with self._lock:
            conn = self._connection()
            try:
                pidfile = posixpath.join(self._dir(conn, "run"), f"{secrets.token_hex(8)}.pid")
                chan = self._open_session(conn)
            except (OSError, EOFError, paramiko.SSHException) as e:
                self._drop_connection()
                raise AgentRunError("transport", f"{self.name}: cannot start the {what}: {_reason(e)}") from None
            return self._conn or conn, chan, pidfile

    def _run_killable(
        self, argv: list[str], stdin: bytes, timeout_s: float, what: str, keep_stdin_open: bool = False
    ) -> tuple[int, bytes, bytes]:
        """Run ``argv`` under the PGID-recording sh wrapper; stop it on timeout or cancel.

        Returns (exit code, stdout, stderr) without login-shell noise.  Raises
        ``AgentRunError("timeout")`` after stopping it (the message says
        "killed" only when the kill was confirmed), or
        ``AgentRunError("transport")`` if the link is lost (the run is then
        killed after the next reconnect: it may still hold the device lock).
        """
        conn, chan, pidfile = self._start(what)
        marker = _new_marker()
        out, err = bytearray(), bytearray()
        during = "during measurement" if what == "agent" else f"while the {what} ran"
        try:
            chan.exec_command(remote_command(["exec", "/bin/sh", "-c", _WRAPPER_SH, marker, pidfile, *argv]))
            if stdin:
                chan.sendall(stdin)
            if not keep_stdin_open:
                chan.shutdown_write()
            rc = _collect(chan, time.monotonic() + timeout_s, out, err)
            if rc is None:
                note = self._stop_remote(chan, pidfile, out, err, keep_stdin_open)
                raise AgentRunError("timeout", f"{self.name}: the {what} was still running after {timeout_s:g} s; "
                                    f"{note}", tail(_after_marker(marker, out, err)[1]))
        except (OSError, EOFError, paramiko.SSHException) as e:
            if not self._closing:
                self._orphans.add(pidfile)
            self._drop_connection()
            raise AgentRunError("transport", f"{self.name}: {self._lost(conn, e, during)}",
                                tail(_after_marker(marker, out, err)[1])) from None
        except AgentRunError:
            raise
        except BaseException:  # KeyboardInterrupt, SystemExit: cancelled - stop it, then go
            try:
                self._stop_remote(chan, pidfile, out, err, keep_stdin_open)
            except Exception as e:  # noqa: BLE001 - the interrupt matters more
                log.warning("%s: could not stop the cancelled %s: %s", self.name, what, _reason(e))
            raise
        finally:
            chan.close()
        self._forget(pidfile)
        return (rc, *_after_marker(marker, out, err))

    def _stop_remote(
        self, chan: paramiko.Channel, pidfile: str, out: bytearray, err: bytearray, stdin_open: bool
    ) -> str:
        """Stop a run that must end; returns how it ended, for the record.

        Closing stdin comes first: an agent that watches it writes its result
        and frees the device lock.  Only a run still going after
        ``STDIN_CLOSE_GRACE_S`` has its process group killed.
        """
        if stdin_open:
            try:
                chan.shutdown_write()
                if _collect(chan, time.monotonic() + STDIN_CLOSE_GRACE_S, out, err) is not None:
                    self._forget(pidfile)
                    return "it stopped when its input was closed"
            except (OSError, EOFError, paramiko.SSHException):
                pass  # the kill below uses a fresh connection if need be
        confirmed, detail = self._kill_remote(pidfile)
        try:  # the agent reports on SIGTERM; its last log lines say where it was
            _collect(chan, time.monotonic() + (5.0 if confirmed else 1.0), out, err)
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the link is gone too; the timeout is still what happened
        if confirmed:
            return "killed" if detail == "killed" else "it exited while being stopped"
        return f"the kill was not confirmed ({detail}): processes may be left on the device"

    def _kill_remote(self, pidfile: str) -> tuple[bool, str]:
        """Kill the process group recorded in ``pidfile`` with plain ``sh``; (confirmed, what happened).

        Independent of the device python (which may be what hangs) and bounded
        by ``KILL_TIMEOUT_S``.
        """
        try:
            rc, out, err = self._exec(["/bin/sh", "-c", _KILL_SH, "kill", pidfile], timeout_s=KILL_TIMEOUT_S)
        except SSHTransportError as e:
            log.warning("%s: could not kill the timed-out run: %s", self.name, e)
            return False, str(e)
        said = (out.decode(errors="replace").strip() or err.decode(errors="replace").strip()
                or f"kill exited with code {rc}")
        return rc == 0, said.splitlines()[-1]

    def _forget(self, pidfile: str) -> None:
        """Remove a job's pidfile; a leftover one is harmless but untidy."""
        with self._lock:
            if self._conn is not None and self._conn.sftp is not None:
                _try_remove(self._conn.sftp, pidfile)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _link_failed(conn: _Connection, e: BaseException) -> bool:
    """Is ``e`` the link failing (retry may help) rather than the device refusing (disk full, permissions)?"""
    if isinstance(e, (EOFError, socket.timeout, ConnectionError, paramiko.SSHException, SSHLinkError)):
        return True
    return not conn.is_active()


def _new_marker() -> str:
    return f"snp-bench-output-{secrets.token_hex(8)}"


def _after_marker(marker: str, out: bytes | bytearray, err: bytes | bytearray) -> tuple[bytes, bytes]:
    """stdout and stderr without what the login shell printed before the command started.

    A stream without the marker is returned whole: the command never
    started, and the shell's own complaint is the useful part.
    """
    tag = marker.encode() + b"\n"

    def cut(data: bytes | bytearray) -> bytes:
        i = data.find(tag)
        return bytes(data[i + len(tag):]) if i >= 0 else bytes(data)

    return cut(out), cut(err)


def _sha256_prefix(path: pathlib.Path, n: int) -> str:
    """sha256 of the first ``n`` bytes of a local file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = n
        while left > 0:
            block = f.read(min(left, 1 << 20))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def _describe_connect_error(e: BaseException, timeout_s: float) -> str:
    """A short human reason for a failed connection attempt."""
    errors = getattr(e, "errors", None)  # paramiko's NoValidConnectionsError: one per address
    if isinstance(errors, dict) and errors:
        e = next(iter(errors.values()))
    if isinstance(e, ConnectionRefusedError) or getattr(e, "errno", None) == errno.ECONNREFUSED:
        return "connection refused (is sshd running and is the port right?)"
    if getattr(e, "errno", None) in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"{os.strerror(e.errno)}"  # type: ignore[union-attr, arg-type]
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the host name ({e})"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout_s:g} s"
    if isinstance(e, EOFError):
        return "the server closed the connection during the handshake"
    return f"{type(e).__name__}: {_reason(e)}"


def _send_stdin(chan: paramiko.Channel, data: bytes) -> None:
    """Write ``data`` to the remote stdin, then close it (the command reads to EOF)."""
    if data:
        chan.sendall(data)
    chan.shutdown_write()


def _collect(chan: paramiko.Channel, deadline: float, out: bytearray, err: bytearray) -> Optional[int]:
    """Append stdout/stderr to ``out``/``err`` until the command exits or ``deadline``.

    Returns the exit code, or None on timeout.  Both streams are read as they
    arrive so that a chatty stderr cannot fill the SSH window and stall the
    remote process.  Raises EOFError when the connection dies (the keepalive
    watch closes a silent one within a few intervals).
    """
    while True:
        while chan.recv_ready():
            out += chan.recv(1 << 16)
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(1 << 16)
        if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
            code = chan.recv_exit_status()  # -1: no status (sshd sent exit-signal, or the link closed)
            if code == -1 and not _link_up(chan):
                raise EOFError("SSH connection closed")
            return code
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        if not _link_up(chan):
            raise EOFError("SSH connection closed")
        select.select([chan], [], [], min(remaining, 0.1))  # wakes on data; exit-status polls


def _link_up(chan: paramiko.Channel) -> bool:
    transport = chan.get_transport()
    return transport is not None and transport.is_active()


def _sftp_makedirs(sftp: Optional[paramiko.SFTPClient], path: str) -> None:
    """``mkdir -p`` over SFTP (paths never pass through a shell)."""
    assert sftp is not None
    parts = [p for p in path.split("/") if p]
    current = "/" if path.startswith("/") else ""
    for part in parts:
        current = posixpath.join(current, part) if current else part
        try:
            if not stat.S_ISDIR(sftp.stat(current).st_mode or 0):
                raise NotADirectoryError(f"{current} exists on the device and is not a directory")
        except FileNotFoundError:
            try:
                sftp.mkdir(current, mode=0o755)
            except OSError:
                sftp.stat(current)  # created concurrently by someone else: fine


def _try_remove(sftp: Optional[paramiko.SFTPClient], path: str) -> None:
    """Remove a device file, ignoring errors (used on cleanup paths)."""
    if sftp is None:
        return
    try:
        sftp.remove(path)
    except (OSError, EOFError, paramiko.SSHException):
        pass
