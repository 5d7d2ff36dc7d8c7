"""``python -m bench figures``: the paper's figures (PNG + PDF) from one run of the record store.

The figures are the result; the files written (and any figure skipped, with
why) are listed on stderr, one line per kind, unless ``--quiet``.
"""

from __future__ import annotations

import argparse

from harness import config as harness_config
from results.runs import pick_run

from . import exit_codes, vocab
from .options import HelpFormatter, add_quiet, note, output_dir
from .runs import add_run_option, add_store_options, load_config, open_store, outputs_root, store_given


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("figures", help=help,
                       description="Draw the paper's figures from a run of the record store, as PNG (200 dpi) and "
                                   "PDF: latency vs params, top-1 vs latency (when bench.toml gives top1), speedup "
                                   "bars with their 95 % confidence intervals and the MACs ratio, and the latency "
                                   "distribution of every measurement.",
                       formatter_class=HelpFormatter)
    add_store_options(p)
    add_run_option(p)
    p.add_argument("--out", type=output_dir, help="output folder (default: ROOT/<run_id>/figures)")
    p.add_argument("--only", action="append", choices=vocab.FIGURES, metavar="KIND",
                   help=f"draw only this kind (repeatable): {', '.join(vocab.FIGURES)}")
    add_quiet(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from results.figures import make_figures

    cfg = None if store_given(args) else load_config(args)
    store = open_store(args, cfg)
    run_id = pick_run(store, args.run)["run_id"]
    records = store.records(run_id, status="ok")
    if not records:
        raise harness_config.ConfigError(f"run {run_id} has no successful records: nothing to plot")
    out = args.out or outputs_root(args, cfg) / run_id / "figures"
    for kind, result in make_figures(records, out, args.only).items():
        if result.paths:
            note(args, f"{kind}: {', '.join(str(p) for p in result.paths)}")
        else:
            note(args, f"{kind}: skipped, {result.skipped}")
    return exit_codes.OK
