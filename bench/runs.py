"""Which store and which run a reading command (table, figures, compare, results) works on.

One place for the rules, so every command answers the same way: ``--store`` or
the config's ``[paths] store``; a run by id, or the aliases ``latest`` (also the
default: the latest *sweep*, so the profile and verification runs of ``bench
compress --target-latency`` in the same store never shadow it) and ``baseline``;
and one-line errors that name the recent runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from results.store import Store

from . import config as bench_config


def add_store_options(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--config`` and ``--store``: which bench.toml, and which results store, a command uses."""
    p.add_argument("--config", type=Path, help="bench.toml to use (default: ./bench.toml if present, else built-in)")
    p.add_argument("--store", type=Path, help="SQLite results store (default: [paths] store, runs/bench.sqlite)")


def add_run_option(p: argparse.ArgumentParser) -> None:
    """``--run``: which run a reading command shows (`pick_run` resolves it)."""
    p.add_argument("--run", help="run id, 'latest' (the latest sweep, default) or 'baseline'")


def open_store(args: argparse.Namespace, cfg: bench_config.Config | None = None, must_exist: bool = True) -> Store:
    """The store of ``--store``, else of the config; a missing file is an error when `must_exist`."""
    path = Path(args.store or (cfg or bench_config.load(args.config)).store)
    if must_exist and not path.is_file():
        raise bench_config.ConfigError(f"no results store at {path}; run `python -m bench sweep` first "
                                       f"(or give --store / --config)")
    return Store(path)


def is_sweep(run: dict[str, Any]) -> bool:
    """True for runs of `bench sweep` / `bench nightly`; runs that other commands time (the
    latency profiles of `bench compress --target-latency`) name that ``command`` in their config."""
    return "command" not in run["config"]


def pick_run(store: Store, text: str | None, role: str = "") -> dict[str, Any]:
    """A run by id, or ``latest`` (the default when `text` is None) or ``baseline``."""
    if text == "baseline":
        run = store.baseline()
        if run is None:
            raise bench_config.ConfigError(f"{store.path} has no baseline run yet; mark one with "
                                           f"`python -m bench nightly --promote` or give a run id")
        return run
    if text in (None, "latest"):
        sweeps = [r for r in store.runs() if is_sweep(r)]
        if not sweeps:
            raise bench_config.ConfigError(f"no sweep runs in {store.path}: run `python -m bench sweep` first")
        return sweeps[-1]
    run = store.get_run(text)
    if run is None:
        recent = ", ".join(r["run_id"] for r in store.runs()[-5:]) or "none"
        raise bench_config.ConfigError(f"unknown {role + ' ' if role else ''}run {text!r} in {store.path}; "
                                       f"recent runs: {recent}")
    return run
