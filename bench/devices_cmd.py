"""``python -m bench devices``: list the configured devices and check each one."""

from __future__ import annotations

import argparse
import concurrent.futures
from pathlib import Path

from devices.check import DeviceCheck, check_device
from harness import config as harness_config

from .options import HelpFormatter


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devices", help="list devices from bench.toml and check that each is usable",
                       description="For every device: connect (SSH host key verified), ship the agent, run "
                                   "`agent.py --probe`, and report the Python version and which runtimes import.",
                       formatter_class=HelpFormatter)
    p.add_argument("--config", type=Path, help="bench.toml to use")
    p.add_argument("--devices", help="comma-separated device names (default: all)")
    p.add_argument("--no-check", action="store_true", help="only list; do not connect")
    p.add_argument("--trust-new-hosts", action="store_true", help="add first-seen SSH host keys to known_hosts")
    p.set_defaults(func=run)


def line(result: DeviceCheck) -> str:
    """One line: reachable, Python version and the runtimes the device needs, or what is wrong."""
    if result.error is not None:
        return f"FAIL {result.error}"
    parts = [f"{r} {v}" if v is not None else f"{r} MISSING" for r, v in result.runtimes.items()]
    return f"{'ok  ' if result.ok else 'FAIL'} python {result.python}; " + ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    cfg = harness_config.load(args.config)
    devices = cfg.pick_devices(args.devices.split(",") if args.devices else list(cfg.devices))
    for d in devices:
        where = "this machine" if d.kind == "local" else f"ssh {d.host}"
        print(f"{d.name:12s} {d.display:24s} {where:24s} runtimes: {', '.join(d.runtimes)}")
    if args.no_check:
        return 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(devices))) as pool:
        results = list(pool.map(lambda d: check_device(d, args.trust_new_hosts), devices))
    for d, result in zip(devices, results):
        print(f"{d.name:12s} {line(result)}")
        for warning in result.warnings:
            print(f"{'':12s}   warning: {warning}")
    return 0 if all(r.ok for r in results) else 1
