"""``python -m bench tune``: find each model's fastest runtime settings on each device and store them.

The command fills a `harness.tune.TuneRequest` and calls `harness.tune.tune`
(docs/tuning.md: what is searched, the winner rule, where it is stored); it
prints one row per tuned model on stdout (the winner against the defaults),
and on stderr a line per search stage, per model that could not be tuned, and
a summary. Later ``bench sweep`` runs use the stored winners (``--no-tuned``
ignores them). Exit status 3 when a model could not be tuned.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import formats
from results.store import Store

from . import exit_codes
from .options import HelpFormatter, add_quiet, names, note, positive_ints
from .runs import add_store_options, load_config, store_location

if TYPE_CHECKING:
    from harness.tune import TuneResult


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser(
        "tune", help=help,
        description="Measure runtime settings on each device (onnxruntime: threads, graph optimisation level, "
                    "execution mode, thread spinning; PyTorch: threads) for every selected model entry, original "
                    "and pruned each on its own, and store the fastest with the device. A coordinate search from "
                    "the defaults: one setting at a time, its candidates timed together with the current best in "
                    "interleaved rounds; a candidate wins only when its median per-round ratio is more than 2 % "
                    "below 1 and it is faster in at least 80 % of the rounds. Options bench.toml sets for a device "
                    "are fixed, never tuned. Later `bench sweep` runs use the winners for the options bench.toml "
                    "leaves open (`bench sweep --no-tuned` ignores them), so original and pruned are each timed at "
                    "their best. Details: docs/tuning.md.",
        epilog="exit status: 0 every selected model tuned; 2 bad input; 3 a model could not be tuned; 130 / 143 "
               "interrupted.",
        formatter_class=HelpFormatter)
    add_store_options(p)
    p.add_argument("--devices", type=names, help="comma-separated device names (default: the sweep's, or all)")
    p.add_argument("--models", type=names, help="comma-separated model entries; originals of pruned ones come along")
    p.add_argument("--formats", type=names, help=f"comma-separated artifact formats: {', '.join(formats.FORMATS)}")
    p.add_argument("--batch-size", type=positive_ints, metavar="N[,N...]",
                   help="comma-separated batch sizes, e.g. 1,8 (each is tuned on its own)")
    p.add_argument("--quick", action="store_true",
                   help="fewer iterations and rounds ([measure.quick]): a smoke test; the winner rule then has "
                        "less evidence and the defaults win more often")
    p.add_argument("--trust-new-hosts", action="store_true",
                   help="add first-seen SSH host keys to known_hosts (changed keys are always refused)")
    add_quiet(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.tune import TuneRequest, tune

    cfg = load_config(args)
    store = Store(store_location(args, cfg))
    request = TuneRequest(devices=args.devices, models=args.models, formats=args.formats, batch=args.batch_size,
                          quick=args.quick, trust_new_hosts=args.trust_new_hosts)
    result = tune(cfg, store, request, _progress(args))
    print_result(result, store, args)
    return exit_codes.outcome(len(result.failures))


def _progress(args: argparse.Namespace):  # noqa: ANN202 - a harness.tune.TuneProgress, imported with the harness
    from harness.tune import TuneProgress

    class Lines(TuneProgress):
        """One stderr line per search stage (no bars: a stage is one agent run, minutes at full settings)."""

        def stage(self, device: str, subject: str, option: str, candidates: int) -> None:
            note(args, f"{device}: {subject}: {option}: timing {candidates} candidates together")

    return Lines()


def print_result(result: TuneResult, store: Store, args: argparse.Namespace) -> None:
    """The winners against the defaults on stdout (markdown); failures, skips and a summary on stderr."""
    from results.records import options_key

    if result.tuned:
        print("| device | model | runtime | format | bs | fixed in bench.toml | winner | default ms | tuned ms "
              "| tuned / default |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for t in result.tuned:
            winner = options_key(t.settings) if t.settings else "(the defaults)"
            fixed = options_key(t.fixed) if t.fixed else ""
            print(f"| {t.device} | {t.entry} | {formats.display_runtime(t.runtime)} | {formats.display_format(t.fmt)} "
                  f"| {t.batch} | {fixed} | {winner} | {t.default_ms:.4g} | {t.best_ms:.4g} | {t.ratio:.3f} |")
        sys.stdout.flush()
    for line in result.skipped:
        print(f"warning: not tuned: {line}", file=sys.stderr)
    for line in result.failures:
        print(f"error: {line}", file=sys.stderr)
    note(args, f"run {result.run_id}: {len(result.tuned)} tuned, {len(result.failures)} failed, "
               f"{len(result.skipped)} with nothing to tune; stored in {store.path} (table tuned_settings)")
