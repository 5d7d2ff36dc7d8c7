"""Which attention path makes SNP's saved MACs saved time on onnxruntime CPU (issue 15).

For each config, the original and the SNP-pruned model (random weights; latency
does not depend on them) are exported as the harness exports them (plain
dynamo graph, the "current" path) and rewritten by `exporters.fused_attention`
into each fused attention op; "+ortopt" adds onnxruntime's own transformer
optimizer (model_type "vit": SkipLayerNormalization, BiasGelu; it fuses no
attention in this layout). Every graph is checked against eager PyTorch
(max abs diff <= 1e-4) before it is timed. All variants of both models run in
ONE process, interleaved round by round (order alternating), per thread count;
a round runs each variant for about --round-ms. Reported: median over rounds of
ms per inference, the median per-round ratio to the same model's "current"
path, and efficiency = (original's fastest path / this pruned path) / MACs
ratio (the project's goal is >= 0.90; "eff same" uses the original on the same
path). Then onnxruntime profiles (1 thread) of the original and the pruned
model on the current and the "onnx_attention" path: kernel ms per kind of
operator, its share and its speedup, which shows what keeps efficiency below 1.
With warm artifact caches the default run takes about 2 minutes on 2 cores.

    .venv/bin/python benchmarks/attention_paths.py [--configs deit_tiny,deit_small_1.3g] [--threads 1,2]
        [--round-to 8] [--rounds 9] [--round-ms 50]

Timings on a shared machine are noisy: compare ratios within one run, not
figures across runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import exporters  # noqa: E402
import snp_core  # noqa: E402
from benchmarks.timing import interleaved  # noqa: E402
from exporters.fused_attention import FUSED_OPS, find_sites, fuse_attention  # noqa: E402
from exporters.parity import eager_outputs, max_abs_diff  # noqa: E402
from snp_core import ratios as ratio_sources  # noqa: E402

PARITY = 1e-4
CURRENT = "current"
#: Operator kinds of the profile besides "attention" (recognised by node name, see `profile_ms`).
KINDS = {"Gemm": "linear (Gemm/MatMul)", "MatMul": "linear (Gemm/MatMul)", "FusedMatMul": "linear (Gemm/MatMul)",
         "Div": "GELU (Div, Erf)", "Erf": "GELU (Div, Erf)", "BiasGelu": "GELU (Div, Erf)",
         "Gelu": "GELU (Div, Erf)", "LayerNormalization": "LayerNorm",
         "SkipLayerNormalization": "LayerNorm", "Reshape": "Reshape/Transpose", "Transpose": "Reshape/Transpose",
         "Add": "Add/Mul (GELU's, residual, bias)", "Mul": "Add/Mul (GELU's, residual, bias)", "Conv": "patch embed (Conv)"}


def ort_optimized(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's transformer optimizer (model_type "vit", its fusions only), on a copy (it edits in place).

    Head count and width are left for it to detect (0): a pruned width such as
    DeiT-S 1.3G's need not be a multiple of the head count, which it asserts for
    given values; its attention fusion matches nothing here either way.
    """
    from onnxruntime.transformers import optimizer

    logging.disable(logging.WARNING)  # "Please specify parameters of num_heads and hidden_size"
    try:
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        return optimizer.optimize_model(copy, model_type="vit", num_heads=0, hidden_size=0, opt_level=0).model
    finally:
        logging.disable(logging.NOTSET)


def graph_variants(path: Path) -> dict[str, onnx.ModelProto]:
    """The current export and each rewrite of it."""
    current = onnx.load(str(path))
    out = {CURRENT: current}
    for op in FUSED_OPS:
        out[op] = fuse_attention(current, op)[0]
    out["contrib_attention+ortopt"] = ort_optimized(out["contrib_attention"])
    return out


