"""Shared argparse pieces for the bench commands: the parser, checked value types, deprecated aliases, stderr notes.

Conventions every command follows (the top-level ``--help`` epilog states them):
a bad value is one ``error:`` line naming the flag, the value and what is
accepted (exit status 2, `bench.exit_codes`); results go to stdout and every
other line (notes, warnings, "wrote X") to stderr; ``-`` as an output file is
stdout. This module imports only the standard library so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

from .exit_codes import BAD_INPUT

#: ``--out -``: write to stdout.
STDOUT = "-"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" only when there is a meaningful default to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or action.default is argparse.SUPPRESS or "%(default)" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``error:`` line (pointing at ``--help``) like every other bad input."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(BAD_INPUT)


class UsageError(ValueError):
    """A flag combination or value the command cannot use, found after parsing: one ``error:`` line, status 2."""


def _checked(kind: str, convert: Callable[[str], Any], ok: Callable[[Any], bool]) -> Callable[[str], Any]:
    """An argparse type: `convert`, then `ok`; either failing says the value and what is accepted."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}")
        return value

    return parse


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


positive_int = _checked("a positive integer", int, lambda v: v > 0)
non_negative_int = _checked("an integer >= 0", int, lambda v: v >= 0)
number = _checked("a finite number", _finite, lambda v: True)
positive_number = _checked("a positive number", _finite, lambda v: v > 0)
non_negative_number = _checked("a number >= 0", _finite, lambda v: v >= 0)
fraction = _checked("a fraction in [0, 1)", _finite, lambda v: 0 <= v < 1)
open_fraction = _checked("a fraction in (0, 1), e.g. 0.95", _finite, lambda v: 0 < v < 1)


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer type with a floor (e.g. bootstrap resamples >= 100)."""
    return _checked(f"an integer >= {low}", int, lambda v: v >= low)


def names(text: str) -> list[str]:
    """A comma-separated list of names (devices, models, formats)."""
    values = [t.strip() for t in text.split(",") if t.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of names")
    return values


def positive_ints(text: str) -> list[int]:
    """Comma-separated positive integers, e.g. batch sizes ``1,8``."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive integers, e.g. 1,8")
    return values


def fractions(text: str) -> list[float]:
    """Comma-separated fractions in [0, 1), e.g. ratios ``0.3,0.5``."""
    try:
        values = [_finite(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or not all(0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of fractions in [0, 1), e.g. 0.3,0.5")
    return values


def output_file(text: str) -> Path | str:
    """A file to write, or ``-`` for stdout (`STDOUT`)."""
    return STDOUT if text == STDOUT else Path(text)


def output_dir(text: str) -> Path:
    """A folder to write into; ``-`` is refused (several files cannot all go to stdout)."""
    if text == STDOUT:
        raise argparse.ArgumentTypeError("'-' (stdout) cannot be a folder: this command writes several files; "
                                         "give a folder path")
    return Path(text)


class Deprecated(argparse.Action):
    """An old flag that still works: it stores into the new flag's ``dest`` and warns once on stderr."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated(p: argparse.ArgumentParser | argparse._ArgumentGroup, old: str, new: str, dest: str,
                   **kwargs: Any) -> None:
    """``old`` as a hidden alias of ``new`` (same ``dest``, same type): it works and says to use ``new``."""
    p.add_argument(old, dest=dest, action=Deprecated, new=new, default=argparse.SUPPRESS, **kwargs)


def add_quiet(p: argparse.ArgumentParser) -> None:
    """``--quiet``: no progress bars and no informational lines on stderr (errors and warnings still print)."""
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars and no informational lines on stderr (errors and warnings still print)")


def note(args: argparse.Namespace, text: str) -> None:
    """An informational line on stderr, unless ``--quiet``."""
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr, flush=True)


def bar_disable(args: argparse.Namespace) -> bool | None:
    """tqdm's ``disable`` for this command: True with ``--quiet``, else None (bars only when stderr is a terminal)."""
    return True if getattr(args, "quiet", False) else None
