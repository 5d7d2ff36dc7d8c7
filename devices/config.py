"""The device model: what ``[devices.NAME]`` tables in ``bench.toml`` describe.

A device is somewhere the agent runs (this machine, or a host reached over SSH)
plus the runtimes to time there and their options. Each runtime accepts some
artifact formats, which is how a sweep gives every device only what it can run:

=============  ==========================  ==========================================
runtime        artifact formats            options (all optional)
=============  ==========================  ==========================================
onnxruntime    onnx                        threads, providers / execution_provider,
                                           graph_optimization
torch          torchscript (.pt), pt2      threads, interop_threads, device (cpu/cuda)
tensorrt       trt (the .onnx is shipped;  precision (fp32/fp16), device, workspace_mb
               the engine is built on the
               device and cached there)
=============  ==========================  ==========================================

Example::

    [devices.pi]
    kind = "ssh"
    host = "pi"                      # an alias from ~/.ssh/config, or a host name
    python = "/usr/bin/python3"
    workdir = "~/snp-bench"
    label = "Raspberry Pi 4B"
    pre = ["sudo -n cpufreq-set -g performance"]
    runtimes = { onnxruntime = { threads = 4 } }

``pre``/``post`` are shell commands the user wrote in their own config; they run
on the device as written (that is their purpose). Everything the project itself
sends to a device is quoted. Passwords and other secrets have no place here, at
any depth (a config file gets copied, shared and committed): SSH uses keys or
ssh-agent only.

Deadlines of an SSH device (seconds; every network operation has one):

========================  =======  ================================================
key                       default  meaning
========================  =======  ================================================
connect_timeout           10       one connection attempt (TCP, SSH handshake, auth)
stall_timeout_s           60       an SFTP transfer that makes no progress this long
                                   fails (and is resumed after a reconnect)
keepalive_s               15       a keepalive that wants an answer is sent this
                                   often; 3 unanswered intervals = the link is dead
reconnect_attempts        3        a connection that was up and dropped is re-opened
                                   this often before the device's work fails
reconnect_backoff_max_s   30       the wait between reconnects doubles from 1 s up
                                   to this
========================  =======  ================================================
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import formats

from .transport import LocalTransport, Transport

KINDS = ("local", "ssh")
#: Deadline keys and their defaults: positive numbers of seconds (see the table above).
_SECONDS = {"connect_timeout": 10.0, "stall_timeout_s": 60.0, "keepalive_s": 15.0, "reconnect_backoff_max_s": 30.0}
_KEYS = {"kind", "host", "user", "port", "identity_file", "python", "workdir", "label", "labels", "pre", "post",
         "runtimes", "known_hosts", "ssh_config", "reconnect_attempts", *_SECONDS}
#: Key names that look like a secret (api_token, db_password, client_secret, ...), at any depth.
_SECRET_KEY = re.compile(r"pass(word|phrase|wd)|secret|token(?!s|i)|api_?key|credential|private_?key", re.IGNORECASE)


class DeviceConfigError(ValueError):
    """A device table in bench.toml is wrong; the message names the device and the key."""


@dataclass
class DeviceSpec:
    name: str
    kind: str
    runtimes: dict[str, dict]
    host: str = ""
    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    python: str = ""
    workdir: str = ""
    label: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    pre: list[str] = field(default_factory=list)
    post: list[str] = field(default_factory=list)
    connect_timeout: float = 10.0
    stall_timeout_s: float = 60.0
    keepalive_s: float = 15.0
    reconnect_attempts: int = 3
    reconnect_backoff_max_s: float = 30.0
    known_hosts: str | None = None   # default ~/.ssh/known_hosts
    ssh_config: str | None = None    # default ~/.ssh/config

    @property
    def display(self) -> str:
        """The device's name as tables show it, e.g. "Raspberry Pi 4B"."""
        return self.label or self.name

    def formats_for(self, runtime: str) -> tuple[str, ...]:
        """The sweep formats one of this device's runtimes takes (`formats.RUNTIMES`), preferred first."""
        return formats.RUNTIMES[runtime].formats


