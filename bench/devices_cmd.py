"""``python -m bench devices``: list the configured devices and check each one."""

from __future__ import annotations

import argparse
import concurrent.futures

from devices.config import DeviceSpec, open_transport

from . import config as bench_config
from .options import HelpFormatter


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devices", help="list devices from bench.toml and check that each is usable",
                       description="For every device: connect (SSH host key verified), ship the agent, run "
                                   "`agent.py --probe`, and report the Python version and which runtimes import.",
                       formatter_class=HelpFormatter)
    p.add_argument("--config", type=bench_config.Path, help="bench.toml to use")
    p.add_argument("--devices", help="comma-separated device names (default: all)")
    p.add_argument("--no-check", action="store_true", help="only list; do not connect")
    p.add_argument("--trust-new-hosts", action="store_true", help="add first-seen SSH host keys to known_hosts")
    p.set_defaults(func=run)


def check(device: DeviceSpec, trust_new_hosts: bool) -> str:
    """One line: reachable, Python version and the runtimes the device needs, or what is wrong."""
    try:
        with open_transport(device, trust_new_hosts=trust_new_hosts) as transport:
            probe = transport.probe()
    except Exception as exc:  # connection, host key, upload: the message says which
        return f"FAIL {type(exc).__name__}: {exc}"
    if probe.get("status") == "error":
        return f"FAIL {probe['error'].get('stage')}: {probe['error'].get('message')}"
    env = probe.get("env", {})
    python = (env.get("python") or {}).get("version", "?")
    have = probe.get("runtimes", {})
    parts = []
    for runtime in device.runtimes:
        info = have.get(runtime) or {}
        parts.append(f"{runtime} {info.get('version')}" if info.get("importable") else f"{runtime} MISSING")
    ok = all((have.get(r) or {}).get("importable") for r in device.runtimes)
    return f"{'ok  ' if ok else 'FAIL'} python {python}; " + ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    cfg = bench_config.load(args.config)
    devices = cfg.pick_devices(args.devices.split(",") if args.devices else list(cfg.devices))
    for d in devices:
        where = "this machine" if d.kind == "local" else f"ssh {d.host}"
        print(f"{d.name:12s} {d.display:24s} {where:24s} runtimes: {', '.join(d.runtimes)}")
    if args.no_check:
        return 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(devices))) as pool:
        lines = list(pool.map(lambda d: check(d, args.trust_new_hosts), devices))
    for d, line in zip(devices, lines):
        print(f"{d.name:12s} {line}")
    return 0 if all(line.startswith("ok") for line in lines) else 1
