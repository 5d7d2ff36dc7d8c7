"""Which multiple the kept widths should be rounded to, per runtime (issue 15, "widths the kernels like").

For each config, the original and the pruned model with kept widths rounded to
each multiple given (`snp_core` ``round_to``; "none" = the config's exact widths)
are timed in ONE process, interleaved round by round, per runtime and thread
count (runtimes as in `benchmarks/efficiency.py`). Rounding moves the MACs a
little, so each variant is judged by its own efficiency = (original ms / its ms)
÷ (original MACs / its MACs), median over rounds with a 95 % bootstrap interval.
The multiple with the highest efficiency is what that runtime's kernels like.

    .venv/bin/python benchmarks/round_to.py [--configs deit_tiny,deit_small_1.3g] [--multiples none,8,16,32]
        [--runtimes onnxruntime,torchscript] [--threads 1,2] [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import snp_core  # noqa: E402
from benchmarks.efficiency import RUNTIMES, fmt, ratio_ci, runners_for  # noqa: E402
from benchmarks.timing import interleaved  # noqa: E402
from snp_core import ratios as ratio_sources  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="deit_tiny,deit_small_1.3g")
    p.add_argument("--multiples", default="none,8,16,32")
    p.add_argument("--runtimes", default="onnxruntime,torchscript")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--round-ms", type=float, default=60.0)
    p.add_argument("--cache", type=Path, default=Path("runs/artifacts"))
    args = p.parse_args()
    runtimes = args.runtimes.split(",")
    if set(runtimes) - set(RUNTIMES):
        raise SystemExit(f"error: --runtimes {args.runtimes!r}: known: {', '.join(RUNTIMES)}")
    multiples = [None if m == "none" else int(m) for m in args.multiples.split(",")]
    warnings.simplefilter("ignore")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start\n")
    print("| config | runtime | threads | " + " | ".join(f"round-to {m or 'none'}" for m in multiples) + " |")
    print("|---|---|---|" + "---|" * len(multiples))
    for config in args.configs.split(","):
        timm_name = ratio_sources.load_config(config)["model"]
        original = snp_core.create(timm_name).eval()
        models, macs = {"original": original}, {}
        for m in multiples:
            pruned, plan = snp_core.compress(original, ratios=config, calib=None, criterion="l2", round_to=m)
            models[f"r{m}"], macs[f"r{m}"] = pruned.eval(), plan.macs["original"] / plan.macs["pruned"]
        x = np.random.default_rng(0).standard_normal((1, *snp_core.models.input_size(original)), dtype=np.float32)
        for runtime in runtimes:
            for t in (int(t) for t in args.threads.split(",")):
                samples = interleaved(runners_for(runtime, models, timm_name, x, t, args.cache), args.rounds,
                                      args.round_ms / 1e3)
                cells = [f"{fmt(ratio_ci(samples['original'], samples[k], 1 / macs[k]))} ({macs[k]:.2f}×)"
                         for k in macs]
                print(f"| {config} | {runtime} | {t} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end; cells: efficiency [95 % CI] (MACs ratio)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
