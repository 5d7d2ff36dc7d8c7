"""``python -m bench COMMAND``: one sub-command per stage of the pipeline.

Each command lives in its own module exposing ``add_parser(subparsers)`` (which
sets ``func``) so this file only wires them up. Errors a user can fix (unknown
model, bad ratio, missing files) are printed as one ``error:`` line with exit
status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from devices.transport import PROTOCOL
from harness.config import ConfigError
from harness.latency_model import TargetLatencyError
from results.store import StoreError
from snp_core import __version__
from snp_core.errors import SNPError

from . import (
    ablation,
    compare_cmd,
    compress,
    devices_cmd,
    figures_cmd,
    finetune_cmd,
    inspect_plan,
    nightly_cmd,
    results_cmd,
    sweep,
    table_cmd,
)

COMMANDS = (compress, inspect_plan, sweep, devices_cmd, results_cmd, table_cmd, figures_cmd, compare_cmd, nightly_cmd, ablation, finetune_cmd)
#: Errors caused by the user's input: printed as one line, exit status 2.
USER_ERRORS: tuple[type[Exception], ...] = (SNPError, ConfigError, TargetLatencyError, StoreError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Prune Vision Transformers with SNP and measure how much faster they run on real devices.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version",
                        version=f"snp-bench {__version__} (device agent protocol {PROTOCOL})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s",
                        stream=sys.stderr)
    try:
        return args.func(args) or 0
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
