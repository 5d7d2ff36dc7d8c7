"""``python -m bench table``: the paper's latency / speedup table of a run (layout: ``results/table.py``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from harness import config as harness_config
from results.runs import pick_run
from results.store import Store

from . import exit_codes, vocab
from .options import STDOUT, HelpFormatter, add_deprecated, note, output_file, positive_ints, positive_number
from .runs import add_run_option, add_store_options, load_config, open_store


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser(
        "table", help=help,
        description="The paper's benchmark table from the record store: one row per model (the original, then its "
                    "pruned variants), one column per device and format, each cell 'median ms · speedup× (95 % "
                    "interval)' against the unpruned original on the same device, runtime and batch size; one table "
                    "per batch size. Cells whose record warns (throttling, high CV, fewer samples, provider fallback) "
                    "or failed, and speedups that cannot be trusted (wide interval, a drifting original) are marked "
                    "and footnoted.",
        formatter_class=HelpFormatter)
    add_store_options(p)
    add_run_option(p)
    p.add_argument("--format", choices=vocab.TABLE_RENDERERS, default="md", help="how the table is written")
    p.add_argument("--plain", action="store_true",
                   help="the paper's plain cells, 'median ms (speedup×)', without the confidence interval")
    p.add_argument("--efficiency", action="store_true",
                   help="add the MACs ratio and one speedup-efficiency column (speedup / MACs ratio) per latency column")
    p.add_argument("--cold", action="store_true",
                   help="add cold start (load time, first inference), peak memory and, for batch > 1, throughput "
                        "columns per latency column")
    p.add_argument("--cv-threshold", type=positive_number, default=vocab.CV_THRESHOLD,
                   help="mark cells whose coefficient of variation exceeds this")
    p.add_argument("--max-width", type=positive_number, default=vocab.MAX_WIDTH,
                   help="mark speedups whose confidence interval is wider than this fraction of the speedup")
    p.add_argument("--all-warnings", action="store_true",
                   help="also mark cells for any other agent warning (e.g. cpufreq governor not 'performance')")
    p.add_argument("--batch-size", type=positive_ints, metavar="N[,N...]",
                   help="only these batch sizes, e.g. 1,8 (default: every one measured)")
    add_deprecated(p, "--batch", "--batch-size", "batch_size", type=positive_ints)
    p.add_argument("--out", type=output_file, help="write the table to this file ('-': stdout, the default)")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> harness_config.Config | None:
    """The config for the store path and model labels; with --store alone a broken bench.toml is not fatal."""
    try:
        return load_config(args)
    except harness_config.ConfigError:
        if args.config is not None or args.store is None or args.root is not None:
            raise
        return None


def table_text(cfg: harness_config.Config | None, store: Store, run_id: str, fmt: str = "md", **options: Any) -> str:
    """The table of a run exactly as ``bench table`` prints it (``bench sweep``'s closing table calls this too).

    ``cfg`` gives the model labels (None: the records' own); ``options`` are
    those of ``results.table.build_tables``.  Raises ``results.table.TableError``
    when the run has no records.
    """
    from results.table import render_run

    labels = {name: m.label for name, m in cfg.models.items() if m.label} if cfg else {}
    return render_run(store, run_id, fmt, labels=labels, **options)


def run(args: argparse.Namespace) -> int:
    from results.table import TableError

    cfg = _config(args)
    store = open_store(args, cfg)
    info = pick_run(store, args.run)
    try:
        text = table_text(cfg, store, info["run_id"], args.format, plain=args.plain, cold=args.cold,
                          cv_threshold=args.cv_threshold, efficiency=args.efficiency,
                          all_warnings=args.all_warnings, batches=args.batch_size,
                          thresholds={"max_width": args.max_width})
    except TableError as exc:
        raise harness_config.ConfigError(str(exc)) from None
    if args.out in (None, STDOUT):
        sys.stdout.write(text)
        return exit_codes.OK
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    note(args, f"wrote {args.format} table of run {info['run_id']} to {args.out}")
    return exit_codes.OK