def parse_device(name: str, table: object) -> DeviceSpec:
    """One ``[devices.NAME]`` table, validated, with defaults filled in."""

    def bad(message: str) -> DeviceConfigError:
        return DeviceConfigError(f"bench.toml [devices.{name}]: {message}")

    if not isinstance(table, dict):
        raise bad("must be a table")
    secret = _secret_key(table)
    if secret:
        raise bad(f"{secret}: passwords are not accepted here (nor tokens or other secrets, at any depth); "
                  "use an SSH key (identity_file) or ssh-agent, and give runtimes their secrets through "
                  "the device's environment")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise bad(f"unknown key {unknown[0]!r}; known: {', '.join(sorted(_KEYS))}")
    kind = table.get("kind", "local")
    if kind not in KINDS:
        raise bad(f"kind {kind!r} is not one of: {', '.join(KINDS)}")
    if kind == "ssh" and not isinstance(table.get("host"), str):
        raise bad("an ssh device needs host = \"name or ~/.ssh/config alias\"")
    runtimes = table.get("runtimes", {"onnxruntime": {}, "torch": {}})
    if isinstance(runtimes, list):  # runtimes = ["onnxruntime", "torch"]: default options
        runtimes = {r: {} for r in runtimes}
    if not isinstance(runtimes, dict) or not runtimes:
        raise bad("runtimes must name at least one runtime, e.g. runtimes = { onnxruntime = { threads = 4 } }")
    for runtime, options in runtimes.items():
        if runtime not in formats.RUNTIMES:
            raise bad(f"runtime {runtime!r} is not one of: {', '.join(formats.RUNTIMES)}")
        if not isinstance(options, dict):
            raise bad(f"options of runtime {runtime!r} must be a table")
    for key in ("pre", "post"):
        if not isinstance(table.get(key, []), list) or not all(isinstance(c, str) for c in table.get(key, [])):
            raise bad(f"{key} must be a list of shell command strings")
    port = table.get("port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
        raise bad(f"port = {port!r}: must be a whole number from 1 to 65535 (or left out: ~/.ssh/config's, else 22)")
    for key in ("host", "user", "python", "workdir", "label", "identity_file", "known_hosts", "ssh_config"):
        if key in table and not isinstance(table[key], str):
            raise bad(f"{key} = {table[key]!r}: must be a string")
    seconds = {key: _positive(table, key, default, bad) for key, default in _SECONDS.items()}
    attempts = table.get("reconnect_attempts", 3)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 0 <= attempts <= 100:
        raise bad(f"reconnect_attempts = {attempts!r}: must be a whole number from 0 to 100")
    default_workdir = f"runs/devices/{name}" if kind == "local" else "~/.snp-bench"
    return DeviceSpec(
        name=name, kind=kind, runtimes={r: dict(o) for r, o in runtimes.items()}, host=table.get("host", ""),
        user=table.get("user"), port=port, identity_file=table.get("identity_file"),
        python=table.get("python", sys.executable if kind == "local" else "python3"),
        workdir=table.get("workdir", default_workdir), label=table.get("label", ""),
        labels={str(k): str(v) for k, v in table.get("labels", {}).items()}, pre=list(table.get("pre", [])),
        post=list(table.get("post", [])), reconnect_attempts=attempts, **seconds,
        known_hosts=table.get("known_hosts"), ssh_config=table.get("ssh_config"),
    )


def _secret_key(value: object, path: str = "") -> str:
    """The dotted path of the first secret-looking key anywhere in ``value`` ("" if none)."""
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if _SECRET_KEY.search(str(key)):
                return where
            found = _secret_key(item, where)
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _secret_key(item, f"{path}[{i}]")
            if found:
                return found
    return ""


def _positive(table: dict, key: str, default: float, bad) -> float:  # noqa: ANN001 - bad: parse_device's closure
    """``table[key]`` as a positive number of seconds (``default`` when absent)."""
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e6:
        raise bad(f"{key} = {value!r}: must be a positive number of seconds")
    return float(value)


def parse_devices(tables: object) -> dict[str, DeviceSpec]:
    """All devices of a ``[devices]`` table; the local machine when there are none."""
    if tables is None:
        tables = {"local": {"kind": "local"}}
    if not isinstance(tables, dict):
        raise DeviceConfigError("bench.toml: [devices] must be a table of device tables")
    return {name: parse_device(name, table) for name, table in tables.items()}


def open_transport(spec: DeviceSpec, *, trust_new_hosts: bool = False) -> Transport:
    """A transport to the device; SSH connects lazily on first use."""
    if spec.kind == "local":
        return LocalTransport(Path(spec.workdir), python=spec.python)
    from .ssh import SSHTransport

    return SSHTransport(spec.name, spec.host, user=spec.user, port=spec.port, identity_file=spec.identity_file,
                        python=spec.python, workdir=spec.workdir, known_hosts=spec.known_hosts,
                        trust_new_hosts=trust_new_hosts, connect_timeout=spec.connect_timeout,
                        ssh_config_path=spec.ssh_config, stall_timeout_s=spec.stall_timeout_s,
                        keepalive_s=spec.keepalive_s, reconnect_attempts=spec.reconnect_attempts,
                        reconnect_backoff_max_s=spec.reconnect_backoff_max_s)
