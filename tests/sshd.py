"""Throwaway OpenSSH servers for tests (real ``sshd``, no mocks).

:func:`start_sshd` runs ``/usr/sbin/sshd -D -e -f <config>`` with its own host
key, its own ``authorized_keys`` holding a freshly generated client key, on a
free port of 127.0.0.1 (or on an address inside a network namespace).  It
returns an :class:`SSHServer` with everything a client needs: host, port,
user, the client key, a known_hosts file with the server's key, and an
ssh_config file with an alias for it.

:func:`netns_lab` builds three network namespaces that only this test run
owns - a "client" and two "devices", chained ``client - dev_a - dev_b`` by
veth pairs - and starts an sshd in each device.  ``dev_b`` is reachable only
*through* ``dev_a`` (no routing between the links), which is exactly the
situation ProxyJump exists for.  Every address lives inside those namespaces;
nothing is added to the host's own network, and the namespaces are deleted
on exit, on failure, and (for crashed earlier runs) on the next start.

The pytest fixtures that use these helpers are in ``tests/conftest.py``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import getpass
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, TypeVar

import pytest

SSHD = "/usr/sbin/sshd"
T = TypeVar("T")


# --------------------------------------------------------------------------
# Availability
# --------------------------------------------------------------------------


def require_sshd() -> str:
    """Path of sshd, or skip the test - except on CI (``CI=true``), where it must fail.

    sshd must be invoked by absolute path (it re-executes itself).
    """
    path = SSHD if os.access(SSHD, os.X_OK) else shutil.which("sshd")
    missing = "OpenSSH server not installed (apt-get install openssh-server)"
    if not path or not os.path.isabs(path):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{missing}; CI=true requires the SSH tests to run")
        pytest.skip(missing)
    if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
    return path


def netns_unavailable_reason() -> Optional[str]:
    """Why namespaces cannot be used here (None when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` unavailable: {probe.stderr.strip()}"
    return None


# --------------------------------------------------------------------------
# One sshd
# --------------------------------------------------------------------------


def make_keypair(path: pathlib.Path, comment: str = "snp-test") -> pathlib.Path:
    """An unencrypted ed25519 key pair at ``path`` / ``path.pub``."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True, stdin=subprocess.DEVNULL,
    )
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class SSHServer:
    """A running test sshd and the client-side files that go with it."""

    host: str
    port: int
    user: str
    client_key: pathlib.Path
    host_key: pathlib.Path
    known_hosts: pathlib.Path
    ssh_config: pathlib.Path
    alias: str
    root: pathlib.Path
    log_path: pathlib.Path
    proc: subprocess.Popen
    netns: Optional[str] = None

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def host_key_line(self) -> str:
        """This server's known_hosts line."""
        keytype, blob = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"{self.known_hosts_name} {keytype} {blob}\n"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the listener *and* every session process under it (a crash or power cut).

        Killing the listener alone would leave running connections alive:
        sshd forks one process per connection into its own session.
        """
        for pid in [self.proc.pid, *_descendants(self.proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def stop(self) -> None:
        """Orderly shutdown at teardown (idempotent)."""
        if self.proc.poll() is None:
            self.kill()


def _descendants(pid: int) -> list[int]:
    """All processes below ``pid``, from /proc (children first seen first)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # "pid (comm) state ppid ..." - comm may contain spaces and parens
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def start_sshd(
    root: pathlib.Path,
    *,
    host: str = "127.0.0.1",
    port: Optional[int] = None,
    netns: Optional[str] = None,
    alias: str = "snp-test-device",
    host_key: Optional[pathlib.Path] = None,
    client_key: Optional[pathlib.Path] = None,
) -> SSHServer:
    """Start an sshd under ``root`` (a fresh directory) and wait until it answers.

    Pass ``host_key``/``client_key`` to reuse keys across servers (e.g. a
    "rebooted" device keeps its host key).
    """
    sshd = require_sshd()
    root.mkdir(parents=True, exist_ok=True)
    if host_key is None:
        host_key = make_keypair(root / "ssh_host_ed25519_key", "snp-test-host")
    if client_key is None:
        client_key = make_keypair(root / "client_key", "snp-test-client")
    if port is None:
        port = run_in_netns(netns, free_port, host)
    user = getpass.getuser()
    authorized = root / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    config = root / "sshd_config"
    config.write_text(
        "\n".join([
            f"Port {port}",
            f"ListenAddress {host}",
            f"HostKey {host_key}",
            f"AuthorizedKeysFile {authorized}",
            f"PidFile {root / 'sshd.pid'}",
            "StrictModes no",  # tmp dirs are not owned/moded the way sshd insists on
            "UsePAM no",
            "PasswordAuthentication no",
            "ChallengeResponseAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            "AllowTcpForwarding yes",  # ProxyJump = direct-tcpip through this server
            "X11Forwarding no",
            "PrintMotd no",
            "UseDNS no",
            "MaxStartups 100",
            "MaxSessions 100",
            "Subsystem sftp internal-sftp",
            "LogLevel ERROR",
            "",
        ])
    )
    log_path = root / "sshd.log"
    cmd = [sshd, "-D", "-e", "-f", str(config)]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
    server = SSHServer(
        host=host, port=port, user=user, client_key=client_key, host_key=host_key,
        known_hosts=root / "known_hosts", ssh_config=root / "ssh_config", alias=alias,
        root=root, log_path=log_path, proc=proc, netns=netns,
    )
    try:
        _wait_for_banner(server)
    except BaseException:
        server.stop()
        raise
    server.known_hosts.write_text(server.host_key_line())
    server.ssh_config.write_text(ssh_config_block(server))
    return server


def ssh_config_block(server: SSHServer, alias: Optional[str] = None, extra: str = "") -> str:
    """An ssh_config ``Host`` stanza for ``server``."""
    return (
        f"Host {alias or server.alias}\n"
        f"    HostName {server.host}\n"
        f"    Port {server.port}\n"
        f"    User {server.user}\n"
        f"    IdentityFile {server.client_key}\n"
        f"    IdentitiesOnly yes\n"
        f"{extra}\n"
    )


def _wait_for_banner(server: SSHServer, timeout_s: float = 10.0) -> None:
    """Wait until the port speaks SSH (or fail with sshd's own log)."""

    def banner() -> bytes:
        with socket.create_connection((server.host, server.port), timeout=1) as s:
            return s.recv(64)

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {server.proc.returncode}:\n{server.log()}")
        try:
            if run_in_netns(server.netns, banner).startswith(b"SSH-"):
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not answer on {server.host}:{server.port} within {timeout_s} s:\n{server.log()}")


# --------------------------------------------------------------------------
# Network namespaces
# --------------------------------------------------------------------------

_CLONE_NEWNET = 0x40000000
NS_PREFIX = "snpt-"


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, _CLONE_NEWNET)  # novermin (guarded by hasattr)
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def run_in_netns(netns: Optional[str], fn: Callable[..., T], *args: object) -> T:
    """Call ``fn(*args)`` with the network namespace ``netns`` (None: the current one).

    The network namespace is per *thread* on Linux, so a short-lived thread
    joins the namespace and runs ``fn``; sockets it creates belong to that
    namespace for their whole life, whichever thread uses them later.  This
    is how the client side of a test talks to the namespaced "devices"
    without giving the host itself any address on their links.
    """
    if netns is None:
        return fn(*args)
    box: dict[str, object] = {}

    def body() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=body, name=f"netns-{netns}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


class NetnsSetupError(RuntimeError):
    """An ``ip`` command failed while building the lab (message has its stderr)."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise NetnsSetupError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


def _delete_netns(name: str) -> None:
    """Kill whatever still runs in namespace ``name`` (a leaked sshd), then delete it."""
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _remove_stale_namespaces() -> None:
    """Delete ``snpt-<pid>-*`` namespaces whose creating test run is gone."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(NS_PREFIX):
            continue
        try:
            pid = int(name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            _delete_netns(name)


@dataclass
class NetnsLab:
    """client -- dev_a -- dev_b, an sshd in each device, port 22, no route client->dev_b."""

    client_ns: str
    dev_a: SSHServer
    dev_b: SSHServer
    known_hosts: pathlib.Path  # both devices' keys
    ssh_config: pathlib.Path   # aliases "dev-a" and "dev-b" (the latter with ProxyJump dev-a)
    namespaces: list[str] = field(default_factory=list)

    def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn`` as a client on the lab network."""
        return run_in_netns(self.client_ns, fn, *args)


@contextlib.contextmanager
def netns_lab(root: pathlib.Path) -> Iterator[NetnsLab]:
    """Build the three-namespace lab, yield it, always tear it down."""
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    require_sshd()
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_namespaces()
    tag = f"{NS_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
    client, dev_a, dev_b = f"{tag}-c", f"{tag}-a", f"{tag}-b"
    created: list[str] = []
    servers: list[SSHServer] = []

    def cleanup() -> None:
        for s in servers:
            s.stop()
        for ns in created:
            _delete_netns(ns)
        servers.clear()
        created.clear()

    atexit.register(cleanup)  # second line of defence if the generator is never closed
    try:
        try:
            for ns in (client, dev_a, dev_b):
                created.append(ns)  # before `add`: deleting a name that never existed is harmless
                _ip("netns", "add", ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            # veth pairs are created inside the namespaces: nothing appears on the host.
            _ip("-n", client, "link", "add", "c0", "type", "veth", "peer", "name", "a0", "netns", dev_a)
            _ip("-n", dev_a, "link", "add", "a1", "type", "veth", "peer", "name", "b0", "netns", dev_b)
            for ns, dev, addr in (
                (client, "c0", "10.231.1.1/24"),
                (dev_a, "a0", "10.231.1.2/24"),
                (dev_a, "a1", "10.231.2.1/24"),
                (dev_b, "b0", "10.231.2.2/24"),
            ):
                _ip("-n", ns, "addr", "add", addr, "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
        except NetnsSetupError as e:  # e.g. a container without CAP_SYS_ADMIN or veth support
            pytest.skip(f"network namespaces unavailable here: {e}")
        client_key = make_keypair(root / "client_key")
        a = start_sshd(root / "dev-a", host="10.231.1.2", port=22, netns=dev_a, alias="dev-a", client_key=client_key)
        servers.append(a)
        b = start_sshd(root / "dev-b", host="10.231.2.2", port=22, netns=dev_b, alias="dev-b", client_key=client_key)
        servers.append(b)
        known_hosts = root / "known_hosts"
        known_hosts.write_text(a.host_key_line() + b.host_key_line())
        ssh_config = root / "ssh_config"
        ssh_config.write_text(ssh_config_block(a) + ssh_config_block(b, extra="    ProxyJump dev-a\n"))
        yield NetnsLab(client, a, b, known_hosts, ssh_config, namespaces=[client, dev_a, dev_b])
    finally:
        cleanup()
        atexit.unregister(cleanup)


# --------------------------------------------------------------------------
# Fault injection (tests/devices/test_ssh_faults.py)
# --------------------------------------------------------------------------


def restart_sshd(server: SSHServer, extra_config: tuple[str, ...] = ()) -> SSHServer:
    """Stop ``server`` (like a crash) and start its sshd again: same port, host key, users.

    ``extra_config`` lines are appended to its sshd_config first (e.g.
    ``SetEnv BASH_ENV=...``).  ``server.proc`` is replaced in place, so
    fixtures that stop ``server`` stop the new process.
    """
    server.kill()
    config = server.root / "sshd_config"
    if extra_config:
        config.write_text(config.read_text() + "\n".join(extra_config) + "\n")
    cmd = [require_sshd(), "-D", "-e", "-f", str(config)]
    if server.netns:
        cmd = ["ip", "netns", "exec", server.netns, *cmd]
    with open(server.log_path, "ab") as log_file:
        server.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
    _wait_for_banner(server)
    return server


@contextlib.contextmanager
def ssh_agent(root: pathlib.Path) -> Iterator[str]:
    """A private ``ssh-agent`` for one test; yields its socket path (for SSH_AUTH_SOCK)."""
    root.mkdir(parents=True, exist_ok=True)
    sock = root / "agent.sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ssh-agent did not start (exit code {proc.poll()})")
            time.sleep(0.02)
        yield str(sock)
    finally:
        proc.kill()
        proc.wait(timeout=5)


def set_link(netns: str, dev: str, up: bool) -> None:
    """``ip -n NETNS link set DEV up|down``: plug or cut a lab cable for real."""
    _ip("-n", netns, "link", "set", dev, "up" if up else "down")


# --------------------------------------------------------------------------
# ssh_config helpers (tests/devices/test_ssh_config.py)
# --------------------------------------------------------------------------

_RELAY_SRC = '''\
"""A ProxyCommand: relay stdin/stdout to HOST:PORT, after writing "HOST PORT USER" to MARKER."""
import os, socket, sys, threading
host, port, user, marker = sys.argv[1:5]
with open(marker, "a") as f:
    f.write(f"{host} {port} {user}\\n")
s = socket.create_connection((host, int(port)), timeout=10)
s.settimeout(None)

def up():
    while True:
        data = os.read(0, 65536)
        if not data:
            s.shutdown(socket.SHUT_WR)
            return
        s.sendall(data)

threading.Thread(target=up, daemon=True).start()
while True:
    data = s.recv(65536)
    if not data:
        break
    os.write(1, data)
'''


def write_tcp_relay(path: pathlib.Path) -> pathlib.Path:
    """A Python ProxyCommand script (``python3 RELAY %h %p %r MARKER``): a real TCP relay, no nc or socat needed."""
    path.write_text(_RELAY_SRC)
    return path


def make_user_certificate(root: pathlib.Path, user: str) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """A user CA, a key that no authorized_keys lists, and the CA's certificate for it.

    Returns (CA public key for ``TrustedUserCAKeys``, private key, certificate).
    The certificate is *not* named ``<key>-cert.pub``, so nothing finds it
    unless CertificateFile names it.
    """
    root.mkdir(parents=True, exist_ok=True)
    ca = make_keypair(root / "user_ca", "snp-test-ca")
    key = make_keypair(root / "cert_key", "snp-test-cert-user")
    subprocess.run(["ssh-keygen", "-q", "-s", str(ca), "-I", "snp-test", "-n", user, "-V", "-5m:+1h",
                    str(key.with_suffix(".pub"))], check=True, stdin=subprocess.DEVNULL)
    cert = root / "user.cert"
    (root / "cert_key-cert.pub").rename(cert)
    return ca.with_suffix(".pub"), key, cert
