"""``python -m bench results …``: read the record store (list runs, export records)."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from results.runs import pick_run
from results.store import StoreError

from . import exit_codes, vocab
from .options import STDOUT, HelpFormatter, note, output_file
from .runs import (
    RUN_HELP,
    add_store_options,
    load_config,
    open_store,
    outputs_root,
    store_given,
)


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("results", help=help,
                       description="Read the results store written by `bench sweep` (a SQLite file or a "
                                   "PostgreSQL database), or push its runs into another (a lab's shared store).",
                       formatter_class=HelpFormatter)
    add_store_options(p)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("runs", help="list runs, newest last")
    e = actions.add_parser("export", help="write records as csv, parquet or jsonl", formatter_class=HelpFormatter)
    e.add_argument("--format", required=True, choices=vocab.EXPORT_FORMATS, help="file format of the export")
    e.add_argument("--run", help=f"{RUN_HELP}; default: every run")
    e.add_argument("--out", type=output_file, help="output file, '-' for stdout (default: ROOT/export.<format>)")
    e.add_argument("--samples", action="store_true", help="csv: include raw samples as a JSON column")
    u = actions.add_parser("push", help="copy runs into another store, e.g. the lab's PostgreSQL one (idempotent)",
                           description="Copy runs with their records and latency profiles into the store --to names. "
                                       "Runs are matched by id and records by job, so pushing again copies only "
                                       "what is new; baseline marks stay in the store that made them.",
                           formatter_class=HelpFormatter)
    u.add_argument("--to", required=True, metavar="PATH|URL", help="the target store: a postgresql:// URL or a "
                                                                   "SQLite file (created if missing)")
    u.add_argument("--run", action="append", help=f"{RUN_HELP}; repeat for several (default: every run)")
    p.set_defaults(func=run)


def _export_to_stdout(store: object, run_id: str | None, fmt: str, include_samples: bool) -> int:
    """`results.export.export` into a temporary file, then its bytes on stdout (parquet is binary)."""
    from results.export import export

    with tempfile.TemporaryDirectory(prefix="snp-export-") as tmp:
        path = Path(tmp) / f"export.{fmt}"
        count = export(store, run_id, fmt, path, include_samples=include_samples)
        sys.stdout.flush()
        with path.open("rb") as f:
            shutil.copyfileobj(f, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    return count


def run(args: argparse.Namespace) -> int:
    from results.export import export

    cfg = None if store_given(args) else load_config(args)
    store = open_store(args, cfg)
    if args.action == "runs":
        for r in store.runs():
            mark = " (baseline)" if r.get("is_baseline") else ""
            print(f"{r['run_id']}  {r['status']:11s} git {r['git_rev']}  {store.count(r['run_id'])} records{mark}")
        return exit_codes.OK
    if args.action == "push":
        from results.store import Store, describe, location, push
        from results.store_backends import BackendError, check_url, is_url

        if is_url(args.to):
            try:
                check_url(args.to, "--to")
            except BackendError as exc:
                raise StoreError(str(exc)) from None
        with Store(location(args.to, None)) as target:
            report = push(store, target, [pick_run(store, r)["run_id"] for r in args.run] if args.run else None)
        note(args, f"pushed {describe(store.path)} to {describe(args.to)}: {report.summary()}")
        return exit_codes.OK
    run_id = pick_run(store, args.run)["run_id"] if args.run else None  # `latest` and `baseline` as everywhere
    if args.out == STDOUT:
        count = _export_to_stdout(store, run_id, args.format, args.samples)
        note(args, f"wrote {count} records to stdout")
        return exit_codes.OK
    out = args.out or outputs_root(args, cfg) / f"export.{args.format}"
    count = export(store, run_id, args.format, out, include_samples=args.samples)
    note(args, f"wrote {count} records to {out}")
    return exit_codes.OK
