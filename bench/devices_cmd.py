"""``python -m bench devices``: list the configured devices and check each one.

The listing and each device's check line are the result (stdout); the exit
status is 3 (`bench.exit_codes.JOB_FAILED`) when a device is not usable.
"""

from __future__ import annotations

import argparse
import concurrent.futures

from devices.check import DeviceCheck, check_device

from . import exit_codes
from .options import HelpFormatter, names
from .runs import add_config_options, load_config


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("devices", help=help,
                       description="For every device: connect (SSH host key verified), ship the agent, run "
                                   "`agent.py --probe`, and report the Python version and which runtimes import.",
                       epilog="exit status: 0 every device usable; 2 bad input; 3 a device is not usable.",
                       formatter_class=HelpFormatter)
    add_config_options(p)
    p.add_argument("--devices", type=names, help="comma-separated device names (default: all)")
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
    cfg = load_config(args)
    devices = cfg.pick_devices(args.devices or list(cfg.devices))
    for d in devices:
        where = "this machine" if d.kind == "local" else f"ssh {d.host}"
        print(f"{d.name:12s} {d.display:24s} {where:24s} runtimes: {', '.join(d.runtimes)}")
    if args.no_check:
        return exit_codes.OK
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(devices))) as pool:
        results = list(pool.map(lambda d: check_device(d, args.trust_new_hosts), devices))
    for d, result in zip(devices, results):
        print(f"{d.name:12s} {line(result)}")
        for warning in result.warnings:
            print(f"{'':12s}   warning: {warning}")
    return exit_codes.outcome(sum(not r.ok for r in results))
