"""``python -m bench nightly``: run the nightly sweep, compare it with the baseline run, report, maybe promote.

1. Runs the sweep configured as ``[sweeps.nightly]`` in bench.toml (``--sweep
   NAME`` for another ``[sweeps.NAME]``; without a ``[sweeps.nightly]`` table
   the ``[sweep]`` defaults are used, and it says so).  A sweeps table takes
   the keys of ``bench sweep``'s selection (``devices``, ``models``,
   ``formats``, ``batch``, ``quick``) plus ``threshold``, this sweep's
   regression threshold (``--threshold`` overrides it)::

       [sweeps.nightly]
       devices = ["pi", "jetson"]
       models = ["deit_tiny", "deit_tiny_snp"]
       formats = ["onnx", "trt"]
       batch = [1]
       threshold = 0.05

2. Compares the new run with ``--baseline RUN_ID``, else the store's baseline
   run (the one last promoted), exactly as ``bench compare`` does, and writes
   ``report.md`` / ``report.html`` into ``runs/<new run id>/`` (``--out`` for another folder).
   Without any baseline yet, the report says so and the exit status is 0.
3. ``--promote`` marks the new run as the baseline, only when it had no error
   and, unless ``--force``, no regression.

Exit status: 1 when anything regressed (a slower job, or an ok job that now
fails), 0 otherwise; 2 for a configuration error.
"""

from __future__ import annotations

import argparse
import sys

from harness import config as harness_config
from harness.runner import SweepRequest
from results import regression, report
from results.runs import pick_run

from .compare_cmd import (
    _check_stats_options,
    add_report_options,
    compare_and_report,
    report_dir,
)
from .options import HelpFormatter
from .runs import add_store_options, open_store
from .sweep import sweep_with_bars


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("nightly", help="run the nightly sweep, compare with the baseline run, report regressions",
                       description=__doc__.split("\n\n")[0].split(": ", 1)[1]
                       + " Exit status 1 when anything regressed.", formatter_class=HelpFormatter)
    add_store_options(p)
    p.add_argument("--sweep", metavar="NAME", help=f"run [sweeps.NAME] of bench.toml (default: {harness_config.NIGHTLY_SWEEP}; "
                                                   "falls back to [sweep] when bench.toml has no [sweeps.nightly])")
    p.add_argument("--baseline", metavar="RUN_ID", help="compare with this run instead of the store's baseline")
    p.add_argument("--promote", action="store_true",
                   help="make the new run the baseline when it had no error and no regression")
    p.add_argument("--force", action="store_true", help="with --promote: promote despite a regression (never "
                                                        "despite errors)")
    p.add_argument("--trust-new-hosts", action="store_true",
                   help="add first-seen SSH host keys to known_hosts (changed keys are always refused)")
    add_report_options(p)
    p.set_defaults(func=run)


def _promote(store, run_id: str, errors: int, regressed: bool, force: bool) -> None:
    if errors:
        print(f"not promoted: run {run_id} had {errors} error(s); a baseline must be complete")
    elif regressed and not force:
        print(f"not promoted: run {run_id} regressed (use --force to promote it anyway)")
    else:
        store.set_baseline(run_id)
        print(f"run {run_id} is now the baseline")


def run(args: argparse.Namespace) -> int:
    _check_stats_options(args)
    if args.force and not args.promote:
        raise harness_config.ConfigError("--force only applies to --promote")
    cfg = harness_config.load(args.config)
    selection, sweep_threshold, described = cfg.nightly_sweep(args.sweep)
    store = open_store(args, cfg, must_exist=False)
    # resolve the baseline before spending an hour on the sweep: a typo fails now
    baseline = pick_run(store, args.baseline, "baseline") if args.baseline else store.baseline()
    threshold = (args.threshold if args.threshold is not None else
                 sweep_threshold if sweep_threshold is not None else regression.DEFAULT_THRESHOLD)
    print(f"nightly: {described}; baseline: "
          f"{baseline['run_id'] if baseline else 'none yet'}; threshold {threshold * 100:g} %", flush=True)

    outcome = sweep_with_bars(cfg, store, SweepRequest(**selection, trust_new_hosts=args.trust_new_hosts),
                              bars=sys.stderr.isatty())
    run_id = outcome.run_id
    candidate = store.get_run(run_id) or {"run_id": run_id}
    errors = len(outcome.errors)

    if baseline is None:
        hint = ("Run `python -m bench nightly --promote` to make a run without errors the baseline; later "
                "nightlies are compared with it." if not args.promote else
                "With --promote this run becomes the baseline if it had no error.")
        paths = report.write_no_baseline(candidate, outcome.records, report_dir(run_id, args.out), hint)
        print(f"# Nightly run `{run_id}`\n\n**No baseline to compare with.** {hint}\n\n"
              f"{len(outcome.records) - errors} job(s) ok, {errors} error(s).")
        print(f"reports: {paths['markdown']} {paths['html']}")
        if args.promote:
            _promote(store, run_id, errors, False, args.force)
        return 0

    cmp, _ = compare_and_report(store, baseline, candidate, args, threshold)
    if args.promote:
        _promote(store, run_id, errors, cmp.regressed, args.force)
    return 1 if cmp.regressed else 0
