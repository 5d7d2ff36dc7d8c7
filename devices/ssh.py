"""SSH transport: ship artifacts and the agent to a device and run jobs there.

This is the paramiko implementation of :class:`devices.transport.Transport`
(docs/design.md §4).  A newcomer should know five things about it:

1. **Host keys are always verified** against a known_hosts file.  An unknown
   key is refused with a :class:`HostKeyError` that says how to trust it; with
   ``trust_new_hosts=True`` a first-seen key is appended to the file (and a
   warning logged).  A *changed* key is refused in every mode.  The same rules
   apply to ProxyJump hosts.
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
5. **Timeouts kill the remote agent.**  The agent is started through a tiny
   python wrapper that puts it in its own process group and writes its PID to
   ``<workdir>/run/<random>.pid``; on timeout a second command kills that
   process group (SIGTERM, then SIGKILL).  Closing an SSH channel alone does
   not stop a remote process.

``run_shell`` is the one deliberate exception to rule 3: it runs the
``pre``/``post`` shell commands the user wrote in ``bench.toml`` as written.

ProxyJump is implemented in-process: the transport connects to the jump host
(host-key checked like any other), opens a ``direct-tcpip`` channel to the
target and runs the target's SSH session over that channel.
"""

from __future__ import annotations

import errno
import getpass
import json
import logging
import os
import pathlib
import posixpath
import re
import secrets
import select
import shlex
import signal
import socket
import stat
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence

import paramiko

from devices.transport import (
    AGENT_SOURCE,
    PROBE_TIMEOUT_S,
    Transport,
    TransportError,
    check_sha256,
    error_result,
    parse_agent_output,
    sha256_file,
    tail,
)

log = logging.getLogger(__name__)

#: A ``.tmp-*`` upload older than this (device clock) is an abandoned upload.
#: Live uploads keep touching their file, so this only has to exceed the
#: longest stall we tolerate, not the longest upload.
STALE_TEMP_AGE_S = 15 * 60

#: ProxyJump chains longer than this are treated as a loop in the config.
MAX_JUMP_DEPTH = 8

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")  # what a device-side hasher must print


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class SSHTransportError(TransportError):
    """Something prevented talking to the device (base class of this module's errors)."""


class SSHConnectError(SSHTransportError):
    """TCP connect, SSH handshake or authentication failed."""


class HostKeyError(SSHConnectError):
    """The server's host key is unknown (and not trusted) or has changed."""


class BlobUploadError(SSHTransportError):
    """An upload failed (connection lost, disk full, no rename, no hasher)."""


class BlobMismatchError(BlobUploadError, ValueError):
    """The uploaded bytes do not hash to the expected sha256 (a ValueError, as the Transport contract says)."""


