"""The device model: what ``[devices.NAME]`` tables in ``bench.toml`` describe.

A device is somewhere the agent runs (this machine, or a host reached over SSH)
plus the runtimes to time there and their options. Each runtime accepts some
artifact formats, which is how a sweep gives every device only what it can run:

=============  ==========================  ==========================================
runtime        artifact formats            options (all optional)
=============  ==========================  ==========================================
onnxruntime    onnx                        threads, providers / execution_provider,
                                           graph_optimization, allow_spinning,
                                           execution_mode (sequential/parallel),
                                           inter_op_threads (with parallel)
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

Options given here are fixed: ``bench tune`` searches only the others
(`formats.Runtime.tunable`), and a sweep uses the stored tuned winner for
those (docs/tuning.md).

``pre``/``post`` are shell commands the user wrote in their own config; they run
on the device as written (that is their purpose). Everything the project itself
sends to a device is quoted. Passwords and other secrets have no place here, at
any depth (a config file gets copied, shared and committed): SSH uses keys or
ssh-agent only.

Deadlines of an SSH device (seconds; every network operation has one):

========================  =======  ================================================
key                       default  meaning
========================  =======  ================================================
connect_timeout           10       one connection attempt (TCP, SSH handshake, auth); absent:
                                   the ssh config's ConnectTimeout, else 10
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
from formats import schema

from .transport import LocalTransport, Transport

KINDS = ("local", "ssh")
#: Deadline keys and their defaults: positive numbers of seconds (see the table above; None: the transport's).
_SECONDS = {"connect_timeout": None, "stall_timeout_s": 60.0, "keepalive_s": 15.0, "reconnect_backoff_max_s": 30.0}
#: Key names that look like a secret (api_token, db_password, client_secret, ...), at any depth.
_SECRET_KEY = re.compile(r"pass(word|phrase|wd)|secret|token(?!s|i)|api_?key|credential|private_?key", re.IGNORECASE)
#: What a device name may be made of: it is part of every job key (``|`` separates their fields), of the default
#: local workdir and of log lines.
NAME = schema.Str(pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
                  rule="letters, digits, '_', '-' and '.', starting with a letter or digit")

#: The options of each runtime (``runtimes = { onnxruntime = { threads = 4 } }``), keyed as `formats.RUNTIMES`
#: lists them; the agent checks them again on the device (it is a standalone program).
_OPTION = {
    "threads": schema.Int(min=1), "interop_threads": schema.Int(min=1),
    "providers": schema.ListOf(schema.Str(nonempty=True), nonempty=True),
    "execution_provider": schema.Str(nonempty=True),
    "graph_optimization": schema.Str(choices=("all", "extended", "basic", "disable")),
    "allow_spinning": schema.Bool(), "execution_mode": schema.Str(choices=("sequential", "parallel")),
    "inter_op_threads": schema.Int(min=1),
    "device": schema.Str(pattern=r"cpu|cuda(:[0-9]+)?", rule='"cpu", "cuda" or "cuda:N"'),
    "precision": schema.Str(choices=("fp32", "fp16")), "workspace_mb": schema.Int(min=1),
}
_RUNTIME_OPTIONS = schema.Table({name: schema.Table({k: _OPTION[k] for k in runtime.options})
                                 for name, runtime in formats.RUNTIMES.items()})
_RUNTIME_NAMES = schema.ListOf(schema.Str(choices=tuple(formats.RUNTIMES)), nonempty=True)
_SECONDS_VALUE = schema.Number(min=0, max=1e6, above=True)
_TEXT = schema.Str()
_COMMANDS = schema.ListOf(schema.Str())

class _DeviceTable(schema.Table):
    """A device table; a secret-looking key anywhere in it is refused as a secret, before any other check."""

    def check(self, value, path=(), headers=0):  # noqa: ANN001, ANN201 - schema.Node's signature
        secret = _secret_key(value)
        if secret:
            raise schema.SchemaError(
                path + tuple(secret.split(".")), "passwords are not accepted here (nor tokens or other secrets, at any depth); "
                "use an SSH key (identity_file) or ssh-agent, and give runtimes their secrets through the "
                "device's environment", len(path))
        return super().check(value, path, headers)


#: The schema of one ``[devices.NAME]`` table (``harness/schema.py`` puts it into the whole file's).
DEVICE = _DeviceTable({
    "kind": schema.Str(choices=KINDS), "host": schema.Str(nonempty=True), "user": schema.Str(nonempty=True),
    "port": schema.Int(min=1, max=65535), "identity_file": _TEXT, "python": schema.Str(nonempty=True),
    "workdir": schema.Str(nonempty=True), "label": _TEXT, "labels": schema.MapOf(_TEXT), "pre": _COMMANDS,
    "post": _COMMANDS, "runtimes": schema.Either((_RUNTIME_NAMES, _RUNTIME_OPTIONS)), "known_hosts": _TEXT,
    "ssh_config": _TEXT, "reconnect_attempts": schema.Int(min=0, max=100),
    **{key: _SECONDS_VALUE for key in _SECONDS},
}, header=True)


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
    connect_timeout: float | None = None  # None: the ssh config's ConnectTimeout, else 10 s
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


def parse_device(name: str, table: object, source: str = "bench.toml", root: Path | str = "runs") -> DeviceSpec:
    """One ``[devices.NAME]`` table of the file `source`, validated against `DEVICE`, with defaults filled in."""

    def bad(message: str) -> DeviceConfigError:
        return DeviceConfigError(f"{source} [devices.{name}]: {message}")

    try:
        table = DEVICE.check(table, ("devices", name))
    except schema.SchemaError as exc:
        raise DeviceConfigError(exc.message(source)) from None
    kind = table.get("kind", "local")
    if kind == "ssh" and "host" not in table:
        raise bad("an ssh device needs host = \"name or ~/.ssh/config alias\"")
    runtimes = table.get("runtimes", {"onnxruntime": {}, "torch": {}})
    if isinstance(runtimes, list):  # runtimes = ["onnxruntime", "torch"]: default options
        runtimes = {r: {} for r in runtimes}
    if not runtimes:
        raise bad("runtimes must name at least one runtime, e.g. runtimes = { onnxruntime = { threads = 4 } }")
    default_workdir = str(Path(root) / "devices" / name) if kind == "local" else "~/.snp-bench"
    return DeviceSpec(
        name=name, kind=kind, runtimes={r: dict(o) for r, o in runtimes.items()}, host=table.get("host", ""),
        user=table.get("user"), port=table.get("port"), identity_file=table.get("identity_file"),
        python=table.get("python", sys.executable if kind == "local" else "python3"),
        workdir=table.get("workdir", default_workdir), label=table.get("label", ""),
        labels=dict(table.get("labels", {})), pre=list(table.get("pre", [])), post=list(table.get("post", [])),
        reconnect_attempts=table.get("reconnect_attempts", 3),
        **{key: table.get(key, default) for key, default in _SECONDS.items()},
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


def parse_devices(tables: object, source: str = "bench.toml", root: Path | str = "runs") -> dict[str, DeviceSpec]:
    """All devices of a ``[devices]`` table of `source`; the local machine when there are none.

    A local device's default workdir is ``ROOT/devices/NAME`` under the outputs root.
    """
    if tables is None:
        tables = {"local": {"kind": "local"}}
    if not isinstance(tables, dict):
        raise DeviceConfigError(f"{source}: [devices] must be a table of device tables")
    for name in tables:
        try:
            NAME.check(name)
        except schema.SchemaError:
            raise DeviceConfigError(f"{source} [devices.{schema.toml_key(name)}]: device "
                                    f"name {schema.show(name)} may only use {NAME.rule}") from None
    return {name: parse_device(name, table, source, root) for name, table in tables.items()}


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
