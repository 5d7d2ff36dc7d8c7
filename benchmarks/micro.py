"""``python benchmarks/micro.py``: is the pruned model really faster? Plain PyTorch, this CPU.

Builds the original timm model and its pruned version (paper ratios by default),
then times both in ONE process, interleaved (A B B A A B ...), so drift in clock
speed or background load hits both alike; reports median latencies, the speedup,
the MACs ratio and the speedup efficiency (speedup ÷ MACs ratio, docs/design.md §3).

The criterion does not change the architecture, so the data-free ``l2``
criterion is used by default: it gives the same widths as SNP without needing
calibration images.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import snp_core  # noqa: E402
from snp_core import ratios as ratio_sources  # noqa: E402


def time_interleaved(models: dict[str, torch.nn.Module], x: torch.Tensor, rounds: int, iters: int,
                     warmup: int) -> dict[str, list[float]]:
    """Per-iteration latencies (s) of each model, alternating the order every round."""
    names = list(models)
    samples: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for name in names:
            for _ in range(warmup):
                models[name](x)
        for r in range(rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                model = models[name]
                for _ in range(iters):
                    t0 = time.perf_counter()
                    model(x)
                    samples[name].append(time.perf_counter() - t0)
    return samples


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/micro.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="deit_tiny_patch16_224", help="timm model name")
    p.add_argument("--ratios", default="paper", help="ratio spec, as for `bench compress --ratios`")
    p.add_argument("--round-to", type=int, help="round kept widths to a multiple of N")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--batch", type=int, default=1, help="batch size")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    p.add_argument("--iters", type=int, default=20, help="timed iterations per model per round")
    p.add_argument("--warmup", type=int, default=10, help="warm-up iterations per model")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    original = snp_core.create(args.model, "random")
    ratios = ratio_sources.resolve(args.ratios, args.model)
    plan = snp_core.make_plan(original, args.model, ratios, snp_core.get_criterion("l2"), round_to=args.round_to)
    pruned = snp_core.prune(original, plan)
    x = torch.randn(args.batch, *snp_core.models.input_size(original))
    samples = time_interleaved({"original": original, "pruned": pruned}, x, args.rounds, args.iters, args.warmup)

    med = {name: statistics.median(s) for name, s in samples.items()}
    speedup = med["original"] / med["pruned"]
    macs_ratio = plan.macs["original"] / plan.macs["pruned"]
    print(f"{args.model}, ratios {args.ratios}{f', round-to {args.round_to}' if args.round_to else ''}, "
          f"torch {torch.__version__} CPU, {args.threads} thread(s), batch {args.batch}, "
          f"{args.rounds}x{args.iters} interleaved iterations each")
    for name in samples:
        print(f"  {name:8s} median {med[name] * 1e3:8.2f} ms  ({plan.macs[name] / 1e9:.3f} GMACs)")
    print(f"speedup {speedup:.2f}x  MACs ratio {macs_ratio:.2f}x  speedup efficiency {speedup / macs_ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