class AgentRunError(SSHTransportError):
    """The agent did not produce a result; ``stage`` is "transport" or "timeout"."""

    def __init__(self, stage: str, message: str, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.stage = stage
        self.stderr_tail = stderr_tail


# --------------------------------------------------------------------------
# Small programs run by the *device* python.  They must work on Python >= 3.6
# with the standard library only (docs/design.md §4), and they receive every path
# as an argument - nothing is ever interpolated into their source.
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

#: Puts a program in its own process group, records its PID (= the group id)
#: and execs it, so that a timeout can kill it and anything it spawned.
#: argv: pidfile, program, args...
_WRAPPER_SRC = """\
import os, sys
try:
    os.setpgid(0, 0)
except OSError:
    pass  # already a process-group leader (sshd made us a session leader)
with open(sys.argv[1], "w") as f:
    f.write(str(os.getpid()))
os.execvp(sys.argv[2], sys.argv[2:])
"""

#: Kills the process group recorded by ``_WRAPPER_SRC``: SIGTERM first (the
#: agent then still writes its report), SIGKILL to the whole group once the
#: leader has exited or after a grace period.  A zombie counts as exited:
#: its reaper (sshd, or a lazy init for orphans) may take its time.
#: argv: pidfile.
_KILL_SRC = """\
import os, signal, sys, time
try:
    with open(sys.argv[1]) as f:
        pgid = int(f.read().strip())
except (OSError, ValueError):
    sys.exit(0)
def leader_running():
    try:
        with open("/proc/%d/stat" % pgid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        if os.path.isdir("/proc/self"):
            return False
    try:
        os.kill(pgid, 0)
        return True
    except OSError:
        return False
try:
    os.killpg(pgid, signal.SIGTERM)
except OSError:
    sys.exit(0)
end = time.time() + 3.0
while time.time() < end and leader_running():
    time.sleep(0.02)
try:
    os.killpg(pgid, signal.SIGKILL)
except OSError:
    pass
"""


def remote_command(argv: Sequence[str]) -> str:
    """Join ``argv`` into one POSIX-shell command line, quoting every element.

    SSH only transports a *string* that the remote login shell parses, so this
    is the single place where arguments become shell text.
    """
    return " ".join(shlex.quote(str(a)) for a in argv)


# --------------------------------------------------------------------------
# Where to connect: ~/.ssh/config resolution
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SSHTarget:
    """One SSH endpoint after ``ssh_config`` resolution (what ``ssh -G`` would print)."""

    alias: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...] = ()
    identities_only: bool = False
    proxy_jump: tuple[str, ...] = ()  # hop specs "[user@]host[:port]", first hop first
    keepalive_s: Optional[float] = None

    @property
    def known_hosts_name(self) -> str:
        """The name this endpoint has in known_hosts (``[host]:port`` off port 22)."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    def __str__(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"


def _load_ssh_config(path: Optional[os.PathLike | str]) -> paramiko.SSHConfig:
    """Read an ssh_config file; no file means an empty config (all defaults)."""
    if path is None:
        default = pathlib.Path("~/.ssh/config").expanduser()
        path = default if default.exists() else None
    if path is None:
        return paramiko.SSHConfig()
    return paramiko.SSHConfig.from_path(str(path))


def parse_jump_spec(spec: str) -> tuple[Optional[str], str, Optional[int]]:
    """Split one ProxyJump hop, ``[ssh://][user@]host[:port]`` (IPv6 in brackets)."""
    spec = spec.strip()
    if spec.startswith("ssh://"):
        spec = spec[len("ssh://"):].rstrip("/")
    user: Optional[str] = None
    if "@" in spec:
        user, spec = spec.rsplit("@", 1)
    port: Optional[int] = None
    if spec.startswith("["):  # [v6addr]:port or [host]
        host, _, rest = spec[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif spec.count(":") == 1:
        host, port_text = spec.split(":")
        port = int(port_text)
    else:
        host = spec
    if not host:
        raise ValueError(f"bad ProxyJump entry {spec!r}")
    return user, host, port


def resolve_target(
    host: str,
    config: paramiko.SSHConfig,
    *,
    user: Optional[str] = None,
    port: Optional[int] = None,
    identity_file: Optional[os.PathLike | str] = None,
) -> SSHTarget:
    """Resolve ``host`` (a name or an ssh_config alias) to an :class:`SSHTarget`.

    Honours HostName, User, Port, IdentityFile, IdentitiesOnly, ProxyJump and
    ServerAliveInterval.  Explicit arguments win over the config file, as on
    the ``ssh`` command line.
    """
    opts = config.lookup(host)
    identity_files: list[str] = []
    if identity_file is not None:
        identity_files.append(os.path.expanduser(str(identity_file)))
    identity_files += [os.path.expanduser(p) for p in opts.get("identityfile", [])]
    jump = opts.get("proxyjump", "").strip()
    hops = () if jump in ("", "none") else tuple(h.strip() for h in jump.split(",") if h.strip())
    alive = opts.get("serveraliveinterval")
    return SSHTarget(
        alias=host,
        hostname=opts.get("hostname", host),
        port=int(port if port is not None else opts.get("port", 22)),
        user=user or opts.get("user") or getpass.getuser(),
        identity_files=tuple(identity_files),
        identities_only=opts.get("identitiesonly", "no").lower() == "yes",
        proxy_jump=hops,
        keepalive_s=float(alive) if alive else None,
    )


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
        trust_new_hosts: bool, via_jump: bool,
    ):
        self.target = target
        self.known_hosts = known_hosts
        self.revoked = revoked
        self.trust_new_hosts = trust_new_hosts
        self.via_jump = via_jump

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if key in self.revoked:
            raise HostKeyError(_revoked_message(hostname, key, self.known_hosts))
        if not self.trust_new_hosts:
            where = " (run it where that address is reachable, e.g. on the jump host)" if self.via_jump else ""
            raise HostKeyError(
                f"unknown host key for {hostname}: {key.get_name()} {key.fingerprint} is not in "
                f"{self.known_hosts}; check that fingerprint with the device's owner, then trust it with "
                f"`ssh-keyscan -p {self.target.port} {self.target.hostname} >> {self.known_hosts}`{where} "
                f"or rerun with --trust-new-hosts"
            )
        _append_known_host(self.known_hosts, hostname, key)
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.warning(
            "trusting NEW host key for %s: %s %s (added to %s)",
            hostname, key.get_name(), key.fingerprint, self.known_hosts,
        )


def _append_known_host(path: pathlib.Path, hostname: str, key: paramiko.PKey) -> None:
    """Append ``hostname keytype base64`` to a known_hosts file, creating it 0600."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        if f.tell() > 0:
            with open(path, "rb") as existing:
                existing.seek(-1, os.SEEK_END)
                if existing.read(1) != b"\n":
                    f.write("\n")
        f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


# --------------------------------------------------------------------------
# The transport
# --------------------------------------------------------------------------


@dataclass
class _Connection:
    """A live SSH session to the device and the jump-host sessions it rides on."""

    clients: list[paramiko.SSHClient] = field(default_factory=list)  # jumps first, target last
    sftp: Optional[paramiko.SFTPClient] = None
    home: str = ""

    @property
    def client(self) -> paramiko.SSHClient:
        return self.clients[-1]

    def is_active(self) -> bool:
        t = self.client.get_transport() if self.clients else None
        return bool(t is not None and t.is_active())

    def close(self) -> None:
        if self.sftp is not None:
            try:
                self.sftp.close()
            except Exception:  # noqa: BLE001 - best effort on a possibly dead link
                pass
        for c in reversed(self.clients):
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass


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
        connect_timeout: float = 10.0,
        ssh_config_path: Optional[os.PathLike | str] = None,
        allow_agent: bool = True,
        look_for_keys: bool = True,
        keepalive_s: float = 15.0,
        agent_source: Optional[os.PathLike | str] = None,
    ) -> None:
        """Describe the device; nothing connects until the first call that needs it.

        ``python`` and ``workdir`` are paths *on the device*; a leading ``~/``
        means the login directory (expanded via SFTP, never by a shell).
        ``allow_agent``/``look_for_keys`` control ssh-agent and ``~/.ssh/id_*``
        keys; tests switch both off to stay hermetic.  ``agent_source`` lets a
        test ship a stand-in agent; normally it is ``devices/agent.py``.
        """
        for what, value in (("workdir", workdir), ("python", python)):
            if value.startswith("~") and not (value == "~" or value.startswith("~/")):
                raise ValueError(f"{what} {value!r}: only '~/' (the login directory) is supported, not '~user'")
        self.name = name
        self.bytes_uploaded = 0
        self.host = host
        self.python = python
        self.workdir = workdir
        self.known_hosts = pathlib.Path(known_hosts or "~/.ssh/known_hosts").expanduser()
        self.trust_new_hosts = trust_new_hosts
        self.connect_timeout = connect_timeout
        self.allow_agent = allow_agent
        self.look_for_keys = look_for_keys
        self.agent_source = pathlib.Path(agent_source) if agent_source else AGENT_SOURCE
        self._config = _load_ssh_config(ssh_config_path)
        self.target = resolve_target(host, self._config, user=user, port=port, identity_file=identity_file)
        self._keepalive_s = self.target.keepalive_s or keepalive_s
        self._conn: Optional[_Connection] = None
        self._lock = threading.RLock()  # one connection, possibly several caller threads
        self._verified: set[str] = set()  # blobs whose on-device sha256 we checked this session

    def __repr__(self) -> str:
        return f"SSHTransport({self.name!r}, {self.target})"

    # ------------------------------------------------------------------ connecting

    def _connect_one(self, target: SSHTarget, sock: Any = None, via_jump: bool = False) -> paramiko.SSHClient:
        """Open one verified, authenticated SSH session (``sock``: a jump channel)."""
        client = paramiko.SSHClient()
        # Read afresh for every connection (another transport may have added a key).
        # The keys go into the client's in-memory set; paramiko never writes the file.
        known = load_known_hosts(self.known_hosts, client.get_host_keys())
        client.set_missing_host_key_policy(
            _KnownHostsPolicy(target, self.known_hosts, known.revoked, self.trust_new_hosts, via_jump)
        )
        key_files = [p for p in target.identity_files if os.path.exists(p)]
        use_defaults = not (target.identities_only and key_files)
        try:
            client.connect(
                target.hostname,
                port=target.port,
                username=target.user,
                key_filename=key_files or None,
                allow_agent=self.allow_agent and use_defaults,
                look_for_keys=self.look_for_keys and use_defaults,
                password=None,  # never: keys and ssh-agent only
                passphrase=None,
                sock=sock,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                channel_timeout=self.connect_timeout,
            )
        except HostKeyError:
            client.close()
            raise
        except paramiko.BadHostKeyException as e:
            client.close()
            raise HostKeyError(
                f"host key for {target.known_hosts_name} has CHANGED: the server offers "
                f"{e.key.get_name()} {e.key.fingerprint} but {self.known_hosts} holds "
                f"{e.expected_key.get_name()} {e.expected_key.fingerprint}; refusing to connect "
                f"(possible man-in-the-middle). If the device was reinstalled, verify the new "
                f"fingerprint, then remove the old entry with "
                f"`ssh-keygen -R {shlex.quote(target.known_hosts_name)} -f {self.known_hosts}`"
            ) from None
        except paramiko.AuthenticationException as e:
            client.close()
            tried = ", ".join(key_files) or "none given"
            raise SSHConnectError(
                f"{self.name}: authentication as {target.user} on {target.hostname}:{target.port} "
                f"failed (key files: {tried}; ssh-agent: {'on' if self.allow_agent else 'off'}): {e}"
            ) from None
        except (OSError, EOFError, paramiko.SSHException) as e:
            client.close()
            raise SSHConnectError(
                f"{self.name}: cannot connect to {target}{' via ProxyJump' if via_jump else ''}: "
                f"{_describe_connect_error(e, self.connect_timeout)}"
            ) from None
        transport = client.get_transport()
        assert transport is not None
        server_key = transport.get_remote_server_key()
        if server_key in known.revoked:  # known *and* revoked: revocation wins, as in OpenSSH
            client.close()
            raise HostKeyError(_revoked_message(target.known_hosts_name, server_key, self.known_hosts))
        transport.set_keepalive(int(max(1, self._keepalive_s)))
        return client

    def _connect_chain(self, target: SSHTarget, depth: int = 0) -> list[paramiko.SSHClient]:
        """Connect to ``target``, through its ProxyJump hosts if it has any.

        Returns the clients jump-first.  The first hop is resolved with the
        ssh config (so it may itself have a ProxyJump); later hops ride on the
        previous one, as OpenSSH does for ``ProxyJump a,b``.
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
            hops.append(resolve_target(h, self._config, user=u, port=p))
        clients = self._connect_chain(hops[0], depth + 1)
        try:
            for nxt in [*hops[1:], target]:
                channel = self._jump_channel(clients[-1], nxt)
                clients.append(self._connect_one(replace(nxt, proxy_jump=()), channel, via_jump=True))
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
                f"{self.name}: the jump host could not reach {dest.hostname}:{dest.port}: {e}"
            ) from None

    def _connection(self) -> _Connection:
        """The live connection, (re)connecting if there is none or it dropped."""
        with self._lock:
            if self._conn is not None and self._conn.is_active():
                return self._conn
            self._drop_connection()
            conn = _Connection(clients=self._connect_chain(self.target))
            try:
                conn.sftp = conn.client.open_sftp()
                conn.home = conn.sftp.normalize(".")
            except (OSError, EOFError, paramiko.SSHException) as e:
                conn.close()
                raise SSHConnectError(f"{self.name}: SFTP is not available on {self.target}: {e}") from None
            log.debug("%s: connected to %s (%d jump host(s))", self.name, self.target, len(conn.clients) - 1)
            self._conn = conn
            return conn

    def _drop_connection(self) -> None:
        """Forget the connection after an error so the next call starts a fresh one."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def close(self) -> None:
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
        """``<workdir>/<name>``, created (with parents) through SFTP, never a shell."""
        path = posixpath.join(self._device_path(self.workdir, conn.home), name)
        _sftp_makedirs(conn.sftp, path)
        return path

    # ------------------------------------------------------------------ running commands

    def _exec(
        self, argv: Sequence[str], *, stdin: bytes = b"", timeout_s: float = 60.0
    ) -> tuple[int, bytes, bytes]:
        """Run ``argv`` on the device; returns (exit code, stdout, stderr).

        Raises :class:`SSHTransportError` on timeout or a lost connection.
        """
        conn = self._connection()
        chan = self._open_session(conn)
        out, err = bytearray(), bytearray()
        try:
            chan.exec_command(remote_command(argv))
            _send_stdin(chan, stdin)
            rc = _collect(chan, time.monotonic() + timeout_s, out, err)
        except (OSError, EOFError, paramiko.SSHException) as e:
            self._drop_connection()
            raise SSHTransportError(f"{self.name}: lost the connection running {argv[0]}: {e}") from None
        finally:
            chan.close()
        if rc is None:
            raise SSHTransportError(f"{self.name}: {argv[0]} did not finish within {timeout_s:g} s")
        return rc, bytes(out), bytes(err)

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

    def ensure_blob(self, local_path: pathlib.Path, sha256: str) -> str:
        """Make ``<workdir>/blobs/<sha256>`` exist and be correct on the device; return its path.

        Uploads only when the blob is missing (or fails its check), to a temp
        name, verifies it on the device, then renames it into place.
        """
        sha = check_sha256(sha256)  # it becomes a file name on the device
        local_path = pathlib.Path(local_path)
        if not local_path.is_file():  # a local mistake, not a device problem: say so plainly
            raise FileNotFoundError(f"{local_path}: no such file to upload")
        with self._lock:
            conn = self._connection()
            try:
                blobs = self._dir(conn, "blobs")
                final = posixpath.join(blobs, sha)
                if self._blob_is_good(conn, final, sha):
                    return final
                return self._upload(conn, local_path, sha, blobs, final)
            except (OSError, EOFError, paramiko.SSHException) as e:
                self._drop_connection()
                raise BlobUploadError(
                    f"{self.name}: uploading {local_path.name} ({sha[:12]}) failed: {e}"
                ) from None

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

    def _upload(self, conn: _Connection, local_path: pathlib.Path, sha: str, blobs: str, final: str) -> str:
        assert conn.sftp is not None
        tmp = posixpath.join(blobs, f".tmp-{sha}-{secrets.token_hex(6)}")
        sent = 0

        def progress(done: int, _total: int) -> None:
            nonlocal sent
            self.bytes_uploaded += done - sent
            sent = done

        size = local_path.stat().st_size
        log.info("%s: uploading %s (%d bytes) to %s", self.name, local_path.name, size, final)
        try:
            with open(local_path, "rb") as f:
                attrs = conn.sftp.putfo(f, tmp, file_size=size, callback=progress, confirm=True)
            got = self._remote_sha256(conn, tmp)
            if got != sha:
                raise BlobMismatchError(
                    f"{self.name}: {local_path} arrived with sha256 {got}, expected {sha} "
                    f"(the local file does not match its manifest, or it was corrupted in transit)"
                )
            self._rename(conn, tmp, final)
        except BaseException:
            _try_remove(conn.sftp, tmp)
            raise
        self._verified.add(sha)
        self._remove_stale_temps(conn, blobs, device_now=attrs.st_mtime or 0)
        return final

    def _rename(self, conn: _Connection, src: str, dst: str) -> None:
        """Atomic replace-rename; ``mv -f`` when the server lacks posix-rename."""
        assert conn.sftp is not None
        try:
            conn.sftp.posix_rename(src, dst)
        except OSError:
            rc, _, err = self._exec(["mv", "-f", src, dst])
            if rc != 0:
                raise BlobUploadError(f"{self.name}: could not rename {src}: {err.decode(errors='replace')}")

    def _remote_sha256(self, conn: _Connection, path: str) -> str:
        """sha256 of a device file, computed on the device (``sha256sum``, else the device python)."""
        rc, out, _ = self._exec(["sha256sum", path], timeout_s=600)
        # GNU sha256sum prefixes the line with "\" when the name needs escaping.
        digest = out.decode(errors="replace").lstrip("\\")[:64].lower()
        if rc == 0 and _SHA256_RE.match(digest):
            return digest
        rc, out, err = self._exec([self._python(conn), "-c", _HASH_SRC, path], timeout_s=600)
        digest = out.decode(errors="replace").strip().lower()
        if rc != 0 or not _SHA256_RE.match(digest):
            raise BlobUploadError(
                f"{self.name}: cannot hash {path} on the device (no sha256sum, and {self.python} failed: "
                f"{err.decode(errors='replace')[-500:]})"
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
        key, crash, timeout, output that is not JSON) come back as
        :func:`devices.transport.error_result` documents so that a sweep
        records them instead of dying.  Every result gets a ``transport``
        object (name, exit code, wall seconds, stderr tail), as with
        ``LocalTransport``.
        """
        t0 = time.monotonic()
        code: Optional[int] = None
        stderr = b""
        try:
            if "workdir" not in job:  # the agent's device lock lives there; all clients must agree
                job = {**job, "workdir": self.device_workdir()}
            code, out, stderr = self._run_agent([], json.dumps(job).encode("utf-8"), timeout_s)
            if code == -1:  # paramiko's "no exit status": sshd sent exit-signal instead
                code = None
                result = parse_agent_output(job, out, stderr, None)
                if result.get("error", {}).get("type") == "TransportError":
                    result["error"]["message"] = (
                        "agent killed by a signal (the OOM killer?) before it wrote a result")
            else:
                result = parse_agent_output(job, out, stderr, code)
                if code is not None and code > 128 and result.get("error", {}).get("type") == "TransportError":
                    # a login shell that forked (dash) reports a signal death as 128 + signal number
                    result["error"]["message"] += f" (128 + {_signal_name(code - 128)}: killed by a signal?)"
        except AgentRunError as e:
            stderr = e.stderr_tail.encode()
            result = error_result(job, e.stage, str(e), e.stderr_tail)
        except (SSHTransportError, OSError, ValueError, TypeError) as e:  # HostKeyError's message says what to do
            result = error_result(job, "transport", str(e))
        result["transport"] = {"name": self.name, "returncode": code, "wall_s": time.monotonic() - t0,
                               "stderr_tail": tail(stderr)}
        return result

    def probe(self) -> dict:
        """``agent --probe`` on the device: environment and importable runtimes.

        Like ``LocalTransport.probe``, failures come back as a document with
        ``status: "error"`` (the message of a :class:`HostKeyError` included).
        """
        try:
            code, out, stderr = self._run_agent(
                ["--probe", "--workdir", self.device_workdir()], b"", PROBE_TIMEOUT_S
            )
        except AgentRunError as e:
            return {"status": "error",
                    "error": {"stage": e.stage, "message": str(e), "stderr_tail": e.stderr_tail}}
        except (SSHTransportError, OSError, ValueError) as e:
            return {"status": "error", "error": {"stage": "transport", "message": str(e)}}
        return parse_agent_output({}, out, stderr, code)

    def run_shell(self, command: str, timeout_s: float) -> str:
        """Run a user-written shell command on the device (``pre``/``post`` in bench.toml).

        Unlike everything else here, ``command`` is NOT quoted: it is the
        user's own shell code and runs as written (``/bin/sh -c``), like
        ``ssh host 'command'``.  Returns its stdout; raises
        :class:`SSHTransportError` on a non-zero exit or timeout (a failed
        ``pre`` step means the device is not in the state the user asked for).
        """
        conn = self._connection()
        rc, out, err = self._run_killable(conn, ["/bin/sh", "-c", command], b"", timeout_s, what="command")
        if rc != 0:
            raise SSHTransportError(
                f"{self.name}: `{command}` exited with code {rc}: {tail(err, 1000).strip()}"
            )
        return out.decode("utf-8", "replace")

    def _run_agent(self, args: list[str], stdin: bytes, timeout_s: float) -> tuple[int, bytes, bytes]:
        """Run ``<python> <agent> args`` with ``stdin``; returns (exit code, stdout, stderr)."""
        with self._lock:
            agent = self.ensure_agent()
            conn = self._connection()
        return self._run_killable(conn, [self._python(conn), agent, *args], stdin, timeout_s, what="agent")

    def _run_killable(
        self, conn: _Connection, argv: list[str], stdin: bytes, timeout_s: float, what: str
    ) -> tuple[int, bytes, bytes]:
        """Run ``argv`` under the PID-recording wrapper; kill its process group on timeout.

        Returns (exit code, stdout, stderr).  Raises ``AgentRunError("timeout")``
        after killing, or ``AgentRunError("transport")`` if the link is lost.
        """
        with self._lock:
            try:
                pidfile = posixpath.join(self._dir(conn, "run"), f"{secrets.token_hex(8)}.pid")
                chan = self._open_session(conn)
            except (OSError, EOFError, paramiko.SSHException) as e:
                self._drop_connection()
                raise AgentRunError("transport", f"{self.name}: cannot start the {what}: {e}") from None
        wrapped = [self._python(conn), "-c", _WRAPPER_SRC, pidfile, *argv]
        out, err = bytearray(), bytearray()
        try:
            chan.exec_command(remote_command(wrapped))
            _send_stdin(chan, stdin)
            rc = _collect(chan, time.monotonic() + timeout_s, out, err)
            if rc is None:  # timed out
                self._kill_remote(pidfile)
                try:  # the agent reports on SIGTERM; its last log lines say where it was
                    _collect(chan, time.monotonic() + 5.0, out, err)
                except (OSError, EOFError, paramiko.SSHException):
                    pass  # the link is gone too; the timeout is still what happened
        except (OSError, EOFError, paramiko.SSHException) as e:
            self._drop_connection()
            raise AgentRunError(
                "transport", f"{self.name}: connection lost while the {what} ran: {e}", tail(bytes(err))
            ) from None
        finally:
            chan.close()
        if rc is None:
            raise AgentRunError(
                "timeout", f"{self.name}: the {what} was still running after {timeout_s:g} s; killed",
                tail(bytes(err)),
            )
        self._forget(pidfile)
        return rc, bytes(out), bytes(err)

    def _kill_remote(self, pidfile: str) -> None:
        """Kill the timed-out agent's process group on the device (best effort, logged)."""
        try:
            conn = self._connection()
            self._exec([self._python(conn), "-c", _KILL_SRC, pidfile], timeout_s=30)
        except SSHTransportError as e:
            log.warning("%s: could not kill the timed-out agent: %s", self.name, e)
        self._forget(pidfile)

    def _forget(self, pidfile: str) -> None:
        """Remove a job's pidfile; a leftover one is harmless but untidy."""
        with self._lock:
            if self._conn is not None and self._conn.sftp is not None:
                _try_remove(self._conn.sftp, pidfile)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


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
    return f"{type(e).__name__}: {e}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _send_stdin(chan: paramiko.Channel, data: bytes) -> None:
    """Write ``data`` to the remote stdin, then close it (the agent reads to EOF)."""
    if data:
        chan.sendall(data)
    chan.shutdown_write()


def _collect(chan: paramiko.Channel, deadline: float, out: bytearray, err: bytearray) -> Optional[int]:
    """Append stdout/stderr to ``out``/``err`` until the command exits or ``deadline``.

    Returns the exit code, or None on timeout.  Both streams are read as they
    arrive so that a chatty stderr cannot fill the SSH window and stall the
    remote process.  Raises EOFError when the connection dies.
    """
    while True:
        while chan.recv_ready():
            out += chan.recv(1 << 16)
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(1 << 16)
        if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
            return chan.recv_exit_status()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        transport = chan.get_transport()
        if transport is None or not transport.is_active():
            raise EOFError("SSH connection closed")
        select.select([chan], [], [], min(remaining, 0.1))  # wakes on data; exit-status polls


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
