"""Device-lab faults against real OpenSSH servers: cut links, reboots, hangs, banners, full disks.

Every fault is real: a veth cable of the network-namespace lab is cut with
``ip link set DEV down``, an sshd is killed and started again on its port,
the device python is a script that hangs, a tmpfs fills up, a read-only
mount refuses writes, a real ``ssh-agent`` holds a key whose file is
encrypted.  Timeouts in these configs are small so each test takes seconds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Iterator

import paramiko
import pytest
from sshd import NetnsLab, SSHServer, make_keypair, restart_sshd, set_link, ssh_agent, ssh_config_block
from test_ssh_transport import blob, dead, sha256_of, stub_agent, transport

from devices.config import DeviceConfigError, open_transport, parse_device
from formats.schema import show
from devices.ssh import BlobUploadError, SSHAuthError, SSHTransport, SSHTransportError, WorkdirError

DEV_A_LINK = "a0"  # dev-a's end of the client <-> dev-a cable


def lab_transport(lab: NetnsLab, workdir: pathlib.Path, **overrides: object) -> SSHTransport:
    """A transport to the lab's dev-a with short deadlines (it must be used inside ``lab.run``)."""
    kwargs: dict = dict(ssh_config_path=lab.ssh_config, known_hosts=lab.known_hosts, workdir=str(workdir),
                        python=sys.executable, allow_agent=False, look_for_keys=False, connect_timeout=2,
                        stall_timeout_s=2, keepalive_s=0.5, reconnect_attempts=1, reconnect_backoff_max_s=1)
    kwargs.update(overrides)
    return SSHTransport("dev-a", "dev-a", **kwargs)


@contextlib.contextmanager
def cut_when(lab: NetnsLab, ready: Callable[[], bool]) -> Iterator[threading.Event]:
    """Cut dev-a's cable as soon as ``ready()`` is true; always plug it back in on exit."""
    cut = threading.Event()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if ready():
                set_link(lab.namespaces[1], DEV_A_LINK, up=False)
                cut.set()
                return
            time.sleep(0.002)

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        yield cut
    finally:
        stop.set()
        thread.join()
        set_link(lab.namespaces[1], DEV_A_LINK, up=True)
        _wait_for(_reachable(lab.dev_a), 20)  # neighbour discovery may need a moment after the cable is back


def _reachable(server: SSHServer) -> Callable[[], bool]:
    """Does ``server`` accept TCP connections from here (call in the client namespace)?"""
    def probe() -> bool:
        try:
            socket.create_connection((server.host, server.port), timeout=1).close()
            return True
        except OSError:
            return False
    return probe


def temp_bigger_than(blobs: pathlib.Path, size: int) -> Callable[[], bool]:
    def ready() -> bool:
        temps = list(blobs.glob(".tmp-*")) if blobs.exists() else []
        return bool(temps) and temps[0].stat().st_size > size
    return ready


# --------------------------------------------------------------------------
# 1. uploads have a deadline and say what happened
# --------------------------------------------------------------------------


def test_upload_through_a_cut_link_stalls_with_a_reason(netns_devices: NetnsLab, tmp_path: pathlib.Path) -> None:
    lab = netns_devices
    src, sha = blob(tmp_path, 48 << 20, name="big.onnx")
    blobs = tmp_path / "dev-a" / "blobs"

    def scenario() -> tuple[str, float]:
        t = lab_transport(lab, tmp_path / "dev-a", keepalive_s=10)  # the stall timeout must be what fires
        start = time.monotonic()
        try:
            with cut_when(lab, temp_bigger_than(blobs, 4 << 20)) as cut, pytest.raises(BlobUploadError) as info:
                t.ensure_blob(src, sha)
            assert cut.is_set()
            return str(info.value), time.monotonic() - start
        finally:
            t.close()

    message, elapsed = lab.run(scenario)
    assert re.search(r"uploading big\.onnx \(\w{12}\) failed: upload stalled after \d+\.\d MB of 50\.3 MB: "
                     r"no progress for 2 s; reconnecting failed: .*gave up after 2 attempts", message), message
    assert elapsed < 60  # bounded by the config, not by TCP's ~930 s retry limit
    assert not (blobs / sha).exists()


# --------------------------------------------------------------------------
# 2. a dead link during measurement is noticed within a few keepalives
# --------------------------------------------------------------------------