def session(proto: onnx.ModelProto, threads: int, profile: str | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    if profile:
        so.enable_profiling, so.profile_file_prefix = True, profile
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def profile_ms(graphs: dict[str, onnx.ModelProto], attention_nodes: set[str], x: np.ndarray,
               runs: int) -> dict[str, Counter]:
    """Kernel ms per run and operator kind of each graph (1 thread), the graphs run alternately.

    Nodes named in `attention_nodes` (the current graph's attention, `find_sites`) and fused
    attention ops count as "attention"; onnxruntime keeps a node's name before a "/" when it
    fuses it (``node_matmul/MatMulScaleFusion/``). A contrib ``Attention`` also does the qkv
    projection GEMM, which then counts as attention.
    """
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {k: session(proto, 1, profile=f"{tmp}/{i}") for i, (k, proto) in enumerate(graphs.items())}
        feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
        for _ in range(runs):
            for k, s in sessions.items():
                s.run(None, feeds[k])
        events = {k: json.loads(Path(s.end_profiling()).read_text()) for k, s in sessions.items()}
    out = {}
    for k, evs in events.items():
        ms = Counter()
        for e in evs:
            if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
                continue
            node, op = e["name"][: -len("_kernel_time")].split("/")[0], e["args"]["op_name"]
            fused = node in attention_nodes or op in ("Attention", "MultiHeadAttention")
            ms["attention" if fused else KINDS.get(op, "other")] += e["dur"] / 1e3 / runs
        out[k] = ms
    return out


def build(config: str, round_to: int | None) -> tuple[str, dict[str, torch.nn.Module], float]:
    """Original and pruned model (l2 criterion: the widths come from the config's ratios alone) and MACs ratio."""
    timm_name = ratio_sources.load_config(config)["model"]
    original = snp_core.create(timm_name)
    pruned, plan = snp_core.compress(original, ratios=config, calib=None, criterion="l2", round_to=round_to)
    return timm_name, {"original": original, "pruned": pruned}, plan.macs["original"] / plan.macs["pruned"]


def run_config(config: str, threads: list[int], rounds: int, round_s: float, cache: Path,
               round_to: int | None) -> None:
    timm_name, models, macs_ratio = build(config, round_to)
    shape = (1, *snp_core.models.input_size(models["original"]))
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    graphs = {}
    for kind, model in models.items():
        path = exporters.export(model, "onnx", cache, input_shape=shape, source=timm_name).path
        reference = eager_outputs(model, torch.from_numpy(x))
        for variant, proto in graph_variants(path).items():
            diff = max_abs_diff(reference, [session(proto, 1).run(None, {"input": x})[0]])
            if not diff <= PARITY:
                raise SystemExit(f"{config} {kind} {variant}: parity {diff:.2e} > {PARITY:g}")
            graphs[(kind, variant)] = proto
    label = config + (f" round-to {round_to}" if round_to else "")
    print(f"\n## {label} ({timm_name}), MACs ratio {macs_ratio:.2f}x, parity of every graph <= {PARITY:g}\n")
    print("| threads | model | path | median ms | / current | efficiency | eff same path |")
    print("|---|---|---|---|---|---|---|")
    for t in threads:
        runners = {}
        for key, proto in graphs.items():
            s = session(proto, t)
            runners[key] = (lambda s=s: s.run(None, {"input": x}))
        samples = interleaved(runners, rounds, round_s)
        med = {k: statistics.median(v) for k, v in samples.items()}
        best_original = min(v for (kind, _), v in med.items() if kind == "original")
        for (kind, variant), seconds in med.items():
            ratio = statistics.median(a / b for a, b in zip(samples[(kind, variant)], samples[(kind, CURRENT)]))
            eff = eff_same = "-"
            if kind == "pruned":
                eff = f"{best_original / seconds / macs_ratio:.2f}"
                eff_same = f"{med[('original', variant)] / seconds / macs_ratio:.2f}"
            print(f"| {t} | {kind} | {variant} | {seconds * 1e3:.2f} | {ratio:.2f} | {eff} | {eff_same} |", flush=True)
    print_profile(label, graphs, x, macs_ratio)


def print_profile(config: str, graphs: dict, x: np.ndarray, macs_ratio: float) -> None:
    """Where the pruned model's time goes, next to the original's: what keeps efficiency below 1."""
    for variant in (CURRENT, "onnx_attention"):
        pair = {kind: graphs[(kind, variant)] for kind in ("original", "pruned")}
        names = {n for kind in pair for site in find_sites(graphs[(kind, CURRENT)]) for n in site.nodes}
        ms = profile_ms(pair, names, x, runs=15)
        total = {k: sum(v.values()) for k, v in ms.items()}
        print(f"\nonnxruntime profile, {config}, path {variant}, 1 thread, kernel ms per inference "
              f"(speedup {total['original'] / total['pruned']:.2f}x vs MACs {macs_ratio:.2f}x):\n")
        print("| kind | original ms | share | pruned ms | share | speedup |")
        print("|---|---|---|---|---|---|")
        for kind in sorted(ms["original"], key=lambda k: -ms["original"][k]):
            o, p = ms["original"][kind], ms["pruned"][kind]
            print(f"| {kind} | {o:.2f} | {o / total['original']:.0%} | {p:.2f} | {p / total['pruned']:.0%} | "
                  f"{o / p if p else float('inf'):.2f}x |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="deit_tiny,deit_small_1.3g")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--round-ms", type=float, default=50.0)
    p.add_argument("--cache", type=Path, default=Path("runs/artifacts"))
    p.add_argument("--round-to", type=int, help="round kept widths to a multiple of this (snp_core round_to)")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, onnx {onnx.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    for config in args.configs.split(","):
        run_config(config, [int(t) for t in args.threads.split(",")], args.rounds, args.round_ms / 1e3, args.cache,
                   args.round_to)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
