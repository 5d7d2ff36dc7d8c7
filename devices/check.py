"""Is a configured device usable? Connect (host key verified), ship the agent, run its probe.

``bench devices`` shows the result; nothing here prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import DeviceSpec, open_transport


@dataclass
class DeviceCheck:
    """What the probe found: the device's Python, the version of each runtime it must run, or what failed."""

    device: str
    python: str = "?"
    #: Runtime name -> its version, or None when it does not import on the device.
    runtimes: dict[str, str | None] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(v is not None for v in self.runtimes.values())


def check_device(device: DeviceSpec, trust_new_hosts: bool = False) -> DeviceCheck:
    """Probe one device; a connection, host-key or probe failure is reported in `DeviceCheck.error`."""
    try:
        with open_transport(device, trust_new_hosts=trust_new_hosts) as transport:
            probe = transport.probe()
    except Exception as exc:  # connection, host key, upload: the message says which
        return DeviceCheck(device.name, error=f"{type(exc).__name__}: {exc}")
    if probe.get("status") == "error":
        return DeviceCheck(device.name, error=f"{probe['error'].get('stage')}: {probe['error'].get('message')}")
    have = probe.get("runtimes", {})
    python = ((probe.get("env") or {}).get("python") or {}).get("version", "?")
    runtimes = {r: str((have.get(r) or {}).get("version")) if (have.get(r) or {}).get("importable") else None
                for r in device.runtimes}
    return DeviceCheck(device.name, python, runtimes)
