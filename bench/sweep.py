"""``python -m bench sweep``: models × formats × devices × batch sizes, timed on the devices.

The command fills a `harness.runner.SweepRequest` and calls `harness.runner.run_sweep`
(plan, export, run on every device in parallel, each record stored as it
arrives); then it prints the run's table, the same one ``bench table
--efficiency`` prints (speedups with their intervals, marked where they cannot
be trusted), one line per failed job, and a summary line counting the planned
jobs. The exit status is 1 when a planned job has no ok record, 128 + the
signal's number (130, 143) when Ctrl-C or SIGTERM stopped the sweep.
"""

from __future__ import annotations

import argparse
import sys

from harness import config as harness_config
from harness.runner import Outcome, SweepInterrupted, SweepRequest, run_sweep
from results.store import Store
from results.table import TableError

from .options import HelpFormatter
from .progress import SweepBars
from .runs import add_store_options
from .table_cmd import table_text


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="time original and pruned models on the configured devices",
                       description="Time models x formats x devices x batch sizes on the devices of bench.toml "
                                   "(devices in parallel, each device's jobs one at a time). Every record goes to "
                                   "the SQLite store as it arrives; --resume finishes an interrupted run.",
                       formatter_class=HelpFormatter)
    add_store_options(p)
    p.add_argument("--sweep", metavar="NAME", help="start from the selection of [sweeps.NAME] in bench.toml (e.g. "
                                                   "'paper': every row of the paper's table); flags below override it")
    p.add_argument("--devices", type=csv, help="comma-separated device names (default: the sweep's, or all)")
    p.add_argument("--models", type=csv, help="comma-separated model entries; originals of pruned ones come along")
    p.add_argument("--formats", type=csv, help=f"comma-separated formats: {', '.join(harness_config.FORMATS)}")
    p.add_argument("--batch", type=csv_int, help="comma-separated batch sizes, e.g. 1,8")
    p.add_argument("--quick", action="store_true", help="fewer iterations ([measure.quick]): a smoke test, not a figure")
    p.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted run: only jobs without an ok record run")
    p.add_argument("--trust-new-hosts", action="store_true",
                   help="add first-seen SSH host keys to known_hosts (changed keys are always refused)")
    p.set_defaults(func=run)


def csv(text: str) -> list[str]:
    """A comma-separated list of names."""
    return [t.strip() for t in text.split(",") if t.strip()]


def csv_int(text: str) -> list[int]:
    """Comma-separated positive integers (batch sizes)."""
    try:
        values = [int(t) for t in csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes {text!r} must be comma-separated positive integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes {text!r} must be comma-separated positive integers")
    return values


def sweep_with_bars(cfg: harness_config.Config, store: Store, request: SweepRequest, bars: bool = True) -> Outcome:
    """`run_sweep` with a run line and per-device progress bars (also used by ``bench nightly``)."""
    progress = SweepBars(store.path, enabled=bars)
    try:
        return run_sweep(cfg, store, request, progress)
    finally:
        progress.close()


def print_outcome(outcome: Outcome, cfg: harness_config.Config, store: Store) -> None:
    """The run's table (exactly ``bench table --efficiency``), one line per failed job, and a summary line."""
    try:
        print(table_text(cfg, store, outcome.run_id, efficiency=True), end="")
    except TableError as exc:
        print(f"(no table: {exc})")
    for r in outcome.errors:
        print(f"error: {r['device']} {r['model']} {r['variant']} {r['format']} bs{r['batch_size']}: "
              f"[{r['error_stage']}] {r['error_message']}")
    sent = ", ".join(f"{name} {n / 1e6:.1f} MB" for name, n in outcome.uploaded.items())
    unrecorded = outcome.not_ok - len(outcome.errors)  # only an interrupt during the exports leaves such jobs
    print(f"run {outcome.run_id}: {outcome.planned} planned: {outcome.ok} ok, {len(outcome.errors)} error(s)"
          f"{f', {unrecorded} not run' if unrecorded > 0 else ''}"
          f"{f'; interrupted by {outcome.interrupted}' if outcome.interrupted else ''}; "
          f"uploaded: {sent or 'nothing'}; store {store.path}")


def run(args: argparse.Namespace) -> int:
    cfg = harness_config.load(args.config)
    store = Store(args.store or cfg.store)
    given = {"devices": args.devices, "models": args.models, "formats": args.formats, "batch": args.batch,
             "quick": args.quick}
    selection = {**(cfg.named_sweep(args.sweep) if args.sweep else {}), **{k: v for k, v in given.items() if v}}
    selection.pop("threshold", None)  # a nightly setting; a plain sweep compares nothing
    request = SweepRequest(**selection, resume=args.resume, trust_new_hosts=args.trust_new_hosts)
    try:
        outcome = sweep_with_bars(cfg, store, request)
    except SweepInterrupted as stop:  # the agents are stopped and the run is marked: show what it has, 128 + signal
        print_outcome(stop.outcome, cfg, store)
        print(f"run {stop.outcome.run_id} interrupted; finish it with --resume {stop.outcome.run_id}",
              file=sys.stderr)
        return 128 + stop.signum
    print_outcome(outcome, cfg, store)
    return 1 if outcome.not_ok else 0

