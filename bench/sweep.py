"""``python -m bench sweep``: models × formats × devices × batch sizes, timed on the devices.

The command fills a `harness.runner.SweepRequest` and calls `harness.runner.run_sweep`
(plan, export, run on every device in parallel, each record stored as it
arrives); then it prints the run's table on stdout, the same one ``bench table
--efficiency`` prints (speedups with their intervals, marked where they cannot
be trusted), and on stderr one line per failed job and a summary line counting
the planned jobs. The exit status (`bench.exit_codes`) is 3 when a planned job
has no ok record, 128 + the signal's number (130, 143) when Ctrl-C or SIGTERM
stopped the sweep.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import formats
from harness import config as harness_config
from results.store import Store

from . import exit_codes
from .options import (
    HelpFormatter,
    add_deprecated,
    add_quiet,
    bar_disable,
    names,
    note,
    positive_ints,
)
from .runs import RUN_HELP, add_store_options, load_config, store_location

if TYPE_CHECKING:
    from harness.runner import Outcome, SweepRequest


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("sweep", help=help,
                       description="Time models x formats x devices x batch sizes on the devices of bench.toml "
                                   "(devices in parallel, each device's jobs one at a time). Every record goes to "
                                   "the SQLite store as it arrives; --resume finishes an interrupted run. The table "
                                   "goes to stdout; the run line, bars, failed jobs and the summary to stderr.",
                       epilog="exit status: 0 every planned job ok; 2 bad input; 3 a planned job has no ok record; "
                              "130 / 143 interrupted (finish with --resume).",
                       formatter_class=HelpFormatter)
    add_store_options(p)
    p.add_argument("--sweep", metavar="NAME", help="start from the selection of [sweeps.NAME] in bench.toml (e.g. "
                                                   "'paper': every row of the paper's table); flags below override it")
    p.add_argument("--devices", type=names, help="comma-separated device names (default: the sweep's, or all)")
    p.add_argument("--models", type=names, help="comma-separated model entries; originals of pruned ones come along")
    p.add_argument("--formats", type=names, help=f"comma-separated artifact formats: {', '.join(formats.FORMATS)}")
    p.add_argument("--batch-size", type=positive_ints, metavar="N[,N...]",
                   help="comma-separated batch sizes, e.g. 1,8")
    add_deprecated(p, "--batch", "--batch-size", "batch_size", type=positive_ints)
    p.add_argument("--quick", action="store_true", help="fewer iterations ([measure.quick]): a smoke test, not a figure")
    p.add_argument("--resume", metavar="RUN", help=f"continue an interrupted run ({RUN_HELP}): only jobs without an "
                                                   "ok record run")
    p.add_argument("--no-tuned", action="store_true",
                   help="ignore the runtime settings `bench tune` stored: run with bench.toml's options and the "
                        "runtimes' defaults (records say where each option came from)")
    p.add_argument("--trust-new-hosts", action="store_true",
                   help="add first-seen SSH host keys to known_hosts (changed keys are always refused)")
    add_quiet(p)
    p.set_defaults(func=run)


def sweep_with_bars(cfg: harness_config.Config, store: Store, request: SweepRequest,
                    args: argparse.Namespace) -> Outcome:
    """`run_sweep` with a run line and export / per-device progress bars on stderr (also used by ``bench nightly``)."""
    from harness.runner import run_sweep

    from .progress import SweepBars, logging_above_bars

    progress = SweepBars(store.path, disable=bar_disable(args), say=lambda text: note(args, text))
    try:
        with logging_above_bars():
            return run_sweep(cfg, store, request, progress)
    finally:
        progress.close()


def print_outcome(outcome: Outcome, cfg: harness_config.Config, store: Store, args: argparse.Namespace) -> None:
    """The run's table (exactly ``bench table --efficiency``) on stdout; failed jobs and a summary on stderr."""
    from results.table import TableError

    from .table_cmd import table_text

    try:
        sys.stdout.write(table_text(cfg, store, outcome.run_id, efficiency=True))
        sys.stdout.flush()
    except TableError as exc:
        print(f"(no table: {exc})", file=sys.stderr)
    for r in outcome.errors:
        print(f"error: {r['device']} {r['model']} {r['variant']} {r['format']} bs{r['batch_size']}: "
              f"[{r['error_stage']}] {r['error_message']}", file=sys.stderr)
    sent = ", ".join(f"{name} {n / 1e6:.1f} MB" for name, n in outcome.uploaded.items())
    unrecorded = outcome.not_ok - len(outcome.errors)  # only an interrupt during the exports leaves such jobs
    note(args, f"run {outcome.run_id}: {outcome.planned} planned: {outcome.ok} ok, {len(outcome.errors)} error(s)"
               f"{f', {unrecorded} not run' if unrecorded > 0 else ''}"
               f"{f'; interrupted by {outcome.interrupted}' if outcome.interrupted else ''}; "
               f"uploaded: {sent or 'nothing'}; store {store.path}")


def run(args: argparse.Namespace) -> int:
    from harness.runner import SweepInterrupted, SweepRequest

    cfg = load_config(args)
    store = Store(store_location(args, cfg))
    given = {"devices": args.devices, "models": args.models, "formats": args.formats, "batch": args.batch_size,
             "quick": args.quick}
    selection = {**(cfg.named_sweep(args.sweep) if args.sweep else {}), **{k: v for k, v in given.items() if v}}
    selection.pop("threshold", None)  # a nightly setting; a plain sweep compares nothing
    request = SweepRequest(**selection, resume=args.resume, trust_new_hosts=args.trust_new_hosts,
                           tuned=not args.no_tuned)
    try:
        outcome = sweep_with_bars(cfg, store, request, args)
    except SweepInterrupted as stop:  # the agents are stopped and the run is marked: show what it has, 128 + signal
        print_outcome(stop.outcome, cfg, store, args)
        print(f"run {stop.outcome.run_id} interrupted; finish it with --resume {stop.outcome.run_id}",
              file=sys.stderr)
        return exit_codes.interrupted(stop.signum)
    print_outcome(outcome, cfg, store, args)
    return exit_codes.outcome(outcome.not_ok)
