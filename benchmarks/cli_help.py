"""How long ``python -m bench --help`` and each command's ``--help`` take (issue 14: each under 1 s).

Runs every help as a fresh subprocess (the cost a user pays: interpreter start,
imports, parser) a few times, and prints the median wall time per command, the
heavy libraries it imported (there should be none), and whether it is under
the budget. A figure to read, not a test: run it on the machine in question::

    .venv/bin/python benchmarks/cli_help.py [--repeat 5] [--budget 1.0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cli import NAMES  # noqa: E402  (light: the command table, no command module)

#: Libraries that cost seconds to import; ``--help`` should need none of them.
HEAVY = ("torch", "timm", "pandas", "scipy", "matplotlib", "onnx", "onnxruntime", "paramiko")


def _bench(args: list[str], *python_flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, *python_flags, "-m", "bench", *args, "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"python -m bench {' '.join(args)} --help failed:\n{done.stderr}")
    return done


def time_help(args: list[str]) -> float:
    """Wall seconds of one ``python -m bench ARGS --help``."""
    start = time.perf_counter()
    _bench(args)
    return time.perf_counter() - start


def heavy_imports(args: list[str]) -> list[str]:
    """The `HEAVY` libraries ``python -m bench ARGS --help`` imports (from ``python -X importtime``)."""
    lines = _bench(args, "-X", "importtime").stderr.splitlines()
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in lines if line.startswith("import time:")}
    return [name for name in HEAVY if name in imported]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command (the median is shown)")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds a help may take")
    opts = parser.parse_args()
    commands = [[]] + [[name] for name in NAMES] + [["results", "export"]]
    print(f"python -m bench ... --help: median of {opts.repeat} runs, budget {opts.budget:g} s")
    slow = 0
    for args in commands:
        median = statistics.median(time_help(args) for _ in range(opts.repeat))
        heavy = ", ".join(heavy_imports(args))
        ok = median < opts.budget
        slow += not ok
        print(f"  {' '.join(['bench', *args, '--help']):32s} {median:6.3f} s  {'ok  ' if ok else 'SLOW'}"
              f"{'  imports ' + heavy if heavy else ''}")
    print(f"{len(commands) - slow} of {len(commands)} under {opts.budget:g} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
