"""SSHTransport against real OpenSSH servers (tests/sshd.py) - no mocks.

The "device" is this machine reached over SSH, so a test can look at the
device's files directly on the local disk to check what the transport did.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time

import pytest
from helpers import onnx_job
from sshd import NetnsLab, SSHServer, free_port, make_keypair, ssh_config_block

from devices.ssh import (
    HostKeyError,
    SSHConnectError,
    SSHTransport,
    SSHTransportError,
    parse_jump_spec,
    remote_command,
)

REPO = pathlib.Path(__file__).resolve().parents[2]
AGENT = REPO / "devices" / "agent.py"


def sha256_of(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def transport(server: SSHServer, workdir: pathlib.Path | str, **overrides: object) -> SSHTransport:
    """A transport to ``server`` given by explicit host/port/user/key (no ssh config)."""
    kwargs: dict = dict(
        host=server.host,
        port=server.port,
        user=server.user,
        identity_file=server.client_key,
        known_hosts=server.known_hosts,
        workdir=str(workdir),
        python=sys.executable,  # the device python needs what the agent imports
        ssh_config_path=os.devnull,  # hermetic: ignore ~/.ssh/config ...
        allow_agent=False,  # ... ssh-agent ...
        look_for_keys=False,  # ... and ~/.ssh/id_*
        connect_timeout=5,
    )
    kwargs.update(overrides)
    return SSHTransport("test-device", **kwargs)


def stub_agent(tmp_path: pathlib.Path, name: str, body: str) -> pathlib.Path:
    """A stand-in agent script (so transport behaviour is tested without a runtime)."""
    path = tmp_path / f"{name}.py"
    path.write_text("import json, os, subprocess, sys, time\n" + body)
    return path


def stub_result(sshd_server: SSHServer, tmp_path: pathlib.Path, name: str, body: str, job: dict) -> dict:
    """What the transport makes of a stand-in agent's run of `job`."""
    t = transport(sshd_server, tmp_path / "dev", agent_source=stub_agent(tmp_path, name, body))
    try:
        return t.run_agent(job, timeout_s=30)
    finally:
        t.close()


def blob(tmp_path: pathlib.Path, size: int = 4096, name: str = "model.onnx") -> tuple[pathlib.Path, str]:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path, sha256_of(path)


