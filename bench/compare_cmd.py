"""``python -m bench compare BASELINE CANDIDATE``: a regression report of one run against another.

Every job of the candidate run is compared with the same job of the baseline
run (same job key: model entry, variant, format, device, runtime, options,
batch size): change of the median latency with a bootstrap confidence
interval (over each record's interleaved rounds when both have them, else over
blocks of samples), classified as regressed / improved / unchanged against a
relative threshold (see ``results/regression.py`` for the statistics and the rule).
Writes ``report.md`` and ``report.html`` (figures embedded) into ``--out``
(default: ``ROOT/<CANDIDATE>/``, ROOT being ``--root`` or the config's, ``runs``
under the current directory), prints the summary on stdout, and exits with
status 4 when anything regressed (a slower job, or a job that was ok and now
fails), 0 otherwise (`bench.exit_codes`).

Run ids: as ``bench results runs`` lists them; ``baseline`` names the store's
baseline run (``bench nightly --promote`` sets it), ``latest`` the latest sweep.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from results.runs import pick_run
from results.store import Store

from . import exit_codes, vocab
from .options import HelpFormatter, int_at_least, non_negative_int, note, open_fraction, output_dir
from .runs import RUN_HELP, add_store_options, load_config, open_store, outputs_root, store_given

if TYPE_CHECKING:
    from results.regression import Comparison


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("compare", help=help, description=__doc__.split("\n\n")[1],
                       epilog="exit status: 0 no regression; 2 bad input; 4 a job regressed.",
                       formatter_class=HelpFormatter)
    add_store_options(p)
    p.add_argument("baseline", metavar="BASELINE", help=RUN_HELP)
    p.add_argument("candidate", metavar="CANDIDATE", help=RUN_HELP)
    add_report_options(p)
    p.set_defaults(func=run)


def threshold_arg(text: str) -> float:
    """``--threshold``: `results.regression.parse_threshold` (imported only when one is given), errors as argparse's."""
    from results import regression

    try:
        return regression.parse_threshold(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", type=threshold_arg, default=None,
                   help=f"relative change that counts, e.g. 0.05 or 5%% (default {vocab.REGRESSION_THRESHOLD})")
    p.add_argument("--confidence", type=open_fraction, default=vocab.CONFIDENCE,
                   help="confidence level of the intervals")
    p.add_argument("--resamples", type=int_at_least(100), default=vocab.RESAMPLES, help="bootstrap resamples per run")
    p.add_argument("--seed", type=non_negative_int, default=vocab.BOOTSTRAP_SEED, help="seed of the bootstrap")
    p.add_argument("--out", type=output_dir, help="folder for report.md, report.html and figures "
                                                  "(default: ROOT/<candidate run id>/)")


def report_dir(run_id: str, out: Path | None, root: Path) -> Path:
    """Where a run's reports go: ``--out``, else ``ROOT/<run id>/``.

    ROOT is relative to the current directory unless configured otherwise, so that
    a store kept outside the checkout (the nightly runner's) still leaves its
    reports where CI uploads them from.
    """
    return Path(out) if out else Path(root) / run_id


def compare_and_report(store: Store, baseline: dict, candidate: dict, args: argparse.Namespace,
                       threshold: float, root: Path) -> tuple[Comparison, dict[str, Path]]:
    """Compare two runs of the store, write the reports, print the summary; the comparison and the paths."""
    from results import regression, report

    candidate_records = store.records(candidate["run_id"])
    cmp = regression.compare_records(store.records(baseline["run_id"]), candidate_records, threshold=threshold,
                                     confidence=args.confidence, resamples=args.resamples, seed=args.seed,
                                     baseline_run=baseline, candidate_run=candidate)
    paths = report.write_reports(cmp, report_dir(candidate["run_id"], args.out, root), candidate_records)
    print(report.summary_markdown(cmp))
    sys.stdout.flush()
    note(args, f"reports: {paths['markdown']} {paths['html']}")
    return cmp, paths


def run(args: argparse.Namespace) -> int:
    from results import regression

    cfg = None if store_given(args) else load_config(args)
    store = open_store(args, cfg)
    baseline = pick_run(store, args.baseline, "baseline")
    candidate = pick_run(store, args.candidate, "candidate")
    threshold = regression.DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    cmp, _ = compare_and_report(store, baseline, candidate, args, threshold, outputs_root(args, cfg))
    return exit_codes.outcome(0, regressed=cmp.regressed)
