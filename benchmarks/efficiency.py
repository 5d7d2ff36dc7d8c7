"""Speedup efficiency of the paper's configs on this machine, against two yardsticks (issue 15, docs/speedup.md).

For each config the original, the SNP-pruned model, a hand-written ViT of exactly
the pruned widths (`reference_models.HandWrittenViT`, same weights) and
Torch-Pruning's uniform model at the same MACs (`reference_models.uniform_peer`)
are timed in ONE process, interleaved round by round (order alternating), per
runtime and thread count:

* ``onnxruntime``: the .onnx the harness ships (``exporters.export``), CPU,
  ORT_ENABLE_ALL, ``intra_op_num_threads`` = threads, spinning off (`SPINNING`);
* ``onnxruntime+attention``: the same graph with each block's attention fused into
  ONNX's ``Attention`` operator (`exporters.fused_attention`, opset 23);
* ``torchscript``: the .pt the harness ships (traced, frozen), ``torch.set_num_threads``;
* ``eager``: the nn.Module in ``torch.inference_mode``.

Printed per cell: median ms per inference of original and pruned; efficiency =
(original ms / pruned ms) / MACs ratio (docs/design.md §3, goal >= 0.90) as the
median over rounds of the per-round ratio, with a 95 % bootstrap interval of that
median (rounds resampled); and pruned ms / hand-written ms and pruned ms /
uniform-peer ms the same way (<= 1.00 means the pruned model is at least as fast).
``--profile`` then prints, per runtime given, the ms per operator kind of every
model (onnxruntime's profiler, or torch.profiler's self CPU time): which work
pruning does not shrink.
Every exported graph is checked against eager PyTorch (max abs diff <= 1e-4)
before it is timed, and the hand-written model against the pruned one. Random
weights: latency does not depend on them. EfficientFormer has no hand-written or
uniform peer here: its pruned model is timm's own modules with narrower tensors
(the same graph as the original, tests/exporters/test_graph_shape.py), and
Torch-Pruning has no uniform recipe for its attention biases.

    .venv/bin/pip install -e '.[benchmarks]'    # Torch-Pruning, for the uniform peer
    .venv/bin/python benchmarks/efficiency.py [--configs deit_tiny,deit_small_1.3g] [--threads 1,2]
        [--runtimes onnxruntime,torchscript] [--round-to 16] [--rounds 9] [--round-ms 60]
        [--profile onnxruntime,torchscript]

About 10 minutes for every config, runtime and thread count on 2 cores with warm artifact caches. Timings on
a shared machine are noisy: read the ratios (measured in the same rounds), not
milliseconds across runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from timm.models.vision_transformer import VisionTransformer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import exporters  # noqa: E402
import snp_core  # noqa: E402
from benchmarks.reference_models import HandWrittenViT, uniform_peer  # noqa: E402
from benchmarks.timing import interleaved  # noqa: E402
from benchmarks.attention_paths import profile_ms  # noqa: E402
from exporters.fused_attention import find_sites, fuse_attention  # noqa: E402
from exporters.parity import eager_outputs, max_abs_diff  # noqa: E402
from snp_core import ratios as ratio_sources  # noqa: E402

CONFIGS = ("deit_tiny", "deit_small", "deit_small_1.3g", "deit_base", "efficientformer_l1_0.6g",
           "efficientformer_l1_0.5g")
RUNTIMES = ("onnxruntime", "onnxruntime+attention", "torchscript", "eager")
PARITY = 1e-4
GOAL = 0.90


def ratio_ci(num: list[float], den: list[float], scale: float = 1.0, resamples: int = 2000) -> tuple[float, float, float]:
    """Median over rounds of num/den (paired by round) times `scale`, and its 95 % bootstrap interval."""
    r = np.asarray(num) / np.asarray(den) * scale
    draws = np.random.default_rng(0).choice(r, size=(resamples, len(r)), replace=True)
    lo, hi = np.quantile(np.median(draws, axis=1), [0.025, 0.975])
    return float(np.median(r)), float(lo), float(hi)


def build(config: str, round_to: int | None) -> tuple[str, dict[str, torch.nn.Module], float]:
    """The config's models (original, pruned and, for a DeiT, its yardsticks) and the MACs ratio."""
    timm_name = ratio_sources.load_config(config)["model"]
    original = snp_core.create(timm_name).eval()
    pruned, plan = snp_core.compress(original, ratios=config, calib=None, criterion="l2", round_to=round_to)
    models = {"original": original, "pruned": pruned.eval()}
    if isinstance(pruned, VisionTransformer):
        models["hand-written"] = HandWrittenViT.like(pruned)
        x = torch.randn(1, *snp_core.models.input_size(original))
        with torch.inference_mode():
            diff = (models["hand-written"](x) - pruned(x)).abs().max().item()
        if diff > PARITY:
            raise SystemExit(f"{config}: the hand-written model differs from the pruned one by {diff:.2e}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peer, _, peer_macs = uniform_peer(lambda: snp_core.create(timm_name), plan.macs["pruned"],
                                              snp_core.models.input_size(original))
        models["uniform peer"] = peer
        print(f"{config}: uniform peer at {peer_macs / 1e9:.3f} GMACs (pruned {plan.macs['pruned'] / 1e9:.3f})",
              file=sys.stderr)
    return timm_name, models, plan.macs["original"] / plan.macs["pruned"]


