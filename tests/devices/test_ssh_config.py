"""SSH host settings resolved the way ``ssh HOST`` does - by OpenSSH itself (``ssh -G``), against real sshds.

Each test writes a small ssh_config and connects (or is refused) through
:class:`devices.ssh.SSHTransport`; every connection goes to a real sshd
(tests/sshd.py).  What is honoured, refused and ignored is the tables in
devices/ssh.py (``HONOURED``, ``REFUSED``, ``IGNORED``).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import time

import paramiko
import pytest
from sshd import SSHServer, free_port, make_user_certificate, restart_sshd, ssh_config_block, write_tcp_relay
from test_ssh_transport import blob

import devices.ssh as ssh_module
from devices.ssh import (
    HONOURED,
    IGNORED,
    REFUSED,
    HostKeyError,
    SSHAuthError,
    SSHConfigError,
    SSHTransport,
)

needs_openssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client (ssh) not installed")


def write_config(tmp_path: pathlib.Path, text: str, name: str = "ssh_config") -> pathlib.Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def via_config(config: pathlib.Path, host: str, tmp_path: pathlib.Path, **overrides: object) -> SSHTransport:
    """A transport that knows only ``host``: everything else comes from ``config`` (or ``overrides``)."""
    kwargs: dict = dict(ssh_config_path=config, workdir=str(tmp_path / "dev"), python=sys.executable,
                        allow_agent=False, look_for_keys=False, connect_timeout=5)
    kwargs.update(overrides)
    return SSHTransport("cfg", host, **kwargs)


def whoami(t: SSHTransport) -> str:
    """Who the device says we are (proves the connection reached the server and logged in)."""
    try:
        return t.run_shell("id -un", timeout_s=20).strip()
    finally:
        t.close()


# --------------------------------------------------------------------------
# honoured
# --------------------------------------------------------------------------


@needs_openssh
def test_include_is_followed(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    # OpenSSH resolves a relative Include against ~/.ssh, so the test names its files absolutely.
    write_config(tmp_path / "conf.d", ssh_config_block(sshd_server, alias="pi"), name="pi.conf")
    config = write_config(tmp_path, f"Include {tmp_path}/conf.d/*.conf\n")
    t = via_config(config, "pi", tmp_path, known_hosts=sshd_server.known_hosts)
    assert (t.target.hostname, t.target.port) == (sshd_server.host, sshd_server.port)
    assert whoami(t) == sshd_server.user


@needs_openssh
def test_proxycommand_carries_the_connection(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    relay = write_tcp_relay(tmp_path / "relay.py")
    marker = tmp_path / "proxy-ran"
    config = write_config(tmp_path, ssh_config_block(
        sshd_server, alias="pi", extra=f"    ProxyCommand {sys.executable} {relay} %h %p %r {marker}\n"))
    t = via_config(config, "pi", tmp_path, known_hosts=sshd_server.known_hosts)
    assert whoami(t) == sshd_server.user
    # The proxy ran, with the tokens expanded as ssh expands them.
    assert marker.read_text() == f"{sshd_server.host} {sshd_server.port} {sshd_server.user}\n"


@needs_openssh
def test_proxycommand_that_dies_is_a_lost_link_and_reconnects_through_it(
    sshd_server: SSHServer, tmp_path: pathlib.Path
) -> None:
    relay = write_tcp_relay(tmp_path / "relay.py")
    marker = tmp_path / "proxy-ran"
    config = write_config(tmp_path, ssh_config_block(
        sshd_server, alias="pi", extra=f"    ProxyCommand {sys.executable} {relay} %h %p %r {marker}\n"))
    t = via_config(config, "pi", tmp_path, known_hosts=sshd_server.known_hosts, reconnect_attempts=1)
    try:
        assert t.run_shell("echo one", timeout_s=20) == "one\n"
        ssh_transport = t._conn.client.get_transport()
        proxy = ssh_transport.sock
        proxy.process.kill()  # the relay dies: its output ends, which must read as a lost link
        proxy.process.wait(timeout=5)
        deadline = time.monotonic() + 10
        while ssh_transport.is_active() and time.monotonic() < deadline:  # paramiko's own busy-waits forever
            time.sleep(0.05)
        assert not ssh_transport.is_active()
        assert t.run_shell("echo two", timeout_s=20) == "two\n"  # a new connection, through a new relay
        assert len(marker.read_text().splitlines()) == 2
    finally:
        t.close()


@needs_openssh
def test_proxycommand_that_fails_says_so(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    config = write_config(tmp_path, ssh_config_block(sshd_server, alias="pi", extra="    ProxyCommand exit 3\n"))
    t = via_config(config, "pi", tmp_path, known_hosts=sshd_server.known_hosts)
    with pytest.raises(ssh_module.SSHConnectError, match="via ProxyCommand 'exit 3'"):
        t.device_workdir()


@needs_openssh
def test_wildcard_host_block(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    config = write_config(tmp_path, (
        "Host dev-*\n"
        f"    Port {sshd_server.port}\n"
        f"    User {sshd_server.user}\n"
        f"    IdentityFile {sshd_server.client_key}\n"
        "    IdentitiesOnly yes\n"
        "Host dev-1\n"
        f"    HostName {sshd_server.host}\n"
    ))
    t = via_config(config, "dev-1", tmp_path, known_hosts=sshd_server.known_hosts)
    assert t.target.identity_files == (str(sshd_server.client_key),)
    assert whoami(t) == sshd_server.user


@needs_openssh
def test_device_settings_win_over_the_ssh_config(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    closed = free_port()
    config = write_config(tmp_path, (
        "Host pi\n"
        f"    HostName {sshd_server.host}\n"
        f"    Port {closed}\n"
        "    User nobody-here\n"
        f"    IdentityFile {sshd_server.client_key}\n"
    ))
    t = via_config(config, "pi", tmp_path, known_hosts=sshd_server.known_hosts,
                   port=sshd_server.port, user=sshd_server.user)
    assert (t.target.port, t.target.user) == (sshd_server.port, sshd_server.user)
    assert whoami(t) == sshd_server.user
    with pytest.raises(ssh_module.SSHConnectError, match=f"nobody-here@{sshd_server.host}:{closed}"):
        via_config(config, "pi", tmp_path, known_hosts=sshd_server.known_hosts).device_workdir()


@needs_openssh
def test_connect_timeout_is_a_default_under_the_devices_own(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    config = write_config(tmp_path, ssh_config_block(sshd_server, alias="pi", extra="    ConnectTimeout 3\n"))
    assert via_config(config, "pi", tmp_path, connect_timeout=None).connect_timeout == 3
    assert via_config(config, "pi", tmp_path, connect_timeout=7).connect_timeout == 7
    plain = write_config(tmp_path, ssh_config_block(sshd_server, alias="pi"), name="plain")
    assert via_config(plain, "pi", tmp_path, connect_timeout=None).connect_timeout == ssh_module.DEFAULT_CONNECT_TIMEOUT_S


@needs_openssh
def test_user_known_hosts_files_are_all_read(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    first, second, device_own = tmp_path / "kh1", tmp_path / "kh2", tmp_path / "device_kh"
    first.write_text("")
    second.write_text(sshd_server.host_key_line())
    device_own.write_text("")
    config = write_config(tmp_path, ssh_config_block(
        sshd_server, alias="pi", extra=f"    UserKnownHostsFile {first} {second}\n"))
    assert whoami(via_config(config, "pi", tmp_path)) == sshd_server.user
    # The device's own known_hosts wins over the ssh config's files.
    with pytest.raises(HostKeyError, match=f"is not in {device_own}"):
        via_config(config, "pi", tmp_path, known_hosts=device_own).device_workdir()


@needs_openssh
def test_host_key_alias_names_the_key(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    keytype, b64 = sshd_server.host_key.with_suffix(".pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"pi-hostkey {keytype} {b64}\n")  # only under the alias, not under [127.0.0.1]:port
    config = write_config(tmp_path, ssh_config_block(sshd_server, alias="pi", extra="    HostKeyAlias pi-hostkey\n"))
    assert whoami(via_config(config, "pi", tmp_path, known_hosts=known)) == sshd_server.user
    plain = write_config(tmp_path, ssh_config_block(sshd_server, alias="pi"), name="plain")
    with pytest.raises(HostKeyError, match="unknown host key"):
        via_config(plain, "pi", tmp_path, known_hosts=known).device_workdir()


@needs_openssh
def test_accept_new_needs_trust_and_writes_hashed_to_the_first_file(
    sshd_server: SSHServer, tmp_path: pathlib.Path
) -> None:
    first, second = tmp_path / "kh1", tmp_path / "kh2"
    config = write_config(tmp_path, ssh_config_block(sshd_server, alias="pi", extra=(
        f"    UserKnownHostsFile {first} {second}\n"
        "    StrictHostKeyChecking accept-new\n"
        "    HashKnownHosts yes\n")))
    with pytest.raises(HostKeyError, match="StrictHostKeyChecking accept-new") as info:
        via_config(config, "pi", tmp_path).device_workdir()
    assert "--trust-new-hosts" in str(info.value) and not first.exists()
    assert whoami(via_config(config, "pi", tmp_path, trust_new_hosts=True)) == sshd_server.user
    line = first.read_text()
    assert line.startswith("|1|") and sshd_server.host not in line  # HashKnownHosts
    assert not second.exists()
    hashed = paramiko.HostKeys(str(first))
    assert hashed.lookup(sshd_server.known_hosts_name) is not None
    assert whoami(via_config(config, "pi", tmp_path)) == sshd_server.user  # now known: no trust needed


@needs_openssh
@pytest.mark.parametrize("identities_only", ["yes", "no"])
def test_certificate_file_is_used(sshd_factory, tmp_path: pathlib.Path, identities_only: str) -> None:
    server = sshd_factory()
    ca, key, cert = make_user_certificate(tmp_path / "ca", server.user)
    restart_sshd(server, (f"TrustedUserCAKeys {ca}",))
    block = (f"Host pi\n    HostName {server.host}\n    Port {server.port}\n    User {server.user}\n"
             f"    IdentityFile {key}\n    IdentitiesOnly {identities_only}\n")
    with_cert = write_config(tmp_path, block + f"    CertificateFile {cert}\n")
    assert whoami(via_config(with_cert, "pi", tmp_path, known_hosts=server.known_hosts)) == server.user
    # The key alone is in no authorized_keys: without the certificate the server says no.
    without = write_config(tmp_path, block, name="no_cert")
    with pytest.raises(SSHAuthError):
        via_config(without, "pi", tmp_path, known_hosts=server.known_hosts).device_workdir()


@needs_openssh
def test_ignored_directives_and_spelled_out_defaults_connect(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    config = write_config(tmp_path, ssh_config_block(sshd_server, alias="pi", extra=(
        "    ControlMaster auto\n"
        f"    ControlPath {tmp_path}/cm-%r@%h:%p\n"
        "    GSSAPIAuthentication yes\n"
        "    ForwardAgent yes\n"
        "    SendEnv LANG LC_*\n"
        "    AddressFamily any\n"
        "    RequestTTY auto\n"
        "    StrictHostKeyChecking yes\n")))
    assert whoami(via_config(config, "pi", tmp_path, known_hosts=sshd_server.known_hosts)) == sshd_server.user


@needs_openssh
def test_first_of_proxyjump_and_proxycommand_wins(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    command_first = write_config(tmp_path, "Host a\n    ProxyCommand true %h\n    ProxyJump j\n", name="c1")
    jump_first = write_config(tmp_path, "Host a\n    ProxyJump j\n    ProxyCommand true %h\n", name="c2")
    t = via_config(command_first, "a", tmp_path)
    assert (t.target.proxy_command, t.target.proxy_jump) == ("true a", ())
    t = via_config(jump_first, "a", tmp_path)
    assert (t.target.proxy_command, t.target.proxy_jump) == (None, ("j",))


# --------------------------------------------------------------------------
# refused by name
# --------------------------------------------------------------------------


@needs_openssh
@pytest.mark.parametrize("lines, named", [
    ("BindAddress 127.0.0.1", "BindAddress 127.0.0.1"),
    ("AddressFamily inet", "AddressFamily inet"),
    ("RemoteCommand ls", "RemoteCommand ls"),
    ("Tunnel yes", "Tunnel point-to-point"),
    ("KnownHostsCommand /bin/true", "KnownHostsCommand /bin/true"),
    ("PermitLocalCommand yes\n    LocalCommand touch /tmp/x", "PermitLocalCommand yes"),
    ("Ciphers aes128-ctr", "Ciphers aes128-ctr"),
    ("IdentityAgent /nonexistent/agent.sock", "IdentityAgent /nonexistent/agent.sock"),
    ("StrictHostKeyChecking no", "StrictHostKeyChecking false"),
    ("StrictHostKeyChecking off", "StrictHostKeyChecking false"),
])
def test_unsupported_directive_is_refused_by_name(
    sshd_server: SSHServer, tmp_path: pathlib.Path, lines: str, named: str
) -> None:
    config = write_config(tmp_path, ssh_config_block(sshd_server, alias="pi", extra=f"    {lines}\n"))
    with pytest.raises(SSHConfigError) as info:
        via_config(config, "pi", tmp_path, known_hosts=sshd_server.known_hosts)
    message = str(info.value)
    assert named in message and "Host pi" in message and str(config) in message
    assert "\n" not in message


@needs_openssh
def test_unsupported_token_is_refused(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    config = write_config(tmp_path, ssh_config_block(sshd_server, alias="pi", extra="    ProxyCommand nc %d %h\n"))
    with pytest.raises(SSHConfigError, match="ProxyCommand nc %d %h: token %d is not supported"):
        via_config(config, "pi", tmp_path)


@needs_openssh
def test_broken_config_is_one_line_naming_the_file(tmp_path: pathlib.Path) -> None:
    config = write_config(tmp_path, "Host pi\n    Bogus 1\n")
    with pytest.raises(SSHConfigError) as info:
        via_config(config, "pi", tmp_path)
    message = str(info.value)
    assert str(config) in message and "Bad configuration option: bogus" in message and "\n" not in message


@needs_openssh
def test_every_directive_ssh_prints_is_classified(tmp_path: pathlib.Path) -> None:
    """A directive OpenSSH prints that the tables do not know would be refused whenever a config sets it."""
    out = subprocess.run(["ssh", "-G", "-F", os.devnull, "somehost"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, check=True).stdout
    keys = {line.split(" ", 1)[0].lower() for line in out.splitlines() if line}
    assert keys - HONOURED - set(REFUSED) - set(IGNORED) == set()
    assert not (HONOURED & set(REFUSED)) and not (HONOURED & set(IGNORED)) and not (set(REFUSED) & set(IGNORED))


# --------------------------------------------------------------------------
# without an ssh binary: paramiko's parser, never silently different
# --------------------------------------------------------------------------


@pytest.fixture
def no_ssh_binary(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert ssh_module.find_ssh() is None


@pytest.mark.parametrize("line", ["Include /etc/ssh/ssh_config.d/*.conf", "Match host pi"])
def test_fallback_refuses_include_and_match(
    sshd_server: SSHServer, tmp_path: pathlib.Path, no_ssh_binary: None, line: str
) -> None:
    config = write_config(tmp_path, ssh_config_block(sshd_server, alias="pi") + line + "\n")
    with pytest.raises(SSHConfigError) as info:
        via_config(config, "pi", tmp_path)
    word = line.split()[0]
    assert f"install the OpenSSH client (ssh) to use {word}" in str(info.value) and str(config) in str(info.value)


def test_fallback_resolves_and_refuses_like_ssh(
    sshd_server: SSHServer, tmp_path: pathlib.Path, no_ssh_binary: None
) -> None:
    config = write_config(tmp_path, ssh_config_block(sshd_server, alias="pi"))
    assert whoami(via_config(config, "pi", tmp_path, known_hosts=sshd_server.known_hosts)) == sshd_server.user
    bad = write_config(tmp_path, ssh_config_block(sshd_server, alias="pi", extra="    BindAddress 127.0.0.1\n"),
                       name="bad")
    with pytest.raises(SSHConfigError, match=r"Host pi: BindAddress 127\.0\.0\.1 is not supported"):
        via_config(bad, "pi", tmp_path)
    both = write_config(tmp_path, "Host a\n    ProxyJump j\n    ProxyCommand true\n", name="both")
    with pytest.raises(SSHConfigError, match="both ProxyJump and ProxyCommand"):
        via_config(both, "a", tmp_path)


# --------------------------------------------------------------------------
# upload progress
# --------------------------------------------------------------------------


def test_upload_reports_progress(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    src, sha = blob(tmp_path, 300_000)
    config = write_config(tmp_path, ssh_config_block(sshd_server, alias="pi"))
    calls: list[tuple[int, int]] = []
    t = via_config(config, "pi", tmp_path, known_hosts=sshd_server.known_hosts)
    try:
        t.ensure_blob(src, sha, progress=lambda done, total: calls.append((done, total)))
        assert calls[0] == (0, 300_000) and calls[-1] == (300_000, 300_000)
        assert [d for d, _ in calls] == sorted(d for d, _ in calls) and len(calls) > 2
        calls.clear()
        t.ensure_blob(src, sha, progress=lambda done, total: calls.append((done, total)))
        assert calls == [(300_000, 300_000)]  # already there: done at once
    finally:
        t.close()
