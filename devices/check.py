"""Is a configured device usable? Connect (host key verified), ship the agent, run its probe.

``bench devices`` shows the result; nothing here prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import DeviceSpec, open_transport
from .transport import agent_died, parse_agent_output, signal_name

#: What `parse_agent_output` says for paramiko's -1 ("no exit status: sshd sent an exit signal") when a
#: transport passes it on as a return code: a subprocess -1 would be SIGHUP, which over SSH it never means.
_MINUS_ONE_AS_SIGHUP = parse_agent_output({}, "", "", -1)["error"]["message"]
_FATAL_LINE = "Fatal Python error"


@dataclass
class DeviceCheck:
    """What the probe found: the device's Python, the version of each runtime it must run, or what failed."""

    device: str
    python: str = "?"
    #: Runtime name -> its version, or None when it does not import on the device.
    runtimes: dict[str, str | None] = field(default_factory=dict)
    error: str | None = None
    #: The probe's warnings (throttling, governor) and why a runtime the device needs does not import.
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and all(v is not None for v in self.runtimes.values())


def probe_failure(probe: dict, kind: str) -> str:
    """One line for a probe that returned no document: its stage and message, the signal told right.

    An SSH transport's -1 is paramiko's "no exit status" (sshd sent an exit
    signal, by name, which paramiko drops); so is any signal death of an
    agent exec'd by sshd.  A local -N is signal N.  A faulthandler line in
    the stderr tail ("Fatal Python error: Segmentation fault") is added.
    """
    error = probe.get("error") or {}
    message = str(error.get("message"))
    transport = probe.get("transport") or {}
    code = transport.get("returncode")
    if error.get("stage") == "transport" and kind != "local" and (code == -1 or message == _MINUS_ONE_AS_SIGHUP):
        message = agent_died(None, signal_unknown=True)
    elif (error.get("stage") == "transport" and kind != "local" and isinstance(code, int) and code > 128
          and "128 +" not in message):
        # a shell in between (dash forks) reports a signal death as 128 + the signal number
        message = f"{agent_died(code)} (128 + {signal_name(code - 128)}: killed by a signal?)"
    stderr = str(error.get("stderr_tail") or transport.get("stderr_tail") or "")
    fatal = [line.strip() for line in stderr.splitlines() if line.startswith(_FATAL_LINE)]
    if fatal:
        message += f" ({fatal[-1]})"
    return f"{error.get('stage')}: {message}"


def runtime_warnings(probe: dict, runtimes: list[str]) -> list[str]:
    """Why each runtime the device needs failed to import ("tensorrt: import crashed: killed by SIGSEGV")."""
    have = probe.get("runtimes") or {}
    return [f"{r}: {(have.get(r) or {}).get('error')}" for r in runtimes if (have.get(r) or {}).get("error")]


def check_device(device: DeviceSpec, trust_new_hosts: bool = False) -> DeviceCheck:
    """Probe one device; a connection, host-key or probe failure, or a busy device, is `DeviceCheck.error`."""
    try:
        with open_transport(device, trust_new_hosts=trust_new_hosts) as transport:
            probe = transport.probe()
    except Exception as exc:  # connection, host key, upload: the message says which
        return DeviceCheck(device.name, error=f"{type(exc).__name__}: {exc}")
    if probe.get("status") == "error":
        return DeviceCheck(device.name, error=probe_failure(probe, device.kind))
    have = probe.get("runtimes", {})
    env = probe.get("env") or {}
    python = (env.get("python") or {}).get("version", "?")
    warnings = [str(w) for w in probe.get("warnings") or []]
    if probe.get("busy"):
        # Nothing was imported (a job is timing): the versions installed, and who holds the lock.
        installed = env.get("runtimes") or {}
        reason = probe.get("busy_reason") or "busy: the device lock is held by another agent"
        return DeviceCheck(device.name, python, {r: installed.get(r) for r in device.runtimes}, reason, warnings)
    runtimes = {r: str((have.get(r) or {}).get("version")) if (have.get(r) or {}).get("importable") else None
                for r in device.runtimes}
    warnings += runtime_warnings(probe, list(device.runtimes))
    return DeviceCheck(device.name, python, runtimes, warnings=warnings)