SLEEPER = """\
job = json.loads(sys.stdin.readline())
with open(job['started'], 'a') as f:
    f.write('%d\\n' % os.getpid())
time.sleep(job['sleep'])
print(json.dumps({'status': 'ok', 'job_id': job['job_id']}))
"""


def test_link_cut_during_measurement_is_noticed_and_the_next_job_reconnects(
    netns_devices: NetnsLab, tmp_path: pathlib.Path
) -> None:
    lab = netns_devices
    started = tmp_path / "started"
    stub = stub_agent(tmp_path, "sleeper", SLEEPER)

    def scenario() -> tuple[dict, dict]:
        t = lab_transport(lab, tmp_path / "dev-a", agent_source=stub)
        try:
            t.ensure_agent()
            with cut_when(lab, started.exists):
                cut = t.run_agent({"job_id": "cut", "started": str(started), "sleep": 60}, timeout_s=120)
            after = t.run_agent({"job_id": "next", "started": str(started), "sleep": 0}, timeout_s=60)
            return cut, after
        finally:
            t.close()

    cut, after = lab.run(scenario)
    assert cut["status"] == "error" and cut["error"]["stage"] == "transport", cut
    assert re.fullmatch(r"dev-a: connection to 10\.231\.1\.2 lost during measurement \(no answer for \d+ s\)",
                        cut["error"]["message"]), cut["error"]["message"]
    assert cut["transport"]["wall_s"] < 30  # a few 0.5 s keepalives, not timeout_s + grace
    assert after["status"] == "ok" and after["job_id"] == "next", after
    first, second = (int(p) for p in started.read_text().split())  # the cut run was not re-run
    assert dead(first), "the run cut off by the lost link was not killed after the reconnect"


# --------------------------------------------------------------------------
# 3. stdin is the agent's cancel signal; the kill does not need the device python
# --------------------------------------------------------------------------


WATCHER = """\
line = sys.stdin.buffer.readline()  # the job is one line; watch_stdin: EOF afterwards means stop
job = json.loads(line)
with open(job['seen'], 'w') as f:
    json.dump({'one_line': line.endswith(b'\\n') and line.count(b'\\n') == 1,
               'watch_stdin': job.get('watch_stdin')}, f)
rest = sys.stdin.buffer.read()
with open(job['seen'] + '.eof', 'w') as f:
    f.write('stopped cleanly at EOF; %d more bytes' % len(rest))
print(json.dumps({'status': 'error', 'job_id': job['job_id'], 'error': {'stage': 'measure', 'message': 'stdin closed'}}))
"""


def test_timeout_closes_stdin_first_and_the_agent_stops_by_itself(
    sshd_server: SSHServer, tmp_path: pathlib.Path
) -> None:
    seen = tmp_path / "seen"
    t = transport(sshd_server, tmp_path / "dev", agent_source=stub_agent(tmp_path, "watcher", WATCHER))
    try:
        result = t.run_agent({"job_id": 3, "seen": str(seen)}, timeout_s=1)
    finally:
        t.close()
    assert result["status"] == "error" and result["error"]["stage"] == "timeout", result
    assert result["error"]["message"].endswith("still running after 1 s; it stopped when its input was closed")
    assert json.loads(seen.read_text()) == {"one_line": True, "watch_stdin": True}
    assert seen.with_suffix(".eof").read_text() == "stopped cleanly at EOF; 0 more bytes"
    assert not list((tmp_path / "dev" / "run").iterdir())  # pidfile removed, nothing left to kill


