"""``python -m bench ablation``: evidence that the SNP criterion works (docs/method.md §9.2).

The command line of `experiments.ablation` (the study, its data, metric and report live
there): it turns the flags into `experiments.ablation.Settings` and makes one call,
`experiments.ablation.run_ablation`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from . import exit_codes
from .options import (HelpFormatter, add_quiet, fraction, fractions, non_negative_int, note, output_dir,
                      positive_int)

if TYPE_CHECKING:
    from experiments.ablation import Settings


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser(
        "ablation", help=help,
        description="Evidence that the SNP criterion works: train a small timm ViT on scikit-learn's digits "
                    "(cached), prune it at several ratios with snp, l2, random and reverse, and report test "
                    "accuracy before and after a fixed fine-tune and the fidelity of the attention maps "
                    "(the paper's attention-map ablation, docs/method.md §9.2); also compare whole-head criteria "
                    "(proj_l1, qk_sum, random). Writes README.md (tables; a hand-written '## Discussion' "
                    "at its end is kept), "
                    "results.json and accuracy_vs_ratio.png/.pdf.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--quick", action="store_true",
                   help="a smoke test: 4 blocks, 15 epochs, ratio 0.5 only, 20 fine-tune steps, one random seed; "
                        "writes to a temporary folder unless --out is given")
    p.add_argument("--out", type=output_dir,
                   help="output folder (default: docs/ablation, or a temporary folder with --quick)")
    p.add_argument("--ratios", type=fractions, help="comma-separated fractions removed (default: 0.3,0.5,0.7)")
    p.add_argument("--epochs", type=positive_int, help="training epochs (default: 40, --quick: 15)")
    p.add_argument("--finetune-steps", type=non_negative_int,
                   help="fine-tune steps per pruned model (default: 100, --quick: 20)")
    p.add_argument("--seeds", type=positive_int, help="seeds of the random criterion (default: 3, --quick: 1)")
    p.add_argument("--embed", type=fraction, default=0.0, help="fraction of residual-stream channels removed")
    p.add_argument("--cache", type=output_dir, default=Path("runs/ablation"), help="where trained weights are cached")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    add_quiet(p)
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The study's settings: the defaults (or `Settings.quick`) with the flags given applied."""
    from experiments.ablation import Settings

    settings = Settings.quick(args.cache) if args.quick else Settings(cache=args.cache)
    if args.ratios:
        settings.ratios = tuple(args.ratios)
    if args.epochs is not None:
        settings.train = dataclasses.replace(settings.train, epochs=args.epochs)
    if args.finetune_steps is not None:
        settings.finetune_steps = args.finetune_steps
    if args.seeds is not None:
        settings.random_seeds = tuple(range(args.seeds))
    settings.embed = args.embed
    return settings


def command_line(args: argparse.Namespace) -> str:
    """The command as quoted in the README: the flags that changed the run."""
    command = "python -m bench ablation" + (" --quick" if args.quick else "")
    command += f" --out {args.out}" if args.out else ""
    if args.ratios is not None:
        command += " --ratios " + ",".join(f"{r:g}" for r in args.ratios)
    for flag in ("epochs", "finetune_steps", "seeds"):
        if getattr(args, flag) is not None:
            command += f" --{flag.replace('_', '-')} {getattr(args, flag)}"
    if args.embed:
        command += f" --embed {args.embed}"
    return command


def run(args: argparse.Namespace) -> int:
    from experiments.ablation import run_ablation

    if args.quick and args.out is None:
        out = Path(tempfile.mkdtemp(prefix="snp-ablation-"))
    else:
        out = args.out or Path("docs/ablation")
    outcome = run_ablation(settings_from_args(args), out, command_line(args),
                           progress=lambda text: note(args, text), threads=args.threads)
    print(outcome.table)
    sys.stdout.flush()
    note(args, f"done in {outcome.seconds:.0f} s; wrote " + ", ".join(str(p) for p in outcome.paths))
    return exit_codes.OK
