"""Speedup efficiency (speedup ÷ MACs ratio, docs/design.md §3) of the paper's configs on this machine.

For each config, the original and the pruned model are timed in ONE process,
interleaved round by round, with onnxruntime (CPU, each thread count given) on
the exported .onnx and with PyTorch eager; prints a table of efficiencies,
which the project aims to keep >= 0.90. Random weights: latency does not
depend on them.

    .venv/bin/python benchmarks/efficiency.py [--configs deit_tiny,deit_small] [--threads 1,2] [--round-to 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import exporters  # noqa: E402
import snp_core  # noqa: E402
from snp_core import ratios as ratio_sources  # noqa: E402


def ort_runner(path: Path, threads: int, x: np.ndarray):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feed)


def interleaved_medians(runners: dict[str, object], rounds: int, iters: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {k: [] for k in runners}
    names = list(runners)
    for fn in runners.values():
        for _ in range(5):
            fn()
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            fn = runners[name]
            for _ in range(iters):
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="deit_tiny,deit_small,deit_small_1.3g,deit_base")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--round-to", type=int)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--iters", type=int, default=10)
    args = p.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    print(f"| config | MACs ratio | " + " | ".join(f"ORT {t}T" for t in threads) + " | torch eager 1T |")
    print("|---|---|" + "---|" * (len(threads) + 1))
    for name in args.configs.split(","):
        timm_name = ratio_sources.load_config(name)["model"]
        original = snp_core.create(timm_name)
        plan = snp_core.make_plan(original, timm_name, ratio_sources.resolve(name, timm_name),
                                  snp_core.get_criterion("l2"), round_to=args.round_to)
        pruned = snp_core.prune(original, plan)
        macs_ratio = plan.macs["original"] / plan.macs["pruned"]
        shape = (1, *snp_core.models.input_size(original))
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        paths = {k: exporters.export(m, "onnx", Path("runs/artifacts"), input_shape=shape, source=timm_name).path
                 for k, m in (("original", original), ("pruned", pruned))}
        cells = []
        for t in threads:
            med = interleaved_medians({k: ort_runner(paths[k], t, x) for k in paths}, args.rounds, args.iters)
            cells.append(f"{med['original'] / med['pruned'] / macs_ratio:.2f}")
        torch.set_num_threads(1)
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            med = interleaved_medians({"original": lambda: original(xt), "pruned": lambda: pruned(xt)},
                                      args.rounds, args.iters)
        cells.append(f"{med['original'] / med['pruned'] / macs_ratio:.2f}")
        label = name + (f" (round-to {args.round_to})" if args.round_to else "")
        print(f"| {label} | {macs_ratio:.2f}x | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
