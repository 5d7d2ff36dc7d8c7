"""Which traced attention a CUDA device should get (issue 15, "GPU paths"): run on a machine with a GPU.

A .pt is traced on the host, and the trace bakes in the pruned attention's kernel
(`snp_core.PrunedAttention.kernel`, chosen by `exporters.pipeline.attention_kernel`
from the artifact's target). This times, on CUDA, batch 1 and 8, the TorchScript
artifact of each config's original and of its pruned model traced with each
kernel -- "explicit" (what a CPU-traced .pt held before targets existed),
"sdpa_padded" (the CPU target's), "sdpa" (the CUDA target's) -- and the .onnx on
onnxruntime's CUDA provider when it is installed, interleaved in rounds, timed
with CUDA events after a synchronising warm-up. Prints median ms, speedup over
the original and efficiency (speedup ÷ MACs ratio).

    python benchmarks/cuda_paths.py [--configs deit_tiny,deit_small_1.3g,deit_base] [--batches 1,8] [--rounds 7]

No GPU here: the script says so and exits 2.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import exporters  # noqa: E402
import snp_core  # noqa: E402
from snp_core import ratios as ratio_sources  # noqa: E402

KERNELS = ("explicit", "sdpa_padded", "sdpa")


def cuda_ms(fn, x: torch.Tensor, iters: int) -> float:
    """Median ms of `iters` calls, each timed by CUDA events."""
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(x)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def traced(model: torch.nn.Module, shape: tuple[int, ...], kernel: str | None, cache: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kernel is None:
            path = exporters.export(model, "torchscript", cache, input_shape=shape).path
        else:
            with snp_core.attention_kernel(model, kernel), torch.inference_mode():
                frozen = torch.jit.freeze(torch.jit.trace(model.eval(), torch.randn(shape), check_trace=False))
            path = cache / f"{id(model)}-{kernel}-{shape[0]}.pt"
            torch.jit.save(frozen, str(path))
        return torch.jit.load(str(path), map_location="cuda").eval()


def ort_cuda(model: torch.nn.Module, shape: tuple[int, ...], cache: Path):
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None
    path = exporters.export(model, "onnx", cache, input_shape=shape).path
    session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.cpu().numpy()})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="deit_tiny,deit_small_1.3g,deit_base")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--iters", type=int, default=30)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA device here; run this on a machine with a GPU", file=sys.stderr)
        return 2
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}\n")
    print("| config | batch | path | median ms | speedup | efficiency |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        for config in args.configs.split(","):
            timm_name = ratio_sources.load_config(config)["model"]
            original = snp_core.create(timm_name).eval()
            pruned, plan = snp_core.compress(original, ratios=config, calib=None, criterion="l2")
            macs_ratio = plan.macs["original"] / plan.macs["pruned"]
            for batch in (int(b) for b in args.batches.split(",")):
                shape = (batch, *snp_core.models.input_size(original))
                paths = {"original .pt": traced(original, shape, None, cache)}
                paths.update({f"pruned .pt ({k})": traced(pruned, shape, k, cache) for k in KERNELS})
                for kind, model in (("original", original), ("pruned", pruned)):
                    run = ort_cuda(model, shape, cache)
                    if run is not None:
                        paths[f"{kind} .onnx (ORT CUDA)"] = run
                x = torch.randn(shape, device="cuda")
                samples: dict[str, list[float]] = {k: [] for k in paths}
                with torch.inference_mode():
                    for fn in paths.values():
                        for _ in range(10):
                            fn(x)
                    torch.cuda.synchronize()
                    for r in range(args.rounds):
                        for name in list(paths) if r % 2 == 0 else list(paths)[::-1]:
                            samples[name].append(cuda_ms(paths[name], x, args.iters))
                med = {k: statistics.median(v) for k, v in samples.items()}
                for name, ms in med.items():
                    base = med["original .onnx (ORT CUDA)" if "ORT" in name else "original .pt"]
                    speed = base / ms
                    eff = f"{speed / macs_ratio:.2f}" if name.startswith("pruned") else ""
                    print(f"| {config} | {batch} | {name} | {ms:.2f} | {speed:.2f}× | {eff} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
