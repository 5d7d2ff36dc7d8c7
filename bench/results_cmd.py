"""``python -m bench results …``: read the record store (list runs, export records)."""

from __future__ import annotations

import argparse
from pathlib import Path

from results.export import FORMATS, export
from results.runs import pick_run

from .options import HelpFormatter
from .runs import add_store_options, open_store


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("results", help="list runs or export records from the store",
                       description="Read the SQLite record store written by `bench sweep`.",
                       formatter_class=HelpFormatter)
    add_store_options(p)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("runs", help="list runs, newest last")
    e = actions.add_parser("export", help="write records as csv, parquet or jsonl", formatter_class=HelpFormatter)
    e.add_argument("--format", required=True, choices=FORMATS, help="output format")
    e.add_argument("--run", help="run id (default: every run)")
    e.add_argument("--out", type=Path, help="output file (default: runs/export.<format>)")
    e.add_argument("--samples", action="store_true", help="csv: include raw samples as a JSON column")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    store = open_store(args)
    if args.action == "runs":
        for r in store.runs():
            mark = " (baseline)" if r.get("is_baseline") else ""
            print(f"{r['run_id']}  {r['status']:11s} git {r['git_rev']}  {store.count(r['run_id'])} records{mark}")
        return 0
    if args.run:
        pick_run(store, args.run)
    out = args.out or Path("runs") / f"export.{args.format}"
    count = export(store, args.run, args.format, out, include_samples=args.samples)
    print(f"wrote {count} records to {out}")
    return 0
