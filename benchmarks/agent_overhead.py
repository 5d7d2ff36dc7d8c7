"""How much does the device agent add to what it measures? (issue target: <= 1 %)

In ONE process, interleaved round by round (A B, B A, ...): the agent's own
timing path (`devices.agent.run_job`, exactly what runs on a device, lock and
all) and a bare onnxruntime loop (`session.run` between two `perf_counter`
calls) on the same .onnx, with the same thread count and input shape. Prints
both medians and the overhead as a ratio of medians.

    .venv/bin/python benchmarks/agent_overhead.py [--model deit_tiny_patch16_224] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import exporters  # noqa: E402
import snp_core  # noqa: E402
from devices import agent  # noqa: E402


def bare_loop(path: Path, threads: int, shape: list[int], iterations: int) -> list[float]:
    """Per-iteration seconds of the simplest correct onnxruntime timing loop."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
    for _ in range(20):
        session.run(None, feed)
    samples = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        session.run(None, feed)
        samples.append(time.perf_counter() - t0)
    return samples


def agent_samples(art: exporters.Artifact, threads: int, shape: list[int], iterations: int, workdir: str) -> list[float]:
    job = {"protocol": 1, "job_id": "overhead", "artifact": {"path": str(art.path), "sha256": art.sha256,
                                                              "format": "onnx"},
           "runtime": "onnxruntime", "options": {"threads": threads}, "input": {"shape": shape},
           "warmup": {"iterations": 20}, "measure": {"iterations": iterations, "min_seconds": 0},
           "timeout_s": 600, "workdir": workdir}
    result = agent.run_job(json.dumps(job))
    if result["status"] != "ok":
        raise SystemExit(f"agent failed: {result['error']}")
    return [ns / 1e9 for ns in result["samples_ns"]]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deit_tiny_patch16_224")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--iterations", type=int, default=100)
    args = p.parse_args()

    model = snp_core.create(args.model)
    shape = [1, *snp_core.models.input_size(model)]
    art = exporters.export(model, "onnx", Path("runs/artifacts"), input_shape=tuple(shape), source=args.model)
    samples: dict[str, list[float]] = {"agent": [], "bare": []}
    with tempfile.TemporaryDirectory() as workdir:
        for r in range(args.rounds):
            for name in (("agent", "bare") if r % 2 == 0 else ("bare", "agent")):
                if name == "agent":
                    samples[name] += agent_samples(art, args.threads, shape, args.iterations, workdir)
                else:
                    samples[name] += bare_loop(art.path, args.threads, shape, args.iterations)
    med = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    print(f"{args.model} .onnx, onnxruntime {ort.__version__} CPU, {args.threads} thread(s), "
          f"{args.rounds} interleaved rounds x {args.iterations} iterations each")
    for name, value in med.items():
        print(f"  {name:5s} median {value:8.3f} ms")
    print(f"agent overhead: {(med['agent'] / med['bare'] - 1) * 100:+.2f} % of the median")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
