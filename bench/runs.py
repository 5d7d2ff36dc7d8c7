"""The command-line side of choosing a config, a store and a run: ``--config`` / ``--root`` / ``--store`` / ``--run``.

Which run ``--run`` names (an id, ``latest`` = the latest sweep, ``baseline``)
is library logic: :func:`results.runs.pick_run`, which raises
:class:`results.store.StoreError` with a one-line message. Every command that
reads the config says which one on stderr first (`Config.describe`, not with ``--quiet``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from harness import config as harness_config
from results.store import STORE_ENV, Store, location

from .options import note

#: Where outputs go when no config is read (the embedded default's ``[paths] root``).
DEFAULT_ROOT = Path("runs")
#: How every command documents a run's name.
RUN_HELP = "run id, 'latest' (the latest sweep) or 'baseline' (the store's baseline run)"


def add_config_options(p: argparse.ArgumentParser | argparse._ArgumentGroup, root: bool = True) -> None:
    """``--config`` and ``--root``: which bench.toml a command reads, and where its outputs go."""
    p.add_argument("--config", type=Path, help="bench.toml to use (default: ./bench.toml if present, else built-in)")
    if root:
        p.add_argument("--root", type=Path, metavar="DIR",
                       help="every output (store, artifacts, local device copies, reports, exports, figures) goes "
                            "under DIR (default: [paths] root of the config, runs)")


def add_store_options(p: argparse.ArgumentParser | argparse._ArgumentGroup, root: bool = True) -> None:
    """``--config``, ``--root`` and ``--store``: which bench.toml, outputs root and results store a command uses.

    `root` False leaves ``--root`` out, for a command whose library call cannot take one yet (``compress``).
    """
    add_config_options(p, root)
    p.add_argument("--store", metavar="PATH|URL",
                   help="results store: a SQLite file or a postgresql:// URL (default: $SNP_BENCH_STORE, else "
                        "[paths] store, ROOT/bench.sqlite)")


def add_run_option(p: argparse.ArgumentParser, default: str = "latest") -> None:
    """``--run``: which run a reading command shows (`results.runs.pick_run` resolves it)."""
    p.add_argument("--run", help=f"{RUN_HELP}; default: {default}")


def load_config(args: argparse.Namespace) -> harness_config.Config:
    """The config of ``--config`` / ``--root``, said on stderr (one line) unless ``--quiet``."""
    cfg = harness_config.load(args.config, root=getattr(args, "root", None))
    note(args, cfg.describe())
    return cfg


def outputs_root(args: argparse.Namespace, cfg: harness_config.Config | None) -> Path:
    """Where a command's default output folders go: ``--root``, else the config's root, else ``runs``."""
    if getattr(args, "root", None) is not None:
        return Path(args.root)
    return cfg.root if cfg is not None else DEFAULT_ROOT


def open_store(args: argparse.Namespace, cfg: harness_config.Config | None = None, must_exist: bool = True) -> Store:
    """The store of ``--store``, else of the config; a missing file is an error when `must_exist`."""
    where = store_location(args, cfg)
    if must_exist and isinstance(where, Path) and not where.is_file():
        raise harness_config.ConfigError(f"no results store at {where}; run `python -m bench sweep` first "
                                         f"(or give --store / --config / --root, or set SNP_BENCH_STORE)")
    return Store(where)


def store_given(args: argparse.Namespace) -> bool:
    """Whether the store is named without the config (``--store`` or ``$SNP_BENCH_STORE``)."""
    return bool(args.store or os.environ.get(STORE_ENV))


def store_location(args: argparse.Namespace, cfg: harness_config.Config | None = None) -> Path | str:
    """``--store``, else ``$SNP_BENCH_STORE``, else the config's store (`results.store.location`)."""
    return location(args.store, None if store_given(args) else (cfg or load_config(args)).store)