#: onnxruntime's intra-op threads spin after each run by default; with several sessions interleaved in one
#: process, the last one's spinning threads then take the cores from the next one's work (on 2 cores at 2 threads:
#: DeiT-T 47 ms instead of 30, intervals 5x wider). So off here unless `--spinning on`.
SPINNING = {"on": None, "off": "0"}
spinning = SPINNING["off"]


def ort_session(proto: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    if spinning is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    so.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def runners_for(runtime: str, models: dict[str, torch.nn.Module], timm_name: str, x: np.ndarray, threads: int,
                cache: Path) -> dict[str, Callable[[], object]]:
    """One no-argument callable per model for `runtime`, each checked against eager PyTorch first."""
    shape, xt = x.shape, torch.from_numpy(x)
    out = {}
    for kind, model in models.items():
        reference = eager_outputs(model, xt)
        if runtime.startswith("onnxruntime"):
            proto = onnx.load(str(exporters.export(model, "onnx", cache, input_shape=shape, source=timm_name).path))
            if runtime == "onnxruntime+attention":
                proto = fuse_attention(proto, "onnx_attention")[0]
            s = ort_session(proto, threads)
            got = [s.run(None, {"input": x})[0]]
            fn = (lambda s=s: s.run(None, {"input": x}))
        else:
            torch.set_num_threads(threads)
            m = (torch.jit.load(str(exporters.export(model, "torchscript", cache, input_shape=shape,
                                                     source=timm_name).path))
                 if runtime == "torchscript" else model)

            def fn(m=m):
                with torch.inference_mode():
                    return m(xt)
            got = [fn().numpy()]
        diff = max_abs_diff(reference, got)
        if not diff <= PARITY:
            raise SystemExit(f"{timm_name} {kind} {runtime}: parity {diff:.2e} > {PARITY:g}")
        out[kind] = fn
    return out


#: Operator kinds of a torch profile (aten op -> kind); the rest is "other".
TORCH_KINDS = {"aten::addmm": "linear (Gemm/MatMul)", "aten::mm": "linear (Gemm/MatMul)",
               "aten::_scaled_dot_product_flash_attention_for_cpu": "attention", "aten::bmm": "attention",
               "aten::_softmax": "attention", "aten::_safe_softmax": "attention", "aten::constant_pad_nd": "attention",
               "aten::_scaled_dot_product_attention_math": "attention", "aten::gelu": "GELU (Div, Erf)",
               "aten::native_layer_norm": "LayerNorm", "aten::add": "Add/Mul (GELU's, residual, bias)",
               "aten::mul": "Add/Mul (GELU's, residual, bias)", "aten::mkldnn_convolution": "patch embed (Conv)",
               "aten::copy_": "copies", "aten::clone": "copies", "aten::cat": "copies"}


def torch_profile_ms(runners: dict[str, Callable[[], object]], runs: int) -> dict[str, Counter]:
    """Self CPU ms per run and operator kind of each torch runner (run alternately, one profiler each)."""
    out = {}
    for name, fn in runners.items():
        fn()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                fn()
        ms = Counter()
        for e in prof.key_averages():
            ms[TORCH_KINDS.get(e.key, "other")] += e.self_cpu_time_total / 1e3 / runs
        out[name] = ms
    return out


def print_profile(label: str, runtime: str, ms: dict[str, Counter]) -> None:
    """Per operator kind, the ms of every model and the pruned model's speedup on it: where time is not saved."""
    names = list(ms)
    total = {k: sum(v.values()) for k, v in ms.items()}
    print(f"\n{label}, {runtime}, 1 thread, profiled ms per inference by operator kind "
          f"(speedup of the total {total['original'] / total['pruned']:.2f}×):\n")
    print("| kind | " + " | ".join(names) + " | original / pruned |")
    print("|---|" + "---|" * (len(names) + 1))
    kinds = sorted({k for v in ms.values() for k in v}, key=lambda k: -ms["original"][k])
    for kind in kinds + ["total"]:
        row = [total[n] if kind == "total" else ms[n][kind] for n in names]
        speed = row[0] / row[1] if row[1] else float("inf")
        print(f"| {kind} | " + " | ".join(f"{v:.2f}" for v in row) + f" | {speed:.2f}× |")


def profile(label: str, runtime: str, models: dict, timm_name: str, x: np.ndarray, cache: Path) -> None:
    if runtime.startswith("onnxruntime"):
        graphs = {}
        for kind, model in models.items():
            proto = onnx.load(str(exporters.export(model, "onnx", cache, input_shape=x.shape, source=timm_name).path))
            graphs[kind] = fuse_attention(proto, "onnx_attention")[0] if runtime != "onnxruntime" else proto
        nodes = {n for proto in graphs.values() for site in find_sites(proto) for n in site.nodes}
        print_profile(label, runtime, profile_ms(graphs, nodes, x, runs=15))
    else:
        print_profile(label, runtime, torch_profile_ms(runners_for(runtime, models, timm_name, x, 1, cache), runs=10))


def fmt(ci: tuple[float, float, float]) -> str:
    return f"{ci[0]:.2f} [{ci[1]:.2f}, {ci[2]:.2f}]"


def run_config(config: str, runtimes: list[str], threads: list[int], rounds: int, round_s: float, cache: Path,
               round_to: int | None, profiles: list[str]) -> None:
    timm_name, models, macs_ratio = build(config, round_to)
    label = config + (f" (round-to {round_to})" if round_to else "")
    x = np.random.default_rng(0).standard_normal((1, *snp_core.models.input_size(models["original"])),
                                                 dtype=np.float32)
    for runtime in runtimes:
        if runtime == "onnxruntime+attention" and not isinstance(models["pruned"], VisionTransformer):
            print(f"| {label} | {macs_ratio:.2f}× | {runtime} | — | no attention the rewrite fuses (EfficientFormer's "
                  "adds a learned bias to q kᵀ) | | | | | | |", flush=True)
            continue
        for t in threads:
            samples = interleaved(runners_for(runtime, models, timm_name, x, t, cache), rounds, round_s)
            med = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
            eff = ratio_ci(samples["original"], samples["pruned"], 1 / macs_ratio)
            cells = [fmt(ratio_ci(samples["pruned"], samples[k])) if k in samples else "—"
                     for k in ("hand-written", "uniform peer")]
            verdict = "yes" if eff[0] >= GOAL else "no"
            print(f"| {label} | {macs_ratio:.2f}× | {runtime} | {t} | {med['original']:.1f} | {med['pruned']:.1f} | "
                  f"{med['original'] / med['pruned']:.2f}× | {fmt(eff)} | {verdict} | {cells[0]} | {cells[1]} |",
                  flush=True)
    for runtime in profiles:
        profile(label, runtime, models, timm_name, x, cache)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    p.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"comma-separated, of {', '.join(RUNTIMES)}")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--round-to", type=int, help="round kept widths to a multiple of this (snp_core round_to)")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--round-ms", type=float, default=60.0, help="milliseconds of calls per model per round")
    p.add_argument("--cache", type=Path, default=Path("runs/artifacts"))
    p.add_argument("--profile", default="", help="comma-separated runtimes to profile per operator kind after the "
                                                 "timings (1 thread): where the pruned model does not save time")
    p.add_argument("--spinning", choices=tuple(SPINNING), default="off",
                   help="onnxruntime's intra-op thread spinning (default off: see SPINNING)")
    args = p.parse_args()
    global spinning
    spinning = SPINNING[args.spinning]
    runtimes, profiles = args.runtimes.split(","), [r for r in args.profile.split(",") if r]
    for bad in set(runtimes + profiles) - set(RUNTIMES) or set(args.configs.split(",")) - set(CONFIGS):
        raise SystemExit(f"error: unknown runtime or config {bad!r}; known: {', '.join(RUNTIMES + CONFIGS)}")
    warnings.simplefilter("ignore")
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at start; {args.rounds} rounds of ~{args.round_ms:g} ms per model\n")
    print("| config | MACs ratio | runtime | threads | original ms | pruned ms | speedup | efficiency [95 % CI] | "
          f"≥ {GOAL}? | pruned / hand-written | pruned / uniform peer |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for config in args.configs.split(","):
        run_config(config, runtimes, [int(t) for t in args.threads.split(",")], args.rounds, args.round_ms / 1e3,
                   args.cache, args.round_to, profiles)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
