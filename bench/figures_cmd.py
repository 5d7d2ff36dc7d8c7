"""``python -m bench figures``: the paper's figures (PNG + PDF) from one run of the record store."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness import config as harness_config
from results.figures import FIGURES, make_figures
from results.runs import pick_run

from .options import HelpFormatter
from .runs import add_run_option, add_store_options, open_store


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("figures", help="draw latency, accuracy, speedup and distribution figures of a run",
                       description="Draw the paper's figures from a run of the record store, as PNG (200 dpi) and "
                                   "PDF: latency vs params, top-1 vs latency (when bench.toml gives top1), speedup "
                                   "bars with their 95 % confidence intervals and the MACs ratio, and the latency "
                                   "distribution of every measurement.",
                       formatter_class=HelpFormatter)
    add_store_options(p)
    add_run_option(p)
    p.add_argument("--out", type=Path, help="output folder (default: runs/<run_id>/figures)")
    p.add_argument("--only", action="append", choices=list(FIGURES), metavar="KIND",
                   help=f"draw only this kind (repeatable): {', '.join(FIGURES)}")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    store = open_store(args)
    run_id = pick_run(store, args.run)["run_id"]
    records = store.records(run_id, status="ok")
    if not records:
        raise harness_config.ConfigError(f"run {run_id} has no successful records: nothing to plot")
    out = args.out or Path("runs") / run_id / "figures"
    for kind, result in make_figures(records, out, args.only).items():
        if result.paths:
            print(f"{kind}: {', '.join(str(p) for p in result.paths)}")
        else:
            print(f"{kind}: skipped, {result.skipped}")
    return 0