def dead(pid: int) -> bool:
    """Gone or a zombie (a zombie no longer runs; its reaper may be slow in containers)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# --------------------------------------------------------------------------
# blobs
# --------------------------------------------------------------------------


def test_upload_then_reupload_sends_nothing(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    src, sha = blob(tmp_path, 200_000)
    t = transport(sshd_server, tmp_path / "dev")
    try:
        remote = t.ensure_blob(src, sha)
        assert remote == str(tmp_path / "dev" / "blobs" / sha)
        assert pathlib.Path(remote).read_bytes() == src.read_bytes()
        assert t.bytes_uploaded == src.stat().st_size
        assert t.ensure_blob(src, sha) == remote
        assert t.bytes_uploaded == src.stat().st_size  # unchanged: cached
    finally:
        t.close()
    # A fresh connection re-hashes the blob on the device, still sends nothing.
    again = transport(sshd_server, tmp_path / "dev")
    try:
        assert again.ensure_blob(src, sha) == remote
        assert again.bytes_uploaded == 0
        assert not [p for p in (tmp_path / "dev" / "blobs").iterdir() if p.name.startswith(".tmp-")]
    finally:
        again.close()


def test_corrupt_blob_on_device_is_replaced(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    src, sha = blob(tmp_path)
    t = transport(sshd_server, tmp_path / "dev")
    remote = pathlib.Path(t.ensure_blob(src, sha))
    t.close()
    remote.write_bytes(b"bit rot")
    fresh = transport(sshd_server, tmp_path / "dev")
    try:
        fresh.ensure_blob(src, sha)
        assert sha256_of(remote) == sha
        assert fresh.bytes_uploaded == src.stat().st_size
    finally:
        fresh.close()


def test_local_file_not_matching_its_sha_is_rejected(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    src, _ = blob(tmp_path)
    wrong = "0" * 64
    t = transport(sshd_server, tmp_path / "dev")
    try:
        with pytest.raises(SSHTransportError, match="expected 0000"):
            t.ensure_blob(src, wrong)
        assert not (tmp_path / "dev" / "blobs" / wrong).exists()
        assert not list((tmp_path / "dev" / "blobs").iterdir())  # temp removed too
        with pytest.raises(ValueError):
            t.ensure_blob(src, "../../etc/passwd")
    finally:
        t.close()


def test_connection_is_reused_and_reopened_when_dropped(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    a, sha_a = blob(tmp_path, name="a")
    b, sha_b = blob(tmp_path, name="b")
    t = transport(sshd_server, tmp_path / "dev")
    try:
        t.ensure_blob(a, sha_a)
        first = t._conn
        t.ensure_blob(b, sha_b)
        assert t._conn is first  # one SSH session for many operations
        first.client.get_transport().close()  # the link drops
        t.ensure_blob(a, sha_a)
        assert t._conn is not first and t._conn.is_active()
    finally:
        t.close()


# --------------------------------------------------------------------------
# host keys
# --------------------------------------------------------------------------


def test_unknown_host_key_is_refused_with_instructions(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    src, sha = blob(tmp_path)
    t = transport(sshd_server, tmp_path / "dev", known_hosts=known)
    with pytest.raises(HostKeyError) as info:
        t.ensure_blob(src, sha)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"[{sshd_server.host}]:{sshd_server.port}" in msg
    assert "ssh-ed25519" in msg and "SHA256:" in msg
    assert f"ssh-keyscan -p {sshd_server.port} {sshd_server.host} >> {known}" in msg
    assert "--trust-new-hosts" in msg
    assert known.read_text() == ""
    assert not (tmp_path / "dev").exists()  # nothing happened on the device
    # run_agent reports it as an error result instead of raising
    result = t.run_agent({"job_id": 1}, timeout_s=10)
    assert result["status"] == "error" and result["error"]["stage"] == "transport"
    assert "unknown host key" in result["error"]["message"]


def test_trust_new_hosts_records_the_key(
    sshd_server: SSHServer, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    known = tmp_path / "fresh" / "known_hosts"  # neither file nor folder exists yet
    src, sha = blob(tmp_path)
    t = transport(sshd_server, tmp_path / "dev", known_hosts=known, trust_new_hosts=True)
    with caplog.at_level(logging.WARNING, logger="devices.ssh"):
        t.ensure_blob(src, sha)
    t.close()
    assert known.read_text() == sshd_server.host_key_line()
    assert any("NEW host key" in r.getMessage() and "SHA256:" in r.getMessage() for r in caplog.records)
    # From now on the key is known: a strict transport connects.
    strict = transport(sshd_server, tmp_path / "dev", known_hosts=known)
    try:
        strict.ensure_blob(src, sha)
    finally:
        strict.close()
    assert known.read_text() == sshd_server.host_key_line()  # not added twice


@pytest.mark.parametrize("trust_new_hosts", [False, True])
def test_changed_host_key_is_always_refused(
    sshd_server: SSHServer, tmp_path: pathlib.Path, trust_new_hosts: bool
) -> None:
    impostor = make_keypair(tmp_path / "other_host_key")
    keytype, b64 = impostor.with_suffix(".pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"{sshd_server.known_hosts_name} {keytype} {b64}\n")
    before = known.read_text()
    src, sha = blob(tmp_path)
    t = transport(sshd_server, tmp_path / "dev", known_hosts=known, trust_new_hosts=trust_new_hosts)
    with pytest.raises(HostKeyError, match="CHANGED") as info:
        t.ensure_blob(src, sha)
    assert str(known) in str(info.value)
    assert known.read_text() == before


def test_hashed_known_hosts_with_lines_paramiko_cannot_parse(
    sshd_server: SSHServer, tmp_path: pathlib.Path
) -> None:
    """A real ~/.ssh/known_hosts: hashed names, a @cert-authority line, an exotic key type."""
    ca = make_keypair(tmp_path / "ca").with_suffix(".pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(
        "# comment\n"
        f"@cert-authority *.lab {ca[0]} {ca[1]}\n"
        "old-host sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29t\n"
        + sshd_server.host_key_line()
    )
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(known)], check=True, capture_output=True)
    assert sshd_server.host not in known.read_text()  # names are hashed now
    src, sha = blob(tmp_path)
    t = transport(sshd_server, tmp_path / "dev", known_hosts=known)
    try:
        t.ensure_blob(src, sha)
    finally:
        t.close()


def test_revoked_host_key_is_refused(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    keytype, b64 = sshd_server.host_key.with_suffix(".pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"@revoked * {keytype} {b64}\n")
    src, sha = blob(tmp_path)
    t = transport(sshd_server, tmp_path / "dev", known_hosts=known, trust_new_hosts=True)
    with pytest.raises(HostKeyError, match="revoked"):
        t.ensure_blob(src, sha)
    known.write_text(f"@revoked * {keytype} {b64}\n" + sshd_server.host_key_line())
    with pytest.raises(HostKeyError, match="revoked"):
        t.ensure_blob(src, sha)


# --------------------------------------------------------------------------
# ssh config and ProxyJump
# --------------------------------------------------------------------------


def test_ssh_config_alias_is_honoured(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    src, sha = blob(tmp_path)
    t = SSHTransport(
        "aliased",
        sshd_server.alias,  # only the alias: HostName, Port, User, IdentityFile come from the config
        ssh_config_path=sshd_server.ssh_config,
        known_hosts=sshd_server.known_hosts,
        workdir=str(tmp_path / "dev"),
        allow_agent=False,
        look_for_keys=False,
    )
    try:
        assert (t.target.hostname, t.target.port, t.target.user) == (
            sshd_server.host, sshd_server.port, sshd_server.user)
        assert t.target.identity_files == (str(sshd_server.client_key),)
        t.ensure_blob(src, sha)
        assert (tmp_path / "dev" / "blobs" / sha).exists()
    finally:
        t.close()


def test_proxyjump_through_the_same_server(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(
        ssh_config_block(sshd_server, alias="jumped", extra=f"    ProxyJump {sshd_server.alias}\n")
        + ssh_config_block(sshd_server)
    )
    src, sha = blob(tmp_path)
    t = SSHTransport("jumped", "jumped", ssh_config_path=config, known_hosts=sshd_server.known_hosts,
                     workdir=str(tmp_path / "dev"), allow_agent=False, look_for_keys=False)
    try:
        t.ensure_blob(src, sha)
        assert len(t._conn.clients) == 2  # jump host + target
    finally:
        t.close()
    assert (tmp_path / "dev" / "blobs" / sha).exists()


def test_parse_jump_spec() -> None:
    assert parse_jump_spec("bastion") == (None, "bastion", None)
    assert parse_jump_spec("pi@bastion:2222") == ("pi", "bastion", 2222)
    assert parse_jump_spec("ssh://pi@10.0.0.1:22") == ("pi", "10.0.0.1", 22)
    assert parse_jump_spec("[fe80::1]:2200") == (None, "fe80::1", 2200)


def test_proxyjump_between_namespaced_devices(netns_devices: NetnsLab, tmp_path: pathlib.Path) -> None:
    """client -> dev-a -> dev-b, where the client has no route to dev-b at all."""
    lab = netns_devices
    src, sha = blob(tmp_path)

    def make(host: str, **kw: object) -> SSHTransport:
        return SSHTransport(host, host, ssh_config_path=lab.ssh_config, workdir=str(tmp_path / host),
                            allow_agent=False, look_for_keys=False, connect_timeout=5, **kw)  # type: ignore[arg-type]

    def direct_to_b() -> None:
        no_jump = lab.ssh_config.parent / "no_jump_config"
        no_jump.write_text(ssh_config_block(lab.dev_b))
        t = SSHTransport("b", "dev-b", ssh_config_path=no_jump, known_hosts=lab.known_hosts,
                         workdir=str(tmp_path / "x"), allow_agent=False, look_for_keys=False, connect_timeout=3)
        t.ensure_blob(src, sha)

    with pytest.raises(SSHConnectError, match="cannot connect"):
        lab.run(direct_to_b)

    def via_a() -> list[int]:
        t = make("dev-b", known_hosts=lab.known_hosts)
        try:
            t.ensure_blob(src, sha)
            return [len(t._conn.clients)]
        finally:
            t.close()

    assert lab.run(via_a) == [2]
    assert sha256_of(tmp_path / "dev-b" / "blobs" / sha) == sha

    # trust_new_hosts records both hosts, port 22 without brackets.
    known = tmp_path / "new_known_hosts"

    def trusting() -> None:
        t = make("dev-b", known_hosts=known, trust_new_hosts=True)
        try:
            t.ensure_blob(src, sha)
        finally:
            t.close()

    lab.run(trusting)
    assert known.read_text() == lab.dev_a.host_key_line() + lab.dev_b.host_key_line()
    assert known.read_text().startswith(f"{lab.dev_a.host} ssh-ed25519 ")


# --------------------------------------------------------------------------
# quoting
# --------------------------------------------------------------------------


def test_hostile_paths_never_run_anything(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    canary = tmp_path / "pwned"
    evil = (f"{tmp_path}/x; touch {canary} ; $(touch {canary}2) `touch {canary}3` "
            f"'q\"uo\\te' && touch {canary}4 | touch {canary}5 \n touch {canary}6")
    echo = stub_agent(tmp_path, "echo", (
        "job = json.load(sys.stdin)\n"
        "print(json.dumps({'status': 'ok', 'job': job, 'argv': sys.argv[1:]}))\n"
    ))
    src, sha = blob(tmp_path)
    t = transport(sshd_server, evil, agent_source=echo)
    try:
        remote = t.ensure_blob(src, sha)
        assert remote == f"{evil}/blobs/{sha}" and pathlib.Path(remote).read_bytes() == src.read_bytes()
        job = {"job_id": "q'\"; touch " + str(canary), "note": "$(touch " + str(canary) + ")"}
        result = t.run_agent(job, timeout_s=30)
        assert result["status"] == "ok", result
        assert result["job"]["job_id"] == job["job_id"] and result["job"]["workdir"] == evil
        assert result["argv"] == []  # the job travelled on stdin, not the command line
        # The python-hash fallback gets the path as an argument, too.
        from devices.ssh import _HASH_SRC

        rc, out, _ = t._exec([sys.executable, "-c", _HASH_SRC, remote])
        assert rc == 0 and out.decode().strip() == sha
    finally:
        t.close()
    bad_python = transport(sshd_server, tmp_path / "dev", python=f"{sys.executable}; touch {canary}7",
                           agent_source=echo)
    try:
        result = bad_python.run_agent({"job_id": 1}, timeout_s=30)
        assert result["status"] == "error" and result["error"]["stage"] == "transport"
    finally:
        bad_python.close()
    assert not list(tmp_path.glob("pwned*"))
    assert not list(pathlib.Path.home().glob("pwned*"))
    assert remote_command(["a b", "c'd", "$(x)"]) == "'a b' 'c'\"'\"'d' '$(x)'"


# --------------------------------------------------------------------------
# failures
# --------------------------------------------------------------------------


def test_closed_port_gives_a_clear_error(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    port = free_port()
    src, sha = blob(tmp_path)
    t = transport(sshd_server, tmp_path / "dev", port=port)
    start = time.monotonic()
    with pytest.raises(SSHConnectError, match=rf"{sshd_server.host}:{port}: connection refused"):
        t.ensure_blob(src, sha)
    result = t.run_agent({"job_id": 1}, timeout_s=10)
    assert result["error"]["stage"] == "transport" and "connection refused" in result["error"]["message"]
    assert time.monotonic() - start < 5


def test_wrong_key_is_an_authentication_error(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    stranger = make_keypair(tmp_path / "stranger")
    src, sha = blob(tmp_path)
    t = transport(sshd_server, tmp_path / "dev", identity_file=stranger)
    with pytest.raises(SSHConnectError, match=rf"authentication as {sshd_server.user} .* failed") as info:
        t.ensure_blob(src, sha)
    assert str(stranger) in str(info.value)  # names the key file it tried, never key material


def test_tilde_workdir_is_the_login_directory(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    name = f".snp-ssh-test-{os.getpid()}-{time.monotonic_ns()}"
    src, sha = blob(tmp_path)
    t = transport(sshd_server, f"~/{name}")
    try:
        assert t.ensure_blob(src, sha) == str(pathlib.Path.home() / name / "blobs" / sha)
        assert t.device_workdir() == str(pathlib.Path.home() / name)
    finally:
        t.close()
        shutil.rmtree(pathlib.Path.home() / name, ignore_errors=True)
    with pytest.raises(ValueError, match="~user"):
        transport(sshd_server, "~someone/x")


def test_server_killed_mid_upload_leaves_nothing_usable(sshd_factory, tmp_path: pathlib.Path) -> None:
    first = sshd_factory()
    src, sha = blob(tmp_path, 64 << 20, name="big.bin")
    blobs = tmp_path / "dev" / "blobs"
    t = transport(first, tmp_path / "dev")

    def kill_when_half_sent() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            temps = list(blobs.glob(".tmp-*")) if blobs.exists() else []
            if temps and temps[0].stat().st_size > 4 << 20:
                first.kill()
                return
            time.sleep(0.002)

    killer = threading.Thread(target=kill_when_half_sent)
    killer.start()
    try:
        with pytest.raises(SSHTransportError):
            t.ensure_blob(src, sha)
    finally:
        killer.join()
        t.close()
    assert not (blobs / sha).exists()
    partial = list(blobs.glob(".tmp-*"))
    assert len(partial) == 1 and partial[0].stat().st_size < src.stat().st_size
    # Age the partial upload; add a young temp, as if another client were uploading right now.
    old = time.time() - 7200
    os.utime(partial[0], (old, old))
    busy = blobs / f".tmp-{sha}-inprogress"
    busy.write_bytes(b"x")

    # The device comes back (same host key); a fresh connection uploads in full.
    second = sshd_factory(host_key=first.host_key, client_key=first.client_key)
    t2 = transport(second, tmp_path / "dev")
    try:
        assert t2.ensure_blob(src, sha) == str(blobs / sha)
        assert t2.bytes_uploaded == src.stat().st_size
    finally:
        t2.close()
    assert sha256_of(blobs / sha) == sha
    assert not partial[0].exists()  # abandoned temp cleaned up
    assert busy.exists()  # a live upload is left alone


# --------------------------------------------------------------------------
# running the agent
# --------------------------------------------------------------------------


def test_timeout_kills_the_remote_agent_and_its_children(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    sleeper = stub_agent(tmp_path, "sleeper", (
        "job = json.load(sys.stdin)\n"
        "child = subprocess.Popen(['sleep', '300'])\n"
        "open(job['pids'], 'w').write('%d %d' % (os.getpid(), child.pid))\n"
        "sys.stderr.write('sleeping now\\n'); sys.stderr.flush()\n"
        "time.sleep(300)\n"
    ))
    pids_file = tmp_path / "pids"
    t = transport(sshd_server, tmp_path / "dev", agent_source=sleeper)
    try:
        start = time.monotonic()
        result = t.run_agent({"job_id": 1, "pids": str(pids_file)}, timeout_s=2)
        assert result["status"] == "error" and result["error"]["stage"] == "timeout", result
        assert "sleeping now" in result["error"]["stderr_tail"]
        assert time.monotonic() - start < 15
        pids = [int(p) for p in pids_file.read_text().split()]
        deadline = time.monotonic() + 5
        while not all(dead(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(dead(p) for p in pids), "agent or its child survived the timeout"
        assert not list((tmp_path / "dev" / "run").iterdir())  # pidfile cleaned
    finally:
        t.close()


def test_garbled_agent_output_is_an_error_result(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    result = stub_result(sshd_server, tmp_path, "garbage",
                         "print('this is not json'); sys.stderr.write('boom'); sys.exit(3)\n", {"job_id": 1})
    assert result["status"] == "error"
    assert result["error"]["stage"] == "transport"
    assert "code 3" in result["error"]["message"]
    assert result["error"]["stderr_tail"] == "boom"
    assert result["transport"]["name"] == "test-device" and result["transport"]["returncode"] == 3


def test_run_shell_runs_the_users_own_command(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    """``pre``/``post`` commands from bench.toml: shell code the user wrote, run as written."""
    t = transport(sshd_server, tmp_path / "dev")
    try:
        assert t.run_shell("echo one; echo two >&2; echo three", timeout_s=30) == "one\nthree\n"
        with pytest.raises(SSHTransportError, match="exited with code 3: nope"):
            t.run_shell("echo nope >&2; exit 3", timeout_s=30)
        start = time.monotonic()
        with pytest.raises(SSHTransportError, match="still running after 1 s; killed"):
            t.run_shell("sleep 30", timeout_s=1)
        assert time.monotonic() - start < 10
    finally:
        t.close()


def test_agent_killed_by_a_signal_is_an_error_result(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    result = stub_result(sshd_server, tmp_path, "doomed", "import signal; os.kill(os.getpid(), signal.SIGKILL)\n",
                         {"job_id": 7})
    assert result["status"] == "error" and result["error"]["stage"] == "transport"
    # "killed by a signal" from sshd's exit-signal, or "code 137 (128 + SIGKILL ...)" when the
    # login shell (dash) forked instead of exec'ing the command
    assert "killed by a signal" in result["error"]["message"] and result["job_id"] == 7


def test_device_side_snippets_are_python36_compatible(tmp_path: pathlib.Path) -> None:
    """The hasher runs on the device python, like the agent (>= 3.6); the wrapper and the kill are sh scripts
    (test_device_side_shell_snippets_are_posix_sh), so a hanging device python cannot stop a kill."""
    from devices import ssh

    vermin = shutil.which("vermin") or str(pathlib.Path(sys.executable).with_name("vermin"))
    if not os.path.exists(vermin):
        pytest.skip("vermin is not installed")
    files = []
    for name in ("_HASH_SRC",):
        files.append(tmp_path / f"{name}.py")
        files[-1].write_text(getattr(ssh, name))
    proc = subprocess.run([vermin, "-q", "--no-tips", "--violations", "-t=3.6-", *map(str, files)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


def _tiny_onnx(path: pathlib.Path) -> None:
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.mark.skipif(not AGENT.exists(), reason="devices/agent.py not written yet")
def test_end_to_end_job_with_the_real_agent(sshd_server: SSHServer, tmp_path: pathlib.Path) -> None:
    pytest.importorskip("onnxruntime")
    model = tmp_path / "tiny.onnx"
    _tiny_onnx(model)
    sha = sha256_of(model)
    t = transport(sshd_server, tmp_path / "dev")
    try:
        path = t.ensure_blob(model, sha)
        job = onnx_job(path, sha, [1, 8], job_id="e2e", warmup={"iterations": 3},
                       measure={"iterations": 20, "min_seconds": 0}, rounds=4)
        result = t.run_agent(job, timeout_s=90)
        assert result["status"] == "ok", result.get("error")
        member = result["members"][0]
        assert result["job_id"] == "e2e" and member["status"] == "ok" and member["artifact_sha256"] == sha
        assert len(member["samples_ns"]) >= 20 and member["stats"]["n"] == len(member["samples_ns"])
        assert sorted(set(member["sample_rounds"])) == [0, 1, 2, 3]
        assert result["settings"]["workdir"] == str(tmp_path / "dev")
        probe = t.probe()
        assert probe["status"] == "ok" and probe["runtimes"]["onnxruntime"]["importable"]
        assert t.bytes_uploaded == model.stat().st_size + AGENT.stat().st_size
    finally:
        t.close()


def test_device_side_shell_snippets_are_posix_sh() -> None:
    """The wrapper, killer and df probe run under the device's /bin/sh (dash, busybox), not bash."""
    from devices import ssh

    shells = [s for s in ("dash", "busybox", "posh") if shutil.which(s)]
    if not shells:
        pytest.skip("no POSIX-only shell (dash, busybox, posh) to check the snippets with")
    for shell in shells:
        for name in ("_MARKED_SH", "_WRAPPER_SH", "_KILL_SH", "_SPACE_SH"):
            argv = [shell, "sh"] if shell == "busybox" else [shell]
            proc = subprocess.run([*argv, "-n", "-c", getattr(ssh, name)], capture_output=True, text=True)
            assert proc.returncode == 0 and proc.stderr == "", f"{shell}: {name}: {proc.stderr}"