def test_close_during_a_run_closes_the_agents_stdin(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    seen = tmp_path / "seen"
    t = transport(sshd_server, tmp_path / "dev", agent_source=stub_agent(tmp_path, "watcher", WATCHER))
    t.ensure_agent()
    closer = threading.Timer(1.0, t.close)
    closer.start()
    result = t.run_agent({"job_id": 4, "seen": str(seen)}, timeout_s=60)
    closer.join()
    assert result["error"]["message"] == "test-device: the transport was closed during measurement", result
    deadline = time.monotonic() + 10
    while not seen.with_suffix(".eof").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen.with_suffix(".eof").exists(), "the agent did not see EOF when the transport closed"


def test_hanging_device_python_is_killed_without_python(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    marker = f"hang-{secrets.token_hex(6)}"
    home = tmp_path / marker
    home.mkdir()
    (home / "sleep").symlink_to(shutil.which("sleep"))  # so that pgrep -f finds the child too
    python = home / "python"
    python.write_text(f"#!/bin/sh\n'{home}/sleep' 1000\n")
    python.chmod(0o755)
    t = transport(sshd_server, tmp_path / "dev", python=str(python))
    try:
        result = t.run_agent({"job_id": 5}, timeout_s=2)
    finally:
        t.close()
    assert result["error"]["stage"] == "timeout", result
    assert result["error"]["message"].endswith("was still running after 2 s; killed"), result["error"]
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    assert left.returncode == 1 and left.stdout == "", f"processes left on the device: {left.stdout}"


def test_kill_that_cannot_be_confirmed_is_not_called_killed(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    """A run whose PID file is gone (never written, removed by hand) cannot be confirmed dead."""
    stub = stub_agent(tmp_path, "unlinker", (
        "job = json.load(sys.stdin)\n"
        "for name in os.listdir(job['run']):\n"
        "    os.remove(os.path.join(job['run'], name))\n"
        "open(job['pid'], 'w').write(str(os.getpid()))\n"
        "time.sleep(30)\n"
    ))
    pid = tmp_path / "pid"
    t = transport(sshd_server, tmp_path / "dev", agent_source=stub)
    try:
        result = t.run_agent({"job_id": 6, "run": str(tmp_path / "dev" / "run"), "pid": str(pid)}, timeout_s=2)
    finally:
        t.close()
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid.read_text()), 9)  # what the transport could not do
    message = result["error"]["message"]
    assert result["error"]["stage"] == "timeout" and "killed" not in message.replace("not confirmed", ""), message
    assert "the kill was not confirmed (no PID file" in message and "processes may be left" in message


# --------------------------------------------------------------------------
# 4. a login banner changes nothing
# --------------------------------------------------------------------------


def test_login_shell_banner_is_ignored(sshd_factory, tmp_path: pathlib.Path) -> None:
    if not _login_shell_is_bash():
        pytest.skip("the test user's login shell is not bash (this test adds a banner with ~/.bashrc)")
    home = tmp_path / "home"  # a ~/.bashrc that prints, without touching the real one
    home.mkdir()
    (home / ".bashrc").write_text("echo 'Welcome to the lab Pi 0123456789abcdef'\necho 'last login: never' >&2\n")
    server = restart_sshd(sshd_factory(), extra_config=(f"SetEnv HOME={home}",))
    # The banner is really there for a plain SSH command ...
    client = paramiko.SSHClient()
    client.load_host_keys(str(server.known_hosts))
    client.connect(server.host, server.port, server.user, key_filename=str(server.client_key),
                   allow_agent=False, look_for_keys=False)
    _, out, err = client.exec_command("echo hi")
    assert out.read().startswith(b"Welcome") and err.read().startswith(b"last login")
    client.close()
    # ... and the transport sees none of it.
    echo = stub_agent(tmp_path, "echo", "job = json.loads(sys.stdin.readline())\n"
                                        "print(json.dumps({'status': 'ok', 'job_id': job['job_id']}))\n")
    src, sha = blob(tmp_path, 100_000)
    for attempt in ("upload", "re-hash in a fresh session"):
        t = transport(server, tmp_path / "dev", agent_source=echo)
        try:
            assert t.ensure_blob(src, sha) == str(tmp_path / "dev" / "blobs" / sha), attempt
            result = t.run_agent({"job_id": "b"}, timeout_s=30)
            assert result["status"] == "ok" and result["transport"]["stderr_tail"] == "", result
            assert t.run_shell("echo one; echo two >&2", timeout_s=30) == "one\n"
        finally:
            t.close()


def _login_shell_is_bash() -> bool:
    import pwd

    return os.path.basename(pwd.getpwuid(os.getuid()).pw_shell) == "bash"


# --------------------------------------------------------------------------
# 5. reconnect with backoff
# --------------------------------------------------------------------------


def test_device_that_reboots_for_3_s_resumes(sshd_factory, tmp_path: pathlib.Path) -> None:
    server = sshd_factory()
    started = tmp_path / "started"
    t = transport(server, tmp_path / "dev", agent_source=stub_agent(tmp_path, "sleeper", SLEEPER),
                  reconnect_attempts=4, reconnect_backoff_max_s=2, keepalive_s=1)
    a, sha_a = blob(tmp_path, name="a")
    b, sha_b = blob(tmp_path, 1 << 20, name="b")
    try:
        t.ensure_blob(a, sha_a)
        # A run cut by the reboot is reported, not re-run.
        rebooter = threading.Thread(target=lambda: (_wait_for(started.exists), server.kill(), time.sleep(3),
                                                    restart_sshd(server)))
        rebooter.start()
        cut = t.run_agent({"job_id": "cut", "started": str(started), "sleep": 30}, timeout_s=60)
        assert cut["error"]["stage"] == "transport" and "lost during measurement" in cut["error"]["message"]
        # The next operations wait for the device with backoff, then go on.
        assert t.ensure_blob(b, sha_b) == str(tmp_path / "dev" / "blobs" / sha_b)
        rebooter.join()
        result = t.run_agent({"job_id": "next", "started": str(started), "sleep": 0}, timeout_s=60)
        assert result["status"] == "ok", result
    finally:
        t.close()
    assert sha256_of(tmp_path / "dev" / "blobs" / sha_b) == sha_b
    assert len(started.read_text().split()) == 2  # "cut" ran once, "next" once


def test_upload_cut_by_a_reboot_resumes_where_it_stopped(
    sshd_factory, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = sshd_factory()
    src, sha = blob(tmp_path, 32 << 20, name="big.bin")
    blobs = tmp_path / "dev" / "blobs"
    t = transport(server, tmp_path / "dev", reconnect_attempts=4, reconnect_backoff_max_s=2)

    def reboot() -> None:
        _wait_for(temp_bigger_than(blobs, 4 << 20), 30)
        server.kill()
        time.sleep(1)
        restart_sshd(server)

    rebooter = threading.Thread(target=reboot)
    rebooter.start()
    try:
        with caplog.at_level(logging.INFO, logger="devices.ssh"):
            assert t.ensure_blob(src, sha) == str(blobs / sha)
    finally:
        rebooter.join()
        t.close()
    resumed = [int(m.group(1)) for r in caplog.records if (m := re.search(r"resuming big\.bin at byte (\d+)",
                                                                          r.getMessage()))]
    assert len(resumed) == 1 and resumed[0] > 0, [r.getMessage() for r in caplog.records]
    assert sha256_of(blobs / sha) == sha
    assert t.bytes_uploaded <= 2 * src.stat().st_size - resumed[0]
    assert not list(blobs.glob(".tmp-*"))


def _wait_for(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.005)


# --------------------------------------------------------------------------
# 6. IdentitiesOnly with an encrypted key held by ssh-agent
# --------------------------------------------------------------------------


def test_identities_only_uses_the_agent_for_an_encrypted_identity_file(
    sshd_factory, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = make_keypair(tmp_path / "id_lab")
    server = sshd_factory(client_key=key)
    other = make_keypair(tmp_path / "id_other")  # in the agent too, but not an IdentityFile: never offered
    config = tmp_path / "ssh_config"
    config.write_text(ssh_config_block(server))  # IdentityFile id_lab + IdentitiesOnly yes
    src, sha = blob(tmp_path)

    def connect() -> SSHTransport:
        t = SSHTransport("lab", server.alias, ssh_config_path=config, known_hosts=server.known_hosts,
                         workdir=str(tmp_path / "dev"), allow_agent=True, look_for_keys=False, connect_timeout=5)
        try:
            t.ensure_blob(src, sha)
        finally:
            t.close()
        return t

    with ssh_agent(tmp_path / "agent") as sock:
        monkeypatch.setenv("SSH_AUTH_SOCK", sock)
        for k in (other, key):
            subprocess.run(["ssh-add", "-q", str(k)], check=True, capture_output=True)
        # Now the file on disk gets a passphrase: only the agent can use the key.
        subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", secrets.token_hex(8), "-f", str(key)],
                       check=True, capture_output=True)
        with pytest.raises((paramiko.PasswordRequiredException, TypeError), match="(?i)password|encrypted"):
            paramiko.PKey.from_path(str(key))  # (cryptography says so with a TypeError)
        connect()
        key.with_suffix(".pub").rename(tmp_path / "moved.pub")  # the public half comes from the private file
        connect()
        subprocess.run(["ssh-add", "-D"], check=True, capture_output=True)
        with pytest.raises(SSHAuthError) as info:
            connect()
    message = str(info.value)
    assert f"{key} (passphrase-protected and not loaded in ssh-agent: run `ssh-add {key}`)" in message
    assert "IdentitiesOnly; ssh-agent: 0 key(s)" in message and "Private key file is encrypted" not in message


# --------------------------------------------------------------------------
# 7. disk full and read-only workdirs say so
# --------------------------------------------------------------------------


@pytest.fixture
def mount(tmp_path: pathlib.Path) -> Iterator[Callable[..., pathlib.Path]]:
    """Mount a small tmpfs (root only); unmounted at teardown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[pathlib.Path] = []

    def make(options: str) -> pathlib.Path:
        path = tmp_path / f"mnt{len(mounted)}"
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield make
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_disk_full_says_how_much_is_needed_and_free(sshd_server: SSHServer, tmp_path: pathlib.Path, mount) -> None:
    small = mount("size=2m")
    src, sha = blob(tmp_path, 3 << 20)
    t = transport(sshd_server, small / "work")
    try:
        with pytest.raises(BlobUploadError) as info:
            t.ensure_blob(src, sha)
    finally:
        t.close()
    assert re.search(rf"failed: no space left on test-device:{small}/work/blobs \(3\.1 MB needed, 2\.\d MB free\)$",
                     str(info.value)), str(info.value)
    assert not list((small / "work" / "blobs").iterdir())


def test_disk_filling_up_during_the_upload(sshd_server: SSHServer, tmp_path: pathlib.Path, mount) -> None:
    small = mount("size=8m")
    blobs = small / "work" / "blobs"
    src, sha = blob(tmp_path, 6 << 20)

    def fill() -> None:  # someone else fills the disk once our upload has begun
        _wait_for(lambda: blobs.exists() and any(blobs.glob(".tmp-*")), 30)
        with contextlib.suppress(OSError), open(small / "filler", "wb") as f:
            f.write(b"\0" * (8 << 20))

    filler = threading.Thread(target=fill)
    filler.start()
    t = transport(sshd_server, small / "work")
    try:
        with pytest.raises(BlobUploadError) as info:
            t.ensure_blob(src, sha)
    finally:
        filler.join()
        t.close()
    assert re.search(rf"failed: no space left on test-device:{blobs} \(\d+\.\d MB more needed, 0\.0 MB free\)$",
                     str(info.value)), str(info.value)
    assert not list(blobs.glob(".tmp-*"))  # the useless partial was removed


@pytest.mark.parametrize("inside", [False, True])
def test_read_only_workdir_says_not_writable(
    sshd_server: SSHServer, tmp_path: pathlib.Path, mount, inside: bool
) -> None:
    read_only = mount("size=1m,ro")
    workdir = read_only / "work" if inside else read_only
    src, sha = blob(tmp_path)
    t = transport(sshd_server, workdir)
    try:
        with pytest.raises(WorkdirError) as info:
            t.ensure_blob(src, sha)
        result = t.run_agent({"job_id": 8}, timeout_s=30)
    finally:
        t.close()
    expected = f"test-device: workdir {workdir} is not writable ({read_only} is read-only or not writable by "
    assert str(info.value).startswith(expected), str(info.value)
    assert result["error"]["message"].startswith(expected) and "Errno" not in result["error"]["message"]


# --------------------------------------------------------------------------
# 8. resumable uploads; secrets in device configs
# --------------------------------------------------------------------------


@pytest.mark.parametrize("prefix_ok", [True, False])
def test_partial_upload_of_an_earlier_run_is_resumed_only_if_its_prefix_hashes_right(
    sshd_server: SSHServer, tmp_path: pathlib.Path, prefix_ok: bool
) -> None:
    src, sha = blob(tmp_path, 4 << 20)
    blobs = tmp_path / "dev" / "blobs"
    blobs.mkdir(parents=True)
    partial = blobs / f".tmp-{sha}-earlierrun"
    have = 1536 << 10
    partial.write_bytes(src.read_bytes()[:have] if prefix_ok else os.urandom(have))
    idle = time.time() - 300  # idle for 5 min: its uploader is gone (but it is not abandoned yet)
    os.utime(partial, (idle, idle))
    t = transport(sshd_server, tmp_path / "dev")
    try:
        assert t.ensure_blob(src, sha) == str(blobs / sha)
    finally:
        t.close()
    assert sha256_of(blobs / sha) == sha
    assert t.bytes_uploaded == src.stat().st_size - (have if prefix_ok else 0)
    assert not list(blobs.glob(".tmp-*"))  # resumed (renamed into place) or removed


def test_secret_nested_in_runtime_options_is_refused() -> None:
    table = {"kind": "ssh", "host": "pi",
             "runtimes": {"onnxruntime": {"providers": ["CPUExecutionProvider"], "extra": {"api_token": "x"}}}}
    with pytest.raises(DeviceConfigError, match=r"\[devices\.pi\] runtimes\.onnxruntime\.extra\.api_token: "
                                                r"passwords are not accepted here"):
        parse_device("pi", table)
    with pytest.raises(DeviceConfigError, match="labels.vault_password"):
        parse_device("pi", {"kind": "ssh", "host": "pi", "labels": {"vault_password": "x"}})
    parse_device("pi", {"kind": "ssh", "host": "pi", "runtimes": {"onnxruntime": {"threads": 4}}})  # no false alarm


def test_deadline_keys_are_validated_and_reach_the_transport() -> None:
    spec = parse_device("pi", {"kind": "ssh", "host": "pi", "stall_timeout_s": 5, "keepalive_s": 2.5,
                               "reconnect_attempts": 0, "reconnect_backoff_max_s": 8, "connect_timeout": 3})
    t = open_transport(spec)
    assert (t.stall_timeout_s, t._keepalive_s, t.reconnect_attempts, t.reconnect_backoff_max_s,
            t.connect_timeout) == (5.0, 2.5, 0, 8.0, 3.0)
    defaults = parse_device("pi", {"kind": "ssh", "host": "pi"})
    assert (defaults.stall_timeout_s, defaults.keepalive_s, defaults.reconnect_attempts,
            defaults.reconnect_backoff_max_s, defaults.connect_timeout) == (60.0, 15.0, 3, 30.0, None)
    # no connect_timeout of the device's own: the ssh config's ConnectTimeout decides (tests/devices/test_ssh_config.py)
    for key, value in (("stall_timeout_s", 0), ("keepalive_s", "15"), ("connect_timeout", True),
                       ("reconnect_attempts", 1.5), ("reconnect_attempts", -1)):
        with pytest.raises(DeviceConfigError, match=rf"\[devices\.pi\] {key} = {re.escape(show(value))}: must be"):
            parse_device("pi", {"kind": "ssh", "host": "pi", key: value})


def test_a_device_that_stays_down_fails_fast_after_one_round_of_backoff(
    sshd_factory, tmp_path: pathlib.Path
) -> None:
    server = sshd_factory()
    t = transport(server, tmp_path / "dev", reconnect_attempts=2, reconnect_backoff_max_s=1)
    a, sha_a = blob(tmp_path, name="a")
    b, sha_b = blob(tmp_path, name="b")
    try:
        t.ensure_blob(a, sha_a)
        server.kill()
        with pytest.raises(SSHTransportError, match=r"connection refused .*\(gave up after 3 attempts\)"):
            t.ensure_blob(b, sha_b)
        again = t.run_agent({"job_id": "later"}, timeout_s=30)  # one attempt now, no second round of waiting
        assert "connection refused" in again["error"]["message"] and "gave up" not in again["error"]["message"]
        restart_sshd(server)
        assert t.ensure_blob(b, sha_b) == str(tmp_path / "dev" / "blobs" / sha_b)  # back: work resumes
    finally:
        t.close()


@pytest.mark.parametrize("key, value, accepted", [
    ("port", "22x", "an integer from 1 to 65535"), ("port", 99999999, "an integer from 1 to 65535"),
    ("port", True, "an integer from 1 to 65535"), ("workdir", 3, "must be a non-empty string"),
    ("python", ["python3"], "must be a non-empty string")])
def test_bad_connection_settings_are_refused_at_load(key, value, accepted):
    with pytest.raises(DeviceConfigError) as bad:
        parse_device("pi", {"kind": "ssh", "host": "pi", key: value})
    assert str(bad.value).startswith(f"bench.toml [devices.pi] {key} = {show(value)}: ") and accepted in str(bad.value)
    assert "\n" not in str(bad.value)
