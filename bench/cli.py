"""``python -m bench COMMAND``: one sub-command per stage of the pipeline.

Each command lives in its own module exposing an ``add_parser(sub, help)``
function (which sets ``func``); `COMMANDS` names them, and a command's module
is imported only when that command runs or its ``--help`` is asked for, so
``python -m bench --help`` imports no command at all. The command modules
themselves import torch, pandas and the like only inside ``run``.

Errors a user can fix (unknown model, bad ratio, missing files) are printed as
one ``error:`` line with exit status 2, never as a traceback; the other exit
statuses are in `bench.exit_codes`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from typing import Sequence

from . import exit_codes
from .options import Parser

#: (command, "module:function" that adds its parser, one-line help for ``python -m bench --help``).
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("compress", "bench.compress:add_parser", "prune a timm ViT with SNP and save plan.json + model.safetensors"),
    ("inspect", "bench.inspect_plan:add_parser", "describe a saved pruning plan and check that it rebuilds"),
    ("sweep", "bench.sweep:add_parser", "time original and pruned models on the configured devices"),
    ("tune", "bench.tune_cmd:add_parser",
     "measure runtime settings (threads, ...) per device and model; sweeps then use the fastest"),
    ("devices", "bench.devices_cmd:add_parser", "list devices from bench.toml and check that each is usable"),
    ("results", "bench.results_cmd:add_parser", "list runs or export records from the store"),
    ("table", "bench.table_cmd:add_parser", "latency and speedup table of a run (markdown, LaTeX, CSV, HTML)"),
    ("figures", "bench.figures_cmd:add_parser", "draw latency, accuracy, speedup and distribution figures of a run"),
    ("compare", "bench.compare_cmd:add_parser", "regression report: a run against a baseline run, job by job"),
    ("nightly", "bench.nightly_cmd:add_parser",
     "run the nightly sweep, compare with the baseline run, report regressions"),
    ("ablation", "bench.ablation:add_parser",
     "train small ViTs on two offline benchmarks and compare pruning criteria over seeds (accuracy, attention maps)"),
    ("finetune", "bench.finetune_cmd:add_parser",
     "fine-tune a pruned model (plan folder) or a timm model with the paper's recipe"),
    ("evaluate", "bench.finetune_cmd:add_evaluate_parser",
     "top-1/top-5 of a plan folder or timm model on an ImageFolder"),
)
NAMES = tuple(name for name, _, _ in COMMANDS)

#: Errors caused by the user's input, as (module, class): printed as one line, exit status 2. Named, not imported:
#: an exception of a class can only be raised once its module is imported, so `is_user_error` looks in sys.modules.
USER_ERRORS: tuple[tuple[str, str], ...] = (
    ("snp_core.errors", "SNPError"),
    ("harness.config", "ConfigError"),
    ("harness.latency_model", "TargetLatencyError"),
    ("results.store", "StoreError"),
    ("bench.options", "UsageError"),
)

CONVENTIONS = (
    "conventions: results (tables, reports, JSON) go to stdout, everything else (progress bars, notes, warnings, "
    "'wrote X') to stderr; '-' as an output file means stdout; progress bars are drawn only when stderr is a "
    "terminal, and --quiet (on the long-running commands) turns bars and notes off. --formats names model artifact "
    "formats (onnx, torchscript, pt2, trt); --format the format of a command's own output (table: md, latex, csv, "
    "html; results export: csv, parquet, jsonl). --batch-size is a batch size everywhere; --device a device of "
    "bench.toml (--torch-device a torch device); a run is an id, 'latest' (the latest sweep) or 'baseline'. "
    "Deprecated flags still work and say which to use instead.")


def is_user_error(exc: BaseException) -> bool:
    """True when `exc` is one of `USER_ERRORS` (whose modules are loaded, else it cannot be one)."""
    types = tuple(getattr(sys.modules[module], name) for module, name in USER_ERRORS if module in sys.modules)
    return bool(types) and isinstance(exc, types)


def _command_in(argv: Sequence[str]) -> str | None:
    """The command `argv` asks for: its first word that is not an option (the top-level options take no value)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in NAMES else None
    return None


def _version() -> str:
    from devices.transport import PROTOCOL  # light: the agent protocol number
    from snp_core import __version__  # the one version of the package (pyproject.toml reads it)
    return f"snp-bench {__version__} (device agent protocol {PROTOCOL})"


class _Version(argparse.Action):
    """``--version``: prints `_version` (importing snp_core only when asked) and exits 0."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the package version and the device agent protocol, then exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        print(_version())
        parser.exit()


def build_parser(command: str | None = None, every: bool = True) -> argparse.ArgumentParser:
    """The parser; with `every`, every command's full parser, else only `command`'s (the others are stubs).

    ``main`` builds only the command it runs, so nothing else is imported; the
    stubs still list every command in ``--help`` and accept its name.
    """
    parser = Parser(prog="python -m bench",
                    description="Prune Vision Transformers with SNP and measure how much faster they run on real "
                                "devices.",
                    epilog=f"{exit_codes.EPILOG}\n\n{CONVENTIONS}",
                    formatter_class=_EpilogFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, target, help_text in COMMANDS:
        if every or name == command:
            module, function = target.split(":")
            getattr(importlib.import_module(module), function)(sub, help_text)
            assert name in sub.choices, f"{target} did not add the {name!r} command"
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


class _EpilogFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's two paragraphs apart, each wrapped to the terminal."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n\n".join(argparse.HelpFormatter._fill_text(self, part, width, indent) for part in text.split("\n\n"))


def _log_level(args: argparse.Namespace) -> int:
    if args.verbose:
        return logging.DEBUG
    return logging.WARNING if getattr(args, "quiet", False) else logging.INFO


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_command_in(argv), every=False).parse_args(argv)
    logging.basicConfig(level=_log_level(args), format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args) or exit_codes.OK
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr.close()
        return exit_codes.OK
    except KeyboardInterrupt as stop:  # Ctrl-C, or a sweep's SIGTERM (`harness.runner.SweepInterrupted.signum`)
        print("interrupted", file=sys.stderr)
        return exit_codes.interrupted(getattr(stop, "signum", signal.SIGINT))
    except Exception as exc:
        if not is_user_error(exc):
            raise  # a crash: Python prints the traceback and exits with status 1 (exit_codes.CRASH)
        print(f"error: {exc}", file=sys.stderr)
        return exit_codes.BAD_INPUT
