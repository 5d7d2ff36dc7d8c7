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

Exit status (`bench.exit_codes`): 4 when anything regressed (a slower job, or
an ok job that now fails), else 3 when a planned job has no ok record, else 0;
2 for bad input (flags, bench.toml); 130 / 143 when interrupted.
The report's summary goes to stdout, every other line to stderr.
"""

from __future__ import annotations

import argparse
import sys

from harness import config as harness_config
from results.runs import pick_run

from . import exit_codes
from .compare_cmd import add_report_options, compare_and_report, report_dir
from .options import HelpFormatter, UsageError, add_quiet, note
from .runs import RUN_HELP, add_store_options, load_config, open_store, outputs_root
from .sweep import sweep_with_bars


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("nightly", help=help, description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                       epilog="exit status: 0 ok; 2 bad input; 3 a planned job has no ok record; 4 a job regressed "
                              "(wins over 3); 130 / 143 interrupted.", formatter_class=HelpFormatter)
    add_store_options(p)
    p.add_argument("--sweep", metavar="NAME", help=f"run [sweeps.NAME] of bench.toml (default: {harness_config.NIGHTLY_SWEEP}; "
                                                   "falls back to [sweep] when bench.toml has no [sweeps.nightly])")
    p.add_argument("--baseline", metavar="RUN", help=f"compare with this run ({RUN_HELP}) instead of the store's "
                                                     "baseline")
    p.add_argument("--promote", action="store_true",
                   help="make the new run the baseline when it had no error and no regression")
    p.add_argument("--force", action="store_true", help="with --promote: promote despite a regression (never "
                                                        "despite errors)")
    p.add_argument("--trust-new-hosts", action="store_true",
                   help="add first-seen SSH host keys to known_hosts (changed keys are always refused)")
    add_report_options(p)
    add_quiet(p)
    p.set_defaults(func=run)


def _promote(store, run_id: str, errors: int, regressed: bool, args: argparse.Namespace) -> None:
    if errors:
        print(f"warning: not promoted: run {run_id} had {errors} error(s); a baseline must be complete",
              file=sys.stderr)
    elif regressed and not args.force:
        print(f"warning: not promoted: run {run_id} regressed (use --force to promote it anyway)", file=sys.stderr)
    else:
        store.set_baseline(run_id)
        note(args, f"run {run_id} is now the baseline")


def run(args: argparse.Namespace) -> int:
    from harness.runner import SweepRequest
    from results import regression, report

    if args.force and not args.promote:
        raise UsageError("--force only applies to --promote")
    cfg = load_config(args)
    selection, sweep_threshold, described = cfg.nightly_sweep(args.sweep)
    store = open_store(args, cfg, must_exist=False)
    # resolve the baseline before spending an hour on the sweep: a typo fails now
    baseline = pick_run(store, args.baseline, "baseline") if args.baseline else store.baseline()
    threshold = (args.threshold if args.threshold is not None else
                 sweep_threshold if sweep_threshold is not None else regression.DEFAULT_THRESHOLD)
    note(args, f"nightly: {described}; baseline: "
               f"{baseline['run_id'] if baseline else 'none yet'}; threshold {threshold * 100:g} %")

    outcome = sweep_with_bars(cfg, store, SweepRequest(**selection, trust_new_hosts=args.trust_new_hosts), args)
    root = outputs_root(args, cfg)
    run_id = outcome.run_id
    candidate = store.get_run(run_id) or {"run_id": run_id}
    errors = len(outcome.errors)

    if baseline is None:
        hint = ("Run `python -m bench nightly --promote` to make a run without errors the baseline; later "
                "nightlies are compared with it." if not args.promote else
                "With --promote this run becomes the baseline if it had no error.")
        paths = report.write_no_baseline(candidate, outcome.records, report_dir(run_id, args.out, root), hint)
        print(f"# Nightly run `{run_id}`\n\n**No baseline to compare with.** {hint}\n\n"
              f"{len(outcome.records) - errors} job(s) ok, {errors} error(s).", flush=True)
        note(args, f"reports: {paths['markdown']} {paths['html']}")
        if args.promote:
            _promote(store, run_id, errors, False, args)
        return exit_codes.outcome(outcome.not_ok)

    cmp, _ = compare_and_report(store, baseline, candidate, args, threshold, root)
    if args.promote:
        _promote(store, run_id, errors, cmp.regressed, args)
    return exit_codes.outcome(outcome.not_ok, regressed=cmp.regressed)
