"""The command-line side of choosing a store and a run: ``--config`` / ``--store`` / ``--run`` and `open_store`.

Which run ``--run`` names (an id, ``latest`` = the latest sweep, ``baseline``)
is library logic: :func:`results.runs.pick_run`, which raises
:class:`results.store.StoreError` with a one-line message.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness import config as harness_config
from results.store import Store


def add_store_options(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--config`` and ``--store``: which bench.toml, and which results store, a command uses."""
    p.add_argument("--config", type=Path, help="bench.toml to use (default: ./bench.toml if present, else built-in)")
    p.add_argument("--store", type=Path, help="SQLite results store (default: [paths] store, runs/bench.sqlite)")


def add_run_option(p: argparse.ArgumentParser) -> None:
    """``--run``: which run a reading command shows (`results.runs.pick_run` resolves it)."""
    p.add_argument("--run", help="run id, 'latest' (the latest sweep, default) or 'baseline'")


def open_store(args: argparse.Namespace, cfg: harness_config.Config | None = None, must_exist: bool = True) -> Store:
    """The store of ``--store``, else of the config; a missing file is an error when `must_exist`."""
    path = Path(args.store or (cfg or harness_config.load(args.config)).store)
    if must_exist and not path.is_file():
        raise harness_config.ConfigError(f"no results store at {path}; run `python -m bench sweep` first "
                                       f"(or give --store / --config)")
    return Store(path)
