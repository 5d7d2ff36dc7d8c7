"""``python -m bench compare BASELINE CANDIDATE``: a regression report of one run against another.

Every job of the candidate run is compared with the same job of the baseline
run (same job key: model entry, variant, format, device, runtime, options,
batch size): change of the median latency with a bootstrap confidence
interval (over each record's interleaved rounds when both have them, else over
blocks of samples), classified as regressed / improved / unchanged against a
relative threshold (see ``results/regression.py`` for the statistics and the rule).
Writes ``report.md`` and ``report.html`` (figures embedded) into ``--out``
(default: ``runs/<CANDIDATE>/`` under the current directory), prints
the summary, and exits with status 1 when anything regressed (a slower job,
or a job that was ok and now fails), 0 otherwise.

Run ids: as ``bench results runs`` lists them; ``baseline`` names the store's
baseline run (``bench nightly --promote`` sets it), ``latest`` the latest sweep.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness import config as harness_config
from results import regression, report
from results.runs import pick_run
from results.store import Store

from .options import HelpFormatter
from .runs import add_store_options, open_store


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="regression report: a run against a baseline run, job by job",
                       description=__doc__.split("\n\n")[1],
                       formatter_class=HelpFormatter)
    add_store_options(p)
    p.add_argument("baseline", metavar="BASELINE", help="baseline run id, or 'baseline' (the store's baseline run)")
    p.add_argument("candidate", metavar="CANDIDATE", help="candidate run id, or 'latest' (the latest sweep)")
    add_report_options(p)
    p.set_defaults(func=run)


def threshold_arg(text: str) -> float:
    """``--threshold``: `results.regression.parse_threshold`, its error as argparse's."""
    try:
        return regression.parse_threshold(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", type=threshold_arg, default=None,
                   help=f"relative change that counts, e.g. 0.05 or 5%% (default {regression.DEFAULT_THRESHOLD})")
    p.add_argument("--confidence", type=float, default=regression.DEFAULT_CONFIDENCE,
                   help="confidence level of the intervals")
    p.add_argument("--resamples", type=int, default=regression.DEFAULT_RESAMPLES, help="bootstrap resamples per run")
    p.add_argument("--seed", type=int, default=regression.DEFAULT_SEED, help="seed of the bootstrap")
    p.add_argument("--out", type=Path, help="folder for report.md, report.html and figures "
                                            "(default: runs/<candidate run id>/)")


def report_dir(run_id: str, out: Path | None) -> Path:
    """Where a run's reports go: ``--out``, else ``runs/<run id>/`` under the current directory.

    Under the current directory rather than beside the store, so that a store
    kept outside the checkout (the nightly runner's) still leaves its reports
    where CI uploads them from.
    """
    return Path(out) if out else Path("runs") / run_id


def compare_and_report(store: Store, baseline: dict, candidate: dict, args: argparse.Namespace,
                       threshold: float) -> tuple[regression.Comparison, dict[str, Path]]:
    """Compare two runs of the store, write the reports, print the summary; the comparison and the paths."""
    candidate_records = store.records(candidate["run_id"])
    cmp = regression.compare_records(store.records(baseline["run_id"]), candidate_records, threshold=threshold,
                                     confidence=args.confidence, resamples=args.resamples, seed=args.seed,
                                     baseline_run=baseline, candidate_run=candidate)
    paths = report.write_reports(cmp, report_dir(candidate["run_id"], args.out), candidate_records)
    print(report.summary_markdown(cmp))
    print(f"reports: {paths['markdown']} {paths['html']}", flush=True)
    return cmp, paths


def _check_stats_options(args: argparse.Namespace) -> None:
    if not 0 < args.confidence < 1:
        raise harness_config.ConfigError(f"--confidence must be between 0 and 1, got {args.confidence}")
    if args.resamples < 100:
        raise harness_config.ConfigError(f"--resamples must be at least 100, got {args.resamples}")


def run(args: argparse.Namespace) -> int:
    _check_stats_options(args)
    store = open_store(args)
    baseline = pick_run(store, args.baseline, "baseline")
    candidate = pick_run(store, args.candidate, "candidate")
    threshold = regression.DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    cmp, _ = compare_and_report(store, baseline, candidate, args, threshold)
    return 1 if cmp.regressed else 0
